//! Who is on the other end of a socket: always taken from the verified token, never from payloads.

use serde::{Deserialize, Serialize};

/// The four roles of the contract. Anything else in a token is rejected as unauthorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Patient,
    Doctor,
    Staff,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Doctor => "doctor",
            Role::Staff => "staff",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "patient" => Some(Role::Patient),
            "doctor" => Some(Role::Doctor),
            "staff" => Some(Role::Staff),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Staff and admins act on behalf of the practice: they may see and call anyone.
    pub fn is_privileged(self) -> bool {
        matches!(self, Role::Staff | Role::Admin)
    }
}

/// A verified user, as carried by a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    #[serde(rename = "userId")]
    pub user_id: String,
    pub name: String,
    pub role: Role,
}

/// Why a token was refused; used as the `reason` label of `callrelay_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown role")]
    UnknownRole,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 6] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::BadSignature,
        AuthFailure::Expired,
        AuthFailure::Algorithm,
        AuthFailure::UnknownRole,
    ];

    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::Algorithm => "algorithm",
            AuthFailure::UnknownRole => "unknown_role",
        }
    }
}

/// Verifies bearer tokens. Implemented by the server assembly (JWT); kept abstract so this crate
/// knows nothing of key material.
pub trait Authenticator: Send + Sync + 'static {
    /// Verifies `token` and returns who it names. Implementations count their own failures.
    fn verify(&self, token: Option<&str>) -> Result<Identity, AuthFailure>;
}

//! What signaling needs from persistence. Implemented over SQL by the server assembly; this crate
//! never sees a query.

use async_trait::async_trait;
use serde::Serialize;

use time::OffsetDateTime;

use crate::activity::Activity;
use crate::call::Call;
use crate::identity::Identity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppointmentStatus {
    Pending,
    Confirmed,
    Cancelled,
}

impl AppointmentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AppointmentStatus::Pending => "pending",
            AppointmentStatus::Confirmed => "confirmed",
            AppointmentStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "confirmed" => Some(Self::Confirmed),
            "cancelled" => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// The parts of an appointment that decide who may enter its room.
#[derive(Debug, Clone)]
pub struct AppointmentAccess {
    pub id: String,
    pub patient_id: String,
    pub doctor_id: String,
    pub status: AppointmentStatus,
}

/// The author of a chat message as stamped by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatSender {
    pub user_id: String,
    pub name: String,
    pub role: crate::Role,
}

/// A stored in-call chat message (contract: ChatMessage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: String,
    pub appointment_id: String,
    pub from: ChatSender,
    pub text: String,
    /// RFC 3339 UTC with milliseconds, from the server clock.
    pub sent_at: String,
}

#[derive(Debug, thiserror::Error)]
#[error("storage failed: {0}")]
pub struct StoreError(pub String);

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn appointment(&self, id: &str) -> Result<Option<AppointmentAccess>, StoreError>;
    /// Remembers a user seen on a token (id, display name, role), for transcripts and calls.
    async fn record_user(&self, who: &Identity) -> Result<(), StoreError>;
    async fn save_chat_message(&self, message: &ChatMessage) -> Result<(), StoreError>;
    /// True when `patient_id` has an appointment (in any state but cancelled) with `doctor_id`.
    async fn has_care_relation(
        &self,
        patient_id: &str,
        doctor_id: &str,
    ) -> Result<bool, StoreError>;
    /// Inserts or updates the call record with the call's current state.
    async fn save_call(&self, call: &Call) -> Result<(), StoreError>;
    /// Keeps what happened (`at`, server clock) for the audit trail and the webhooks, durably:
    /// once this returns, the record survives a restart.
    async fn record(&self, at: OffsetDateTime, activity: &Activity) -> Result<(), StoreError>;
}

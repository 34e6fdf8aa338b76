//! `POST /api/dev/token`, `GET /api/me`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use callrelay_signaling::protocol::check_id;

use super::openapi::{BadRequest, Id, Name, RoleName, TooLarge, Unauthorized};
use super::{ApiError, AppState, AuthUser, ErrorBody, Payload, check_name};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dev/token", post(dev_token))
        .route("/me", get(me))
}

/// Who the token is for.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    /// The user id (the token's `sub`).
    #[schema(value_type = Id)]
    sub: String,
    #[schema(value_type = Name)]
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// An HS256 JWT, valid for `auth.token_ttl_secs`.
    token: String,
}

/// A token for anyone who asks, for development (`auth.dev_tokens`, on by default).
#[utoipa::path(post, path = "/api/dev/token", request_body = DevTokenRequest, responses(
    (status = 200, description = "A signed token", body = TokenResponse),
    (status = 400, response = BadRequest),
    (status = 404, description = "`auth.dev_tokens` is off (`not_found`)", body = ErrorBody),
    (status = 413, response = TooLarge)))]
pub(super) async fn dev_token(
    State(state): State<AppState>,
    Payload(req): Payload<DevTokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if !state.dev_tokens {
        return Err(ApiError::not_found("development tokens are disabled"));
    }
    check_id("sub", &req.sub).map_err(|e| ApiError::invalid(e.message))?;
    check_name("name", &req.name)?;
    let token = state
        .auth
        .issue(&req.sub, &req.name, &req.role, state.token_ttl_secs)
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(TokenResponse { token }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The token's `sub`.
    id: String,
    name: String,
    #[schema(value_type = RoleName)]
    role: String,
}

/// The caller, as the token names them.
#[utoipa::path(get, path = "/api/me", responses(
    (status = 200, description = "The token's user", body = Me),
    (status = 401, response = Unauthorized)), security(("bearer" = [])))]
pub(super) async fn me(AuthUser(who): AuthUser) -> Json<Me> {
    Json(Me {
        id: who.user_id,
        name: who.name,
        role: who.role.as_str().to_owned(),
    })
}

//! `POST /api/dev/token`, `GET /api/me`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use callrelay_signaling::protocol::check_id;

use super::{ApiError, AppState, AuthUser, Payload, check_name};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dev/token", post(dev_token))
        .route("/me", get(me))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub struct DevTokenRequest {
    sub: String,
    name: String,
    role: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    token: String,
}

#[utoipa::path(post, path = "/api/dev/token", request_body = DevTokenRequest, responses(
    (status = 200, body = TokenResponse), (status = 400), (status = 404, description = "auth.dev_tokens is off")))]
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
    id: String,
    name: String,
    role: String,
}

#[utoipa::path(get, path = "/api/me", responses((status = 200, body = Me), (status = 401)), security(("bearer" = [])))]
pub(super) async fn me(AuthUser(who): AuthUser) -> Json<Me> {
    Json(Me {
        id: who.user_id,
        name: who.name,
        role: who.role.as_str().to_owned(),
    })
}

//! `GET /api/ice-servers`: STUN/TURN servers with fresh TURN credentials.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::openapi::Unauthorized;
use super::{AppState, AuthUser};

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/ice-servers", get(ice_servers))
}

/// One RTCIceServer: `urls`, and for TURN with credentials `username` and `credential`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IceServer {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IceServerList {
    /// The same shape as the `join-room` ack's `iceServers`; with `media.ice_secret` set, TURN
    /// credentials minted now for the caller (username `"<unix expiry>:<userId>"`).
    #[schema(value_type = Vec<IceServer>)]
    ice_servers: serde_json::Value,
}

/// The STUN/TURN servers for the caller's peer connections, with fresh TURN credentials of
/// their own. Never cached: each answer is minted at request time.
#[utoipa::path(get, path = "/api/ice-servers", responses(
    (status = 200, description = "The caller's ICE servers", body = IceServerList),
    (status = 401, response = Unauthorized)), security(("bearer" = [])))]
pub(super) async fn ice_servers(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Response {
    let body = Json(IceServerList {
        ice_servers: state.ice_servers.for_user(&who.user_id),
    });
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}

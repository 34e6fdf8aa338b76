//! `GET /api/calls`: the caller's call history.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiError, AppState, AuthUser};
use crate::db::CallRecord;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/calls", get(list_calls))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CallList {
    calls: Vec<CallRecord>,
}

#[utoipa::path(get, path = "/api/calls", responses((status = 200, body = CallList), (status = 401)), security(("bearer" = [])))]
pub(super) async fn list_calls(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<CallList>, ApiError> {
    Ok(Json(CallList {
        calls: state.db.calls_for(&who.user_id).await?,
    }))
}

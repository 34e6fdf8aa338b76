//! `GET /api/calls`: the caller's call history.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::openapi::{Internal, Unauthorized};
use super::{ApiError, AppState, AuthUser};
use crate::db::CallRecord;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/calls", get(list_calls))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CallList {
    calls: Vec<CallRecord>,
}

/// The direct calls the caller took part in, newest first.
#[utoipa::path(get, path = "/api/calls", responses(
    (status = 200, description = "The caller's calls", body = CallList),
    (status = 401, response = Unauthorized),
    (status = 500, response = Internal)), security(("bearer" = [])))]
pub(super) async fn list_calls(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<CallList>, ApiError> {
    Ok(Json(CallList {
        calls: state.db.calls_for(&who.user_id).await?,
    }))
}

//! `GET /livez`, `GET /readyz`, `GET /metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

/// `/livez` and `/readyz` (at the root, not under `/api`); `/metrics` is added by the caller,
/// on this listener or the operators' one.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
}

/// `{"status":"ok"}` and the like.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Status {
    /// `ok` (livez), `ready`, `draining` or `database unavailable` (readyz).
    status: String,
}

#[utoipa::path(get, path = "/livez", responses(
    (status = 200, description = "The process runs", body = Status)))]
pub(super) async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The database answers and the server is not draining", body = Status),
    (status = 503, description = "Draining, or the database does not answer", body = Status)))]
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.draining.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining"})),
        )
            .into_response();
    }
    let ping = state.db.ping().await;
    state.metrics.database_up.set(i64::from(ping.is_ok()));
    match ping {
        Ok(()) => Json(json!({"status": "ready"})).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: database does not answer");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "database unavailable"})),
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "Prometheus text format (contract section 4)", content_type = "text/plain", body = String)))]
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

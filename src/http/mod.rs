//! The HTTP API (contract section 2), one module per resource: `health` (livez, readyz,
//! metrics), `tokens` (dev token, me), `appointments` (appointments and their transcripts),
//! `calls`, `ice` (ICE servers), `openapi` (the description of all of them).
//!
//! This module holds what they share: `AppState`, the `{"error":{code,message}}` shape
//! (`ApiError`), the `Payload` and `AuthUser` extractors, the request-counting middleware and
//! the assembly of the routers. A resource module exposes `routes() -> Router<AppState>` (paths
//! relative to `/api`), merged in `router`, and lists its handlers in `openapi::ApiDoc`.

mod admin;
mod appointments;
mod calls;
mod health;
mod ice;
pub(crate) mod openapi;
mod tokens;

pub use admin::ADMIN_ACTIONS;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use callrelay_signaling::SocketIo;
use callrelay_signaling::{Authenticator, IceServers, Identity, Signaling};

use crate::auth::JwtAuth;
use crate::db::Db;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Identities already recorded in `users` by this process (so names are known for
    /// appointments and transcripts without a write per request).
    pub seen_users: Arc<std::sync::Mutex<std::collections::HashSet<Identity>>>,
    pub auth: Arc<JwtAuth>,
    pub metrics: Metrics,
    pub draining: Arc<AtomicBool>,
    pub dev_tokens: bool,
    pub token_ttl_secs: u64,
    /// False when /metrics is served on its own operators' listener instead.
    pub metrics_on_main: bool,
    /// `media.ice_*`: what `GET /api/ice-servers` hands out (fresh TURN credentials per user).
    pub ice_servers: Arc<IceServers>,
    /// Live rooms and calls, for the admin API.
    pub signaling: Arc<Signaling>,
    pub io: SocketIo,
    /// This node's handle on the cluster registry; `None` on a single node.
    pub cluster: Option<Arc<crate::cluster::Registry>>,
}

/// An API error, rendered as `{"error":{"code","message"}}` with the matching status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

/// The machine-readable half of an error; each goes with one status (contract section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// 400: the body or a parameter is not what the operation takes.
    InvalidPayload,
    /// 401: no bearer token, or one that does not verify.
    Unauthorized,
    /// 403: the caller may not do this.
    Forbidden,
    /// 404: no such resource, or no such path.
    NotFound,
    /// 405: the path does not take this method (the `Allow` header lists those it takes).
    MethodNotAllowed,
    /// 409: the resource's state, or the request's own parts, do not allow it.
    Conflict,
    /// 413: the body is larger than `limits.max_http_body_bytes`.
    TooLarge,
    /// 500: the server failed (the database did not answer).
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    code: ErrorCode,
    /// For people: what was wrong.
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidPayload, message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            "a valid bearer token is required",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
        tracing::error!(error = %err, "database error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "internal error",
        )
    }
}

/// A JSON body whose rejections follow the contract (400 invalid_payload, 413 too_large).
pub struct Payload<T>(pub T);

impl<S, T> FromRequest<S> for Payload<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Payload(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorCode::TooLarge,
                    "body is too large",
                ))
            }
            Err(rejection) => Err(ApiError::invalid(rejection.body_text())),
        }
    }
}

/// The caller, from `Authorization: Bearer <jwt>`.
pub struct AuthUser(pub Identity);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let who = state
            .auth
            .verify(token)
            .map_err(|_| ApiError::unauthorized())?;
        let first_sight = state
            .seen_users
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(who.clone());
        if first_sight && let Err(err) = state.db.upsert_user(&who).await {
            tracing::warn!(error = %err, "could not record user");
        }
        Ok(AuthUser(who))
    }
}

/// A display name: 1 to 200 characters, not only white space, no control characters.
fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        Err(ApiError::invalid(format!(
            "{field} must be 1 to 200 printable characters"
        )))
    } else {
        Ok(())
    }
}

pub fn router(state: AppState) -> Router {
    // Nested so that an unknown /api path is a JSON 404 even when the browser client (which
    // answers every other unknown path with its page) is served.
    let api = Router::new()
        .merge(tokens::routes())
        .merge(appointments::routes())
        .merge(calls::routes())
        .merge(ice::routes())
        .merge(admin::routes())
        .merge(openapi::routes())
        // Registered after the routes: they apply to the routes registered before them.
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let mut app = health::routes().nest("/api", api);
    if state.metrics_on_main {
        app = app.route("/metrics", get(health::metrics));
    }
    // Registered last: it applies to the routes registered before it.
    app.method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

/// The operators' listener when `server.metrics_bind` is set.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .metrics
        .http_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .http_requests
        .with_label_values(&[&route, response.status().as_str()])
        .inc();
    response
}

async fn api_not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with a method it does not take: 405 in the JSON error shape (axum's default is
/// an empty body), code `method_not_allowed`; axum still adds the `Allow` header.
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::MethodNotAllowed,
        format!("{method} is not allowed on this path (see the Allow header)"),
    )
}

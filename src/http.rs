//! The HTTP API (contract section 2): health, metrics, tokens, appointments, transcripts, calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi;

use callrelay_signaling::protocol::check_id;
use callrelay_signaling::store::{AppointmentStatus, ChatMessage};
use callrelay_signaling::{Authenticator, IceServers, Identity, Role};

use crate::auth::JwtAuth;
use crate::db::{Appointment, CallRecord, Db, NewAppointment};
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
}

/// An API error, rendered as `{"error":{"code","message"}}` with the matching status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_payload", message)
    }
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(err: crate::db::DbError) -> Self {
        tracing::error!(error = %err, "database error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
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
                    "too_large",
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

pub fn router(state: AppState) -> Router {
    // Nested so that an unknown /api path is a JSON 404 even when the browser client (which
    // answers every other unknown path with its page) is served.
    let api = Router::new()
        .route("/dev/token", post(dev_token))
        .route("/me", get(me))
        .route(
            "/appointments",
            post(create_appointment).get(list_appointments),
        )
        .route("/appointments/{id}", get(get_appointment))
        .route("/appointments/{id}/confirm", post(confirm_appointment))
        .route("/appointments/{id}/cancel", post(cancel_appointment))
        .route("/appointments/{id}/messages", get(appointment_messages))
        .route("/calls", get(list_calls))
        .route("/ice-servers", get(ice_servers))
        .route("/openapi.json", get(openapi_json))
        .fallback(api_not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let mut app = Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .nest("/api", api);
    if state.metrics_on_main {
        app = app.route("/metrics", get(metrics));
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
        .route("/metrics", get(metrics))
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
        "method_not_allowed",
        format!("{method} is not allowed on this path (see the Allow header)"),
    )
}

#[utoipa::path(get, path = "/livez", responses((status = 200, description = "The process runs")))]
async fn livez() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "The database answers and the server is not draining"),
    (status = 503, description = "Draining, or the database does not answer")))]
async fn readyz(State(state): State<AppState>) -> Response {
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

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format")))]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
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
async fn dev_token(
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
async fn me(AuthUser(who): AuthUser) -> Json<Me> {
    Json(Me {
        id: who.user_id,
        name: who.name,
        role: who.role.as_str().to_owned(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateAppointment {
    patient_id: String,
    doctor_id: String,
    /// RFC 3339, e.g. 2026-12-01T09:30:00Z
    scheduled_at: String,
    patient_name: Option<String>,
    doctor_name: Option<String>,
}

#[utoipa::path(post, path = "/api/appointments", request_body = CreateAppointment, responses(
    (status = 201, body = Appointment), (status = 400), (status = 401), (status = 403)), security(("bearer" = [])))]
async fn create_appointment(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Payload(req): Payload<CreateAppointment>,
) -> Result<(StatusCode, Json<Appointment>), ApiError> {
    if who.role == Role::Patient {
        return Err(ApiError::forbidden(
            "only doctors, staff and admins create appointments",
        ));
    }
    check_id("patientId", &req.patient_id).map_err(|e| ApiError::invalid(e.message))?;
    check_id("doctorId", &req.doctor_id).map_err(|e| ApiError::invalid(e.message))?;
    if who.role == Role::Doctor && req.doctor_id != who.user_id {
        return Err(ApiError::forbidden(
            "a doctor creates appointments for themself only",
        ));
    }
    if req.patient_id == req.doctor_id {
        return Err(ApiError::invalid("patientId and doctorId must differ"));
    }
    for (field, name) in [
        ("patientName", &req.patient_name),
        ("doctorName", &req.doctor_name),
    ] {
        if let Some(name) = name {
            check_name(field, name)?;
        }
    }
    let scheduled_at = time::OffsetDateTime::parse(
        &req.scheduled_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map_err(|_| ApiError::invalid("scheduledAt must be an RFC 3339 date-time"))?;
    let appointment = state
        .db
        .create_appointment(NewAppointment {
            doctor_name: req.doctor_name.or_else(|| {
                (who.role == Role::Doctor && req.doctor_id == who.user_id).then(|| who.name.clone())
            }),
            patient_id: req.patient_id,
            doctor_id: req.doctor_id,
            patient_name: req.patient_name,
            scheduled_at,
            created_by: who.user_id,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(appointment)))
}

fn check_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        Err(ApiError::invalid(format!(
            "{field} must be 1 to 200 printable characters"
        )))
    } else {
        Ok(())
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AppointmentList {
    appointments: Vec<Appointment>,
}

#[utoipa::path(get, path = "/api/appointments", responses((status = 200, body = AppointmentList), (status = 401)), security(("bearer" = [])))]
async fn list_appointments(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<AppointmentList>, ApiError> {
    let scope = (who.role != Role::Admin).then_some(who.user_id.as_str());
    Ok(Json(AppointmentList {
        appointments: state.db.appointments_for(scope).await?,
    }))
}

/// Loads an appointment and checks that `who` may act on it as one of `allowed`.
async fn appointment_for(
    state: &AppState,
    who: &Identity,
    id: &str,
    allowed: &[Party],
) -> Result<Appointment, ApiError> {
    let appointment = match check_id("id", id) {
        Ok(()) => state.db.appointment(id).await?,
        Err(_) => None,
    }
    .ok_or_else(|| ApiError::not_found("no such appointment"))?;
    let fits = allowed.iter().any(|party| match party {
        Party::Patient => appointment.patient_id == who.user_id,
        Party::Doctor => appointment.doctor_id == who.user_id,
        Party::Role(role) => who.role == *role,
    });
    if fits {
        Ok(appointment)
    } else {
        Err(ApiError::forbidden("not allowed on this appointment"))
    }
}

enum Party {
    Patient,
    Doctor,
    Role(Role),
}

#[utoipa::path(get, path = "/api/appointments/{id}", params(("id" = String, Path)), responses(
    (status = 200, body = Appointment), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn get_appointment(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Appointment>, ApiError> {
    let allowed = [
        Party::Patient,
        Party::Doctor,
        Party::Role(Role::Staff),
        Party::Role(Role::Admin),
    ];
    Ok(Json(appointment_for(&state, &who, &id, &allowed).await?))
}

#[utoipa::path(post, path = "/api/appointments/{id}/confirm", params(("id" = String, Path)), responses(
    (status = 200, body = Appointment), (status = 403), (status = 404), (status = 409, description = "Cancelled")), security(("bearer" = [])))]
async fn confirm_appointment(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Appointment>, ApiError> {
    let allowed = [
        Party::Doctor,
        Party::Role(Role::Staff),
        Party::Role(Role::Admin),
    ];
    let current = appointment_for(&state, &who, &id, &allowed).await?;
    if current.status == AppointmentStatus::Cancelled {
        return Err(ApiError::conflict(
            "a cancelled appointment cannot be confirmed",
        ));
    }
    let (appointment, _) = state
        .db
        .transition_appointment(
            &id,
            &[AppointmentStatus::Pending],
            AppointmentStatus::Confirmed,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("no such appointment"))?;
    if appointment.status != AppointmentStatus::Confirmed {
        return Err(ApiError::conflict(
            "the appointment was cancelled meanwhile",
        ));
    }
    Ok(Json(appointment))
}

#[utoipa::path(post, path = "/api/appointments/{id}/cancel", params(("id" = String, Path)), responses(
    (status = 200, body = Appointment), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn cancel_appointment(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Appointment>, ApiError> {
    let allowed = [
        Party::Patient,
        Party::Doctor,
        Party::Role(Role::Staff),
        Party::Role(Role::Admin),
    ];
    appointment_for(&state, &who, &id, &allowed).await?;
    let (appointment, _) = state
        .db
        .transition_appointment(
            &id,
            &[AppointmentStatus::Pending, AppointmentStatus::Confirmed],
            AppointmentStatus::Cancelled,
        )
        .await?
        .ok_or_else(|| ApiError::not_found("no such appointment"))?;
    Ok(Json(appointment))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageList {
    #[schema(value_type = Vec<Object>)]
    messages: Vec<ChatMessage>,
}

#[utoipa::path(get, path = "/api/appointments/{id}/messages", params(("id" = String, Path)), responses(
    (status = 200, body = MessageList), (status = 403), (status = 404)), security(("bearer" = [])))]
async fn appointment_messages(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageList>, ApiError> {
    let allowed = [Party::Patient, Party::Doctor, Party::Role(Role::Admin)];
    appointment_for(&state, &who, &id, &allowed).await?;
    Ok(Json(MessageList {
        messages: state.db.chat_messages(&id).await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct CallList {
    calls: Vec<CallRecord>,
}

#[utoipa::path(get, path = "/api/calls", responses((status = 200, body = CallList), (status = 401)), security(("bearer" = [])))]
async fn list_calls(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
) -> Result<Json<CallList>, ApiError> {
    Ok(Json(CallList {
        calls: state.db.calls_for(&who.user_id).await?,
    }))
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
#[utoipa::path(get, path = "/api/ice-servers", responses((status = 200, body = IceServerList), (status = 401)), security(("bearer" = [])))]
async fn ice_servers(State(state): State<AppState>, AuthUser(who): AuthUser) -> Response {
    let body = Json(IceServerList {
        ice_servers: state.ice_servers.for_user(&who.user_id),
    });
    ([(header::CACHE_CONTROL, "no-store")], body).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(title = "callrelay", description = "Signaling, SFU and consult API"),
    paths(livez, readyz, metrics, dev_token, me, create_appointment, list_appointments,
          get_appointment, confirm_appointment, cancel_appointment, appointment_messages, list_calls,
          ice_servers),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[utoipa::path(get, path = "/api/openapi.json", responses((status = 200, description = "This document")))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

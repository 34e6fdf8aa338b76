//! `/api/appointments`: create, list, read, confirm, cancel, and the transcript
//! (`/api/appointments/{id}/messages`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use callrelay_signaling::protocol::check_id;
use callrelay_signaling::store::{AppointmentStatus, ChatMessage};
use callrelay_signaling::{Identity, Role};

use super::{ApiError, AppState, AuthUser, Payload, check_name};
use crate::db::{Appointment, AuditEntry, NewAppointment};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/appointments",
            post(create_appointment).get(list_appointments),
        )
        .route("/appointments/{id}", get(get_appointment))
        .route("/appointments/{id}/confirm", post(confirm_appointment))
        .route("/appointments/{id}/cancel", post(cancel_appointment))
        .route("/appointments/{id}/messages", get(appointment_messages))
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
pub(super) async fn create_appointment(
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

#[derive(Serialize, utoipa::ToSchema)]
pub struct AppointmentList {
    appointments: Vec<Appointment>,
}

#[utoipa::path(get, path = "/api/appointments", responses((status = 200, body = AppointmentList), (status = 401)), security(("bearer" = [])))]
pub(super) async fn list_appointments(
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
pub(super) async fn get_appointment(
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
pub(super) async fn confirm_appointment(
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
pub(super) async fn cancel_appointment(
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
pub(super) async fn appointment_messages(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MessageList>, ApiError> {
    let allowed = [Party::Patient, Party::Doctor, Party::Role(Role::Admin)];
    appointment_for(&state, &who, &id, &allowed).await?;
    let messages = state.db.chat_messages(&id).await?;
    // Who read a consultation's transcript is on its audit trail; unaudited, it is not shown.
    state
        .db
        .audit(AuditEntry {
            at: callrelay_signaling::protocol::now_millis(),
            actor_id: who.user_id.clone(),
            action: "transcript.read",
            appointment_id: Some(id.clone()),
            detail: serde_json::json!({"role": who.role, "messages": messages.len()}),
        })
        .await?;
    Ok(Json(MessageList { messages }))
}

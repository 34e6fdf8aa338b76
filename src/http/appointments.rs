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

use super::openapi::{
    BadRequest, DateTime, Forbidden, Id, Internal, Name, NotFound, TooLarge, Unauthorized,
};
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

/// A new appointment. The patient and the doctor are two different users.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAppointment {
    #[schema(value_type = Id)]
    patient_id: String,
    /// A doctor creating an appointment names themself.
    #[schema(value_type = Id)]
    doctor_id: String,
    #[schema(value_type = DateTime)]
    scheduled_at: String,
    /// Left out or null: the name the patient's token gave, once seen, else the id.
    #[schema(value_type = Option<Name>)]
    patient_name: Option<String>,
    /// Left out or null: the creating doctor's name, or the name the doctor's token gave,
    /// once seen, else the id.
    #[schema(value_type = Option<Name>)]
    doctor_name: Option<String>,
}

/// Creates an appointment, `pending` (doctors for themselves, staff and admins for anyone).
#[utoipa::path(post, path = "/api/appointments", request_body = CreateAppointment, responses(
    (status = 201, description = "The appointment, `pending`", body = Appointment),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, description = "A patient, or a doctor naming another doctor (`forbidden`)", body = super::ErrorBody),
    (status = 409, description = "`patientId` and `doctorId` name the same user (`conflict`)", body = super::ErrorBody),
    (status = 413, response = TooLarge),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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
        // Well-formed, but no user is their own doctor.
        return Err(ApiError::conflict("patientId and doctorId must differ"));
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
    .ok()
    // Within these years the time is a date-time in UTC too, as it is stored and shown.
    .filter(|at| (1..=9998).contains(&at.year()))
    .ok_or_else(|| {
        ApiError::invalid("scheduledAt must be an RFC 3339 date-time in the years 0001 to 9998")
    })?;
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

/// The appointments where the caller is the patient or the doctor (admins: all), soonest first.
#[utoipa::path(get, path = "/api/appointments", responses(
    (status = 200, description = "The caller's appointments", body = AppointmentList),
    (status = 401, response = Unauthorized),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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

/// One appointment, for its patient, its doctor, staff and admins.
#[utoipa::path(get, path = "/api/appointments/{id}", params(("id" = Id, Path, description = "The appointment's id")), responses(
    (status = 200, description = "The appointment", body = Appointment),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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

/// Confirms an appointment (its doctor, staff, admins): from then on it has a `joinUrl`.
#[utoipa::path(post, path = "/api/appointments/{id}/confirm", params(("id" = Id, Path, description = "The appointment's id")), responses(
    (status = 200, description = "The appointment, `confirmed`", body = Appointment),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 409, description = "The appointment is cancelled (`conflict`)", body = super::ErrorBody),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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

/// Cancels an appointment (its patient, its doctor, staff, admins): no one can join its room
/// after. Cancelling a cancelled appointment changes nothing.
#[utoipa::path(post, path = "/api/appointments/{id}/cancel", params(("id" = Id, Path, description = "The appointment's id")), responses(
    (status = 200, description = "The appointment, `cancelled`", body = Appointment),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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

/// The appointment's chat transcript, oldest first (its patient, its doctor, admins).
#[utoipa::path(get, path = "/api/appointments/{id}/messages", params(("id" = Id, Path, description = "The appointment's id")), responses(
    (status = 200, description = "The transcript", body = MessageList),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, response = NotFound),
    (status = 500, response = Internal)), security(("bearer" = [])))]
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

//! `/api/admin/...` (role `admin` only; 403 for others): live rooms and calls with their
//! participants, media path and, when relayed, per-track bitrate and loss; removing a participant,
//! closing a room, ending a call; the audit trail. Every action is logged, counted
//! (`callrelay_admin_actions_total{action}`) and audited.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use callrelay_signaling::admin::{AdminError, CallView, RoomView};
use callrelay_signaling::protocol::{check_id, now_millis};
use callrelay_signaling::{Identity, Role};

use super::openapi::{BadRequest, Forbidden, Id, Internal, Unauthorized};
use super::{ApiError, AppState, AuthUser, ErrorCode};
use crate::cluster::LiveNode;
use crate::db::{AuditEntry, AuditRecord};

/// The `action` of every admin record (and label of `callrelay_admin_actions_total`).
pub const ADMIN_ACTIONS: [&str; 4] = [
    "admin.participant_removed",
    "admin.room_closed",
    "admin.call_ended",
    "admin.audit_read",
];

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/rooms", get(list_rooms))
        .route("/admin/rooms/{appointment_id}/close", post(close_room))
        .route(
            "/admin/rooms/{appointment_id}/participants/{user_id}",
            delete(remove_participant),
        )
        .route("/admin/calls", get(list_calls))
        .route("/admin/calls/{call_id}/end", post(end_call))
        .route("/admin/audit", get(audit_trail))
        .route("/admin/cluster", get(cluster_nodes))
}

/// The caller, who must be an administrator.
pub struct Admin(Identity);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let AuthUser(who) = AuthUser::from_request_parts(parts, state).await?;
        if who.role == Role::Admin {
            Ok(Admin(who))
        } else {
            Err(ApiError::forbidden("administrators only"))
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::Failed(reason) => {
                tracing::error!(%reason, "admin action failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Internal,
                    "internal error",
                )
            }
            other => ApiError::not_found(other.to_string()),
        }
    }
}

/// Logs, counts and audits an admin action that was carried out. The audit record is written
/// after the action (so it records what happened, not what was tried); if it cannot be written
/// the caller gets a 500 saying so.
async fn record_action(
    state: &AppState,
    admin: &Identity,
    action: &'static str,
    appointment_id: Option<&str>,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    tracing::info!(admin_id = %admin.user_id, action, appointment_id, %detail, "admin action");
    state
        .metrics
        .admin_actions
        .with_label_values(&[action])
        .inc();
    state
        .db
        .audit(AuditEntry {
            at: now_millis(),
            actor_id: admin.user_id.clone(),
            action,
            appointment_id: appointment_id.map(str::to_owned),
            detail,
        })
        .await
        .map_err(|err| {
            tracing::error!(action, "admin action done but not audited");
            ApiError::from(err)
        })
}

fn checked(field: &str, id: &str) -> Result<(), ApiError> {
    check_id(field, id).map_err(|e| ApiError::invalid(e.message))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RoomList {
    #[schema(value_type = Vec<Object>)]
    rooms: Vec<RoomView>,
}

/// Consult rooms with members: `appointmentId`, `participants` (as `existing-peers`), `media`
/// (`p2p` or `sfu`), `relayReason`, and for relayed rooms `tracks` (per published track:
/// `participant`, `trackId`, `kind`, `bitrateBps`, `packetsReceived`, `packetsLost`).
#[utoipa::path(get, path = "/api/admin/rooms", operation_id = "admin_list_rooms", responses(
    (status = 200, body = RoomList, description = "Active consult rooms"),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden)), security(("bearer" = [])))]
pub(super) async fn list_rooms(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<RoomList>, ApiError> {
    Ok(Json(RoomList {
        rooms: state.signaling.active_rooms().await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = LiveCallList)]
pub struct CallList {
    #[schema(value_type = Vec<Object>)]
    calls: Vec<CallView>,
}

/// Ringing and active direct calls, with `media` and, when relayed, `tracks`.
#[utoipa::path(get, path = "/api/admin/calls", operation_id = "admin_list_calls", responses(
    (status = 200, body = CallList, description = "Live direct calls"),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden)), security(("bearer" = [])))]
pub(super) async fn list_calls(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<CallList>, ApiError> {
    Ok(Json(CallList {
        calls: state.signaling.live_calls().await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// The node that answered (`cluster.node_id`); `null` on a single node.
    node: Option<String>,
    /// The live nodes, least loaded first, each with `id`, `started_at` (Unix ms) and `rooms`
    /// (rooms pinned to it); empty on a single node.
    #[schema(value_type = Vec<Object>)]
    nodes: Vec<LiveNode>,
}

/// The nodes of the cluster (`cluster.redis_url`) that are live now, as the shared Redis
/// knows them.
#[utoipa::path(get, path = "/api/admin/cluster", operation_id = "admin_cluster", responses(
    (status = 200, body = ClusterView, description = "Live nodes"),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 500, response = Internal)), security(("bearer" = [])))]
pub(super) async fn cluster_nodes(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<ClusterView>, ApiError> {
    let Some(registry) = &state.cluster else {
        return Ok(Json(ClusterView {
            node: None,
            nodes: Vec::new(),
        }));
    };
    let nodes = registry.live_nodes().await.map_err(|err| {
        tracing::error!(error = %err, "cluster registry unreachable");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "the cluster registry does not answer",
        )
    })?;
    Ok(Json(ClusterView {
        node: Some(registry.node_id().to_owned()),
        nodes,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Removed {
    /// Sockets taken out of the room.
    removed: usize,
}

/// Takes every connection of a user out of a consult room: it gets `removed-from-room
/// {roomId, reason:"removed"}`, the others `peer-left {reason:"removed"}`. Not a ban.
#[utoipa::path(delete, path = "/api/admin/rooms/{appointment_id}/participants/{user_id}",
    params(("appointment_id" = Id, Path), ("user_id" = Id, Path)), responses(
    (status = 200, body = Removed, description = "Removed"),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, description = "No such active room, or the user is not in it (`not_found`)", body = super::ErrorBody),
    (status = 500, response = Internal)),
    security(("bearer" = [])))]
pub(super) async fn remove_participant(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path((appointment_id, user_id)): Path<(String, String)>,
) -> Result<Json<Removed>, ApiError> {
    checked("appointmentId", &appointment_id)?;
    checked("userId", &user_id)?;
    let removed = state
        .signaling
        .remove_participant(&state.io, &appointment_id, &user_id)
        .await?;
    record_action(
        &state,
        &admin,
        "admin.participant_removed",
        Some(&appointment_id),
        json!({"userId": user_id, "sockets": removed}),
    )
    .await?;
    Ok(Json(Removed { removed }))
}

/// Ends a consult room: every member gets `removed-from-room {roomId, reason:"room-closed"}`.
#[utoipa::path(post, path = "/api/admin/rooms/{appointment_id}/close",
    params(("appointment_id" = Id, Path)), responses(
    (status = 200, body = Removed, description = "Closed"),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, description = "No active room for this appointment (`not_found`)", body = super::ErrorBody),
    (status = 500, response = Internal)),
    security(("bearer" = [])))]
pub(super) async fn close_room(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(appointment_id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    checked("appointmentId", &appointment_id)?;
    let removed = state
        .signaling
        .close_room(&state.io, &appointment_id)
        .await?;
    record_action(
        &state,
        &admin,
        "admin.room_closed",
        Some(&appointment_id),
        json!({"sockets": removed}),
    )
    .await?;
    Ok(Json(Removed { removed }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallEnded {
    call_id: String,
    /// Always `ended-by-admin`.
    end_reason: &'static str,
}

/// Ends a ringing or active call: both sides get `call-ended {reason:"ended-by-admin"}`.
#[utoipa::path(post, path = "/api/admin/calls/{call_id}/end",
    params(("call_id" = Id, Path)), responses(
    (status = 200, body = CallEnded, description = "Ended"),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 404, description = "No ringing or active call with this id (`not_found`)", body = super::ErrorBody),
    (status = 500, response = Internal)),
    security(("bearer" = [])))]
pub(super) async fn end_call(
    State(state): State<AppState>,
    Admin(admin): Admin,
    Path(call_id): Path<String>,
) -> Result<Json<CallEnded>, ApiError> {
    state.signaling.end_call(&state.io, &call_id).await?;
    record_action(
        &state,
        &admin,
        "admin.call_ended",
        None,
        json!({"callId": call_id}),
    )
    .await?;
    Ok(Json(CallEnded {
        call_id,
        end_reason: "ended-by-admin",
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only this appointment's records.
    #[param(value_type = Option<Id>)]
    appointment_id: Option<String>,
    /// Records after this `seq` (paging: pass the last `seq` of the previous page).
    #[param(minimum = 0)]
    after_seq: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Oldest first; at most 1000.
    records: Vec<AuditRecord>,
}

/// The audit trail: who joined and left which consultation and when (with the media path),
/// who read a transcript, every admin action. Each record carries `prevHash` and `hash`.
#[utoipa::path(get, path = "/api/admin/audit", params(AuditQuery), responses(
    (status = 200, body = AuditPage, description = "Audit records, oldest first"),
    (status = 400, response = BadRequest),
    (status = 401, response = Unauthorized),
    (status = 403, response = Forbidden),
    (status = 500, response = Internal)), security(("bearer" = [])))]
pub(super) async fn audit_trail(
    State(state): State<AppState>,
    Admin(admin): Admin,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    if let Some(id) = &query.appointment_id {
        checked("appointmentId", id)?;
    }
    let after_seq = query.after_seq.unwrap_or(0);
    if after_seq < 0 {
        return Err(ApiError::invalid("afterSeq must be 0 or more"));
    }
    let records = state
        .db
        .audit_trail(query.appointment_id.as_deref(), after_seq)
        .await?;
    record_action(
        &state,
        &admin,
        "admin.audit_read",
        query.appointment_id.as_deref(),
        json!({"afterSeq": after_seq, "records": records.len()}),
    )
    .await?;
    Ok(Json(AuditPage { records }))
}

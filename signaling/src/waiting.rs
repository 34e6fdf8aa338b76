//! The waiting room (issue 14; `consult.waiting_room`, on by default). A patient whose join the
//! appointment's doctor (or an administrator) has not admitted waits in the appointment's lobby
//! instead of entering its room; the hosts see the lobby (`waiting-room`) wherever they are and
//! admit (`admit`) or decline (`decline`) each patient. Doctors and administrators never wait.
//!
//! A patient is admitted for the consultation in progress: once in the room, it enters again
//! without waiting (another device, a reconnection) until the room empties, and a member whose
//! connection ended comes back without waiting within `DEPARTED_KEPT` by naming its old socket
//! (`previousSocketId`). [`Lobby`](crate::lobby::Lobby) is the plain registry (no I/O); this
//! module is the events and what they tell whom.

use std::time::Instant;

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use serde_json::{Value, json};

use crate::activity::{Activity, Host, Member};
use crate::lobby::{Gone, Waiter, WaitingEntry};
use crate::order::OrderGate;
use crate::protocol::{self, EventError, EventResult};
use crate::store::{AppointmentAccess, AppointmentStatus};
use crate::{
    Budget, Identity, Role, Signaling, consult, emit_to_socket, identity, in_rooms, payload,
    socket_by_id, socket_room, user_room,
};

/// Why a socket stopped waiting by itself (`WaitingLeft`'s reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEnd {
    /// `leave-room` (the patient cancelled).
    Left,
    Disconnected,
    /// The same user came back on a new connection that names this one.
    Replaced,
    /// It joined a room instead (another appointment's, or this one once admitted elsewhere).
    JoinedRoom,
}

impl WaitEnd {
    fn as_str(self) -> &'static str {
        match self {
            WaitEnd::Left => "left",
            WaitEnd::Disconnected => "disconnected",
            WaitEnd::Replaced => "replaced",
            WaitEnd::JoinedRoom => "joined-room",
        }
    }
}

/// The doctor of the appointment and administrators admit; they never wait.
pub(crate) fn is_host(who: &Identity, appointment: &AppointmentAccess) -> bool {
    who.role == Role::Admin || who.user_id == appointment.doctor_id
}

/// Whether `who`'s socket `socket_id` must wait before entering `appointment`'s room: the
/// waiting room is on, it is not a host, it has not been in the room since it last emptied,
/// and it does not come back (`previous`) from a membership of it that its connection ended.
pub(crate) async fn must_wait(
    sig: &Signaling,
    who: &Identity,
    appointment: &AppointmentAccess,
    socket_id: &str,
    previous: Option<&str>,
) -> Result<bool, EventError> {
    if !sig.config.waiting_room || is_host(who, appointment) {
        return Ok(false);
    }
    let admitted = sig
        .view(&appointment.id, |rooms| {
            rooms.lobby.is_admitted(&appointment.id, &who.user_id)
                || rooms.room_of(socket_id) == Some(appointment.id.as_str())
                || previous.is_some_and(|previous| {
                    rooms.departed_from(previous, &appointment.id, &who.user_id, Instant::now())
                })
        })
        .await?;
    Ok(!admitted)
}

/// `join-room` of a patient who must wait: into the appointment's lobby (leaving any room or
/// other lobby first), recorded, the hosts told. The ack is `{ok:true, waiting:true, selfId,
/// appointmentId, since}`; `admitted` or `declined` follows. Joining again while waiting changes
/// nothing. A `previous` socket of the same user waiting here is replaced (disconnected) and
/// its wait carried over.
pub(crate) async fn enter_lobby(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    who: &Identity,
    appointment: &AppointmentAccess,
    avatar_seed: String,
    previous: Option<String>,
) -> EventResult {
    let self_id = s.id.to_string();
    if sig.room_of_socket(&self_id).await?.is_some() {
        consult::leave_current_room(sig, io, &self_id, consult::LeaveReason::JoinedAnother).await;
    }
    if sig
        .lobby_of_socket(&self_id)
        .await?
        .is_some_and(|a| a != appointment.id)
    {
        end_wait(sig, io, &self_id, WaitEnd::JoinedRoom).await;
    }
    let previous = previous.filter(|p| *p != self_id);
    let (replaced, waiter, is_new, since) = sig
        .change(&appointment.id, |rooms| {
            let replaced = previous.and_then(|p| {
                let since = rooms
                    .lobby
                    .waiter(&appointment.id, &p)
                    .filter(|w| w.user_id == who.user_id)?
                    .since;
                Some((p, since))
            });
            let waiter = Waiter {
                socket_id: self_id.clone(),
                user_id: who.user_id.clone(),
                name: who.name.clone(),
                role: who.role,
                avatar_seed,
                since: replaced
                    .as_ref()
                    .map_or_else(protocol::now_millis, |(_, since)| *since),
            };
            let is_new = rooms
                .lobby
                .wait(&appointment.id, &appointment.doctor_id, waiter.clone());
            let since = rooms
                .lobby
                .waiter(&appointment.id, &self_id)
                .map_or(waiter.since, |w| w.since);
            (replaced, waiter, is_new, since)
        })
        .await?;
    if is_new {
        let activity = Activity::WaitingEntered {
            appointment_id: appointment.id.clone(),
            member: Member::from(&waiter),
            replaces: replaced.as_ref().map(|(p, _)| p.clone()),
        };
        if let Err(err) = sig.record(activity).await {
            // A wait the audit trail does not hold did not happen.
            let _ = sig
                .change(&appointment.id, |rooms| rooms.lobby.leave(&self_id))
                .await;
            return Err(err.into());
        }
        tracing::info!(
            appointment_id = %appointment.id,
            socket_id = %self_id,
            user_id = %who.user_id,
            replaces = replaced.as_ref().map(|(p, _)| p.as_str()),
            "waiting to be admitted"
        );
        if let Some((old, _)) = &replaced {
            end_wait_in(sig, io, old, &appointment.id, WaitEnd::Replaced).await;
            match socket_by_id(io, old) {
                Some(old) => {
                    let _ = old.disconnect();
                }
                None => {
                    if let Some(old) = in_rooms(io, socket_room(old)) {
                        let _ = old.disconnect().await;
                    }
                }
            }
        }
        tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    }
    let mut fields = protocol::ok_fields();
    fields.insert("waiting".into(), json!(true));
    fields.insert("selfId".into(), json!(self_id));
    fields.insert("appointmentId".into(), json!(appointment.id));
    fields.insert("since".into(), json!(protocol::rfc3339_millis(since)));
    Ok(fields)
}

/// Ends the wait of socket `socket_id`, if it waits: recorded, the hosts told. Returns whether
/// it waited.
pub(crate) async fn end_wait(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    reason: WaitEnd,
) -> bool {
    match sig.lobby_of_socket(socket_id).await {
        Ok(Some(appointment_id)) => end_wait_in(sig, io, socket_id, &appointment_id, reason).await,
        Ok(None) => false,
        Err(err) => {
            tracing::error!(error = %err, "could not find a socket's waiting room");
            false
        }
    }
}

/// Ends the wait of socket `socket_id` (of any node) in `appointment_id`'s lobby, if it waits
/// there: recorded, the hosts told. Returns whether it waited.
async fn end_wait_in(
    sig: &Signaling,
    io: &SocketIo,
    socket_id: &str,
    appointment_id: &str,
    reason: WaitEnd,
) -> bool {
    let gone = sig
        .change(appointment_id, |rooms| rooms.lobby.leave(socket_id))
        .await;
    let gone = match gone {
        Ok(Some(gone)) => gone,
        Ok(None) => return false,
        Err(err) => {
            tracing::error!(error = %err, appointment_id, "could not end a wait");
            return false;
        }
    };
    tracing::info!(
        appointment_id = %gone.appointment_id,
        socket_id,
        user_id = %gone.waiter.user_id,
        reason = reason.as_str(),
        "stopped waiting"
    );
    sig.record_or_log(Activity::WaitingLeft {
        appointment_id: gone.appointment_id.clone(),
        member: Member::from(&gone.waiter),
        reason: reason.as_str(),
    })
    .await;
    tell_hosts(sig, io, &gone.appointment_id, &gone.doctor_id).await;
    true
}

/// Sends the lobby of `appointment_id` as it is now, `waiting-room {appointmentId, waiting}`,
/// to every socket of its doctor (in the room or not) and to the administrators in its room.
pub(crate) async fn tell_hosts(
    sig: &Signaling,
    io: &SocketIo,
    appointment_id: &str,
    doctor_id: &str,
) {
    let seen = sig
        .view(appointment_id, |rooms| {
            let admins: Vec<String> = rooms
                .get(appointment_id)
                .map(|room| {
                    room.members
                        .iter()
                        .filter(|m| m.role == Role::Admin)
                        .map(|m| socket_room(&m.socket_id))
                        .collect()
                })
                .unwrap_or_default();
            (rooms.lobby.entries(appointment_id), admins)
        })
        .await;
    let (waiting, mut hosts) = match seen {
        Ok(seen) => seen,
        Err(err) => {
            tracing::error!(error = %err, appointment_id, "could not tell the hosts who waits");
            return;
        }
    };
    let update = json!({"appointmentId": appointment_id, "waiting": waiting});
    // One broadcast to several rooms reaches each socket once, on every node.
    hosts.push(user_room(doctor_id));
    if let Some(hosts) = in_rooms(io, hosts) {
        let _ = hosts.emit("waiting-room", &update).await;
    }
}

/// A newly connected socket of a doctor learns who waits for it (one `waiting-room` per
/// appointment with someone waiting), so a page that was not open sees them at once.
pub(crate) async fn tell_on_connect(sig: &Signaling, s: &SocketRef, who: &Identity) {
    let lobbies = match lobbies_of_doctor(sig, &who.user_id).await {
        Ok(lobbies) => lobbies,
        Err(err) => {
            tracing::warn!(error = %err, "could not list a doctor's waiting rooms");
            return;
        }
    };
    for (appointment_id, waiting) in lobbies {
        let _ = s.emit(
            "waiting-room",
            &json!({"appointmentId": appointment_id, "waiting": waiting}),
        );
    }
}

/// The lobbies with someone in them of `doctor_id`'s appointments (in a cluster, every node's).
async fn lobbies_of_doctor(
    sig: &Signaling,
    doctor_id: &str,
) -> Result<Vec<(String, Vec<WaitingEntry>)>, crate::SharedError> {
    if sig.shared.is_none() {
        return Ok(sig.rooms().lobby.lobbies_of_doctor(doctor_id));
    }
    let mut lobbies = Vec::new();
    for id in sig.appointments().await? {
        let waiting = sig
            .view(&id, |rooms| {
                (rooms.lobby.doctor_of(&id) == Some(doctor_id)).then(|| rooms.lobby.entries(&id))
            })
            .await?;
        lobbies.extend(waiting.map(|w| (id, w)));
    }
    lobbies.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(lobbies)
}

/// A host joined the room: it sees who waits (when someone does).
pub(crate) async fn tell_joining_host(sig: &Signaling, s: &SocketRef, appointment_id: &str) {
    let waiting = sig
        .view(appointment_id, |rooms| rooms.lobby.entries(appointment_id))
        .await
        .unwrap_or_default();
    if !waiting.is_empty() {
        let _ = s.emit(
            "waiting-room",
            &json!({"appointmentId": appointment_id, "waiting": waiting}),
        );
    }
}

/// The appointment an `admit` or `decline` names, if `who` may decide for it: its doctor or
/// an administrator, not waiting in a lobby itself.
async fn host_of(
    sig: &Signaling,
    s: &SocketRef,
    who: &Identity,
    appointment_id: &str,
) -> Result<AppointmentAccess, EventError> {
    if sig.lobby_of_socket(&s.id.to_string()).await?.is_some() {
        return Err(EventError::forbidden(
            "you are waiting to be admitted yourself",
        ));
    }
    let appointment = sig
        .store
        .appointment(appointment_id)
        .await?
        .ok_or_else(|| EventError::not_found("no such appointment"))?;
    if !is_host(who, &appointment) {
        return Err(EventError::forbidden(
            "only the appointment's doctor or an administrator admits or declines",
        ));
    }
    if appointment.status != AppointmentStatus::Confirmed {
        return Err(EventError::forbidden(format!(
            "appointment is {}, rooms open only for confirmed appointments",
            appointment.status.as_str()
        )));
    }
    Ok(appointment)
}

fn host(who: &Identity) -> Host {
    Host {
        user_id: who.user_id.clone(),
        name: who.name.clone(),
        role: who.role,
    }
}

fn nobody_waiting() -> EventError {
    EventError::not_found("nobody of that id is waiting to be admitted")
}

/// `admit {appointmentId, userId}`: every socket of that user waiting in the lobby enters the
/// room as a `join-room` would have: `existing-peers`, then `admitted {appointmentId, selfId,
/// peers, mode, p2pTimeoutMs, iceServers}` (the join ack's fields), then what the join sets
/// off (relay); the members get `peer-joined`. Each admission is recorded before the join.
/// Ack `{ok, admitted: n}`; `not_found` when that user does not wait.
pub(crate) async fn admit(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::admit(data)?;
    let appointment = host_of(sig, s, &who, &req.appointment_id).await?;
    let sockets = sig
        .view(&appointment.id, |rooms| {
            rooms.lobby.sockets_of(&appointment.id, &req.user_id)
        })
        .await?;
    if sockets.is_empty() {
        return Err(nobody_waiting());
    }
    // While draining only a consultation in progress takes anyone in.
    sig.check_join_while_draining(&appointment.id, None, &req.user_id)
        .await?;
    let mut admitted = 0;
    for socket_id in sockets {
        if admit_socket(sig, io, &who, &appointment, &socket_id).await? {
            admitted += 1;
        }
    }
    if admitted == 0 {
        return Err(nobody_waiting());
    }
    tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    let mut fields = protocol::ok_fields();
    fields.insert("admitted".into(), json!(admitted));
    Ok(fields)
}

/// Moves one waiting socket into the room, in that socket's turn (after the events it sent
/// before, and before its disconnect clean-up), so that a socket gone meanwhile is never put
/// in a room. A socket of another node of the cluster is moved from here; a disconnect racing
/// the admission is cleaned up by its node's leave. Returns whether it was still waiting. A
/// store failure puts it back and refuses.
async fn admit_socket(
    sig: &Signaling,
    io: &SocketIo,
    by: &Identity,
    appointment: &AppointmentAccess,
    socket_id: &str,
) -> Result<bool, EventError> {
    let patient = socket_by_id(io, socket_id);
    if patient.is_none() && sig.shared.is_none() {
        return Ok(false);
    }
    let _turn = match patient
        .as_ref()
        .and_then(|p| p.extensions.get::<OrderGate>())
    {
        Some(gate) => Some(gate.enqueue().turn().await),
        None => None,
    };
    let gone = sig
        .change(&appointment.id, |rooms| {
            if rooms.lobby.lobby_of(socket_id) != Some(appointment.id.as_str()) {
                return None;
            }
            rooms.lobby.leave(socket_id)
        })
        .await?;
    let Some(gone) = gone else {
        return Ok(false);
    };
    let admission = Activity::WaitingAdmitted {
        appointment_id: appointment.id.clone(),
        member: Member::from(&gone.waiter),
        by: host(by),
    };
    if let Err(err) = sig.record(admission).await {
        put_back(sig, gone).await;
        return Err(err.into());
    }
    let patient_who = Identity {
        user_id: gone.waiter.user_id.clone(),
        name: gone.waiter.name.clone(),
        role: gone.waiter.role,
    };
    let joiner = match &patient {
        Some(p) => consult::Joiner::Here(p),
        None => consult::Joiner::Elsewhere(socket_id.to_owned()),
    };
    let entered = consult::enter_as_member(
        sig,
        io,
        &joiner,
        &patient_who,
        appointment,
        gone.waiter.avatar_seed.clone(),
        None,
    )
    .await;
    let (mut fields, then) = match entered {
        Ok(entered) => entered,
        Err(err) => {
            put_back(sig, gone).await;
            return Err(err);
        }
    };
    tracing::info!(
        appointment_id = %appointment.id,
        socket_id,
        user_id = %gone.waiter.user_id,
        by = %by.user_id,
        "admitted from the waiting room"
    );
    fields.insert("appointmentId".into(), json!(appointment.id));
    emit_to_socket(sig, io, socket_id, "admitted", &fields).await;
    if let Some(then) = then {
        then.run(sig, io).await;
    }
    Ok(true)
}

/// Puts a waiter whose admission or decline could not be completed back in its lobby.
async fn put_back(sig: &Signaling, gone: Gone) {
    let appointment_id = gone.appointment_id.clone();
    if let Err(err) = sig
        .change(&appointment_id, |rooms| rooms.lobby.put_back(gone))
        .await
    {
        tracing::error!(error = %err, appointment_id, "could not put a waiter back");
    }
}

/// `decline {appointmentId, userId, reason?}`: every socket of that user waiting in the lobby
/// leaves it and gets `declined {appointmentId, reason}` (`reason` null when none was given; it
/// is relayed, never stored). It may ask again. Ack `{ok, declined: n}`; `not_found` when that
/// user does not wait.
pub(crate) async fn decline(
    sig: &Signaling,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::decline(data)?;
    let appointment = host_of(sig, s, &who, &req.appointment_id).await?;
    let gone: Vec<Gone> = sig
        .change(&appointment.id, |rooms| {
            let sockets = rooms.lobby.sockets_of(&appointment.id, &req.user_id);
            sockets
                .iter()
                .filter_map(|id| rooms.lobby.leave(id))
                .collect()
        })
        .await?;
    if gone.is_empty() {
        return Err(nobody_waiting());
    }
    // Recorded one by one; a store failure leaves that socket and the rest waiting.
    let mut declined = Vec::with_capacity(gone.len());
    let mut failure = None;
    let mut gone = gone.into_iter();
    for g in gone.by_ref() {
        let activity = Activity::WaitingDeclined {
            appointment_id: appointment.id.clone(),
            member: Member::from(&g.waiter),
            by: host(&who),
        };
        match sig.record(activity).await {
            Ok(()) => declined.push(g),
            Err(err) => {
                failure = Some(err);
                put_back(sig, g).await;
                break;
            }
        }
    }
    for g in gone {
        put_back(sig, g).await;
    }
    for g in &declined {
        tracing::info!(
            appointment_id = %appointment.id,
            socket_id = %g.waiter.socket_id,
            user_id = %g.waiter.user_id,
            by = %who.user_id,
            "declined from the waiting room"
        );
        emit_to_socket(
            sig,
            io,
            &g.waiter.socket_id,
            "declined",
            &json!({"appointmentId": appointment.id, "reason": req.reason}),
        )
        .await;
    }
    tell_hosts(sig, io, &appointment.id, &appointment.doctor_id).await;
    if let Some(err) = failure {
        return Err(err.into());
    }
    let mut fields = protocol::ok_fields();
    fields.insert("declined".into(), json!(declined.len()));
    Ok(fields)
}

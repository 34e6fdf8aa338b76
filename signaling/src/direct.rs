//! Direct 1:1 calls: ring every socket of the callee, first answer wins, busy, no-answer,
//! disconnect. Transitions are decided by [`crate::call::Call`]; this layer checks permissions,
//! stores every transition and delivers the notices.

use std::sync::Arc;

use crate::adapter::SocketIo;
use crate::adapter::SocketRef;
use serde_json::{Map, Value, json};

use crate::activity::Activity;
use crate::book::CallHomes;
use crate::call::{Call, CallError, CallEvent, CallStatus, Effects, Recipient};
use crate::payload;
use crate::protocol::{self, ErrorCode, EventError, EventResult};
use crate::{
    Budget, Identity, Role, Signaling, emit_to_room, emit_to_socket, identity, in_rooms,
    room_sockets, socket_room, user_room,
};

impl From<CallError> for EventError {
    fn from(err: CallError) -> Self {
        let code = match err.code() {
            "not_found" => ErrorCode::NotFound,
            "forbidden" => ErrorCode::Forbidden,
            "busy" => ErrorCode::Busy,
            _ => ErrorCode::Conflict,
        };
        EventError::new(code, err.to_string())
    }
}

/// Every socket is reachable by its user id from connect on; `join` only confirms it.
pub(crate) async fn join(
    sig: &Arc<Signaling>,
    _io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::join(data)?;
    if req.user_id != who.user_id {
        return Err(EventError::forbidden("you can only join as yourself"));
    }
    Ok(protocol::ok_fields())
}

/// A patient may call the doctor of one of their appointments and the doctor may call them back;
/// staff and admins may call anyone.
async fn may_call(sig: &Signaling, who: &Identity, to: &str) -> Result<bool, EventError> {
    if who.role.is_privileged() {
        return Ok(true);
    }
    let relation = match who.role {
        Role::Patient => sig.store.has_care_relation(&who.user_id, to).await?,
        Role::Doctor => sig.store.has_care_relation(to, &who.user_id).await?,
        Role::Staff | Role::Admin => true,
    };
    Ok(relation)
}

pub(crate) async fn call_user(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::call_user(data, &sig.config.payload_limits())?;
    sig.refuse_new_while_draining("calls")?;
    if req.to == who.user_id {
        return Err(EventError::invalid("you cannot call yourself"));
    }
    if !may_call(sig, &who, &req.to).await? {
        return Err(EventError::forbidden("you may not call this user"));
    }
    if let Some(appointment_id) = &req.appointment_id {
        let appointment = sig
            .store
            .appointment(appointment_id)
            .await?
            .ok_or_else(|| EventError::not_found("no such appointment"))?;
        let between_them = [&appointment.patient_id, &appointment.doctor_id]
            .iter()
            .all(|party| **party == who.user_id || **party == req.to);
        if !who.role.is_privileged() && !between_them {
            return Err(EventError::forbidden(
                "the appointment is not between you and the callee",
            ));
        }
    }
    if user_sockets(sig, io, &req.to).await.is_empty() {
        tracing::info!(
            caller_id = %who.user_id,
            callee_id = %req.to,
            call_type = req.call_type.as_str(),
            outcome = "offline",
            "call not placed: the callee is offline"
        );
        return Err(EventError::new(
            ErrorCode::Offline,
            "the user is not online",
        ));
    }

    let now = protocol::now_millis();
    let attempt = |ring: fn(_, _, _, _, _, _, _) -> Call| {
        ring(
            uuid::Uuid::new_v4().to_string(),
            who.user_id.clone(),
            req.to.clone(),
            req.call_type,
            req.appointment_id.clone(),
            s.id.to_string(),
            now,
        )
    };
    let mut book = sig.open_calls().await?;
    let call = match book.insert(attempt(Call::ring)) {
        Ok(call) => call.clone(),
        Err(CallError::Busy) => {
            sig.close_calls(book, false).await?;
            let record = attempt(Call::busy);
            sig.store.save_call(&record).await?;
            count_finished(sig, &record);
            log_call(&record);
            sig.record_or_log(Activity::CallEnded(record)).await;
            return Err(EventError::new(
                ErrorCode::Busy,
                "the user is in another call",
            ));
        }
        Err(err) => {
            sig.close_calls(book, false).await?;
            return Err(err.into());
        }
    };
    if let Err(err) = sig.store.save_call(&call).await {
        book.remove(&call.id);
        sig.close_calls(book, false).await?;
        sig.note_change();
        return Err(err.into());
    }
    book.homes.insert(
        call.id.clone(),
        CallHomes {
            caller: sig.node_id().to_owned(),
            answerer: None,
        },
    );
    sig.close_calls(book, true).await?;
    log_call(&call);
    sig.record_or_log(Activity::CallStarted(call.clone())).await;

    emit_to_room(
        io,
        user_room(&call.callee_id),
        "incoming-call",
        &json!({
            "callId": call.id,
            "from": {"userId": who.user_id, "name": who.name, "role": who.role},
            "callType": call.call_type,
            "offer": req.offer,
            "appointmentId": call.appointment_id,
        }),
    )
    .await;
    spawn_ring_timer(sig.clone(), io.clone(), call.id.clone());

    let mut fields = protocol::ok_fields();
    fields.insert("callId".into(), json!(call.id));
    Ok(fields)
}

fn spawn_ring_timer(sig: Arc<Signaling>, io: SocketIo, call_id: String) {
    tokio::spawn(async move {
        tokio::time::sleep(sig.config.ring_timeout).await;
        let _busy = sig.busy();
        // A call answered, rejected or ended meanwhile refuses the timeout: nothing happens.
        let _ = transition(&sig, &io, &call_id, Map::new(), |call, now| {
            call.ring_timeout(now)
        })
        .await;
    });
}

/// Applies one transition to a live call under the book's lock, stores the result, then
/// delivers its notices with `extra` fields (e.g. the answer SDP) merged in.
pub(crate) async fn transition(
    sig: &Signaling,
    io: &SocketIo,
    call_id: &str,
    extra: Map<String, Value>,
    step: impl FnOnce(&mut Call, time::OffsetDateTime) -> Result<Effects, CallError>,
) -> Result<(), EventError> {
    let mut book = sig.open_calls().await?;
    let stepped = book.call_mut(call_id).and_then(|call| {
        let before = call.clone();
        let effects = step(call, protocol::now_millis())?;
        Ok((before, effects, call.clone()))
    });
    let (before, effects, after) = match stepped {
        Ok(stepped) => stepped,
        Err(err) => {
            sig.close_calls(book, false).await?;
            return Err(err.into());
        }
    };
    if let Err(err) = sig.store.save_call(&after).await {
        // Nothing acknowledged may be lost: undo the transition and refuse the event.
        if let Ok(call) = book.call_mut(call_id) {
            *call = before;
        }
        sig.close_calls(book, false).await?;
        return Err(err.into());
    }
    if effects.finished {
        book.remove(call_id);
        book.homes.remove(call_id);
        count_finished(sig, &after);
    } else if after.answered_socket.is_some() && before.answered_socket.is_none() {
        let node = sig.node_id().to_owned();
        book.homes.entry(call_id.to_owned()).or_default().answerer = Some(node);
    }
    if let Err(err) = sig.close_calls(book, true).await {
        // Stored, but the other nodes may not see it: told, not refused.
        tracing::error!(error = %err, call_id, "a call's transition is not shared with the other nodes");
    }
    if effects.finished {
        sig.note_change();
    }
    if after.status != before.status {
        log_call(&after);
        if effects.finished {
            sig.record_or_log(Activity::CallEnded(after.clone())).await;
        } else if after.status == CallStatus::Active {
            sig.record_or_log(Activity::CallAnswered(after.clone()))
                .await;
        }
    }
    if effects.finished && after.media == crate::call::MediaPath::Sfu {
        sig.leave_relay(&after.id, &after.caller_socket).await;
        if let Some(answered) = &after.answered_socket {
            sig.leave_relay(&after.id, answered).await;
        }
    }
    deliver(sig, io, &after, effects, extra).await;
    Ok(())
}

/// One structured line per call outcome (placed, answered, rejected, missed, ended, busy); ids
/// only, never the SDPs or candidates.
fn log_call(call: &Call) {
    let what = match call.status {
        CallStatus::Ringing => "placed",
        CallStatus::Active => "answered",
        CallStatus::Ended => "ended",
        CallStatus::Rejected => "rejected",
        CallStatus::Missed => "missed",
        CallStatus::Busy => "refused: the callee is busy",
    };
    tracing::info!(
        call_id = %call.id,
        caller_id = %call.caller_id,
        callee_id = %call.callee_id,
        call_type = call.call_type.as_str(),
        appointment_id = call.appointment_id.as_deref(),
        caller_socket = %call.caller_socket,
        answered_socket = call.answered_socket.as_deref(),
        outcome = call.status.as_str(),
        reason = call.end_reason.map(|r| r.as_str()),
        media = call.media.as_str(),
        "call {what}"
    );
}

fn count_finished(sig: &Signaling, call: &Call) {
    sig.metrics
        .calls
        .with_label_values(&[call.call_type.as_str(), call.status.as_str()])
        .inc();
}

async fn deliver(
    sig: &Signaling,
    io: &SocketIo,
    call: &Call,
    effects: Effects,
    extra: Map<String, Value>,
) {
    for notice in effects.notices {
        let mut body = Map::new();
        body.insert("callId".into(), json!(call.id));
        match notice.event {
            CallEvent::Answered => {
                if let Some(answer) = extra.get("answer") {
                    body.insert("answer".into(), answer.clone());
                }
            }
            CallEvent::Rejected => {
                let reason = extra.get("reason").cloned().unwrap_or(json!("rejected"));
                body.insert("reason".into(), reason);
            }
            CallEvent::Ended(reason) => {
                body.insert("reason".into(), json!(reason.as_str()));
            }
            CallEvent::AnsweredElsewhere => {}
        }
        emit_to(
            sig,
            io,
            &notice.to,
            notice.event.name(),
            &Value::Object(body),
        )
        .await;
    }
}

async fn emit_to(sig: &Signaling, io: &SocketIo, to: &Recipient, event: &str, body: &Value) {
    match to {
        Recipient::Socket(id) => {
            emit_to_socket(sig, io, id, event, body).await;
        }
        Recipient::User {
            user_id,
            except_socket: None,
        } => emit_to_room(io, user_room(user_id), event, body).await,
        Recipient::User {
            user_id,
            except_socket: Some(except),
        } => {
            if let Some(user) = in_rooms(io, user_room(user_id)) {
                let others = user.except(socket_room(except));
                let _ = others.emit(event, body).await;
            }
        }
    }
}

/// The ids of `user_id`'s connected sockets, on every node.
async fn user_sockets(sig: &Signaling, io: &SocketIo, user_id: &str) -> Vec<String> {
    if sig.shared.is_none() {
        return room_sockets(io, user_room(user_id))
            .iter()
            .map(|s| s.id.to_string())
            .collect();
    }
    let Some(user) = in_rooms(io, user_room(user_id)) else {
        return Vec::new();
    };
    match user.fetch_sockets().await {
        Ok(sockets) => sockets.iter().map(|s| s.data().id.to_string()).collect(),
        Err(err) => {
            tracing::warn!(error = %err, "could not ask the other nodes for a user's sockets");
            room_sockets(io, user_room(user_id))
                .iter()
                .map(|s| s.id.to_string())
                .collect()
        }
    }
}

pub(crate) async fn answer_call(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::answer_call(data, &sig.config.payload_limits())?;
    let socket_id = s.id.to_string();
    let mut extra = Map::new();
    extra.insert("answer".into(), req.answer);
    transition(sig, io, &req.call_id, extra, |call, now| {
        call.answer(&who.user_id, &socket_id, now)
    })
    .await?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn reject_call(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::reject_call(data)?;
    let reason = req.reason.unwrap_or_else(|| "rejected".to_owned());
    let socket_id = s.id.to_string();
    let mut extra = Map::new();
    extra.insert("reason".into(), json!(reason));
    transition(sig, io, &req.call_id, extra, |call, now| {
        call.reject(&who.user_id, &socket_id, now)
    })
    .await?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn end_call(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::end_call(data)?;
    transition(sig, io, &req.call_id, Map::new(), |call, now| {
        call.end(&who.user_id, now)
    })
    .await?;
    Ok(protocol::ok_fields())
}

pub(crate) async fn ice_candidate(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::ice_candidate(data, &sig.config.payload_limits())?;
    let target = relay_target(sig, &req.call_id, &who.user_id, s.id.as_str()).await?;
    emit_to(
        sig,
        io,
        &target,
        "ice-candidate",
        &json!({"callId": req.call_id, "candidate": req.candidate}),
    )
    .await;
    Ok(protocol::ok_fields())
}

/// `call-media-state`: a party's microphone, camera and screen share, relayed to the other
/// party as `call-media-state {callId, userId, audio, video, screen, screenTrackId?}` by the
/// rules of `ice-candidate` (the caller from its placing socket to every callee socket while
/// ringing, then between the placing and the answering socket). Not remembered: each side sends
/// its state once the call is answered and on every change.
pub(crate) async fn call_media_state(
    sig: &Arc<Signaling>,
    io: &SocketIo,
    s: &SocketRef,
    data: Value,
) -> EventResult {
    let who = identity(s)?;
    sig.spend(s, Budget::Signal)?;
    let req = payload::call_media_state(data)?;
    let target = relay_target(sig, &req.call_id, &who.user_id, s.id.as_str()).await?;
    let mut body = json!(req.state);
    body["callId"] = json!(req.call_id);
    body["userId"] = json!(who.user_id);
    emit_to(sig, io, &target, "call-media-state", &body).await;
    Ok(protocol::ok_fields())
}

/// Where a party's `ice-candidate` or `call-media-state` goes.
async fn relay_target(
    sig: &Signaling,
    call_id: &str,
    user_id: &str,
    socket_id: &str,
) -> Result<Recipient, EventError> {
    let book = sig.open_calls().await?;
    let target = book
        .by_id(call_id)
        .ok_or(CallError::NotFound)
        .and_then(|call| call.relay_target(user_id, socket_id));
    sig.close_calls(book, false).await?;
    Ok(target?)
}

/// A socket went away: a call whose placing or answering socket it was, or whose party has no
/// socket left, ends as `disconnected` for the other side.
pub(crate) async fn socket_gone(sig: &Signaling, io: &SocketIo, who: &Identity, socket_id: &str) {
    let user_still_online = user_sockets(sig, io, &who.user_id)
        .await
        .iter()
        .any(|id| id != socket_id);
    let affected = sig.read_calls(|read| {
        read.book
            .iter()
            .filter(|c| c.is_live() && c.is_party(&who.user_id))
            .filter(|c| !user_still_online || c.sockets().any(|s| s == socket_id))
            .map(|c| c.id.clone())
            .collect::<Vec<_>>()
    });
    let affected = match affected.await {
        Ok(affected) => affected,
        Err(err) => {
            tracing::error!(error = %err, "could not read the calls at a disconnect");
            return;
        }
    };
    for call_id in affected {
        if let Err(err) = transition(sig, io, &call_id, Map::new(), |call, now| {
            call.party_disconnected(&who.user_id, now)
        })
        .await
        {
            tracing::debug!(call_id, error = %err, "call already over at disconnect");
        }
    }
}

/// Ends every live call of this node's sockets (server shutdown), telling both sides and
/// storing the outcome.
pub async fn shut_down_calls(sig: &Signaling, io: &SocketIo) {
    let ours = sig.read_calls(|read| {
        let ours = read.book.iter().filter(|c| read.is_ours(c));
        ours.map(|c| c.id.clone()).collect::<Vec<_>>()
    });
    let ids = match ours.await {
        Ok(ids) => ids,
        Err(err) => {
            tracing::error!(error = %err, "could not read the calls to end at shutdown");
            return;
        }
    };
    for call_id in ids {
        let _ = transition(sig, io, &call_id, Map::new(), |call, now| {
            call.shut_down(now)
        })
        .await;
    }
}

/// One side of a call: its user, and the node of its socket (none for a callee not answered).
type Side = (String, Option<String>);

/// In a cluster: a call whose placing or answering socket was on a node that died ends as
/// `disconnected` for the other side (its ring timer died with the node, too). Returns how many
/// ended.
pub(crate) async fn end_calls_of_dead_nodes(
    sig: &Signaling,
    io: &SocketIo,
) -> Result<usize, crate::SharedError> {
    let Some(shared) = &sig.shared else {
        return Ok(0);
    };
    let calls: Vec<(String, [Side; 2])> = sig
        .read_calls(|read| {
            let homes = read
                .book
                .iter()
                .filter_map(|c| Some((c, read.homes.get(&c.id)?)));
            homes
                .map(|(c, home)| {
                    let caller = (c.caller_id.clone(), Some(home.caller.clone()));
                    let callee = (c.callee_id.clone(), home.answerer.clone());
                    (c.id.clone(), [caller, callee])
                })
                .collect()
        })
        .await?;
    let nodes: Vec<&str> = calls
        .iter()
        .flat_map(|(_, sides)| sides.iter().filter_map(|(_, node)| node.as_deref()))
        .collect();
    let dead = shared.dead_nodes(&nodes).await?;
    let mut ended = 0;
    for (call_id, sides) in &calls {
        let Some((gone, _)) = sides
            .iter()
            .find(|(_, node)| node.as_ref().is_some_and(|n| dead.contains(n)))
        else {
            continue;
        };
        let ends = transition(sig, io, call_id, Map::new(), |call, now| {
            call.party_disconnected(gone, now)
        })
        .await;
        if ends.is_ok() {
            ended += 1;
        }
    }
    Ok(ended)
}

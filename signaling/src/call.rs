//! The direct call (contract section 3, "Direct calls") as a plain state machine.
//!
//! [`Call`] owns no sockets, no clock and no tasks: the Socket.IO layer feeds it what happened
//! (an answer, a reject, a hang-up, the ring timer firing, a user's last socket leaving) together
//! with the current time, and gets back [`Effects`]: who must be told what. The layer attaches the
//! payloads that are not part of the state (the answer SDP, a reject reason), emits, and stores the
//! record. Because every method is `&mut self` over plain data, races between devices reduce to
//! "whichever call reached the lock first": the loser gets a [`CallError`] and changes nothing.
//!
//! ```text
//!            answer (callee)                end / disconnect (either)
//!  Ringing ─────────────────────▶ Active ─────────────────────────────▶ Ended
//!     │ reject, or end by callee ─▶ Rejected   (reason rejected)
//!     │ end by caller ────────────▶ Missed     (reason hangup)
//!     │ ring timeout ─────────────▶ Missed     (reason no-answer)
//!     │ disconnect (either) ──────▶ Missed     (reason disconnected)
//!  Busy: created terminal when the callee is already in a call (reason busy).
//! ```
//!
//! Notifications go to sockets as precisely as the state allows: the caller is reached on the
//! socket that placed the call (it holds the offer's peer connection); the callee is reached on
//! every socket while ringing (every one got `incoming-call`) and on the answering socket once
//! active.
//!
//! [`CallBook`] is the in-memory set of live (ringing or active) calls with the "is this user in
//! a call" rule; it is just as pure.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Defines `as_str`, `parse` and `Display` for a unit enum from one table of wire names.
macro_rules! wire_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The wire and database spelling (same as the serde form).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }

            /// The value whose wire spelling is `s`, if any.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `callType` of `call-user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallType {
    Audio,
    Video,
}

wire_names!(CallType { Audio => "audio", Video => "video" });

/// `status` of a stored call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    /// The callee's devices are ringing; nobody has answered yet.
    Ringing,
    /// Answered on one of the callee's sockets.
    Active,
    /// Was active, then hung up or lost a party.
    Ended,
    /// The callee declined while it rang.
    Rejected,
    /// Never answered: the caller gave up, the ring timed out, or a party left while it rang.
    Missed,
    /// Never rang: the callee was already in a call.
    Busy,
}

wire_names!(CallStatus {
    Ringing => "ringing",
    Active => "active",
    Ended => "ended",
    Rejected => "rejected",
    Missed => "missed",
    Busy => "busy",
});

impl CallStatus {
    /// True once nothing can happen to the call any more.
    pub fn is_terminal(self) -> bool {
        !matches!(self, CallStatus::Ringing | CallStatus::Active)
    }
}

/// `endReason` of a stored call, and `reason` of `call-ended`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    Hangup,
    NoAnswer,
    Disconnected,
    Rejected,
    Busy,
    ServerRestart,
    /// An administrator ended it (`POST /api/admin/calls/{id}/end`).
    EndedByAdmin,
}

wire_names!(EndReason {
    Hangup => "hangup",
    NoAnswer => "no-answer",
    Disconnected => "disconnected",
    Rejected => "rejected",
    Busy => "busy",
    ServerRestart => "server-restart",
    EndedByAdmin => "ended-by-admin",
});

/// `media` of a stored call: whether it ever went through the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaPath {
    #[default]
    P2p,
    Sfu,
}

wire_names!(MediaPath { P2p => "p2p", Sfu => "sfu" });

/// Why a request about a call was refused. A refused request never changes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no such call")]
    NotFound,
    #[error("you are not a party to this call")]
    NotAParty,
    #[error("only the callee can do this")]
    NotCallee,
    #[error("this socket does not carry the call")]
    WrongSocket,
    #[error("the call was already answered")]
    AlreadyAnswered,
    #[error("the call is not ringing")]
    NotRinging,
    #[error("the call has already ended")]
    AlreadyEnded,
    #[error("the user is in another call")]
    Busy,
    #[error("you are already in a call")]
    CallerInCall,
    #[error("a call with this id already exists")]
    DuplicateId,
}

impl CallError {
    /// The ack error code of the contract (sections 2 and 3).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NotFound => "not_found",
            CallError::NotAParty | CallError::NotCallee | CallError::WrongSocket => "forbidden",
            CallError::AlreadyAnswered
            | CallError::NotRinging
            | CallError::AlreadyEnded
            | CallError::CallerInCall
            | CallError::DuplicateId => "conflict",
            CallError::Busy => "busy",
        }
    }
}

/// Who a notification goes to. Ids are filled in, so the layer needs no further lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// Exactly this socket: the caller's placing socket, or the callee's answering socket.
    Socket(String),
    /// Every socket of `user_id`, except `except_socket` when given.
    User {
        user_id: String,
        except_socket: Option<String>,
    },
}

/// A server-to-client call event, without its payload (the layer adds `callId` and the rest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// `call-answered {callId, answer}`; the layer attaches the answer SDP.
    Answered,
    /// `call-answered-elsewhere {callId}`.
    AnsweredElsewhere,
    /// `call-rejected {callId, reason}`; the layer attaches the client's reason, if any.
    Rejected,
    /// `call-ended {callId, reason}`.
    Ended(EndReason),
}

impl CallEvent {
    /// The Socket.IO event name.
    pub fn name(self) -> &'static str {
        match self {
            CallEvent::Answered => "call-answered",
            CallEvent::AnsweredElsewhere => "call-answered-elsewhere",
            CallEvent::Rejected => "call-rejected",
            CallEvent::Ended(_) => "call-ended",
        }
    }

    /// The `reason` of a `call-ended`.
    pub fn end_reason(self) -> Option<EndReason> {
        match self {
            CallEvent::Ended(reason) => Some(reason),
            _ => None,
        }
    }
}

/// One event to emit to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub to: Recipient,
    pub event: CallEvent,
}

/// What the layer must do after a successful transition.
///
/// Every successful transition changed the record, so the layer always stores the call
/// afterwards; `finished` additionally says the call is over (cancel its ring timer if still
/// armed, drop it from the [`CallBook`], count it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[must_use = "the notices must be emitted and the call stored"]
pub struct Effects {
    /// Events to emit, in order.
    pub notices: Vec<Notice>,
    /// The call reached a terminal status with this transition.
    pub finished: bool,
}

/// One direct call, from `call-user` to its end. Also the stored record (contract: Call), and
/// what the nodes of a cluster share of it (see [`crate::book`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub id: String,
    pub caller_id: String,
    pub callee_id: String,
    pub call_type: CallType,
    pub appointment_id: Option<String>,
    /// The socket that placed the call; the caller is reached here.
    pub caller_socket: String,
    /// The callee socket whose answer won; set on answer.
    pub answered_socket: Option<String>,
    pub status: CallStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Set on answer, only.
    #[serde(with = "time::serde::rfc3339::option")]
    pub answered_at: Option<OffsetDateTime>,
    /// Set on entering any terminal status.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<EndReason>,
    pub media: MediaPath,
}

impl Call {
    /// A new call ringing the callee's devices.
    pub fn ring(
        id: impl Into<String>,
        caller_id: impl Into<String>,
        callee_id: impl Into<String>,
        call_type: CallType,
        appointment_id: Option<String>,
        caller_socket: impl Into<String>,
        now: OffsetDateTime,
    ) -> Call {
        Call {
            id: id.into(),
            caller_id: caller_id.into(),
            callee_id: callee_id.into(),
            call_type,
            appointment_id,
            caller_socket: caller_socket.into(),
            answered_socket: None,
            status: CallStatus::Ringing,
            started_at: now,
            answered_at: None,
            ended_at: None,
            end_reason: None,
            media: MediaPath::P2p,
        }
    }

    /// The record of a call refused because the callee was in another call: terminal from the
    /// start (status and reason `busy`, `ended_at` = `started_at` = `now`). Nobody is notified
    /// beyond the caller's `busy` ack.
    pub fn busy(
        id: impl Into<String>,
        caller_id: impl Into<String>,
        callee_id: impl Into<String>,
        call_type: CallType,
        appointment_id: Option<String>,
        caller_socket: impl Into<String>,
        now: OffsetDateTime,
    ) -> Call {
        let mut call = Call::ring(
            id,
            caller_id,
            callee_id,
            call_type,
            appointment_id,
            caller_socket,
            now,
        );
        call.status = CallStatus::Busy;
        call.end_reason = Some(EndReason::Busy);
        call.ended_at = Some(now);
        call
    }

    /// `answer-call` from `by_socket` of `by_user`. Only the callee, only while ringing; the
    /// first answer wins. The caller gets `call-answered`, the callee's other sockets
    /// `call-answered-elsewhere`.
    pub fn answer(
        &mut self,
        by_user: &str,
        by_socket: &str,
        now: OffsetDateTime,
    ) -> Result<Effects, CallError> {
        self.check_callee_while_ringing(by_user)?;
        // Addressed while still ringing, so "every callee socket but the winner".
        let notices = vec![
            self.notice_caller(CallEvent::Answered),
            self.notice_callee(CallEvent::AnsweredElsewhere, Some(by_socket)),
        ];
        self.status = CallStatus::Active;
        self.answered_socket = Some(by_socket.to_owned());
        self.answered_at = Some(now);
        Ok(Effects {
            notices,
            finished: false,
        })
    }

    /// `reject-call` from `by_socket` of `by_user`. Only the callee, only while ringing (the
    /// caller cancels with [`Call::end`]). The caller gets `call-rejected`; the callee's other
    /// sockets, still ringing, get `call-ended {reason: "rejected"}` so they stop ringing (the
    /// contract is silent about them; drop that notice to follow it to the letter).
    pub fn reject(
        &mut self,
        by_user: &str,
        by_socket: &str,
        now: OffsetDateTime,
    ) -> Result<Effects, CallError> {
        self.check_callee_while_ringing(by_user)?;
        Ok(self.rejected(Some(by_socket), now))
    }

    /// `end-call` by `by_user`, either party.
    ///
    /// - Active: `ended`, reason `hangup`; the other party gets `call-ended {hangup}`.
    /// - Ringing, by the caller (a cancel): `missed`, reason `hangup`; every callee socket gets
    ///   `call-ended {hangup}`.
    /// - Ringing, by the callee: status `rejected` (the callee declined) with reason `hangup`;
    ///   the caller and every callee socket get `call-ended {hangup}`, as the contract says
    ///   for `end-call`.
    pub fn end(&mut self, by_user: &str, now: OffsetDateTime) -> Result<Effects, CallError> {
        self.check_party(by_user)?;
        match self.status {
            CallStatus::Ringing if by_user == self.callee_id => Ok(self.finish(
                CallStatus::Rejected,
                EndReason::Hangup,
                now,
                vec![
                    self.notice_caller(CallEvent::Ended(EndReason::Hangup)),
                    self.notice_callee(CallEvent::Ended(EndReason::Hangup), None),
                ],
            )),
            CallStatus::Ringing => Ok(self.finish(
                CallStatus::Missed,
                EndReason::Hangup,
                now,
                vec![self.notice_callee(CallEvent::Ended(EndReason::Hangup), None)],
            )),
            CallStatus::Active => Ok(self.finish(
                CallStatus::Ended,
                EndReason::Hangup,
                now,
                vec![self.notice_other(by_user, CallEvent::Ended(EndReason::Hangup))],
            )),
            _ => Err(CallError::AlreadyEnded),
        }
    }

    /// The ring timer fired. Only while ringing: `missed`, reason `no-answer`, both sides get
    /// `call-ended {no-answer}`. A timer that fires late (answered, or already over) gets
    /// [`CallError::NotRinging`] and does nothing.
    pub fn ring_timeout(&mut self, now: OffsetDateTime) -> Result<Effects, CallError> {
        if self.status != CallStatus::Ringing {
            return Err(CallError::NotRinging);
        }
        let event = CallEvent::Ended(EndReason::NoAnswer);
        Ok(self.finish(
            CallStatus::Missed,
            EndReason::NoAnswer,
            now,
            vec![self.notice_caller(event), self.notice_callee(event, None)],
        ))
    }

    /// `user`'s last socket disconnected. Ringing becomes `missed`, active becomes `ended`, reason
    /// `disconnected`; the remaining party gets `call-ended {disconnected}` (every callee socket
    /// if it was still ringing).
    pub fn party_disconnected(
        &mut self,
        user: &str,
        now: OffsetDateTime,
    ) -> Result<Effects, CallError> {
        self.check_party(user)?;
        let status = match self.status {
            CallStatus::Ringing => CallStatus::Missed,
            CallStatus::Active => CallStatus::Ended,
            _ => return Err(CallError::AlreadyEnded),
        };
        let event = CallEvent::Ended(EndReason::Disconnected);
        let notice = self.notice_other(user, event);
        Ok(self.finish(status, EndReason::Disconnected, now, vec![notice]))
    }

    /// The server is going away: ringing becomes `missed`, active `ended`, reason
    /// `server-restart`, and both sides get `call-ended {server-restart}`.
    pub fn shut_down(&mut self, now: OffsetDateTime) -> Result<Effects, CallError> {
        self.end_for_everyone(EndReason::ServerRestart, now)
    }

    /// Ends the call from outside (not by a party): both sides are told `reason`.
    fn end_for_everyone(
        &mut self,
        reason: EndReason,
        now: OffsetDateTime,
    ) -> Result<Effects, CallError> {
        let status = match self.status {
            CallStatus::Ringing => CallStatus::Missed,
            CallStatus::Active => CallStatus::Ended,
            _ => return Err(CallError::AlreadyEnded),
        };
        let event = CallEvent::Ended(reason);
        let notices = vec![self.notice_caller(event), self.notice_callee(event, None)];
        Ok(self.finish(status, reason, now, notices))
    }

    /// An administrator ends the call: like [`Call::shut_down`], with reason `ended-by-admin`.
    pub fn end_by_admin(&mut self, now: OffsetDateTime) -> Result<Effects, CallError> {
        self.end_for_everyone(EndReason::EndedByAdmin, now)
    }

    /// The call's media went through the SFU at least once.
    pub fn relayed(&mut self) {
        self.media = MediaPath::Sfu;
    }

    /// Where to relay a party's `ice-candidate {callId, candidate}`.
    ///
    /// The caller must send from the socket that placed the call; the callee, once the call is
    /// active, from the answering socket. The caller's candidates reach every callee socket while
    /// it rings (each holds the offer) and the answering socket after.
    pub fn relay_target(&self, from_user: &str, from_socket: &str) -> Result<Recipient, CallError> {
        self.check_party(from_user)?;
        if self.status.is_terminal() {
            return Err(CallError::AlreadyEnded);
        }
        if from_user == self.caller_id {
            if from_socket != self.caller_socket {
                return Err(CallError::WrongSocket);
            }
            return Ok(self.callee_sockets(None));
        }
        match &self.answered_socket {
            Some(answered) if answered != from_socket => Err(CallError::AlreadyAnswered),
            _ => Ok(Recipient::Socket(self.caller_socket.clone())),
        }
    }

    /// The other party's user id, if `user` is a party.
    pub fn other_party(&self, user: &str) -> Option<&str> {
        if user == self.caller_id {
            Some(&self.callee_id)
        } else if user == self.callee_id {
            Some(&self.caller_id)
        } else {
            None
        }
    }

    /// True for the caller and the callee.
    pub fn is_party(&self, user: &str) -> bool {
        user == self.caller_id || user == self.callee_id
    }

    /// The placing socket, then the answering one once answered.
    pub fn sockets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.caller_socket.as_str()).chain(self.answered_socket.as_deref())
    }

    /// True while ringing or active.
    pub fn is_live(&self) -> bool {
        !self.status.is_terminal()
    }

    fn check_party(&self, user: &str) -> Result<(), CallError> {
        if self.is_party(user) {
            Ok(())
        } else {
            Err(CallError::NotAParty)
        }
    }

    /// The guard shared by answer and reject. Who you are is checked before the state, so a
    /// stranger learns nothing about the call.
    fn check_callee_while_ringing(&self, user: &str) -> Result<(), CallError> {
        self.check_party(user)?;
        if user != self.callee_id {
            return Err(CallError::NotCallee);
        }
        match self.status {
            CallStatus::Ringing => Ok(()),
            CallStatus::Active => Err(CallError::AlreadyAnswered),
            _ => Err(CallError::AlreadyEnded),
        }
    }

    /// Ringing -> rejected. `except_socket` is the rejecting socket, when known.
    fn rejected(&mut self, except_socket: Option<&str>, now: OffsetDateTime) -> Effects {
        let notices = vec![
            self.notice_caller(CallEvent::Rejected),
            self.notice_callee(CallEvent::Ended(EndReason::Rejected), except_socket),
        ];
        self.finish(CallStatus::Rejected, EndReason::Rejected, now, notices)
    }

    fn finish(
        &mut self,
        status: CallStatus,
        reason: EndReason,
        now: OffsetDateTime,
        notices: Vec<Notice>,
    ) -> Effects {
        debug_assert!(status.is_terminal());
        self.status = status;
        self.end_reason = Some(reason);
        self.ended_at = Some(now);
        Effects {
            notices,
            finished: true,
        }
    }

    /// Every callee socket while ringing (minus `except`); the answering socket once answered.
    fn callee_sockets(&self, except: Option<&str>) -> Recipient {
        match &self.answered_socket {
            Some(socket) => Recipient::Socket(socket.clone()),
            None => Recipient::User {
                user_id: self.callee_id.clone(),
                except_socket: except.map(str::to_owned),
            },
        }
    }

    fn notice_caller(&self, event: CallEvent) -> Notice {
        Notice {
            to: Recipient::Socket(self.caller_socket.clone()),
            event,
        }
    }

    fn notice_callee(&self, event: CallEvent, except: Option<&str>) -> Notice {
        Notice {
            to: self.callee_sockets(except),
            event,
        }
    }

    /// `event` to whichever party `user` is not.
    fn notice_other(&self, user: &str, event: CallEvent) -> Notice {
        if user == self.caller_id {
            self.notice_callee(event, None)
        } else {
            self.notice_caller(event)
        }
    }
}

/// The live (ringing or active) calls, by id.
///
/// A user is "in a call" — so `busy` to a new caller — while they are the caller or the callee of
/// a ringing or active call. A callee who is only being rung counts: a second caller gets `busy`
/// rather than a second ring on top of the first. [`CallBook::insert`] keeps each user in at most
/// one live call.
#[derive(Debug, Clone, Default)]
pub struct CallBook {
    calls: HashMap<String, Call>,
}

impl CallBook {
    pub fn new() -> CallBook {
        CallBook::default()
    }

    /// Adds a ringing call. Refused if the id is taken, the call is already over, the callee is
    /// in a call ([`CallError::Busy`]: the layer stores a [`Call::busy`] record and acks `busy`)
    /// or the caller is ([`CallError::CallerInCall`]).
    pub fn insert(&mut self, call: Call) -> Result<&mut Call, CallError> {
        if self.calls.contains_key(&call.id) {
            return Err(CallError::DuplicateId);
        }
        if call.status.is_terminal() {
            return Err(CallError::AlreadyEnded);
        }
        if self.is_busy(&call.callee_id) {
            return Err(CallError::Busy);
        }
        if self.is_busy(&call.caller_id) {
            return Err(CallError::CallerInCall);
        }
        Ok(self.calls.entry(call.id.clone()).or_insert(call))
    }

    pub fn by_id(&self, id: &str) -> Option<&Call> {
        self.calls.get(id)
    }

    /// The call to apply a transition to; [`CallError::NotFound`] if unknown or removed.
    pub fn call_mut(&mut self, id: &str) -> Result<&mut Call, CallError> {
        self.calls.get_mut(id).ok_or(CallError::NotFound)
    }

    /// The ringing or active call `user` is a party to.
    pub fn active_call_of(&self, user: &str) -> Option<&Call> {
        self.calls
            .values()
            .find(|c| c.is_live() && c.is_party(user))
    }

    /// [`CallBook::active_call_of`], for applying a transition (e.g. on disconnect).
    pub fn active_call_of_mut(&mut self, user: &str) -> Option<&mut Call> {
        self.calls
            .values_mut()
            .find(|c| c.is_live() && c.is_party(user))
    }

    /// True if `user` is in a ringing or active call, either side.
    pub fn is_busy(&self, user: &str) -> bool {
        self.active_call_of(user).is_some()
    }

    pub fn remove(&mut self, id: &str) -> Option<Call> {
        self.calls.remove(id)
    }

    /// Removes and returns every call that has reached a terminal status.
    pub fn remove_terminal(&mut self) -> Vec<Call> {
        let ids: Vec<String> = self
            .calls
            .values()
            .filter(|c| !c.is_live())
            .map(|c| c.id.clone())
            .collect();
        ids.iter().filter_map(|id| self.calls.remove(id)).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Call> {
        self.calls.values()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Call> {
        self.calls.values_mut()
    }

    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

    fn at(secs: i64) -> OffsetDateTime {
        T0 + Duration::seconds(secs)
    }

    /// Alice (socket a1) calls Bob, who has sockets b1 and b2.
    fn ringing() -> Call {
        Call::ring(
            "c1",
            "alice",
            "bob",
            CallType::Video,
            Some("appt-1".into()),
            "a1",
            T0,
        )
    }

    /// The same call, answered on b1 at +5s.
    fn active() -> Call {
        let mut call = ringing();
        let _ = call.answer("bob", "b1", at(5)).unwrap();
        call
    }

    fn socket(id: &str) -> Recipient {
        Recipient::Socket(id.into())
    }

    fn bob_except(except: Option<&str>) -> Recipient {
        Recipient::User {
            user_id: "bob".into(),
            except_socket: except.map(str::to_owned),
        }
    }

    fn notice(to: Recipient, event: CallEvent) -> Notice {
        Notice { to, event }
    }

    /// Runs a refused request and checks it changed nothing.
    fn refused(
        call: &mut Call,
        want: CallError,
        op: impl FnOnce(&mut Call) -> Result<Effects, CallError>,
    ) {
        let before = call.clone();
        assert_eq!(op(call), Err(want));
        assert_eq!(*call, before, "a refused request changed the call");
    }

    // --- creation ---

    #[test]
    fn ring_creates_a_ringing_call() {
        let call = ringing();
        assert_eq!(call.status, CallStatus::Ringing);
        assert_eq!(call.started_at, T0);
        assert_eq!(call.answered_at, None);
        assert_eq!(call.ended_at, None);
        assert_eq!(call.end_reason, None);
        assert_eq!(call.answered_socket, None);
        assert_eq!(call.media, MediaPath::P2p);
        assert_eq!(call.appointment_id.as_deref(), Some("appt-1"));
        assert!(call.is_live());
    }

    #[test]
    fn busy_record_is_terminal_from_the_start() {
        let mut call = Call::busy("c2", "carol", "bob", CallType::Audio, None, "c9", T0);
        assert_eq!(call.status, CallStatus::Busy);
        assert_eq!(call.end_reason, Some(EndReason::Busy));
        assert_eq!(call.started_at, T0);
        assert_eq!(call.ended_at, Some(T0));
        assert_eq!(call.answered_at, None);
        assert!(!call.is_live());
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.answer("bob", "b1", at(1))
        });
        refused(&mut call, CallError::NotRinging, |c| c.ring_timeout(at(30)));
    }

    // --- answer ---

    #[test]
    fn answer_activates_and_notifies_caller_and_other_callee_sockets() {
        let mut call = ringing();
        let fx = call.answer("bob", "b2", at(5)).unwrap();
        assert_eq!(call.status, CallStatus::Active);
        assert_eq!(call.answered_socket.as_deref(), Some("b2"));
        assert_eq!(call.answered_at, Some(at(5)));
        assert_eq!(call.ended_at, None);
        assert_eq!(call.end_reason, None);
        assert!(!fx.finished);
        assert_eq!(
            fx.notices,
            vec![
                notice(socket("a1"), CallEvent::Answered),
                notice(bob_except(Some("b2")), CallEvent::AnsweredElsewhere),
            ]
        );
    }

    #[test]
    fn second_answer_from_another_device_loses() {
        let mut call = ringing();
        let _ = call.answer("bob", "b1", at(5)).unwrap();
        refused(&mut call, CallError::AlreadyAnswered, |c| {
            c.answer("bob", "b2", at(5))
        });
        assert_eq!(call.answered_socket.as_deref(), Some("b1"));
        assert_eq!(call.answered_at, Some(at(5)));
    }

    #[test]
    fn answer_then_reject_from_two_devices_answer_wins() {
        let mut call = ringing();
        let _ = call.answer("bob", "b1", at(5)).unwrap();
        refused(&mut call, CallError::AlreadyAnswered, |c| {
            c.reject("bob", "b2", at(5))
        });
        assert_eq!(call.status, CallStatus::Active);
    }

    #[test]
    fn reject_then_answer_from_two_devices_reject_wins() {
        let mut call = ringing();
        let _ = call.reject("bob", "b1", at(5)).unwrap();
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.answer("bob", "b2", at(5))
        });
        assert_eq!(call.status, CallStatus::Rejected);
        assert_eq!(call.answered_at, None);
        assert_eq!(call.answered_socket, None);
    }

    #[test]
    fn answer_after_ring_timeout_is_refused() {
        let mut call = ringing();
        let _ = call.ring_timeout(at(30)).unwrap();
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.answer("bob", "b1", at(31))
        });
        assert_eq!(call.status, CallStatus::Missed);
        assert_eq!(call.answered_at, None);
    }

    #[test]
    fn caller_cannot_answer_own_call() {
        let mut call = ringing();
        refused(&mut call, CallError::NotCallee, |c| {
            c.answer("alice", "a1", at(1))
        });
    }

    #[test]
    fn stranger_cannot_answer() {
        let mut call = ringing();
        refused(&mut call, CallError::NotAParty, |c| {
            c.answer("mallory", "m1", at(1))
        });
        // Identity is checked before state: a finished call tells a stranger nothing more.
        let _ = call.ring_timeout(at(30)).unwrap();
        refused(&mut call, CallError::NotAParty, |c| {
            c.answer("mallory", "m1", at(31))
        });
    }

    // --- reject ---

    #[test]
    fn reject_while_ringing() {
        let mut call = ringing();
        let fx = call.reject("bob", "b2", at(3)).unwrap();
        assert_eq!(call.status, CallStatus::Rejected);
        assert_eq!(call.end_reason, Some(EndReason::Rejected));
        assert_eq!(call.ended_at, Some(at(3)));
        assert_eq!(call.answered_at, None);
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![
                notice(socket("a1"), CallEvent::Rejected),
                notice(
                    bob_except(Some("b2")),
                    CallEvent::Ended(EndReason::Rejected)
                ),
            ]
        );
    }

    #[test]
    fn caller_and_strangers_cannot_reject() {
        let mut call = ringing();
        refused(&mut call, CallError::NotCallee, |c| {
            c.reject("alice", "a1", at(1))
        });
        refused(&mut call, CallError::NotAParty, |c| {
            c.reject("mallory", "m1", at(1))
        });
    }

    #[test]
    fn double_reject_is_refused() {
        let mut call = ringing();
        let _ = call.reject("bob", "b1", at(3)).unwrap();
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.reject("bob", "b2", at(4))
        });
        assert_eq!(call.ended_at, Some(at(3)));
    }

    // --- end ---

    #[test]
    fn caller_cancels_while_ringing() {
        let mut call = ringing();
        let fx = call.end("alice", at(4)).unwrap();
        assert_eq!(call.status, CallStatus::Missed);
        assert_eq!(call.end_reason, Some(EndReason::Hangup));
        assert_eq!(call.ended_at, Some(at(4)));
        assert_eq!(call.answered_at, None);
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![notice(
                bob_except(None),
                CallEvent::Ended(EndReason::Hangup)
            )]
        );
    }

    #[test]
    fn callee_ending_while_ringing_declines_with_a_hangup() {
        let mut call = ringing();
        let fx = call.end("bob", at(4)).unwrap();
        assert_eq!(call.status, CallStatus::Rejected);
        assert_eq!(call.end_reason, Some(EndReason::Hangup));
        assert_eq!(call.ended_at, Some(at(4)));
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![
                notice(socket("a1"), CallEvent::Ended(EndReason::Hangup)),
                notice(bob_except(None), CallEvent::Ended(EndReason::Hangup)),
            ]
        );
    }

    #[test]
    fn caller_hangs_up_active_call() {
        let mut call = active();
        let fx = call.end("alice", at(60)).unwrap();
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(call.end_reason, Some(EndReason::Hangup));
        assert_eq!(call.answered_at, Some(at(5)));
        assert_eq!(call.ended_at, Some(at(60)));
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![notice(socket("b1"), CallEvent::Ended(EndReason::Hangup))]
        );
    }

    #[test]
    fn callee_hangs_up_active_call() {
        let mut call = active();
        let fx = call.end("bob", at(60)).unwrap();
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(call.end_reason, Some(EndReason::Hangup));
        assert_eq!(
            fx.notices,
            vec![notice(socket("a1"), CallEvent::Ended(EndReason::Hangup))]
        );
    }

    #[test]
    fn double_end_is_refused() {
        let mut call = active();
        let _ = call.end("alice", at(60)).unwrap();
        refused(&mut call, CallError::AlreadyEnded, |c| c.end("bob", at(61)));
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.end("alice", at(61))
        });
        assert_eq!(call.ended_at, Some(at(60)));
    }

    #[test]
    fn stranger_cannot_end() {
        let mut call = ringing();
        refused(&mut call, CallError::NotAParty, |c| c.end("mallory", at(1)));
        let mut call = active();
        refused(&mut call, CallError::NotAParty, |c| {
            c.end("mallory", at(10))
        });
    }

    // --- ring timeout ---

    #[test]
    fn ring_timeout_while_ringing_tells_both_sides() {
        let mut call = ringing();
        let fx = call.ring_timeout(at(30)).unwrap();
        assert_eq!(call.status, CallStatus::Missed);
        assert_eq!(call.end_reason, Some(EndReason::NoAnswer));
        assert_eq!(call.ended_at, Some(at(30)));
        assert!(fx.finished);
        let event = CallEvent::Ended(EndReason::NoAnswer);
        assert_eq!(
            fx.notices,
            vec![notice(socket("a1"), event), notice(bob_except(None), event)]
        );
    }

    #[test]
    fn late_ring_timeout_after_answer_does_nothing() {
        let mut call = active();
        refused(&mut call, CallError::NotRinging, |c| c.ring_timeout(at(30)));
        assert_eq!(call.status, CallStatus::Active);
    }

    #[test]
    fn late_ring_timeout_after_end_does_nothing() {
        let mut call = ringing();
        let _ = call.end("alice", at(2)).unwrap();
        refused(&mut call, CallError::NotRinging, |c| c.ring_timeout(at(30)));
        assert_eq!(call.end_reason, Some(EndReason::Hangup));
    }

    // --- disconnects ---

    #[test]
    fn caller_disconnects_while_ringing() {
        let mut call = ringing();
        let fx = call.party_disconnected("alice", at(7)).unwrap();
        assert_eq!(call.status, CallStatus::Missed);
        assert_eq!(call.end_reason, Some(EndReason::Disconnected));
        assert_eq!(call.ended_at, Some(at(7)));
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![notice(
                bob_except(None),
                CallEvent::Ended(EndReason::Disconnected)
            )]
        );
    }

    #[test]
    fn callee_disconnects_while_ringing() {
        let mut call = ringing();
        let fx = call.party_disconnected("bob", at(7)).unwrap();
        assert_eq!(call.status, CallStatus::Missed);
        assert_eq!(call.end_reason, Some(EndReason::Disconnected));
        assert_eq!(
            fx.notices,
            vec![notice(
                socket("a1"),
                CallEvent::Ended(EndReason::Disconnected)
            )]
        );
    }

    #[test]
    fn callee_disconnects_during_active_call() {
        let mut call = active();
        let fx = call.party_disconnected("bob", at(90)).unwrap();
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(call.end_reason, Some(EndReason::Disconnected));
        assert_eq!(call.answered_at, Some(at(5)));
        assert_eq!(call.ended_at, Some(at(90)));
        assert!(fx.finished);
        assert_eq!(
            fx.notices,
            vec![notice(
                socket("a1"),
                CallEvent::Ended(EndReason::Disconnected)
            )]
        );
    }

    #[test]
    fn caller_disconnects_during_active_call() {
        let mut call = active();
        let fx = call.party_disconnected("alice", at(90)).unwrap();
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(
            fx.notices,
            vec![notice(
                socket("b1"),
                CallEvent::Ended(EndReason::Disconnected)
            )]
        );
    }

    #[test]
    fn disconnect_after_end_or_by_stranger_is_refused() {
        let mut call = active();
        refused(&mut call, CallError::NotAParty, |c| {
            c.party_disconnected("mallory", at(10))
        });
        let _ = call.end("alice", at(60)).unwrap();
        refused(&mut call, CallError::AlreadyEnded, |c| {
            c.party_disconnected("bob", at(61))
        });
    }

    // --- shutdown, media, helpers ---

    #[test]
    fn shut_down_ends_live_calls_and_tells_both_sides() {
        let event = CallEvent::Ended(EndReason::ServerRestart);
        let mut call = active();
        let fx = call.shut_down(at(100)).unwrap();
        assert_eq!(call.status, CallStatus::Ended);
        assert_eq!(call.end_reason, Some(EndReason::ServerRestart));
        assert_eq!(call.ended_at, Some(at(100)));
        assert_eq!(
            fx.notices,
            vec![notice(socket("a1"), event), notice(socket("b1"), event)]
        );

        let mut call = ringing();
        let _ = call.shut_down(at(1)).unwrap();
        assert_eq!(call.status, CallStatus::Missed);
        refused(&mut call, CallError::AlreadyEnded, |c| c.shut_down(at(2)));
    }

    #[test]
    fn relayed_marks_media_sfu() {
        let mut call = active();
        call.relayed();
        call.relayed();
        assert_eq!(call.media, MediaPath::Sfu);
    }

    #[test]
    fn relay_target_follows_the_call_sockets() {
        let call = ringing();
        assert_eq!(call.relay_target("alice", "a1"), Ok(bob_except(None)));
        assert_eq!(
            call.relay_target("alice", "a2"),
            Err(CallError::WrongSocket)
        );
        assert_eq!(call.relay_target("bob", "b2"), Ok(socket("a1")));
        assert_eq!(
            call.relay_target("mallory", "m1"),
            Err(CallError::NotAParty)
        );

        let mut call = active();
        assert_eq!(call.relay_target("alice", "a1"), Ok(socket("b1")));
        assert_eq!(call.relay_target("bob", "b1"), Ok(socket("a1")));
        assert_eq!(
            call.relay_target("bob", "b2"),
            Err(CallError::AlreadyAnswered)
        );
        let _ = call.end("bob", at(9)).unwrap();
        assert_eq!(
            call.relay_target("alice", "a1"),
            Err(CallError::AlreadyEnded)
        );
    }

    #[test]
    fn parties() {
        let call = ringing();
        assert!(call.is_party("alice"));
        assert!(call.is_party("bob"));
        assert!(!call.is_party("mallory"));
        assert_eq!(call.other_party("alice"), Some("bob"));
        assert_eq!(call.other_party("bob"), Some("alice"));
        assert_eq!(call.other_party("mallory"), None);
    }

    #[test]
    fn every_terminal_transition_sets_ended_at_and_reason() {
        type Transition = fn(&mut Call) -> Result<Effects, CallError>;
        let cases: [(Transition, CallStatus, EndReason); 7] = [
            (
                |c| c.reject("bob", "b1", at(8)),
                CallStatus::Rejected,
                EndReason::Rejected,
            ),
            (
                |c| c.end("alice", at(8)),
                CallStatus::Missed,
                EndReason::Hangup,
            ),
            (
                |c| c.end("bob", at(8)),
                CallStatus::Rejected,
                EndReason::Hangup,
            ),
            (
                |c| c.ring_timeout(at(8)),
                CallStatus::Missed,
                EndReason::NoAnswer,
            ),
            (
                |c| c.party_disconnected("alice", at(8)),
                CallStatus::Missed,
                EndReason::Disconnected,
            ),
            (
                |c| c.party_disconnected("bob", at(8)),
                CallStatus::Missed,
                EndReason::Disconnected,
            ),
            (
                |c| c.shut_down(at(8)),
                CallStatus::Missed,
                EndReason::ServerRestart,
            ),
        ];
        for (op, status, reason) in cases {
            let mut call = ringing();
            let fx = op(&mut call).unwrap();
            assert!(fx.finished);
            assert_eq!(call.status, status);
            assert!(call.status.is_terminal());
            assert_eq!(call.end_reason, Some(reason));
            assert_eq!(call.ended_at, Some(at(8)));
            assert_eq!(call.answered_at, None);
            assert_eq!(call.started_at, T0);
        }
    }

    // --- wire names and error codes ---

    #[test]
    fn wire_names_match_serde_and_contract() {
        for v in CallType::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(CallType::parse(v.as_str()), Some(*v));
        }
        for v in CallStatus::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(CallStatus::parse(v.as_str()), Some(*v));
        }
        for v in EndReason::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(EndReason::parse(v.as_str()), Some(*v));
        }
        for v in MediaPath::ALL {
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str());
            assert_eq!(MediaPath::parse(v.as_str()), Some(*v));
        }
        assert_eq!(EndReason::NoAnswer.as_str(), "no-answer");
        assert_eq!(EndReason::ServerRestart.to_string(), "server-restart");
        assert_eq!(
            serde_json::from_str::<CallType>("\"audio\"").unwrap(),
            CallType::Audio
        );
        assert_eq!(CallStatus::parse("Ringing"), None);
        let live: Vec<_> = CallStatus::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .collect();
        assert_eq!(live, [&CallStatus::Ringing, &CallStatus::Active]);
    }

    #[test]
    fn event_names() {
        assert_eq!(CallEvent::Answered.name(), "call-answered");
        assert_eq!(
            CallEvent::AnsweredElsewhere.name(),
            "call-answered-elsewhere"
        );
        assert_eq!(CallEvent::Rejected.name(), "call-rejected");
        let ended = CallEvent::Ended(EndReason::NoAnswer);
        assert_eq!(ended.name(), "call-ended");
        assert_eq!(ended.end_reason(), Some(EndReason::NoAnswer));
        assert_eq!(CallEvent::Answered.end_reason(), None);
    }

    #[test]
    fn error_codes() {
        assert_eq!(CallError::NotFound.code(), "not_found");
        assert_eq!(CallError::NotAParty.code(), "forbidden");
        assert_eq!(CallError::NotCallee.code(), "forbidden");
        assert_eq!(CallError::WrongSocket.code(), "forbidden");
        assert_eq!(CallError::AlreadyAnswered.code(), "conflict");
        assert_eq!(CallError::NotRinging.code(), "conflict");
        assert_eq!(CallError::AlreadyEnded.code(), "conflict");
        assert_eq!(CallError::CallerInCall.code(), "conflict");
        assert_eq!(CallError::DuplicateId.code(), "conflict");
        assert_eq!(CallError::Busy.code(), "busy");
    }

    // --- CallBook ---

    #[test]
    fn book_tracks_who_is_in_a_call() {
        let mut book = CallBook::new();
        assert!(book.is_empty());
        book.insert(ringing()).unwrap();
        // A callee who is only being rung is busy, and so is the caller.
        assert!(book.is_busy("bob"));
        assert!(book.is_busy("alice"));
        assert!(!book.is_busy("carol"));
        assert_eq!(
            book.active_call_of("bob").map(|c| c.id.as_str()),
            Some("c1")
        );
        assert_eq!(
            book.by_id("c1").map(|c| c.status),
            Some(CallStatus::Ringing)
        );
        assert!(book.by_id("nope").is_none());
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn book_refuses_a_second_call_for_a_busy_user() {
        let mut book = CallBook::new();
        book.insert(ringing()).unwrap();
        let to_bob = Call::ring("c2", "carol", "bob", CallType::Audio, None, "c9", at(1));
        assert_eq!(book.insert(to_bob).err(), Some(CallError::Busy));
        let from_alice = Call::ring("c3", "alice", "dave", CallType::Audio, None, "a1", at(1));
        assert_eq!(book.insert(from_alice).err(), Some(CallError::CallerInCall));
        assert_eq!(book.insert(ringing()).err(), Some(CallError::DuplicateId));
        let record = Call::busy("c4", "carol", "dave", CallType::Audio, None, "c9", at(1));
        assert_eq!(book.insert(record).err(), Some(CallError::AlreadyEnded));
        assert_eq!(book.len(), 1);
    }

    #[test]
    fn book_frees_users_when_the_call_ends() {
        let mut book = CallBook::new();
        book.insert(ringing()).unwrap();
        let _ = book
            .call_mut("c1")
            .unwrap()
            .answer("bob", "b1", at(2))
            .unwrap();
        assert!(book.is_busy("bob"));
        let call = book.active_call_of_mut("bob").unwrap();
        let fx = call.party_disconnected("bob", at(40)).unwrap();
        assert!(fx.finished);
        // Over but not yet removed: nobody counts as busy.
        assert!(!book.is_busy("alice"));
        assert!(!book.is_busy("bob"));
        let removed = book.remove_terminal();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].status, CallStatus::Ended);
        assert!(book.is_empty());
        assert_eq!(book.call_mut("c1").err(), Some(CallError::NotFound));
        // And they can be called again.
        book.insert(Call::ring(
            "c5",
            "carol",
            "bob",
            CallType::Audio,
            None,
            "c9",
            at(50),
        ))
        .unwrap();
    }

    #[test]
    fn book_remove_terminal_keeps_live_calls() {
        let mut book = CallBook::new();
        book.insert(ringing()).unwrap();
        book.insert(Call::ring(
            "c2",
            "carol",
            "dave",
            CallType::Audio,
            None,
            "c9",
            T0,
        ))
        .unwrap();
        let _ = book.call_mut("c2").unwrap().ring_timeout(at(30)).unwrap();
        let removed: Vec<_> = book.remove_terminal().into_iter().map(|c| c.id).collect();
        assert_eq!(removed, ["c2"]);
        assert_eq!(
            book.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
            ["c1"]
        );
        assert_eq!(book.remove("c1").map(|c| c.id), Some("c1".to_owned()));
        assert!(book.remove("c1").is_none());
    }
}

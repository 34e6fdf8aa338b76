//! callrelay's Socket.IO protocol: consult rooms tied to appointments and direct 1:1 calls.
//!
//! This crate owns the contract's events, their payload validation, room membership, the relay
//! rules and the call state machine. It knows nothing of SQL, HTTP or JWT: persistence comes in
//! through [`Store`], token checks through [`Authenticator`].

pub mod activity;
pub mod adapter;
pub mod admin;
mod book;
pub mod call;
mod consult;
mod direct;
pub mod ice;
pub mod identity;
pub mod lobby;
pub mod metrics;
mod order;
pub mod payload;
pub mod protocol;
pub mod ratelimit;
pub mod relay;
pub mod rooms;
pub mod shared;
pub mod store;
pub mod waiting;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use socketioxide::extract::{State, TryData};
use socketioxide::handler::ConnectHandler;

pub use adapter::{SocketIo, SocketRef};
pub use ice::{IceAuth, IceServers};
pub use identity::{AuthFailure, Authenticator, Identity, Role};
pub use metrics::SignalingMetrics;
pub use payload::{PayloadLimits, validate_event_payload};
pub use relay::{Relay, RelayError, RelayEvent};
pub use shared::{Doc, Place, SharedError, SharedLock, SharedStore, SocketMove};
pub use store::{Store, StoreError};

use adapter::NodeAdapter;
use order::{InOrder, OrderGate};

type AckSender = socketioxide::extract::AckSender<NodeAdapter>;
use protocol::{ErrorCode, EventError, EventResult};
use ratelimit::TokenBucket;

/// Limits and settings the signaling layer applies (a slice of the server configuration).
#[derive(Debug, Clone)]
pub struct SignalingConfig {
    pub max_chat_chars: usize,
    pub max_sdp_bytes: usize,
    pub max_candidate_bytes: usize,
    pub signal_rate_per_sec: u32,
    pub signal_burst: u32,
    pub chat_rate_per_sec: u32,
    pub chat_burst: u32,
    pub ring_timeout: Duration,
    /// Handed to clients in the join ack; decides whether and when rooms are relayed.
    pub media_mode: MediaMode,
    pub p2p_timeout_ms: u64,
    /// RTCIceServer[] handed to clients for their peer-to-peer attempt and the relay, made per
    /// user (TURN credentials of their own when a shared secret is set).
    pub ice_servers: IceServers,
    /// `consult.waiting_room`: patients wait to be admitted by the doctor or an administrator
    /// (see [`waiting`]).
    pub waiting_room: bool,
}

impl SignalingConfig {
    /// The limits the stateless payload checks apply.
    pub fn payload_limits(&self) -> PayloadLimits {
        PayloadLimits {
            max_chat_chars: self.max_chat_chars,
            max_sdp_bytes: self.max_sdp_bytes,
            max_candidate_bytes: self.max_candidate_bytes,
        }
    }
}

/// `media.mode`: how media flows between browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaMode {
    /// Browsers try peer-to-peer first and ask for the relay when it fails.
    P2pFirst,
    /// Every consult room is relayed from its first member on.
    SfuOnly,
    /// Never relayed: every `sfu-*` event is refused.
    P2pOnly,
}

impl MediaMode {
    pub const NAMES: &[&str] = &["p2p-first", "sfu-only", "p2p-only"];

    pub fn as_str(&self) -> &'static str {
        match self {
            MediaMode::P2pFirst => "p2p-first",
            MediaMode::SfuOnly => "sfu-only",
            MediaMode::P2pOnly => "p2p-only",
        }
    }
}

impl std::str::FromStr for MediaMode {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "p2p-first" => Ok(MediaMode::P2pFirst),
            "sfu-only" => Ok(MediaMode::SfuOnly),
            "p2p-only" => Ok(MediaMode::P2pOnly),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for MediaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared state of the signaling layer, one per server.
pub struct Signaling {
    config: SignalingConfig,
    store: Arc<dyn Store>,
    auth: Arc<dyn Authenticator>,
    /// The SFU; `None` runs signaling without relay (every `sfu-*` event is refused).
    relay: Option<Arc<dyn Relay>>,
    metrics: SignalingMetrics,
    /// This node's room registry: the truth on a single node; in a cluster, only which room and
    /// lobby this node's sockets are in (see [`shared`]).
    rooms: Mutex<rooms::Rooms>,
    /// The cluster's shared store; `None` on a single node.
    shared: Option<Arc<dyn SharedStore>>,
    /// Held across the store write of a transition so records are written in transition order
    /// (in a cluster, with the shared book's lock: see [`book`]).
    calls: tokio::sync::Mutex<call::CallBook>,
    /// Set by [`Signaling::start_draining`]: when the drain is to end.
    drain_deadline: OnceLock<Instant>,
    /// Woken whenever room membership changes, a call ends or work in flight finishes
    /// ([`Signaling::settled`] waits on it).
    changed: tokio::sync::Notify,
    /// Work in flight that changes state and tells sockets: event handlers (their ack and
    /// follow-up included), disconnect clean-ups, ring timeouts. See [`Signaling::busy`].
    in_flight: AtomicUsize,
}

/// One piece of work in flight ([`Signaling::busy`]); ends when dropped.
struct Busy<'a>(&'a Signaling);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.note_change();
        }
    }
}

/// Consult rooms with members and live (ringing or active) calls, at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InProgress {
    pub rooms: usize,
    pub calls: usize,
}

impl InProgress {
    pub fn is_none(&self) -> bool {
        self.rooms == 0 && self.calls == 0
    }
}

/// Whether a socket was sent `server-draining` (it gets it once). A mutex, not a flag, so the
/// drain's broadcast and the socket's own connect handler cannot both miss it.
#[derive(Clone, Default)]
struct DrainNotice(Arc<Mutex<bool>>);

/// Which of a socket's event budgets an event spends.
#[derive(Clone, Copy)]
enum Budget {
    Chat,
    /// Offers, answers, candidates, calls, publishes.
    Signal,
}

/// Per-socket event budgets.
struct SocketLimits {
    signal: TokenBucket,
    chat: TokenBucket,
}

#[derive(Clone)]
struct Limits(Arc<Mutex<SocketLimits>>);

/// The connect middleware's refusal; its Display is the `connect_error` message.
#[derive(Debug)]
struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unauthorized")
    }
}

/// The Socket.IO room that reaches every socket of a user.
fn user_room(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// The sockets of a Socket.IO room of namespace "/". Empty once the namespace is gone (during
/// shutdown, when `SocketIo::to` would panic).
fn room_sockets(io: &SocketIo, room: String) -> Vec<SocketRef> {
    io.of("/")
        .map(|ns| ns.to(room).sockets())
        .unwrap_or_default()
}

/// The sockets of Socket.IO room(s) `rooms` of namespace "/", on every node; `None` once the
/// namespace is gone (during shutdown, when `SocketIo::to` would panic).
fn in_rooms(
    io: &SocketIo,
    rooms: impl socketioxide_core::adapter::RoomParam,
) -> Option<socketioxide::operators::BroadcastOperators<NodeAdapter>> {
    io.of("/").map(|ns| ns.to(rooms))
}

/// Emits to every socket of a room of namespace "/"; nothing once the namespace is gone.
async fn emit_to_room<T: serde::Serialize + ?Sized>(
    io: &SocketIo,
    room: String,
    event: &str,
    data: &T,
) {
    if let Some(room) = in_rooms(io, room) {
        let _ = room.emit(event, data).await;
    }
}

/// A socket of this node by its id (as carried in payloads and records).
fn socket_by_id(io: &SocketIo, id: &str) -> Option<SocketRef> {
    id.parse().ok().and_then(|sid| io.get_socket(sid))
}

/// The Socket.IO room holding just socket `id`, so that other nodes can reach it.
fn socket_room(id: &str) -> String {
    format!("socket:{id}")
}

/// Emits to socket `id` wherever it is connected: on this node directly, on another node of
/// the cluster through the adapter. False when it is not on this node and there is no other.
async fn emit_to_socket<T: serde::Serialize + ?Sized>(
    sig: &Signaling,
    io: &SocketIo,
    id: &str,
    event: &str,
    data: &T,
) -> bool {
    if let Some(socket) = socket_by_id(io, id) {
        return socket.emit(event, data).is_ok();
    }
    if sig.shared.is_none() {
        return false;
    }
    emit_to_room(io, socket_room(id), event, data).await;
    true
}

/// The Socket.IO room of a consult (an appointment).
fn consult_room(appointment_id: &str) -> String {
    format!("consult:{appointment_id}")
}

impl Signaling {
    pub fn new(
        config: SignalingConfig,
        store: Arc<dyn Store>,
        auth: Arc<dyn Authenticator>,
        relay: Option<Arc<dyn Relay>>,
        metrics: SignalingMetrics,
        shared: Option<Arc<dyn SharedStore>>,
    ) -> Arc<Self> {
        let node = shared.as_ref().map_or("", |s| s.node_id());
        Arc::new(Self {
            config,
            store,
            auth,
            relay,
            metrics,
            rooms: Mutex::new(rooms::Rooms::on_node(node)),
            shared,
            calls: tokio::sync::Mutex::new(call::CallBook::default()),
            drain_deadline: OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Registers the contract's namespace "/" on `io`. `io` must have been built with this
    /// `Arc<Signaling>` as state (`SocketIo::builder().with_state(signaling.clone())`) and
    /// the adapter of [`adapter`]. Fails when the adapter cannot subscribe to the cluster's
    /// channels.
    pub async fn attach(io: &SocketIo) -> Result<(), adapter::AttachError> {
        io.ns("/", on_connect.with(authenticate))
            .await
            .map_err(|e| adapter::AttachError(format!("{e:?}")))
    }

    /// Ends every live call as `server-restart` before the server stops.
    pub async fn shut_down(&self, io: &SocketIo) {
        direct::shut_down_calls(self, io).await;
    }

    /// Starts draining (the server's first SIGTERM): from now on a consult room nobody is in
    /// and a new call are refused (`unavailable`), while rooms and calls in progress go on.
    /// Every connected socket, and every one that connects later, gets `server-draining
    /// {retryAfterSecs}` once: the whole seconds left of `timeout`, at least 1. A second call
    /// changes nothing.
    pub fn start_draining(&self, io: &SocketIo, timeout: Duration) {
        if self.drain_deadline.set(Instant::now() + timeout).is_err() {
            return;
        }
        let sockets = io.of("/").map(|ns| ns.sockets()).unwrap_or_default();
        for s in &sockets {
            self.tell_draining(s);
        }
    }

    pub fn is_draining(&self) -> bool {
        self.drain_deadline.get().is_some()
    }

    /// What is going on now on this node: consult rooms with members here, live calls with a
    /// socket here (in a cluster; every live call on a single node).
    pub async fn in_progress(&self) -> InProgress {
        let rooms = self.rooms().room_count();
        let ours = self
            .read_calls(|read| {
                let live = read.book.iter().filter(|c| c.is_live());
                live.filter(|c| read.is_ours(c)).count()
            })
            .await;
        let calls = match ours {
            Ok(calls) => calls,
            Err(err) => {
                tracing::warn!(error = %err, "could not count the live calls");
                0
            }
        };
        InProgress { rooms, calls }
    }

    /// Returns once no consult room has members, no call is live and the work that ended the
    /// last of them is done (its acks and notices sent): at once if that is so already. Woken
    /// by every change, not polled.
    pub async fn settled(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change right after it still wakes this one.
            changed.as_mut().enable();
            if self.in_flight.load(Ordering::Acquire) == 0 && self.in_progress().await.is_none() {
                return;
            }
            // In a cluster, rooms and calls also end on other nodes, which wake no one here.
            let poll = if self.shared.is_some() {
                Duration::from_secs(1)
            } else {
                Duration::MAX
            };
            let _ = tokio::time::timeout(poll, changed).await;
        }
    }

    /// Marks work in flight until the guard is dropped: the drain does not end (and close the
    /// sockets) while a leave or a hang-up is still sending its ack and notices.
    fn busy(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self)
    }

    /// Wakes [`Signaling::settled`]: a member left or a call ended.
    fn note_change(&self) {
        self.changed.notify_waiters();
    }

    /// Seconds until the drain timeout (at least 1), or `None` when not draining.
    fn retry_after_secs(&self) -> Option<u64> {
        let left = self
            .drain_deadline
            .get()?
            .saturating_duration_since(Instant::now());
        Some((left.as_secs() + u64::from(left.subsec_nanos() > 0)).max(1))
    }

    /// Sends `server-draining` to `s` if the server is draining and `s` was not told yet.
    fn tell_draining(&self, s: &SocketRef) {
        let Some(retry_after_secs) = self.retry_after_secs() else {
            return;
        };
        let Some(DrainNotice(told)) = s.extensions.get::<DrainNotice>() else {
            return;
        };
        let mut told = told.lock().unwrap_or_else(|p| p.into_inner());
        // Fails for a socket not connected yet: its connect handler tells it.
        if !*told
            && s.emit(
                "server-draining",
                &serde_json::json!({ "retryAfterSecs": retry_after_secs }),
            )
            .is_ok()
        {
            *told = true;
        }
    }

    /// While draining: refuses what would start something new (`what`: "consult rooms",
    /// "calls").
    fn refuse_new_while_draining(&self, what: &str) -> Result<(), EventError> {
        match self.retry_after_secs() {
            None => Ok(()),
            Some(secs) => Err(EventError::new(
                ErrorCode::Unavailable,
                format!(
                    "the server is restarting for maintenance and opens no new {what}; \
                     try again in {secs} s"
                ),
            )),
        }
    }

    /// While draining, a consult room may still be joined only if it is in progress: it has
    /// members, or the joiner names (`previousSocketId`) its own membership of it that ended
    /// with its connection.
    async fn check_join_while_draining(
        &self,
        room_id: &str,
        previous_socket_id: Option<&str>,
        user_id: &str,
    ) -> Result<(), EventError> {
        if !self.is_draining()
            || self
                .view(room_id, |rooms| {
                    rooms.in_progress_for(room_id, previous_socket_id, user_id, Instant::now())
                })
                .await?
        {
            return Ok(());
        }
        self.refuse_new_while_draining("consult rooms")
    }

    /// Takes one token of the socket's `budget`.
    fn spend(&self, s: &SocketRef, budget: Budget) -> Result<(), EventError> {
        let Some(Limits(limits)) = s.extensions.get::<Limits>() else {
            return Ok(());
        };
        let mut limits = limits.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = match budget {
            Budget::Chat => &mut limits.chat,
            Budget::Signal => &mut limits.signal,
        };
        if bucket.try_take(Instant::now()) {
            Ok(())
        } else {
            Err(EventError::new(
                ErrorCode::RateLimited,
                "too many events, slow down",
            ))
        }
    }

    /// Sends the ack for `event` and counts its outcome.
    fn acknowledge(&self, event: &'static str, ack: AckSender, result: EventResult) {
        let (outcome, body) = match result {
            Ok(fields) => ("ok", protocol::ok_ack(fields)),
            Err(err) => (err.code.as_str(), err.to_ack()),
        };
        self.metrics
            .events
            .with_label_values(&[event, outcome])
            .inc();
        // A client that passed no callback gets no ack; that is not an error.
        let _ = ack.send(&body);
    }

    /// The room registry; held briefly, never across an await. A panic while holding it
    /// cannot leave it half-updated (every `Rooms` method is one step), so poison is ignored.
    fn rooms(&self) -> std::sync::MutexGuard<'_, rooms::Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the store what happened, now.
    async fn record(&self, activity: activity::Activity) -> Result<(), StoreError> {
        self.store.record(protocol::now_millis(), &activity).await
    }

    /// [`Signaling::record`] where nothing can be refused any more (a disconnect, a call already
    /// stored): a failure is logged and counted.
    async fn record_or_log(&self, activity: activity::Activity) {
        if let Err(err) = self.record(activity).await {
            self.metrics.activity_not_recorded.inc();
            tracing::error!(error = %err, "could not record room or call activity");
        }
    }

    /// Sets the room, participant and waiting gauges from this node's registry (its own
    /// sockets), and wakes [`Signaling::settled`].
    fn refresh_gauges(&self, rooms: &rooms::Rooms) {
        self.metrics.rooms_active.set(rooms.room_count() as i64);
        self.metrics
            .room_participants
            .set(rooms.participant_count() as i64);
        self.metrics
            .waiting_participants
            .set(rooms.lobby.waiting_count() as i64);
        self.note_change();
    }
}

fn identity(s: &SocketRef) -> Result<Identity, EventError> {
    s.extensions
        .get::<Identity>()
        .ok_or_else(|| EventError::new(ErrorCode::Unauthorized, "not authenticated"))
}

/// The connect middleware: verifies the token and sets the socket up completely before
/// socketioxide sends CONNECT, so that events a client emits right after connecting find their
/// handlers (the connect handler itself runs later, in a spawned task).
async fn authenticate(
    s: SocketRef,
    State(sig): State<Arc<Signaling>>,
    TryData(auth): TryData<Value>,
) -> Result<(), Unauthorized> {
    let token = auth
        .ok()
        .and_then(|a| a.get("token").and_then(Value::as_str).map(str::to_owned));
    let who = sig
        .auth
        .verify(token.as_deref())
        .map_err(|_| Unauthorized)?;
    set_up_socket(&s, &sig, &who);
    s.extensions.insert(who);
    Ok(())
}

/// A handler's result, and work that must follow its ack (only `join-room` has any: what it
/// sends the joiner, like an `sfu-subscribe-offer`, must not overtake the ack).
pub(crate) struct Outcome {
    result: EventResult,
    then: Option<consult::AfterJoin>,
}

impl From<EventResult> for Outcome {
    fn from(result: EventResult) -> Self {
        Outcome { result, then: None }
    }
}

/// Registers an event handler that waits for its turn in the socket's queue, runs `$handler`,
/// acknowledges its result, then runs what must follow the ack.
macro_rules! route {
    ($socket:expr, $event:literal, $handler:path) => {
        debug_assert!(
            payload::EVENTS.contains(&$event),
            "{} is missing from payload::EVENTS",
            $event
        );
        $socket.on(
            $event,
            async |s: SocketRef,
                   order: InOrder,
                   io: SocketIo,
                   State(sig): State<Arc<Signaling>>,
                   ack: AckSender,
                   TryData(data): TryData<Value>| {
                let _turn = order.turn().await;
                let _busy = sig.busy();
                let outcome: Outcome = $handler(&sig, &io, &s, data.unwrap_or(Value::Null))
                    .await
                    .into();
                sig.acknowledge($event, ack, outcome.result);
                // Still in this socket's turn: after the ack, before its next event.
                if let Some(then) = outcome.then {
                    then.run(&sig, &io).await;
                }
            },
        )
    };
}

fn set_up_socket(s: &SocketRef, sig: &Signaling, who: &Identity) {
    s.extensions.insert(OrderGate::default());
    s.extensions.insert(DrainNotice::default());
    s.extensions
        .insert(Limits(Arc::new(Mutex::new(SocketLimits {
            signal: TokenBucket::new(sig.config.signal_rate_per_sec, sig.config.signal_burst),
            chat: TokenBucket::new(sig.config.chat_rate_per_sec, sig.config.chat_burst),
        }))));
    s.join([user_room(&who.user_id), socket_room(&s.id.to_string())]);

    route!(s, "join-room", consult::join_room);
    route!(s, "signal", consult::signal);
    route!(s, "chat-message", consult::chat_message);
    route!(s, "leave-room", consult::leave_room);
    route!(s, "media-state", consult::media_state);
    route!(s, "admit", waiting::admit);
    route!(s, "decline", waiting::decline);

    route!(s, "join", direct::join);
    route!(s, "call-user", direct::call_user);
    route!(s, "answer-call", direct::answer_call);
    route!(s, "reject-call", direct::reject_call);
    route!(s, "end-call", direct::end_call);
    route!(s, "ice-candidate", direct::ice_candidate);
    route!(s, "call-media-state", direct::call_media_state);

    route!(s, "sfu-join", relay::sfu_join);
    route!(s, "sfu-publish", relay::sfu_publish);
    route!(s, "sfu-subscribe-answer", relay::sfu_subscribe_answer);
    route!(s, "sfu-candidate", relay::sfu_candidate);
    route!(s, "sfu-leave", relay::sfu_leave);
    route!(s, "sfu-restart-ice", relay::sfu_restart_ice);
    route!(s, "sfu-video-size", relay::sfu_video_size);

    // Any other event: `not_found`, counted under one label (the name is the client's choice,
    // unbounded). It spends the signal budget so that it is no free way to flood the server.
    s.on_fallback(
        async |s: SocketRef, order: InOrder, State(sig): State<Arc<Signaling>>, ack: AckSender| {
            let _turn = order.turn().await;
            let result = sig
                .spend(&s, Budget::Signal)
                .and_then(|()| Err(payload::unknown_event()));
            sig.acknowledge(metrics::UNKNOWN_EVENT, ack, result);
        },
    );

    s.on_disconnect(
        async |s: SocketRef, io: SocketIo, State(sig): State<Arc<Signaling>>| {
            // After every event this socket sent before it went: a join still in flight must
            // not add the socket to a room after its clean-up ran.
            let _turn = match s.extensions.get::<OrderGate>() {
                Some(gate) => Some(gate.enqueue().turn().await),
                None => None,
            };
            let _busy = sig.busy();
            sig.metrics.sockets_connected.dec();
            let socket_id = s.id.to_string();
            consult::leave_current_room(&sig, &io, &socket_id, consult::LeaveReason::Disconnected)
                .await;
            waiting::end_wait(&sig, &io, &s.id.to_string(), waiting::WaitEnd::Disconnected).await;
            if let Ok(who) = identity(&s) {
                direct::socket_gone(&sig, &io, &who, &s.id.to_string()).await;
            }
        },
    );
    sig.metrics.sockets_connected.inc();
}

/// Runs once the socket is connected; everything it needs to receive events is already set up.
async fn on_connect(s: SocketRef, State(sig): State<Arc<Signaling>>) {
    // Connected while the server drains: told first thing.
    sig.tell_draining(&s);
    if let Ok(who) = identity(&s) {
        // A doctor's new page (the appointment list, a room) sees who waits for it at once.
        waiting::tell_on_connect(&sig, &s, &who).await;
        if let Err(err) = sig.store.record_user(&who).await {
            tracing::warn!(error = %err, "could not record user");
        }
    }
}

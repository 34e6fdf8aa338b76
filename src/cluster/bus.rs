//! The node bus: requests from one node of a cluster to another, and their replies, over the
//! Redis pub/sub the nodes share.
//!
//! Each node subscribes to a channel of its own, `callrelay-db{N}-node-bus:{node}` (`N` the
//! Redis database of `cluster.redis_url`: pub/sub channels belong to no database, so two
//! clusters on one Redis keep apart as they do for the Socket.IO adapter). A request is
//! published on its target's channel, its reply on the sender's.
//!
//! Every message is an [`Envelope`] (JSON: kind, request id, sender, target, the sender's
//! clock in Unix milliseconds, body) preceded by its HMAC-SHA256 under a key derived from
//! `auth.jwt_secret` ([`BusKey`]). A node drops, and counts in
//! `callrelay_cluster_bus_dropped_total{reason}` (logged at debug, without contents), any
//! message whose MAC does not verify, that is not for it, that is more than [`MAX_AGE`] old
//! (or as far in the future: the nodes' clocks must agree within that), a request id it has
//! seen already (a replay) or a reply nobody waits for. A request that no node listens for
//! fails at once; one that gets no answer within the timeout (5 s) fails then.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use prometheus::{IntCounterVec, Opts};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::oneshot;

type HmacSha256 = Hmac<Sha256>;

/// Messages older than this (by the sender's clock), or as far in the future, are dropped.
pub const MAX_AGE: Duration = Duration::from_secs(30);
/// How long a request waits for its reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const MAC_LEN: usize = 32;
/// What the bus key is derived for, so that it is never the JWT key itself.
const KEY_LABEL: &[u8] = b"callrelay node bus v1";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("node {node} is not listening")]
    NotListening { node: String },
    #[error("node {node} did not answer within {} ms", .after.as_millis())]
    Timeout { node: String, after: Duration },
    #[error("the bus stopped")]
    Stopped,
}

/// Whether an envelope asks or answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Request,
    Reply,
}

/// One message on the bus, as signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub kind: Kind,
    /// The request's id (a reply carries its request's).
    pub id: String,
    pub from: String,
    pub to: String,
    /// The sender's clock, Unix milliseconds.
    pub at: i64,
    pub body: Value,
}

/// Why a message was dropped (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Too short, or not an envelope once its MAC verified.
    Malformed,
    BadMac,
    /// Addressed to another node.
    Misdirected,
    /// Older than [`MAX_AGE`], or as far in the future.
    Stale,
    /// A request id seen already.
    Replayed,
    /// A reply no request waits for (late, or replayed).
    Unmatched,
}

impl Dropped {
    pub const ALL: [Dropped; 6] = [
        Dropped::Malformed,
        Dropped::BadMac,
        Dropped::Misdirected,
        Dropped::Stale,
        Dropped::Replayed,
        Dropped::Unmatched,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dropped::Malformed => "malformed",
            Dropped::BadMac => "bad_mac",
            Dropped::Misdirected => "misdirected",
            Dropped::Stale => "stale",
            Dropped::Replayed => "replayed",
            Dropped::Unmatched => "unmatched",
        }
    }
}

/// The key messages are signed with: HMAC-SHA256(`auth.jwt_secret`, "callrelay node bus v1").
#[derive(Clone)]
pub struct BusKey([u8; 32]);

impl std::fmt::Debug for BusKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusKey(<redacted>)")
    }
}

impl BusKey {
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(KEY_LABEL);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The envelope as sent: its MAC (32 bytes), then its JSON.
    pub fn seal(&self, envelope: &Envelope) -> Vec<u8> {
        let json = serde_json::to_vec(envelope).expect("an envelope serializes");
        let mut mac = self.mac();
        mac.update(&json);
        let mut out = mac.finalize().into_bytes().to_vec();
        out.extend_from_slice(&json);
        out
    }

    /// The envelope of a sealed message whose MAC verifies.
    pub fn open(&self, bytes: &[u8]) -> Result<Envelope, Dropped> {
        if bytes.len() <= MAC_LEN {
            return Err(Dropped::Malformed);
        }
        let (tag, json) = bytes.split_at(MAC_LEN);
        let mut mac = self.mac();
        mac.update(json);
        mac.verify_slice(tag).map_err(|_| Dropped::BadMac)?;
        serde_json::from_slice(json).map_err(|_| Dropped::Malformed)
    }
}

/// What a node does with the requests it gets.
#[async_trait]
pub trait BusHandler: Send + Sync + 'static {
    /// Answers a request from node `from` (already authenticated); the answer is the reply's
    /// body.
    async fn handle(&self, from: &str, body: Value) -> Value;
}

/// How a bus behaves; [`Default`] is what a server uses.
#[derive(Debug, Clone)]
pub struct BusOptions {
    /// How long a request waits for its reply.
    pub timeout: Duration,
}

impl Default for BusOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The bus's counters (register them with [`NodeBus::register_metrics`]).
#[derive(Clone)]
struct BusMetrics {
    dropped: IntCounterVec,
}

impl BusMetrics {
    fn new() -> Self {
        let dropped = IntCounterVec::new(
            Opts::new(
                "callrelay_cluster_bus_dropped_total",
                "Node bus messages dropped, by reason (bad_mac, stale, replayed, ...)",
            ),
            &["reason"],
        )
        .expect("a valid metric");
        for reason in Dropped::ALL {
            dropped.with_label_values(&[reason.as_str()]);
        }
        Self { dropped }
    }
}

struct Pending {
    node: String,
    reply: oneshot::Sender<Value>,
}

struct Inner {
    node: String,
    /// `callrelay-db{N}-node-bus:`, followed by a node id.
    prefix: String,
    key: BusKey,
    redis: ConnectionManager,
    handler: Arc<dyn BusHandler>,
    options: BusOptions,
    pending: Mutex<HashMap<String, Pending>>,
    /// Request ids taken (sender, id), kept for twice [`MAX_AGE`].
    seen: Mutex<Seen>,
    metrics: BusMetrics,
}

/// This node's end of the bus. Dropping it stops listening.
pub struct NodeBus {
    inner: Arc<Inner>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for NodeBus {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The channel prefix of the cluster on `client`'s database.
fn channel_prefix(client: &redis::Client) -> String {
    let database = client.get_connection_info().redis_settings().db();
    format!("callrelay-db{database}-node-bus:")
}

impl NodeBus {
    /// Subscribes to this node's channel on `redis_url` and answers the requests that come in
    /// with `handler`. Returns once subscribed.
    pub async fn start(
        redis_url: &str,
        node: &str,
        key: BusKey,
        handler: Arc<dyn BusHandler>,
        options: BusOptions,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(redis_url)?;
        let redis = ConnectionManager::new(client.clone()).await?;
        let inner = Arc::new(Inner {
            node: node.to_owned(),
            prefix: channel_prefix(&client),
            key,
            redis,
            handler,
            options,
            pending: Mutex::new(HashMap::new()),
            seen: Mutex::new(Seen::default()),
            metrics: BusMetrics::new(),
        });
        let messages = inner.subscribe(&client).await?;
        let listener = tokio::spawn(inner.clone().listen(client, messages));
        Ok(Self { inner, listener })
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node
    }

    /// The channel node `node` listens on.
    pub fn channel(&self, node: &str) -> String {
        self.inner.channel(node)
    }

    /// Registers `callrelay_cluster_bus_dropped_total` on `registry`.
    pub fn register_metrics(&self, registry: &prometheus::Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.inner.metrics.dropped.clone()))
    }

    /// How many messages were dropped for `reason`.
    pub fn dropped(&self, reason: Dropped) -> u64 {
        self.inner
            .metrics
            .dropped
            .with_label_values(&[reason.as_str()])
            .get()
    }

    /// Sends `body` to node `to` and waits for its answer.
    pub async fn request(&self, to: &str, body: Value) -> Result<Value, BusError> {
        let inner = &self.inner;
        let id = uuid::Uuid::new_v4().to_string();
        let (tx, rx) = oneshot::channel();
        inner.pending_lock().insert(
            id.clone(),
            Pending {
                node: to.to_owned(),
                reply: tx,
            },
        );
        // Taken out again however this ends (an error, the timeout, the caller giving up).
        let _cleanup = RemovePending {
            inner,
            id: id.clone(),
        };
        let envelope = Envelope {
            kind: Kind::Request,
            id,
            from: inner.node.clone(),
            to: to.to_owned(),
            at: now_ms(),
            body,
        };
        let timeout = inner.options.timeout;
        let exchange = async {
            if inner.publish(&envelope).await? == 0 {
                return Err(BusError::NotListening {
                    node: to.to_owned(),
                });
            }
            rx.await.map_err(|_| BusError::Stopped)
        };
        // The whole exchange, publishing included (Redis may be what does not answer).
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(BusError::Timeout {
                    node: to.to_owned(),
                    after: timeout,
                })
            })
    }
}

/// The request ids a node took lately, oldest first, to refuse a replay.
#[derive(Default)]
struct Seen {
    ids: HashSet<(String, String)>,
    order: VecDeque<(i64, (String, String))>,
}

impl Seen {
    /// Records a request id taken at `now`; false if it was taken already. Forgets ids older
    /// than `keep` (a replay of those is stale anyway).
    fn take(&mut self, now: i64, keep: i64, id: (String, String)) -> bool {
        while let Some((at, _)) = self.order.front()
            && now - *at > keep
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if !self.ids.insert(id.clone()) {
            return false;
        }
        self.order.push_back((now, id));
        true
    }
}

struct RemovePending<'a> {
    inner: &'a Inner,
    id: String,
}

impl Drop for RemovePending<'_> {
    fn drop(&mut self) {
        self.inner.pending_lock().remove(&self.id);
    }
}

impl Inner {
    fn channel(&self, node: &str) -> String {
        format!("{}{node}", self.prefix)
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a sealed envelope on its target's channel; returns how many subscribers got it.
    async fn publish(&self, envelope: &Envelope) -> Result<u64, BusError> {
        let sealed = self.key.seal(envelope);
        let receivers: u64 = self
            .redis
            .clone()
            .publish(self.channel(&envelope.to), sealed)
            .await?;
        Ok(receivers)
    }

    async fn subscribe(
        &self,
        client: &redis::Client,
    ) -> Result<redis::aio::PubSubStream, BusError> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel(&self.node)).await?;
        Ok(pubsub.into_on_message())
    }

    /// Reads this node's channel; subscribes again (every second until it works) when the
    /// connection drops.
    async fn listen(
        self: Arc<Self>,
        client: redis::Client,
        mut messages: redis::aio::PubSubStream,
    ) {
        loop {
            while let Some(message) = messages.next().await {
                self.receive(message.get_payload_bytes());
            }
            tracing::warn!(node = %self.node, "node bus: lost its Redis subscription, renewing");
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match self.subscribe(&client).await {
                    Ok(renewed) => {
                        messages = renewed;
                        break;
                    }
                    Err(err) => tracing::warn!(error = %err, "node bus: cannot subscribe"),
                }
            }
        }
    }

    fn drop_message(&self, reason: Dropped, from: Option<&str>) {
        self.metrics
            .dropped
            .with_label_values(&[reason.as_str()])
            .inc();
        tracing::debug!(reason = reason.as_str(), from, "node bus: message dropped");
    }

    fn receive(self: &Arc<Self>, bytes: &[u8]) {
        let envelope = match self.key.open(bytes) {
            Ok(envelope) => envelope,
            Err(reason) => return self.drop_message(reason, None),
        };
        if envelope.to != self.node {
            return self.drop_message(Dropped::Misdirected, Some(&envelope.from));
        }
        let now = now_ms();
        let max_age = MAX_AGE.as_millis() as i64;
        if (now - envelope.at).abs() > max_age {
            return self.drop_message(Dropped::Stale, Some(&envelope.from));
        }
        match envelope.kind {
            Kind::Request => {
                let fresh = self.seen.lock().unwrap_or_else(|e| e.into_inner()).take(
                    now,
                    2 * max_age,
                    (envelope.from.clone(), envelope.id.clone()),
                );
                if !fresh {
                    return self.drop_message(Dropped::Replayed, Some(&envelope.from));
                }
                let inner = self.clone();
                tokio::spawn(async move { inner.answer(envelope).await });
            }
            Kind::Reply => {
                let waiting = {
                    let mut pending = self.pending_lock();
                    match pending.get(&envelope.id) {
                        Some(p) if p.node == envelope.from => pending.remove(&envelope.id),
                        _ => None,
                    }
                };
                match waiting {
                    Some(p) => {
                        let _ = p.reply.send(envelope.body);
                    }
                    None => self.drop_message(Dropped::Unmatched, Some(&envelope.from)),
                }
            }
        }
    }

    async fn answer(&self, request: Envelope) {
        let body = self.handler.handle(&request.from, request.body).await;
        let reply = Envelope {
            kind: Kind::Reply,
            id: request.id,
            from: self.node.clone(),
            to: request.from,
            at: now_ms(),
            body,
        };
        match self.publish(&reply).await {
            Ok(0) => tracing::debug!(to = %reply.to, "node bus: the asking node is gone"),
            Ok(_) => {}
            Err(err) => tracing::warn!(to = %reply.to, error = %err, "node bus: cannot reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope() -> Envelope {
        Envelope {
            kind: Kind::Request,
            id: "r-1".into(),
            from: "a".into(),
            to: "b".into(),
            at: 1_700_000_000_000,
            body: json!({"op": "join", "room": "x"}),
        }
    }

    #[test]
    fn only_the_clusters_key_opens_a_sealed_message_unaltered() {
        let key = BusKey::derive(b"secret");
        let sealed = key.seal(&envelope());
        assert_eq!(key.open(&sealed), Ok(envelope()));
        // Another secret, one byte changed anywhere, or nothing but a MAC: refused.
        assert_eq!(
            BusKey::derive(b"other secret").open(&sealed),
            Err(Dropped::BadMac)
        );
        for at in [0, MAC_LEN, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[at] ^= 1;
            assert_eq!(key.open(&altered), Err(Dropped::BadMac), "byte {at}");
        }
        assert_eq!(key.open(&sealed[..MAC_LEN]), Err(Dropped::Malformed));
        // The bus key is not the secret itself.
        assert_ne!(&key.0[..], b"secret");
        assert_eq!(format!("{key:?}"), "BusKey(<redacted>)");
    }

    #[test]
    fn a_request_id_is_taken_once_until_it_is_stale_anyway() {
        let mut seen = Seen::default();
        let id = |n: &str| ("a".to_owned(), n.to_owned());
        assert!(seen.take(0, 60_000, id("1")));
        assert!(!seen.take(1_000, 60_000, id("1")));
        assert!(seen.take(1_000, 60_000, ("b".to_owned(), "1".to_owned())));
        assert!(seen.take(30_000, 60_000, id("2")));
        // 61 s on, a's "1" is forgotten (its message would be dropped as stale); what came
        // later is not.
        assert!(!seen.take(61_000, 60_000, id("2")));
        assert_eq!(seen.ids.len(), 2);
        assert!(seen.take(61_000, 60_000, id("1")));
    }
}

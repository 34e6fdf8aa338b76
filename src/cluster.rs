//! Several nodes (`cluster.redis_url`): the registry of live nodes and of the node each relayed
//! room is pinned to, in the Redis the nodes share.
//!
//! Keys (all under `callrelay:`), every one with a lease so that a node that dies leaves nothing
//! behind for longer than `cluster.lease_secs`:
//! - `node:{id}`: the node's [`NodeInfo`] (JSON), renewed by its heartbeat; the node is live
//!   while the key exists. `nodes`, a set, names every node that ever registered, so the live
//!   ones can be listed without a `KEYS` scan; a dead one is dropped from it when found dead.
//! - `room:{room}`: the node a room is pinned to; `node:{id}:rooms`, the set of rooms pinned to a
//!   node (its load). The node's heartbeat renews the pins that are still its own.
//! - `duty:{name}`: the node that does a task for all ([`Duty`]), renewed by that node.
//!
//! A pin is taken by a Lua script, so two nodes placing the same new room at once agree on one
//! node, and a pin to a dead node is replaced only by the first to see it dead. The scripts touch
//! keys they do not declare: they need one Redis, not a Redis Cluster.

pub mod bus;
pub mod relay;
pub mod shared_rooms;

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "callrelay:";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("node {node} registered something that is not a node: {error}")]
    BadNode {
        node: String,
        error: serde_json::Error,
    },
    #[error("no live node to pin room {room} to")]
    NoLiveNode { room: String },
    #[error("node bus: {0}")]
    Bus(#[from] bus::BusError),
}

/// What a node tells the others about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// Unix milliseconds of the node's start.
    pub started_at: i64,
}

/// A live node and the number of rooms pinned to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LiveNode {
    #[serde(flatten)]
    pub info: NodeInfo,
    pub rooms: u64,
}

fn node_key(id: &str) -> String {
    format!("{PREFIX}node:{id}")
}

fn node_rooms_key(id: &str) -> String {
    format!("{PREFIX}node:{id}:rooms")
}

fn room_key(room: &str) -> String {
    format!("{PREFIX}room:{room}")
}

const NODES_KEY: &str = "callrelay:nodes";

/// KEYS[1] the room's pin. ARGV: the chosen node, the lease (ms), the prefix. Keeps a pin to a
/// live node; otherwise pins the room to the chosen node. Returns the room's node.
const PIN: &str = r"
local current = redis.call('GET', KEYS[1])
if current and redis.call('EXISTS', ARGV[3] .. 'node:' .. current) == 1 then
  return current
end
if current then
  redis.call('SREM', ARGV[3] .. 'node:' .. current .. ':rooms', KEYS[1])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local rooms = ARGV[3] .. 'node:' .. ARGV[1] .. ':rooms'
redis.call('SADD', rooms, KEYS[1])
redis.call('PEXPIRE', rooms, ARGV[2])
return ARGV[1]
";

/// KEYS[1] the node's key, KEYS[2] its room set, KEYS[3] the set of nodes. ARGV: the node's
/// info, its id, the lease (ms). Renews the node (listed again, should another node have found
/// it dead meanwhile) and every pin still its own; forgets the others. Returns its room count.
/// One script, so no node ever sees it listed and not registered.
const HEARTBEAT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[2])
for _, room in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('GET', room) == ARGV[2] then
    redis.call('PEXPIRE', room, ARGV[3])
  else
    redis.call('SREM', KEYS[2], room)
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('SCARD', KEYS[2])
";

/// KEYS[1] the room's pin, KEYS[2] the node's room set. ARGV: the node. Unpins the room if it
/// is pinned to that node.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[2], KEYS[1])
return 0
";

/// KEYS[1] a duty's lease. ARGV: the node, the lease (ms). Takes the duty if nobody holds it,
/// renews it if this node does. Returns 1 when this node holds it.
const LEAD: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// KEYS[1] a duty's lease. ARGV: the node. Gives the duty up if this node holds it.
const RESIGN: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// A task one node of the cluster does for all, under a lease ([`Registry::lead`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duty {
    /// Delivering the webhook outbox (every node writes to it; one delivers).
    Webhooks,
    /// Ending what a dead node's sockets left in the shared rooms and calls.
    Sweep,
}

impl Duty {
    const ALL: [Duty; 2] = [Duty::Webhooks, Duty::Sweep];

    fn key(self) -> String {
        let name = match self {
            Duty::Webhooks => "webhooks",
            Duty::Sweep => "sweep",
        };
        format!("{PREFIX}duty:{name}")
    }
}

/// This node's handle on the cluster registry.
pub struct Registry {
    redis: ConnectionManager,
    info: NodeInfo,
    lease: Duration,
}

impl Registry {
    /// Connects to Redis and registers this node (its first heartbeat).
    pub async fn join(
        redis_url: &str,
        info: NodeInfo,
        lease: Duration,
    ) -> Result<Arc<Self>, ClusterError> {
        let client = redis::Client::open(redis_url)?;
        let redis = ConnectionManager::new(client).await?;
        let registry = Arc::new(Self { redis, info, lease });
        registry.heartbeat().await?;
        Ok(registry)
    }

    pub fn node_id(&self) -> &str {
        &self.info.id
    }

    /// The consult rooms and lobbies this node shares with the others.
    pub fn shared_rooms(&self) -> shared_rooms::SharedRooms {
        shared_rooms::SharedRooms::new(self.redis.clone(), &self.info.id)
    }

    /// The lease of a node's registration.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn lease_ms(&self) -> u64 {
        self.lease.as_millis() as u64
    }

    /// Renews this node's registration and its rooms' pins; returns how many rooms it holds.
    pub async fn heartbeat(&self) -> Result<u64, ClusterError> {
        let info = serde_json::to_string(&self.info).expect("NodeInfo serializes");
        let rooms = Script::new(HEARTBEAT)
            .key(node_key(&self.info.id))
            .key(node_rooms_key(&self.info.id))
            .key(NODES_KEY)
            .arg(info)
            .arg(&self.info.id)
            .arg(self.lease_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(rooms)
    }

    /// Sends heartbeats every third of the lease until aborted, and sets `live_nodes` to the
    /// live nodes it then sees. A failed one is logged and retried on the next tick (the node
    /// stays registered until its lease runs out).
    pub fn keep_alive(self: &Arc<Self>, live_nodes: IntGauge) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(registry.lease / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let beat = async {
                    registry.heartbeat().await?;
                    registry.live_nodes().await
                };
                match beat.await {
                    Ok(nodes) => live_nodes.set(nodes.len() as i64),
                    Err(err) => tracing::warn!(error = %err, "cluster heartbeat failed"),
                }
            }
        })
    }

    /// The live nodes, least loaded first (ties by id). Nodes found dead are forgotten.
    pub async fn live_nodes(&self) -> Result<Vec<LiveNode>, ClusterError> {
        let mut redis = self.redis.clone();
        let mut ids: Vec<String> = redis.smembers(NODES_KEY).await?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.get(node_key(id)).scard(node_rooms_key(id));
        }
        let answers: Vec<(Option<String>, u64)> = pipe.query_async(&mut redis).await?;
        let mut live = Vec::new();
        for (id, (info, rooms)) in ids.into_iter().zip(answers) {
            match info {
                Some(json) => {
                    let info = serde_json::from_str(&json)
                        .map_err(|error| ClusterError::BadNode { node: id, error })?;
                    live.push(LiveNode { info, rooms });
                }
                None => {
                    let _: () = redis.srem(NODES_KEY, &id).await?;
                }
            }
        }
        live.sort_by(|a, b| a.rooms.cmp(&b.rooms).then(a.info.id.cmp(&b.info.id)));
        Ok(live)
    }

    /// The node `room` is pinned to: the node it is pinned to already if that one is live,
    /// otherwise the least loaded live node, which it is pinned to from now on.
    pub async fn pin_room(&self, room: &str) -> Result<String, ClusterError> {
        let mut redis = self.redis.clone();
        if let Some(node) = redis.get::<_, Option<String>>(room_key(room)).await?
            && redis.exists::<_, bool>(node_key(&node)).await?
        {
            return Ok(node);
        }
        let least_loaded = self.live_nodes().await?.into_iter().next().ok_or_else(|| {
            ClusterError::NoLiveNode {
                room: room.to_owned(),
            }
        })?;
        let node = Script::new(PIN)
            .key(room_key(room))
            .arg(&least_loaded.info.id)
            .arg(self.lease_ms())
            .arg(PREFIX)
            .invoke_async(&mut redis)
            .await?;
        Ok(node)
    }

    /// Pins `room` to this node unless it is pinned to a live node already; returns the node
    /// it is pinned to. A media node claims a room it is about to hold, in case its pin went
    /// (released by its last leave, or lapsed) between another node's [`Self::pin_room`] and
    /// the request that node sent here.
    pub async fn claim_room(&self, room: &str) -> Result<String, ClusterError> {
        let node = Script::new(PIN)
            .key(room_key(room))
            .arg(&self.info.id)
            .arg(self.lease_ms())
            .arg(PREFIX)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(node)
    }

    /// The rooms pinned to this node.
    pub async fn pinned_rooms(&self) -> Result<Vec<String>, ClusterError> {
        let keys: Vec<String> = self
            .redis
            .clone()
            .smembers(node_rooms_key(&self.info.id))
            .await?;
        let prefix = room_key("");
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned))
            .collect())
    }

    /// The node `room` is pinned to, if any (live or not).
    pub async fn room_node(&self, room: &str) -> Result<Option<String>, ClusterError> {
        Ok(self.redis.clone().get(room_key(room)).await?)
    }

    /// Unpins `room` if it is pinned to this node (its last member left).
    pub async fn release_room(&self, room: &str) -> Result<(), ClusterError> {
        let _: i64 = Script::new(RELEASE)
            .key(room_key(room))
            .key(node_rooms_key(&self.info.id))
            .arg(&self.info.id)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Whether this node does `duty` now: it takes it if no live node holds it, and keeps it
    /// (for a lease) by asking again before the lease runs out.
    pub async fn lead(&self, duty: Duty) -> Result<bool, ClusterError> {
        let held: i64 = Script::new(LEAD)
            .key(duty.key())
            .arg(&self.info.id)
            .arg(self.lease_ms())
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(held == 1)
    }

    /// How often a duty's holder must renew it ([`Self::lead`]).
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    /// Leaves the cluster (a clean shutdown): the node, its pins and its duties go at once, not
    /// a lease later.
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis.clone();
        for duty in Duty::ALL {
            let _: i64 = Script::new(RESIGN)
                .key(duty.key())
                .arg(&self.info.id)
                .invoke_async(&mut redis)
                .await?;
        }
        let rooms: Vec<String> = redis.smembers(node_rooms_key(&self.info.id)).await?;
        for room in rooms {
            let _: i64 = Script::new(RELEASE)
                .key(&room)
                .key(node_rooms_key(&self.info.id))
                .arg(&self.info.id)
                .invoke_async(&mut redis)
                .await?;
        }
        let _: () = redis.del(node_key(&self.info.id)).await?;
        let _: () = redis.srem(NODES_KEY, &self.info.id).await?;
        Ok(())
    }
}

/// `cluster.node_id`, or the host name and the process id when it is empty.
pub fn node_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_owned());
    format!("{host}-{}", std::process::id())
}

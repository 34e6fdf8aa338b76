//! The consult rooms and lobbies the nodes share ([`SharedStore`]), in the cluster's Redis.
//!
//! Keys (under `callrelay:`): `consult:{appointment}`, the appointment's JSON document;
//! `consult:{appointment}:lock`, its lock (a random token, with a 5 s lease so that a node dying
//! while it holds one blocks nobody for long); `consults`, the set of appointments with a
//! document; `socket-room` and `socket-lobby`, hashes of socket id → the appointment whose room
//! or lobby it is in (a socket's events do not name it). Writing a document, its sockets' moves
//! and releasing the lock is one script, refused when the token is no longer the lock's.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use callrelay_signaling::{Doc, SharedError, SharedLock, SharedStore, SocketMove};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{PREFIX, node_key};

/// How long a lock is held at most: a change is a read, a computation and a write.
const LOCK_LEASE: Duration = Duration::from_secs(5);
/// How long [`SharedStore::lock`] waits for a lock held by another change.
const LOCK_WAIT: Duration = Duration::from_secs(5);

const CONSULTS_KEY: &str = "callrelay:consults";
const SOCKET_ROOM_KEY: &str = "callrelay:socket-room";
const SOCKET_LOBBY_KEY: &str = "callrelay:socket-lobby";

fn doc_key(doc: Doc<'_>) -> String {
    match doc {
        Doc::Consult(appointment) => format!("{PREFIX}consult:{appointment}"),
        Doc::Calls => format!("{PREFIX}calls"),
    }
}

fn lock_key(doc: Doc<'_>) -> String {
    format!("{}:lock", doc_key(doc))
}

/// The appointment a document is listed under in `consults` ("" for the call book: not listed).
fn listed_as(doc: Doc<'_>) -> &str {
    match doc {
        Doc::Consult(appointment) => appointment,
        Doc::Calls => "",
    }
}

/// KEYS[1] the document, KEYS[2] its lock. ARGV: the token, the lease (ms). Takes the lock if
/// free; returns {'1', document?} when taken, {'0'} when held by someone else.
const LOCK_READ: &str = r"
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local doc = redis.call('GET', KEYS[1])
  if doc then return {'1', doc} end
  return {'1'}
end
return {'0'}
";

/// KEYS[1] the document, KEYS[2] its lock, KEYS[3] the set of documents, KEYS[4] and KEYS[5]
/// the socket → room and socket → lobby hashes. ARGV: the token, the document ('' deletes it),
/// the appointment ('' for a document not listed), the sockets' moves (JSON [`SocketMove`]s).
/// Returns 0, writing nothing, when
/// the lock is not (or no longer) the token's. A socket leaving is unindexed only if indexed
/// to this appointment.
const WRITE_UNLOCK: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
for _, move in ipairs(cjson.decode(ARGV[4])) do
  local index = KEYS[5]
  if move.place == 'room' then index = KEYS[4] end
  if move.entered then
    redis.call('HSET', index, move.socketId, ARGV[3])
  elseif redis.call('HGET', index, move.socketId) == ARGV[3] then
    redis.call('HDEL', index, move.socketId)
  end
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '' then redis.call('SREM', KEYS[3], ARGV[3]) end
else
  redis.call('SET', KEYS[1], ARGV[2])
  if ARGV[3] ~= '' then redis.call('SADD', KEYS[3], ARGV[3]) end
end
redis.call('DEL', KEYS[2])
return 1
";

/// KEYS[1] a lock. ARGV: the token. Releases the lock if it is the token's.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
";

/// This node's handle on the shared consult rooms.
pub struct SharedRooms {
    redis: ConnectionManager,
    node: String,
}

impl SharedRooms {
    pub fn new(redis: ConnectionManager, node: &str) -> SharedRooms {
        SharedRooms {
            redis,
            node: node.to_owned(),
        }
    }
}

fn store_error(err: redis::RedisError) -> SharedError {
    SharedError::Store(err.to_string())
}

#[async_trait]
impl SharedStore for SharedRooms {
    fn node_id(&self) -> &str {
        &self.node
    }

    async fn lock(&self, doc: Doc<'_>) -> Result<(SharedLock, Option<String>), SharedError> {
        let token = uuid::Uuid::new_v4().to_string();
        let script = Script::new(LOCK_READ);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            let mut answer: Vec<String> = script
                .key(doc_key(doc))
                .key(lock_key(doc))
                .arg(&token)
                .arg(LOCK_LEASE.as_millis() as u64)
                .invoke_async(&mut self.redis.clone())
                .await
                .map_err(store_error)?;
            if answer.first().map(String::as_str) == Some("1") {
                let doc = (answer.len() > 1).then(|| answer.swap_remove(1));
                return Ok((SharedLock { token }, doc));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SharedError::Busy(doc.to_string()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn write_unlock(
        &self,
        doc: Doc<'_>,
        lock: SharedLock,
        value: Option<String>,
        moves: &[SocketMove],
    ) -> Result<(), SharedError> {
        let moves = serde_json::to_string(moves).expect("socket moves serialize");
        let written: i64 = Script::new(WRITE_UNLOCK)
            .key(doc_key(doc))
            .key(lock_key(doc))
            .key(CONSULTS_KEY)
            .key(SOCKET_ROOM_KEY)
            .key(SOCKET_LOBBY_KEY)
            .arg(&lock.token)
            .arg(value.unwrap_or_default())
            .arg(listed_as(doc))
            .arg(moves)
            .invoke_async(&mut self.redis.clone())
            .await
            .map_err(store_error)?;
        if written == 1 {
            Ok(())
        } else {
            Err(SharedError::LockLost(doc.to_string()))
        }
    }

    async fn unlock(&self, doc: Doc<'_>, lock: SharedLock) {
        let released: Result<i64, _> = Script::new(UNLOCK)
            .key(lock_key(doc))
            .arg(&lock.token)
            .invoke_async(&mut self.redis.clone())
            .await;
        if let Err(err) = released {
            tracing::warn!(error = %err, "could not release a room lock: its lease runs out");
        }
    }

    async fn read(&self, doc: Doc<'_>) -> Result<Option<String>, SharedError> {
        self.redis
            .clone()
            .get(doc_key(doc))
            .await
            .map_err(store_error)
    }

    async fn place_of(
        &self,
        socket_id: &str,
    ) -> Result<(Option<String>, Option<String>), SharedError> {
        redis::pipe()
            .hget(SOCKET_ROOM_KEY, socket_id)
            .hget(SOCKET_LOBBY_KEY, socket_id)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(store_error)
    }

    async fn keys(&self) -> Result<Vec<String>, SharedError> {
        self.redis
            .clone()
            .smembers(CONSULTS_KEY)
            .await
            .map_err(store_error)
    }

    async fn dead_nodes(&self, nodes: &[&str]) -> Result<HashSet<String>, SharedError> {
        if nodes.is_empty() {
            return Ok(HashSet::new());
        }
        let mut pipe = redis::pipe();
        for node in nodes {
            pipe.exists(node_key(node));
        }
        let live: Vec<bool> = pipe
            .query_async(&mut self.redis.clone())
            .await
            .map_err(store_error)?;
        Ok(nodes
            .iter()
            .zip(live)
            .filter(|(_, live)| !live)
            .map(|(node, _)| (*node).to_owned())
            .collect())
    }
}

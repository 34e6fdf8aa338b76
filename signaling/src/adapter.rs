//! How Socket.IO reaches sockets: on this node only, or on every node of a cluster through
//! socketioxide's Redis adapter (`cluster.redis_url`).
//!
//! One adapter type serves both, so the protocol code is not generic over it: the Redis
//! adapter over a [`NodeDriver`] that is either Redis pub/sub or nothing at all. Alone, a
//! broadcast is handed to no one but the local sockets, and a request to the other nodes
//! (fetching sockets, say) expects no answer and returns at once.

use socketioxide::adapter::Emitter;
use socketioxide_redis::drivers::redis::RedisDriver;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};

/// The adapter of every namespace.
pub type NodeAdapter = CustomRedisAdapter<Emitter, NodeDriver>;
/// [`socketioxide::SocketIo`] over [`NodeAdapter`].
pub type SocketIo = socketioxide::SocketIo<NodeAdapter>;
/// [`socketioxide::extract::SocketRef`] over [`NodeAdapter`].
pub type SocketRef = socketioxide::extract::SocketRef<NodeAdapter>;

/// Where the adapter sends what other nodes must see.
#[derive(Clone)]
pub enum NodeDriver {
    /// A single node: nowhere.
    Alone,
    /// Redis pub/sub, shared by the nodes of a cluster.
    Redis(RedisDriver),
}

#[derive(Debug, thiserror::Error)]
#[error("redis pub/sub: {0}")]
pub struct DriverError(<RedisDriver as Driver>::Error);

impl Driver for NodeDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> Result<(), DriverError> {
        match self {
            NodeDriver::Alone => Ok(()),
            NodeDriver::Redis(redis) => redis.publish(chan, val).await.map_err(DriverError),
        }
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> Result<MessageStream<ChanItem>, DriverError> {
        match self {
            NodeDriver::Alone => Ok(MessageStream::new_empty()),
            NodeDriver::Redis(redis) => redis.subscribe(chan, size).await.map_err(DriverError),
        }
    }

    async fn unsubscribe(&self, chan: String) -> Result<(), DriverError> {
        match self {
            NodeDriver::Alone => Ok(()),
            NodeDriver::Redis(redis) => redis.unsubscribe(chan).await.map_err(DriverError),
        }
    }

    async fn num_serv(&self, chan: &str) -> Result<u16, DriverError> {
        match self {
            // This node is the only one: requests to the others expect no answer.
            NodeDriver::Alone => Ok(1),
            NodeDriver::Redis(redis) => redis.num_serv(chan).await.map_err(DriverError),
        }
    }
}

/// The namespace could not be set up: its adapter did not subscribe to the cluster's channels.
#[derive(Debug, thiserror::Error)]
#[error("Socket.IO adapter: {0}")]
pub struct AttachError(pub(crate) String);

/// The adapter's state for [`socketioxide::SocketIoBuilder::with_adapter`]: this node alone.
pub fn alone() -> RedisAdapterCtr<NodeDriver> {
    RedisAdapterCtr::new_with_driver(NodeDriver::Alone, RedisAdapterConfig::default())
}

/// The adapter's state for a node of a cluster: Redis pub/sub on `redis_url` (RESP3 is asked
/// for: the driver needs Redis 7 or newer). Pub/sub channels belong to no database, so their
/// names carry the URL's database number: one cluster per database, as for the registry's keys.
pub async fn over_redis(redis_url: &str) -> Result<RedisAdapterCtr<NodeDriver>, redis::RedisError> {
    let mut url = redis_url.to_owned();
    if !url.contains("protocol=") {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("protocol=resp3");
    }
    let client = redis::Client::open(url)?;
    let database = client.get_connection_info().redis_settings().db();
    let driver = RedisDriver::new(&client).await?;
    Ok(RedisAdapterCtr::new_with_driver(
        NodeDriver::Redis(driver),
        RedisAdapterConfig::default().with_prefix(format!("callrelay-db{database}-socket.io")),
    ))
}

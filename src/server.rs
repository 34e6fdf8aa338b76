//! Start-up and shutdown: wires configuration, database, auth, signaling and HTTP onto one
//! listener, and drains on the first SIGINT/SIGTERM: no new rooms or calls, those in progress
//! go on until they end or `server.drain_timeout_secs` passes; a second signal exits at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::trace::TraceLayer;

use callrelay_media::{MediaConfig, MediaError, Sfu};
use callrelay_signaling::adapter::{self, AttachError, NodeAdapter};
use callrelay_signaling::{
    IceAuth, IceServers, Relay, Signaling, SignalingConfig, SignalingMetrics, SocketIo,
};

use crate::auth::JwtAuth;
use crate::cluster::bus::{BusKey, BusOptions, NodeBus};
use crate::cluster::relay::{ClusterRelay, MediaNode};
use crate::cluster::{self, ClusterError, Duty, NodeInfo, Registry};
use crate::config::{Config, LogFormat, MediaMode};
use crate::db::{Db, DbError};
use crate::http::{self, AppState};
use crate::metrics::Metrics;
use crate::relay::{SfuRelay, pump_media_events};
use crate::secret_file::{self, SecretFileError};
use crate::webhooks::{WebhookMetrics, WebhookSender};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("database: {0}")]
    Db(#[from] DbError),
    #[error("media relay: {0}")]
    Media(#[from] MediaError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("webhooks: cannot set up the HTTP client: {0}")]
    WebhookClient(reqwest::Error),
    #[error("{0}")]
    Secret(#[from] SecretFileError),
    #[error("cluster: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    SocketIo(#[from] AttachError),
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The default filter when `RUST_LOG` is unset.
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn";

/// Per-target ceilings that hold whatever `RUST_LOG` asks for: no level may log a token, a
/// secret or an SDP body, and these crates do below their ceiling. Socket.IO and engine.io
/// print whole packets at debug (the connect packet's JWT, SDPs, ICE passwords); the
/// webrtc-rs core prints ICE usernames in warnings about bad STUN, and one warning per bad
/// datagram (the SFU counts those in `callrelay_media_datagrams_dropped_total` and logs a
/// periodic summary instead); the WebSocket and HTTP stacks print frames and URIs (engine.io
/// session ids) at trace. Our own crates never log secrets at any level.
fn secret_ceilings() -> tracing_subscriber::filter::Targets {
    use tracing::level_filters::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("callrelay", LevelFilter::TRACE)
        .with_target("tower_http", LevelFilter::TRACE)
        .with_target("socketioxide", LevelFilter::WARN)
        .with_target("engineioxide", LevelFilter::WARN)
        .with_target("rtc", LevelFilter::ERROR)
        .with_target("webrtc", LevelFilter::ERROR)
}

/// Sets up `tracing` per `server.log_format`; `RUST_LOG` overrides the default filter, below
/// the ceilings of [`secret_ceilings`].
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::{EnvFilter, FilterExt};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    let wanted =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER));
    let filter = wanted.and(secret_ceilings());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let layer = match format {
        LogFormat::Json => fmt::layer().json().with_filter(filter).boxed(),
        LogFormat::Text => fmt::layer().with_ansi(ansi).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// The span of one HTTP request: method and path only. The query string stays out: engine.io
/// puts its session id there, which is as good as the socket's credentials.
fn http_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path())
}

/// The signing secret: the configured one, else the one kept in `server.data_dir` (made on
/// the first start; see [`secret_file`]). Logs where it comes from, never the secret.
pub fn jwt_secret(config: &Config) -> Result<Vec<u8>, SecretFileError> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.as_bytes().to_vec());
    }
    let (secret, made) = secret_file::load_or_create(&config.server.data_dir)?;
    let file = secret_file::path(&config.server.data_dir);
    if made {
        tracing::info!(
            file = %file.display(),
            "auth.jwt_secret is empty: generated a signing secret and kept it in the data \
             directory (mode 0600); tokens will survive restarts"
        );
    } else {
        tracing::info!(
            file = %file.display(),
            "auth.jwt_secret is empty: signing with the secret kept in the data directory"
        );
    }
    Ok(secret)
}

/// How often the database is pinged for `callrelay_database_up` (alerts need it even when
/// nothing probes `/readyz`).
pub const DATABASE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Keeps `callrelay_database_up` current: 1 when a ping answers within 5 s, else 0.
async fn watch_database(db: Db, up: prometheus::IntGauge) {
    let mut tick = tokio::time::interval(DATABASE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), db.ping()).await,
            Ok(Ok(()))
        );
        if !ok && up.get() == 1 {
            tracing::warn!("database does not answer (callrelay_database_up 0)");
        }
        up.set(i64::from(ok));
    }
}

/// Runs the server until a shutdown signal, then drains.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let metrics = Metrics::new()?;
    let secret = jwt_secret(&config)?;
    let auth = Arc::new(JwtAuth::new(&secret, metrics.auth_failures.clone()));
    let db = Db::connect(&config.database.url, config.database.max_connections)
        .await?
        .with_webhooks(&config.webhooks.urls);
    let cluster = join_cluster(&config, metrics.cluster_nodes.clone()).await?;
    // Registered with or without receivers, so dashboards and alerts find them at zero.
    let webhook_metrics = WebhookMetrics::register(&metrics.registry)?;
    let webhook_sender = if config.webhooks.urls.is_empty() {
        None
    } else {
        let mut sender = WebhookSender::new(db.clone(), &config.webhooks.secret, webhook_metrics)
            .map_err(ServeError::WebhookClient)?;
        if let Some((registry, _)) = &cluster {
            sender = sender.in_cluster(registry.clone());
        }
        tracing::info!(receivers = config.webhooks.urls.len(), "webhooks on");
        Some(tokio::spawn(sender.run()))
    };
    metrics.database_up.set(1);
    let database_watch = tokio::spawn(watch_database(db.clone(), metrics.database_up.clone()));
    // Calls left open by an earlier run are closed, unless other nodes are running: those may be
    // theirs.
    let alone = match &cluster {
        Some((registry, _)) => registry.live_nodes().await?.len() <= 1,
        None => true,
    };
    if alone {
        let closed = db.close_interrupted_calls().await?;
        if closed > 0 {
            tracing::info!(
                calls = closed,
                "closed calls left open by the previous run (server-restart)"
            );
        }
    }

    // p2p-only servers never relay, so they do not hold the UDP port either.
    let sfu = if config.media.mode == MediaMode::P2pOnly {
        None
    } else {
        let media_config = MediaConfig {
            bind: SocketAddr::new(config.media.bind_ip, config.media.udp_port),
            tcp_port: config.media.ice_tcp.then_some(match config.media.tcp_port {
                0 => config.media.udp_port,
                port => port,
            }),
            public_ips: config.media.public_ips.clone(),
            workers: config.media.workers,
            ..MediaConfig::default()
        };
        let (handle, events) = Sfu::start(media_config, &metrics.registry).await?;
        tracing::info!(addr = %handle.local_addr(), "SFU listening (UDP, ICE-lite)");
        Some((handle, events))
    };
    let local_relay = sfu
        .as_ref()
        .map(|(handle, _)| Arc::new(SfuRelay(handle.clone())) as Arc<dyn Relay>);
    // On a cluster node, `sfu-*` goes to each room's pinned node (this one's SFU, or another's
    // over the node bus).
    let (relay, media_node, tidy) = match (&cluster, local_relay) {
        (Some((registry, _)), Some(local)) => {
            let (relay, media, tidy) =
                cluster_relay(&config, registry, local, &secret, &metrics.registry).await?;
            (Some(relay), Some(media), Some(tidy))
        }
        (_, local) => (local, None, None),
    };
    drop(secret);
    let signaling = Signaling::new(
        signaling_config(&config),
        Arc::new(db.clone()),
        auth.clone(),
        relay,
        SignalingMetrics::register(&metrics.registry)?,
        cluster.as_ref().map(|(registry, _)| {
            Arc::new(registry.shared_rooms()) as Arc<dyn callrelay_signaling::SharedStore>
        }),
    );
    let message_limit = config.limits.max_socket_message_bytes;
    let adapter = match &cluster {
        Some(_) => adapter::over_redis(&config.cluster.redis_url)
            .await
            .map_err(ClusterError::from)?,
        None => adapter::alone(),
    };
    let (socketio_layer, io) = socketioxide::SocketIo::builder()
        .with_state(signaling.clone())
        .with_adapter::<NodeAdapter>(adapter)
        // A client whose network vanished (a phone leaving Wi-Fi) is noticed within 20 s, not
        // the engine.io default of 45 s: its room and relay connections are released sooner,
        // and its browser, which applies the same numbers, reconnects sooner.
        .ping_interval(std::time::Duration::from_secs(10))
        .ping_timeout(std::time::Duration::from_secs(10))
        .max_payload(message_limit as u64)
        .ws_max_message_size(message_limit)
        .ws_max_frame_size(message_limit)
        .build_layer();
    Signaling::attach(&io).await?;
    // Members, waiters and calls of a node that died end once its lease runs out.
    let sweeper = cluster.as_ref().map(|(registry, _)| {
        tokio::spawn(sweep_dead_nodes(
            registry.clone(),
            signaling.clone(),
            io.clone(),
        ))
    });
    let (sfu, media_pump) = match sfu {
        Some((handle, events)) => {
            let pump = tokio::spawn(pump_media_events(
                events,
                signaling.clone(),
                io.clone(),
                media_node,
            ));
            (Some(handle), Some(pump))
        }
        None => (None, None),
    };

    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        db: db.clone(),
        seen_users: Default::default(),
        auth,
        metrics: metrics.clone(),
        draining: draining.clone(),
        dev_tokens: config.auth.dev_tokens,
        token_ttl_secs: config.auth.token_ttl_secs,
        metrics_on_main: config.server.metrics_bind.is_none(),
        ice_servers: Arc::new(ice_servers(&config)),
        signaling: signaling.clone(),
        io: io.clone(),
        cluster: cluster.as_ref().map(|(registry, _)| registry.clone()),
    };

    let mut app = http::router(state.clone());
    if let Some(web) = web_client(&config.server.web_dir) {
        app = app.fallback_service(web);
    }
    let app = app
        .layer(axum::extract::DefaultBodyLimit::max(
            config.limits.max_http_body_bytes,
        ))
        .layer(socketio_layer)
        .layer(TraceLayer::new_for_http().make_span_with(http_span));

    let listener = bind(config.server.bind).await?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, database = ?db.backend(), "callrelay listening on http://{local}");

    if let Some(addr) = config.server.metrics_bind {
        let metrics_listener = bind(addr).await?;
        tracing::info!(addr = %metrics_listener.local_addr()?, "metrics listening");
        let router = http::metrics_router(state);
        tokio::spawn(async move {
            if let Err(err) = axum::serve(metrics_listener, router).await {
                tracing::error!(error = %err, "metrics listener failed");
            }
        });
    }

    let drain_timeout = Duration::from_secs(config.server.drain_timeout_secs);
    // Watched from start-up on, so that no signal falls between the first and the second.
    let mut signals = StopSignals::new();
    let drain = {
        let io = io.clone();
        let signaling = signaling.clone();
        let draining_gauge = metrics.draining.clone();
        async move {
            signals.recv().await;
            tokio::spawn(async move {
                signals.recv().await;
                tracing::warn!("second stop signal: exiting at once, the drain unfinished");
                std::process::exit(1);
            });
            draining.store(true, Ordering::Relaxed);
            draining_gauge.set(1);
            signaling.start_draining(&io, drain_timeout);
            let now = signaling.in_progress().await;
            tracing::info!(
                rooms = now.rooms,
                calls = now.calls,
                drain_timeout_secs = drain_timeout.as_secs(),
                "draining: /readyz answers 503, new consult rooms and calls are refused, those \
                 in progress go on until they end or the drain timeout passes (a second signal \
                 exits at once)"
            );
            if tokio::time::timeout(drain_timeout, signaling.settled())
                .await
                .is_ok()
            {
                tracing::info!("drained: no consult room or call is left");
            } else {
                let left = signaling.in_progress().await;
                tracing::info!(
                    rooms = left.rooms,
                    calls = left.calls,
                    "drain timeout passed: ending the rooms and calls left (server-restart)"
                );
            }
            tokio::spawn(force_exit_after(STOP_LIMIT));
            signaling.shut_down(&io).await;
            // SFU events are for sockets: none is left once io closes (and socketioxide panics
            // on a lookup after its namespaces are gone).
            if let Some(pump) = media_pump {
                pump.abort();
            }
            io.close().await;
            tracing::info!("sockets closed");
            if let Some(sfu) = sfu {
                sfu.shutdown().await;
                tracing::info!("SFU stopped");
            }
        }
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(drain)
        .await?;
    database_watch.abort();
    if let Some(tidy) = tidy {
        tidy.abort();
    }
    // What it had not delivered stays in the outbox for the next start.
    if let Some(sender) = webhook_sender {
        sender.abort();
    }
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    if let Some((registry, keep_alive)) = cluster {
        keep_alive.abort();
        match registry.leave().await {
            Ok(()) => tracing::info!(node = registry.node_id(), "left the cluster"),
            Err(err) => {
                tracing::warn!(error = %err, "could not leave the cluster: its lease runs out")
            }
        }
    }
    db.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// On a cluster node: every half lease, if this node holds the sweep duty, ends what dead
/// nodes' sockets left in the shared rooms and calls (one node sweeps at a time).
async fn sweep_dead_nodes(registry: Arc<Registry>, signaling: Arc<Signaling>, io: SocketIo) {
    let mut tick = tokio::time::interval(registry.lease() / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match registry.lead(Duty::Sweep).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(err) => {
                tracing::warn!(error = %err, "could not take the sweep duty");
                continue;
            }
        }
        if let Err(err) = signaling.sweep_dead_nodes(&io).await {
            tracing::warn!(error = %err, "could not sweep the rooms and calls of dead nodes");
        }
    }
}

/// With `cluster.redis_url` set: registers this node in the cluster and keeps it registered.
async fn join_cluster(
    config: &Config,
    live_nodes: prometheus::IntGauge,
) -> Result<Option<(Arc<Registry>, tokio::task::JoinHandle<()>)>, ClusterError> {
    if !config.cluster.is_on() {
        return Ok(None);
    }
    let info = NodeInfo {
        id: cluster::node_id(&config.cluster.node_id),
        started_at: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
    };
    let lease = Duration::from_secs(config.cluster.lease_secs);
    let registry = Registry::join(&config.cluster.redis_url, info, lease).await?;
    let nodes = registry.live_nodes().await?.len();
    tracing::info!(
        node = registry.node_id(),
        nodes,
        "joined the cluster (Redis): Socket.IO events reach every node's sockets"
    );
    live_nodes.set(nodes as i64);
    let keep_alive = registry.keep_alive(live_nodes);
    Ok(Some((registry, keep_alive)))
}

/// A cluster node's relay: the local SFU behind a [`MediaNode`] that answers the other nodes
/// on the node bus, and a [`ClusterRelay`] that sends each call to its room's node. Returns it
/// with the media node and the task that unpins rooms nobody joined here.
async fn cluster_relay(
    config: &Config,
    registry: &Arc<Registry>,
    local: Arc<dyn Relay>,
    secret: &[u8],
    metrics: &prometheus::Registry,
) -> Result<(Arc<dyn Relay>, Arc<MediaNode>, tokio::task::JoinHandle<()>), ServeError> {
    let media = MediaNode::new(local, registry.clone());
    let bus = NodeBus::start(
        &config.cluster.redis_url,
        registry.node_id(),
        BusKey::derive(secret),
        media.clone(),
        BusOptions::default(),
    )
    .await
    .map_err(ClusterError::from)?;
    bus.register_metrics(metrics)?;
    tracing::info!(
        node = registry.node_id(),
        "sfu-* commands go to each room's pinned node (node bus on Redis)"
    );
    let tidy = media.keep_tidy(Duration::from_secs(config.cluster.lease_secs));
    let relay = ClusterRelay::new(media.clone(), registry.clone(), Arc::new(bus));
    Ok((Arc::new(relay), media, tidy))
}

/// The ICE servers of `media.ice_*`: credentials minted per user when `media.ice_secret` is
/// set, else the static username and credential (if any).
pub fn ice_servers(config: &Config) -> IceServers {
    let media = &config.media;
    let auth = if !media.ice_secret.is_empty() {
        IceAuth::Minted {
            secret: media.ice_secret.clone(),
            ttl: Duration::from_secs(media.ice_ttl_secs),
        }
    } else if !media.ice_username.is_empty() {
        IceAuth::Static {
            username: media.ice_username.clone(),
            credential: media.ice_credential.clone(),
        }
    } else {
        IceAuth::None
    };
    IceServers::new(media.ice_urls.clone(), auth)
}

fn signaling_config(config: &Config) -> SignalingConfig {
    let ice_servers = ice_servers(config);
    let limits = &config.limits;
    SignalingConfig {
        max_chat_chars: limits.max_chat_chars,
        max_sdp_bytes: limits.max_sdp_bytes,
        max_candidate_bytes: limits.max_candidate_bytes,
        signal_rate_per_sec: limits.signal_rate_per_sec,
        signal_burst: limits.signal_burst,
        chat_rate_per_sec: limits.chat_rate_per_sec,
        chat_burst: limits.chat_burst,
        ring_timeout: Duration::from_secs(config.calls.ring_timeout_secs),
        media_mode: config.media.mode,
        p2p_timeout_ms: config.media.p2p_timeout_ms,
        ice_servers,
        waiting_room: config.consult.waiting_room,
    }
}

/// The browser client, if its folder exists: static files, with `/consult/{id}` served the app.
fn web_client(dir: &str) -> Option<ServeDir<ServeFile>> {
    if dir.is_empty() {
        return None;
    }
    let index = std::path::Path::new(dir).join("index.html");
    index
        .is_file()
        .then(|| ServeDir::new(dir).fallback(ServeFile::new(index)))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// How long stopping may take once the drain is over (ending calls, closing sockets, the SFU,
/// open HTTP requests) before the exit is forced.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// SIGINT and SIGTERM (Ctrl-C only where there are no Unix signals), watched from creation on.
struct StopSignals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let watch = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(stream) => Some(stream),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch {name}");
                    None
                }
            };
            StopSignals {
                interrupt: watch(SignalKind::interrupt(), "SIGINT"),
                terminate: watch(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// The next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            async fn next(stream: &mut Option<tokio::signal::unix::Signal>) {
                match stream {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.interrupt) => {}
                _ = next(&mut self.terminate) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Forces the exit when stopping takes longer than `limit`.
async fn force_exit_after(limit: Duration) {
    tokio::time::sleep(limit).await;
    tracing::warn!(
        limit_secs = limit.as_secs(),
        "stopping takes too long, forcing exit"
    );
    std::process::exit(1);
}

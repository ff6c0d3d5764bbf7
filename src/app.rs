//! Builds the server from a [`Config`] and runs it until a shutdown future resolves.

use std::net::SocketAddr;

use std::sync::Arc;

use actors::{BlobStore, Clock, Domain, Rooms, StoreError};
use tokio::net::TcpListener;

use crate::cluster::RedisBus;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::{routes, secret, serve, store};

/// How often rate limiters forget clients whose budget is full again.
const RATE_LIMIT_SWEEP: std::time::Duration = std::time::Duration::from_mins(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A storage backend could not be opened or reached.
    #[error("cannot open storage: {0}")]
    Store(#[from] StoreError),
    /// The development secret could not be read or written.
    #[error("cannot load the signing secret: {0}")]
    Secret(std::io::Error),
    /// The listen address is taken or not allowed.
    #[error("cannot listen on {addr}: {cause}")]
    Bind {
        /// HOST:PORT.
        addr: SocketAddr,
        /// Why.
        cause: std::io::Error,
    },
    /// The actor tree did not start.
    #[error("cannot start actors: {0}")]
    Actors(#[from] actors::SpawnErr),
    /// Two metrics with one name: a bug, caught at start.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Binds `addr`; returns the listener and the address it got (the real port for port 0).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_error = |cause| StartError::Bind { addr, cause };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((listener, bound))
}

/// A server that is bound and ready to run.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    /// `METRICS_ADDR`'s listener, when `/metrics` has its own.
    metrics_listener: Option<(TcpListener, SocketAddr)>,
    domain: Domain,
    shutdown: Shutdown,
    state: AppState,
    config: Config,
    blobs: Arc<dyn BlobStore>,
}

impl App {
    /// Opens storage, loads the secret, starts the actors and binds the listener.
    pub async fn build(config: Config, clock: Clock) -> Result<Self, StartError> {
        let metrics = Metrics::new()?;
        let backends = store::open(&config.storage, &config.data_dir).await?;
        let secret = secret::load(&config.secret, &config.data_dir).map_err(StartError::Secret)?;
        let blobs = Arc::clone(&backends.blobs);
        let bus = match &config.cluster {
            None => None,
            Some(c) => {
                let bus = RedisBus::connect(
                    c.url.expose(),
                    &c.prefix,
                    &c.instance,
                    config.storage.timeout,
                    &config.settings,
                    metrics.domain(),
                )
                .await?;
                tracing::info!(instance = %actors::cluster::Bus::instance(bus.as_ref()), prefix = %c.prefix, "cluster mode: rooms are shared through Redis");
                Some(bus as Arc<dyn actors::cluster::Bus>)
            }
        };
        let domain = Domain::start(
            backends.store,
            backends.blobs,
            secret,
            config.settings.clone(),
            clock,
            metrics.domain(),
            bus,
        )
        .await?;
        let (listener, addr) = bind(config.addr).await?;
        let metrics_listener = match config.metrics.addr {
            None => None,
            Some(addr) => Some(bind(addr).await?),
        };
        let shutdown = Shutdown::default();
        let state = AppState::new(&domain, &config, metrics, shutdown.handle());
        Ok(Self {
            listener,
            addr,
            metrics_listener,
            domain,
            shutdown,
            state,
            config,
            blobs,
        })
    }

    /// The bound address (the real port when configured with port 0).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `METRICS_ADDR` is set (the real port for port 0).
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(|(_, addr)| *addr)
    }

    /// The room handle, for tests that drive actors directly (fault injection, stats).
    #[must_use]
    pub fn rooms(&self) -> Rooms {
        self.domain.rooms.clone()
    }

    /// The pairing handle, for tests (fault injection).
    #[must_use]
    pub fn pairing(&self) -> actors::Pairing {
        self.domain.pairing.clone()
    }

    /// The backup handle, for tests (fault injection).
    #[must_use]
    pub fn backups(&self) -> actors::Backups {
        self.domain.backups.clone()
    }

    /// The blob store, for tests that check what is (not) kept.
    #[must_use]
    pub fn blobs(&self) -> Arc<dyn BlobStore> {
        Arc::clone(&self.blobs)
    }

    /// Serves until `stop` resolves, then: stops accepting, closes sockets with 1001, lets
    /// requests in flight finish, stops the rooms (which write unacknowledged signals), all
    /// bounded by the configured shutdown timeout.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) {
        let Self {
            listener,
            addr,
            metrics_listener,
            domain,
            shutdown,
            state,
            config,
            blobs: _,
        } = self;
        let (metadata, blobs) = state.storage.backends();
        tracing::info!(%addr, metadata, blobs, "listening");
        let limits = state.limits.clone();
        let forget = tokio::spawn(async move {
            let mut every = tokio::time::interval(RATE_LIMIT_SWEEP);
            loop {
                every.tick().await;
                limits.forget_idle_keys();
            }
        });
        let trimmer = crate::memory::spawn();
        let metrics = state.metrics.clone();
        let open_metrics = config.metrics.token.is_none() && config.metrics.addr.is_none();
        if open_metrics && config.environment == crate::config::Environment::Production {
            tracing::warn!(
                "/metrics is open on the public port: set METRICS_TOKEN or METRICS_ADDR"
            );
        }
        let cap = serve::connection_cap(config.conn.max);
        // Behind trusted proxies every connection comes from a proxy: no per-IP cap then.
        let per_ip = (config.rate.trusted_proxies == 0).then_some(config.conn.per_ip);
        tracing::info!(max = cap, per_ip, "connection caps");
        let admission = serve::Admission::new(cap, per_ip, metrics.clone());
        let service = routes::service(state);
        let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
        let public = async {
            let counted = Some((&metrics, &admission));
            serve::accept_loop(listener, service, counted, &shutdown, stop).await;
            let _ = stop_metrics.send(());
        };
        // METRICS_ADDR's listener: /metrics alone, not itself counted in the HTTP metrics
        // (scrapes are not traffic), drained with the rest on shutdown.
        let private = async {
            let Some((listener, addr)) = metrics_listener else {
                return;
            };
            tracing::info!(%addr, "serving /metrics");
            let token = config.metrics.token.clone();
            let service = warp::service(routes::metrics_only(metrics.clone(), token));
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            serve::accept_loop(listener, service, None, &shutdown, stopped).await;
        };
        tokio::join!(public, private);
        forget.abort();
        trimmer.abort();
        tracing::info!("shutting down");
        if !shutdown.trigger_and_wait(config.shutdown_timeout).await {
            tracing::warn!("connections still open at the shutdown deadline");
        }
        domain.shutdown(config.shutdown_timeout).await;
        tracing::info!("stopped");
    }
}

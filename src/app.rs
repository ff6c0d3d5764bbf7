//! Builds the server from a [`Config`] and runs it until a shutdown future resolves.

use std::net::SocketAddr;
use std::sync::Arc;

use actors::store::embedded::EmbeddedStore;
use actors::store::files::FileBlobs;
use actors::{BlobStore, Clock, Domain, Rooms, Store, StoreError};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::shutdown::Shutdown;
use crate::state::AppState;
use crate::{http, secret, serve};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory or database could not be opened.
    #[error("cannot open the embedded store in DATA_DIR: {0}")]
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
}

/// A server that is bound and ready to run.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    domain: Domain,
    shutdown: Shutdown,
    state: AppState,
    config: Config,
}

impl App {
    /// Opens storage, loads the secret, starts the actors and binds the listener.
    pub async fn build(config: Config, clock: Clock) -> Result<Self, StartError> {
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(&config.data_dir)?);
        let secret = secret::load(&config.secret, &config.data_dir).map_err(StartError::Secret)?;
        let blobs: Arc<dyn BlobStore> = Arc::new(FileBlobs::open(&config.data_dir)?);
        let domain = Domain::start(store, blobs, secret, config.settings.clone(), clock).await?;
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|cause| StartError::Bind {
                addr: config.addr,
                cause,
            })?;
        let addr = listener.local_addr().map_err(|cause| StartError::Bind {
            addr: config.addr,
            cause,
        })?;
        let shutdown = Shutdown::default();
        let state = AppState::new(&domain, config.ws.clone(), shutdown.listener());
        Ok(Self {
            listener,
            addr,
            domain,
            shutdown,
            state,
            config,
        })
    }

    /// The bound address (the real port when configured with port 0).
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The room handle, for tests that drive actors directly (fault injection, stats).
    #[must_use]
    pub fn rooms(&self) -> Rooms {
        self.domain.rooms.clone()
    }

    /// Serves until `stop` resolves, then: stops accepting, closes sockets with 1001, lets
    /// requests in flight finish, stops the rooms (which write unacknowledged signals), all
    /// bounded by the configured shutdown timeout.
    pub async fn run_until_stopped(self, stop: impl Future<Output = ()>) {
        let Self {
            listener,
            addr,
            domain,
            shutdown,
            state,
            config,
        } = self;
        tracing::info!(%addr, storage = state.pairing.backend(), "listening");
        let service = warp::service(http::routes(state));
        serve::accept_loop(listener, service, &shutdown, stop).await;
        tracing::info!("shutting down");
        if !shutdown.trigger_and_wait(config.shutdown_timeout).await {
            tracing::warn!("connections still open at the shutdown deadline");
        }
        domain.shutdown(config.shutdown_timeout).await;
        tracing::info!("stopped");
    }
}

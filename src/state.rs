//! What the transports share, built once at start: actor handles, limits, metrics and the
//! shutdown signal. Route builders take from it the handles their filters need.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actors::{Backups, ConnId, Domain, Pairing, Rooms, Storage};

use crate::config::{AllowedOrigins, Config, IceConfig, MetricsConfig, WsConfig};
use crate::front::rate::RateLimits;
use crate::metrics::Metrics;
use crate::shutdown::ShutdownHandle;

/// Cloned into every request; everything inside is a handle or immutable.
#[derive(Clone)]
pub struct AppState {
    /// Signaling rooms.
    pub rooms: Rooms,
    /// Pairing and token verification.
    pub pairing: Pairing,
    /// Encrypted backups.
    pub backups: Backups,
    /// Storage health.
    pub storage: Storage,
    /// Browser origins allowed by CORS and on WebSocket upgrades.
    pub origins: AllowedOrigins,
    /// Rate limits.
    pub limits: RateLimits,
    /// Socket limits.
    pub ws: Arc<WsConfig>,
    /// Longest wait for a JSON request body.
    pub body_timeout: std::time::Duration,
    /// For `/health` uptime.
    pub started: Instant,
    /// Sessions take a listener from it to close with 1001 on shutdown (and hold the server
    /// open until they do); the state itself does not.
    pub shutdown: ShutdownHandle,
    /// Where requests, sockets, pairings and backups are counted.
    pub metrics: Metrics,
    /// Who may read `/metrics`, and whether it is served on the main port.
    pub metrics_config: Arc<MetricsConfig>,
    /// STUN and TURN servers for `GET /api/ice-servers`.
    pub ice: Arc<IceConfig>,
    /// Whether `/demo/` is served (`DEMO`).
    pub demo: bool,
    next_conn: Arc<AtomicU64>,
    next_socket: Arc<AtomicU64>,
}

impl AppState {
    /// Builds the state.
    #[must_use]
    pub fn new(
        domain: &Domain,
        config: &Config,
        metrics: Metrics,
        shutdown: ShutdownHandle,
    ) -> Self {
        Self {
            rooms: domain.rooms.clone(),
            pairing: domain.pairing.clone(),
            backups: domain.backups.clone(),
            storage: domain.storage.clone(),
            origins: config.allowed_origins.clone(),
            limits: RateLimits::new(&config.rate, &metrics),
            ws: Arc::new(config.ws.clone()),
            body_timeout: config.conn.body_timeout,
            started: Instant::now(),
            shutdown,
            metrics,
            metrics_config: Arc::new(config.metrics.clone()),
            ice: Arc::new(config.ice.clone()),
            demo: config.demo,
            next_conn: Arc::new(AtomicU64::new(1)),
            next_socket: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A process-unique number for a WebSocket, for its log span.
    #[must_use]
    pub fn next_socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    /// A process-unique id for a socket's room membership.
    #[must_use]
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

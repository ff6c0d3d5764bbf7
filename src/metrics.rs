//! Every Prometheus metric of the server in one registry: the domain's (rooms, relays,
//! storage), the front end's (HTTP, WebSockets, pairings, backups, rate limits) and the
//! process's (RSS, CPU, file descriptors). Labels are route templates and closed sets, never a
//! couple, device or token. `docs/operations.md` lists every metric.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::DomainMetrics;
pub use actors::metrics::GaugeShare;
use actors::metrics::{histogram, opts, registered};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, Registry, TextEncoder};
use warp::http::{Method, StatusCode};

use crate::config::Limit;

/// HTTP durations, in seconds (a backup upload's request lasts as long as its upload).
const HTTP_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Backup transfer durations, in seconds: up to 100 MiB over a phone's connection.
const BACKUP_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The route label of a request no route matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Which pairing step a count is for.
#[derive(Debug, Clone, Copy)]
pub enum PairingStep {
    /// `POST /api/pairing/initiate`.
    Initiate,
    /// `POST /api/pairing/confirm`.
    Confirm,
}

/// Which way backup bytes went.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    /// Device to server.
    Upload,
    /// Server to device.
    Download,
}

impl PairingStep {
    /// The `step` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Initiate => "initiate",
            Self::Confirm => "confirm",
        }
    }
}

/// How a counted request ended: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked.
    Ok,
    /// A conditional download answered 304 (nothing sent).
    NotModified,
    /// The client went away before the last byte of a download.
    DownloadInterrupted,
    /// It failed with this wire error code, the one the client got (docs/protocol.md).
    Failed(&'static str),
}

impl Outcome {
    /// The `outcome` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NotModified => "not_modified",
            Self::DownloadInterrupted => "download_interrupted",
            Self::Failed(code) => code,
        }
    }
}

impl Direction {
    /// The `direction` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Upload => "upload",
            Self::Download => "download",
        }
    }
}

/// Why a connection was not served in full (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRefusal {
    /// Its client IP already had `MAX_CONNECTIONS_PER_IP` open: answered 503 (probes excepted).
    PerIp,
    /// `MAX_CONNECTIONS` were open: answered 503 (probes excepted), from the reserve.
    Total,
    /// The reserve for answering refusals was full too: closed without a word.
    Dropped,
}

impl ConnRefusal {
    /// Every reason, for metrics that start each label at zero.
    pub const ALL: [Self; 3] = [Self::PerIp, Self::Total, Self::Dropped];

    /// The `reason` label.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::PerIp => "per_ip",
            Self::Total => "total",
            Self::Dropped => "dropped",
        }
    }
}

/// The server's metrics; cheap to clone into every request.
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

struct Families {
    registry: Registry,
    domain: DomainMetrics,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    websocket_connections: IntGauge,
    socketio_connections: IntGauge,
    connections: IntGauge,
    connections_refused: IntCounterVec,
    pairings: IntCounterVec,
    backups: IntCounterVec,
    backup_bytes: IntCounterVec,
    backup_duration: HistogramVec,
    rate_limited: IntCounterVec,
}

/// A counter family in `r`.
fn counters(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    registered(r, IntCounterVec::new(opts(name, help), labels)?)
}

/// A gauge in `r`.
fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    registered(r, IntGauge::with_opts(opts(name, help))?)
}

impl Metrics {
    /// A fresh registry with every family in it (and the process collector, on Linux).
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let families = Families {
            domain: DomainMetrics::register(&r)?,
            http_requests: counters(
                &r,
                "http_requests_total",
                "HTTP requests answered, by route template, method and status code.",
                &["route", "method", "code"],
            )?,
            http_duration: registered(
                &r,
                HistogramVec::new(
                    histogram(
                        "http_request_duration_seconds",
                        "Time to answer an HTTP request (until the response head), by route template and method.",
                        HTTP_BUCKETS,
                    ),
                    &["route", "method"],
                )?,
            )?,
            websocket_connections: gauge(
                &r,
                "websocket_connections",
                "WebSocket connections open now (joined or not).",
            )?,
            socketio_connections: gauge(
                &r,
                "socketio_connections",
                "Socket.IO sockets connected now to namespace / (joined or not, any transport).",
            )?,
            connections: gauge(
                &r,
                "connections",
                "TCP connections open now on the public port and served in full (HTTP and WebSocket).",
            )?,
            connections_refused: counters(
                &r,
                "connections_refused_total",
                "Connections over MAX_CONNECTIONS_PER_IP or MAX_CONNECTIONS, by reason.",
                &["reason"],
            )?,
            pairings: counters(
                &r,
                "pairings_total",
                "Pairing requests, by step and outcome (ok or the error code).",
                &["step", "outcome"],
            )?,
            backups: counters(
                &r,
                "backups_total",
                "Backup requests, by direction and outcome (ok, not_modified, download_interrupted or the error code).",
                &["direction", "outcome"],
            )?,
            backup_bytes: counters(
                &r,
                "backup_bytes_total",
                "Ciphertext bytes of completed backup transfers, by direction.",
                &["direction"],
            )?,
            backup_duration: registered(
                &r,
                HistogramVec::new(
                    histogram(
                        "backup_duration_seconds",
                        "Duration of completed backup transfers, by direction.",
                        BACKUP_BUCKETS,
                    ),
                    &["direction"],
                )?,
            )?,
            rate_limited: counters(
                &r,
                "rate_limited_total",
                "Requests and WebSocket messages refused with 429, by limit.",
                &["limit"],
            )?,
            registry: r,
        };
        // Known label values start at zero, so rates and alerts see them before the first event.
        let ok = Outcome::Ok.label();
        for d in [Direction::Upload, Direction::Download] {
            families.backups.with_label_values(&[d.label(), ok]);
            families.backup_bytes.with_label_values(&[d.label()]);
        }
        for step in [PairingStep::Initiate, PairingStep::Confirm] {
            families.pairings.with_label_values(&[step.label(), ok]);
        }
        for limit in Limit::ALL {
            families.rate_limited.with_label_values(&[limit.label()]);
        }
        for reason in ConnRefusal::ALL {
            families
                .connections_refused
                .with_label_values(&[reason.label()]);
        }
        Ok(Self(Arc::new(families)))
    }

    /// The handles the actors record into.
    #[must_use]
    pub fn domain(&self) -> DomainMetrics {
        self.0.domain.clone()
    }

    /// The text exposition format, for `GET /metrics`.
    pub fn render(&self) -> prometheus::Result<String> {
        TextEncoder::new().encode_to_string(&self.0.registry.gather())
    }

    /// One answered HTTP request.
    pub fn http_request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        // A client picks the method: anything unusual is one label value, not a new series.
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::DELETE => "DELETE",
            Method::OPTIONS => "OPTIONS",
            Method::HEAD => "HEAD",
            Method::PUT => "PUT",
            _ => "other",
        };
        self.0
            .http_requests
            .with_label_values(&[route, method, status.as_str()])
            .inc();
        self.0
            .http_duration
            .with_label_values(&[route, method])
            .observe(took.as_secs_f64());
    }

    /// An open WebSocket, counted while the guard lives.
    #[must_use]
    pub fn websocket_open(&self) -> GaugeShare {
        GaugeShare::new(self.0.websocket_connections.clone(), 1)
    }

    /// A connected Socket.IO socket, counted while the guard lives.
    #[must_use]
    pub fn socketio_open(&self) -> GaugeShare {
        GaugeShare::new(self.0.socketio_connections.clone(), 1)
    }

    /// An open connection served in full, counted while the guard lives.
    #[must_use]
    pub fn connection_open(&self) -> GaugeShare {
        GaugeShare::new(self.0.connections.clone(), 1)
    }

    /// A connection that was not served in full.
    pub fn connection_refused(&self, reason: ConnRefusal) {
        self.0
            .connections_refused
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// A pairing step's outcome: [`Outcome::Ok`], or the error code the client got.
    pub fn pairing(&self, step: PairingStep, outcome: Outcome) {
        self.0
            .pairings
            .with_label_values(&[step.label(), outcome.label()])
            .inc();
    }

    /// A backup transfer that completed: its bytes and duration.
    pub fn backup_completed(&self, direction: Direction, bytes: u64, took: Duration) {
        let d = direction.label();
        self.0
            .backups
            .with_label_values(&[d, Outcome::Ok.label()])
            .inc();
        self.0.backup_bytes.with_label_values(&[d]).inc_by(bytes);
        self.0
            .backup_duration
            .with_label_values(&[d])
            .observe(took.as_secs_f64());
    }

    /// A backup request that moved no (whole) backup: the error code the client got,
    /// [`Outcome::DownloadInterrupted`] or [`Outcome::NotModified`].
    pub fn backup_not_transferred(&self, direction: Direction, outcome: Outcome) {
        self.0
            .backups
            .with_label_values(&[direction.label(), outcome.label()])
            .inc();
    }

    /// A request or message refused by `limit`.
    pub fn rate_limited(&self, limit: Limit) {
        self.0
            .rate_limited
            .with_label_values(&[limit.label()])
            .inc();
    }
}

/// Where a route writes its template while the request is routed, so the request can be
/// counted under it afterwards. Put into every request's extensions by the accept loop.
#[derive(Clone, Default)]
pub struct RouteSlot(Arc<Mutex<&'static str>>);

impl RouteSlot {
    /// Names the route that is answering (the last one to match wins).
    pub fn set(&self, template: &'static str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = template;
    }

    /// The template recorded, or [`UNMATCHED_ROUTE`].
    #[must_use]
    pub fn get(&self) -> &'static str {
        match *self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            "" => UNMATCHED_ROUTE,
            t => t,
        }
    }
}

/// Counts one request when dropped (after its response head is out, or when the client
/// went away first, which counts as 499 like nginx does).
pub struct RequestTimer {
    metrics: Metrics,
    route: RouteSlot,
    method: Method,
    started: Instant,
    status: Option<StatusCode>,
}

impl RequestTimer {
    /// Starts timing a request.
    #[must_use]
    pub fn start(metrics: Metrics, route: RouteSlot, method: Method) -> Self {
        Self {
            metrics,
            route,
            method,
            started: Instant::now(),
            status: None,
        }
    }

    /// The response's status.
    pub fn answered(&mut self, status: StatusCode) {
        self.status = Some(status);
    }
}

/// The status recorded for a request whose client left before the answer.
const CLIENT_CLOSED: u16 = 499;

impl Drop for RequestTimer {
    fn drop(&mut self) {
        let status = self.status.unwrap_or_else(|| {
            StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST)
        });
        self.metrics.http_request(
            self.route.get(),
            &self.method,
            status,
            self.started.elapsed(),
        );
    }
}

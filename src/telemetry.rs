//! Logging set-up, once per process: `RUST_LOG` filters (default `info,ractor=warn`); human-readable lines
//! in development, one JSON object per line in production (for log shippers). Nothing logs
//! tokens, signal payloads or backup bytes; a test runs the binary and checks that.

use tracing_subscriber::EnvFilter;
use warp::http;

use crate::config::Environment;

/// `RUST_LOG` when unset. ractor's own spans (one per actor, entered on every message) are
/// left out: they named only actor ids and cost a measurable share of a relayed message's
/// CPU; the events of our actors carry the couple and device instead.
pub const DEFAULT_FILTER: &str = "info,ractor=warn";

/// Installs the global subscriber. Colours only on a terminal.
pub fn init(environment: Environment) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match environment {
        Environment::Production => builder.json().flatten_event(true).try_init(),
        Environment::Development => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

/// The tracing span of one HTTP request, with a process-unique request id, so every event
/// logged while serving it (actors included) can be told apart.
pub fn request_span(method: &http::Method, path: &str) -> tracing::Span {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info_span!("request", request_id = id, %method, path)
}

/// The one line logged per answered request, inside its span: INFO whatever the status. A
/// client's mistake (4xx) is routine, not a warning; a server failure (5xx) is logged with
/// its cause, at ERROR, where it is answered.
pub fn answered(status: http::StatusCode) {
    tracing::info!(status = status.as_u16(), "answered");
}

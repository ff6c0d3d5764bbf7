//! `GET /health` and `GET /ready`: each storage backend and whether it answers, the version
//! and the uptime. `/health` is always 200 while the process serves (`status` says `degraded`
//! when a backend does not answer; signaling between connected devices still works then);
//! `/ready` is 503 unless storage answers and the server is not shutting down.

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::named;
use crate::state::{AppState, with_state};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    storage: StorageHealth,
    version: &'static str,
    uptime_secs: u64,
    rooms: Option<usize>,
}

#[derive(Serialize)]
struct StorageHealth {
    metadata: Backend,
    blobs: Backend,
}

#[derive(Serialize)]
struct Backend {
    backend: &'static str,
    ok: bool,
}

impl Health {
    /// Asks the rooms and both storage backends, concurrently.
    async fn collect(state: &AppState) -> Self {
        let (room_stats, (metadata, blobs)) =
            tokio::join!(state.rooms.stats(), state.storage.status());
        Self {
            status: if metadata.ok && blobs.ok {
                "ok"
            } else {
                "degraded"
            },
            storage: StorageHealth {
                metadata: Backend {
                    backend: metadata.backend,
                    ok: metadata.ok,
                },
                blobs: Backend {
                    backend: blobs.backend,
                    ok: blobs.ok,
                },
            },
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: state.started.elapsed().as_secs(),
            rooms: room_stats.ok().map(|s| s.rooms),
        }
    }
}

/// `GET /health` (liveness: 200 while the process serves) and `GET /ready` (readiness: 200
/// only while storage answers and the server is not shutting down, else 503 — the signal a
/// load balancer uses to stop sending traffic).
pub fn route(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let health = warp::path!("health")
        .and(warp::get())
        .and(named("/health"))
        .and(with_state(state.clone()))
        .then(|state: AppState| async move {
            warp::reply::json(&Health::collect(&state).await).into_response()
        });
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(named("/ready"))
        .and(with_state(state))
        .then(|state: AppState| async move {
            let mut report = Health::collect(&state).await;
            let ready = report.status == "ok" && !state.shutdown.is_shutting_down();
            report.status = if ready { "ready" } else { "not_ready" };
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            warp::reply::with_status(warp::reply::json(&report), status).into_response()
        });
    health.or(ready)
}

//! `GET /health` and `GET /ready`: each storage backend and whether it answers, the version
//! and the uptime. `/health` is always 200 while the process serves (`status` says `degraded`
//! when a backend does not answer; signaling between connected devices still works then);
//! `/ready` is 503 unless storage (and, in cluster mode, Redis) answers and the server is not shutting down (the embedded
//! backends also answer "no" after a write failed on a full disk, until it has room again).

use std::time::Instant;

use actors::{Rooms, Storage};
use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::front::wire::{named, with};
use crate::shutdown::ShutdownHandle;
use crate::state::AppState;

/// What the probes read: the rooms, the storage backends, the start time and the shutdown.
#[derive(Clone)]
struct Probe {
    rooms: Rooms,
    storage: Storage,
    started: Instant,
    shutdown: ShutdownHandle,
}

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
    /// Cluster mode's Redis (absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<Backend>,
}

#[derive(Serialize)]
struct Backend {
    backend: &'static str,
    ok: bool,
}

impl Health {
    /// Asks the rooms and both storage backends, concurrently.
    async fn collect(state: &Probe) -> Self {
        let (room_stats, (metadata, blobs), cluster) = tokio::join!(
            state.rooms.stats(),
            state.storage.status(),
            state.rooms.cluster_ok()
        );
        Self {
            status: if metadata.ok && blobs.ok && cluster != Some(false) {
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
                cluster: cluster.map(|ok| Backend {
                    backend: "redis",
                    ok,
                }),
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
pub fn route(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let probe = with(Probe {
        rooms: state.rooms.clone(),
        storage: state.storage.clone(),
        started: state.started,
        shutdown: state.shutdown.clone(),
    });
    let health = warp::path!("health")
        .and(warp::get())
        .and(named("/health"))
        .and(probe.clone())
        .then(|state: Probe| async move {
            warp::reply::json(&Health::collect(&state).await).into_response()
        });
    let ready = warp::path!("ready")
        .and(warp::get())
        .and(named("/ready"))
        .and(probe)
        .then(|state: Probe| async move {
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
    health.or(ready).unify()
}

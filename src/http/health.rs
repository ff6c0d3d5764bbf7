//! `GET /health`: liveness, with each storage backend and whether it answers, the version and
//! the uptime. Always 200 while the process serves; `status` says `degraded` when a backend
//! does not answer (signaling between connected devices still works then).

use serde::Serialize;
use warp::{Filter, Rejection, Reply};

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

/// The health route.
pub fn route(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: AppState| async move {
            let (room_stats, (metadata, blobs)) =
                tokio::join!(state.rooms.stats(), state.storage.status());
            let rooms = room_stats.ok().map(|s| s.rooms);
            let healthy = metadata.ok && blobs.ok;
            warp::reply::json(&Health {
                status: if healthy { "ok" } else { "degraded" },
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
                rooms,
            })
        })
}

//! `GET /health`: liveness, with the storage backend in use and the uptime.

use serde::Serialize;
use warp::{Filter, Rejection, Reply};

use crate::state::{AppState, with_state};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Health {
    status: &'static str,
    storage: &'static str,
    version: &'static str,
    uptime_secs: u64,
    rooms: Option<usize>,
}

/// The health route.
pub fn route(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("health")
        .and(warp::get())
        .and(with_state(state))
        .then(|state: AppState| async move {
            let rooms = state.rooms.stats().await.ok().map(|s| s.rooms);
            warp::reply::json(&Health {
                status: "ok",
                storage: state.pairing.backend(),
                version: env!("CARGO_PKG_VERSION"),
                uptime_secs: state.started.elapsed().as_secs(),
                rooms,
            })
        })
}

//! `GET /ws`: upgrades to a WebSocket and hands it to a [`session`]. [`protocol`] is the wire
//! format.

pub mod protocol;
pub mod session;

use warp::{Filter, Rejection, Reply};

use crate::state::{AppState, with_state};

/// The upgrade route.
pub fn route(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    warp::path!("ws")
        .and(warp::get())
        .and(warp::ws())
        .and(with_state(state))
        .map(|ws: warp::ws::Ws, state: AppState| {
            let max = state.ws.max_message_bytes;
            ws.max_message_size(max)
                .max_frame_size(max)
                .on_upgrade(move |socket| session::run(socket, state))
        })
}

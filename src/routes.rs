//! Composes the transports: the only module that knows them all. Every route of the public
//! port, the JSON error renderer and the browser headers; and the lone `/metrics` service for
//! `METRICS_ADDR`.

use std::convert::Infallible;

use warp::{Filter, Reply};

use crate::config::Secret;
use crate::front::error::handle_rejection;
use crate::front::{browser, conn};
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::{http, socketio, ws};

/// Every route of the public port, with the JSON error renderer.
pub fn public(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let origins = state.origins.clone();
    // With METRICS_ADDR set, /metrics is served there instead (and 404 here).
    let metrics = http::metrics::route(
        state.metrics.clone(),
        state.metrics_config.token.clone(),
        state.metrics_config.addr.is_none(),
    );
    // The probes answer on every connection, also one over a connection cap.
    let probes = http::health::route(&state).or(metrics);
    let served = conn::admitted().and(
        browser::preflight()
            .or(http::pairing::routes(&state))
            .or(http::signals::routes(&state))
            .or(http::tus::routes(&state))
            .or(http::backup::routes(&state))
            .or(http::devices::routes(&state))
            .or(http::ice::route(&state))
            .or(http::demo::route(state.demo))
            .or(ws::route(state)),
    );
    let api = probes
        .or(served)
        .recover(handle_rejection)
        .map(Reply::into_response);
    warp::header::headers_cloned()
        .and(api)
        .map(move |request: warp::http::HeaderMap, response| {
            browser::decorate(&origins, &request, response)
        })
}

/// The public port's service: Socket.IO at `/socket.io/`, every other path to [`public`].
pub fn service(
    state: AppState,
) -> socketio::Gate<
    socketioxide::service::SocketIoService<
        impl tower_service::Service<
            warp::http::Request<hyper::body::Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
            Future = impl Send,
        > + Clone
        + Send
        + 'static,
    >,
> {
    let sio_state = state.clone();
    socketio::service(&sio_state, warp::service(public(state)))
}

/// A service that answers only `GET /metrics` (404 otherwise), for `METRICS_ADDR`.
pub fn metrics_only(
    metrics: Metrics,
    token: Option<Secret>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    http::metrics::route(metrics, token, true)
        .map(Reply::into_response)
        .recover(handle_rejection)
        .unify()
}

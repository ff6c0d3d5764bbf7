//! The HTTP front end: composes every route, limits every body, and renders every error the
//! same way. Handlers only parse, check access, and call a typed actor handle.

pub mod auth;
pub mod backup;
pub mod browser;
pub mod devices;
pub mod error;
pub mod health;
pub mod metrics;
pub mod pairing;
pub mod rate;
pub mod signals;

use std::convert::Infallible;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection, Reply};

use crate::metrics::RouteSlot;
use crate::state::AppState;
use crate::ws;
use error::{ApiError, handle_rejection};

/// Largest pairing body: two ids and a token, with generous room.
pub const PAIRING_BODY_LIMIT: u64 = 4 * 1024;
/// Largest `POST /api/signal` body: a 64 KiB payload plus its envelope.
pub const SIGNAL_BODY_LIMIT: u64 = 72 * 1024;

/// Every route of the server, with the JSON error renderer.
pub fn routes(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let origins = state.origins.clone();
    // With METRICS_ADDR set, /metrics is served there instead (and 404 here).
    let metrics = metrics::route(
        state.metrics.clone(),
        state.metrics_config.token.clone(),
        state.metrics_config.addr.is_none(),
    );
    let api = browser::preflight()
        .or(health::route(state.clone()))
        .or(metrics)
        .or(pairing::routes(state.clone()))
        .or(signals::routes(state.clone()))
        .or(backup::routes(state.clone()))
        .or(devices::routes(state.clone()))
        .or(ws::route(state))
        .recover(handle_rejection)
        .map(Reply::into_response);
    warp::header::headers_cloned()
        .and(api)
        .map(move |request: warp::http::HeaderMap, response| {
            browser::decorate(&origins, &request, response)
        })
        .with(warp::trace(crate::telemetry::request_span))
}

/// Names the route answering a request (its template, never its ids), for the HTTP metrics.
/// Put it after the path and method filters: the last route to match names the request.
pub fn named(template: &'static str) -> impl Filter<Extract = (), Error = Infallible> + Clone {
    warp::ext::optional::<RouteSlot>()
        .map(move |slot: Option<RouteSlot>| {
            if let Some(slot) = slot {
                slot.set(template);
            }
        })
        .untuple_one()
}

/// Parses a request body: the one place client JSON becomes a typed request (ids validated
/// while parsing). Public so the fuzz targets exercise exactly this.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))
}

/// A JSON body of at most `limit` bytes, parsed into `T` (which validates ids while parsing).
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit)
        .and(warp::body::bytes())
        .and_then(|body: Bytes| async move { parse_json(&body).map_err(error::reject) })
}

//! Wire helpers every transport uses: JSON bodies (the one place client JSON becomes a typed
//! request), stored JSON read back, timestamps, handle injection, and route naming for the
//! HTTP metrics.

use std::convert::Infallible;

use actors::Timestamp;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use warp::{Filter, Rejection};

use super::error::{ApiError, reject};
use crate::metrics::RouteSlot;

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

/// Injects a clone of `value` (a handle, a limit set) into a filter chain, so each filter
/// and handler takes exactly what it needs.
pub fn with<T: Clone + Send + Sync>(
    value: T,
) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
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
        .and_then(|body: Bytes| async move { parse_json(&body).map_err(reject) })
}

/// Borrows stored payload text as raw JSON. It was validated on the way in, so a failure here
/// means corrupt storage: an internal error (logged where it is answered).
pub fn raw_json(text: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::Internal(format!("stored payload is not valid JSON: {e}")))
}

/// RFC 3339 with milliseconds, UTC: what every timestamp on the wire looks like.
#[must_use]
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

//! `GET /metrics`: the Prometheus text exposition. With `METRICS_TOKEN` set, a scrape must
//! send it as a bearer token (compared in constant time); with `METRICS_ADDR` set, the route
//! lives only on that listener (see [`crate::routes::metrics_only`]).

use std::sync::Arc;

use subtle::ConstantTimeEq;
use warp::http::header::CONTENT_TYPE;
use warp::{Filter, Rejection, Reply};

use crate::config::Secret;
use crate::front::auth::strip_bearer;
use crate::front::error::{ApiError, reject};
use crate::front::wire::{enabled, named};
use crate::metrics::Metrics;

/// The content type of the text exposition format 0.0.4.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route template this module answers.
pub const ROUTE: &str = "/metrics";

/// `GET /metrics`, guarded by `token` when one is configured. When not `served_here` (it has
/// a listener of its own) the path answers 404; other paths are not touched, so their own
/// errors (405, 413, ...) stay theirs.
pub fn route(
    metrics: Metrics,
    token: Option<Secret>,
    served_here: bool,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let token = Arc::new(token);
    warp::path!("metrics")
        .and(warp::get())
        .and(enabled(served_here))
        .and(named(ROUTE))
        .and(warp::header::optional::<String>("authorization"))
        .and_then(move |authorization: Option<String>| {
            let token = Arc::clone(&token);
            async move { authorize(token.as_ref().as_ref(), authorization.as_deref()) }
        })
        .untuple_one()
        .and_then(move || {
            let rendered = metrics.render();
            async move {
                let text = rendered
                    .map_err(|e| reject(ApiError::Internal(format!("rendering metrics: {e}"))))?;
                Ok::<_, Rejection>(
                    warp::reply::with_header(text, CONTENT_TYPE, CONTENT_TYPE_TEXT).into_response(),
                )
            }
        })
}

/// Passes when no token is configured, or the request carries exactly it.
fn authorize(token: Option<&Secret>, authorization: Option<&str>) -> Result<(), Rejection> {
    let Some(token) = token else { return Ok(()) };
    let presented = authorization.and_then(strip_bearer).unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(token.expose().as_bytes())) {
        Ok(())
    } else {
        Err(reject(ApiError::MetricsUnauthorized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let token = Secret::new("0123456789abcdef".to_owned());
        assert!(authorize(None, None).is_ok());
        assert!(authorize(Some(&token), None).is_err());
        assert!(authorize(Some(&token), Some("Bearer 0123456789abcdeX")).is_err());
        assert!(authorize(Some(&token), Some("Bearer 0123456789abcde")).is_err());
        assert!(authorize(Some(&token), Some("Basic 0123456789abcdef")).is_err());
        assert!(authorize(Some(&token), Some("Bearer 0123456789abcdef")).is_ok());
    }
}

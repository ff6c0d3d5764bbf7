//! Rules for browsers: security headers equivalent to helmet's defaults on every response,
//! CORS for the origins in `ALLOWED_ORIGINS` (preflight answered; other origins get no CORS
//! headers), and the same list checked against the `Origin` of WebSocket upgrades.

use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::{Filter, Rejection, Reply};

use super::wire::named;
use crate::config::AllowedOrigins;

/// Methods a cross-origin browser may use.
const ALLOW_METHODS: &str = "GET, HEAD, POST, PATCH, DELETE, OPTIONS";
/// Request headers a cross-origin browser may send.
const ALLOW_HEADERS: &str = "authorization, content-type, if-none-match, x-backup-meta, x-content-sha256, tus-resumable, upload-length, upload-offset, upload-metadata, upload-checksum, x-http-method-override";
/// Response headers a cross-origin browser may read.
const EXPOSE_HEADERS: &str = "etag, x-backup-id, x-backup-meta, x-backup-created-at, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset, ratelimit-policy, location, tus-resumable, tus-version, tus-extension, tus-max-size, tus-checksum-algorithm, upload-offset, upload-length, upload-expires";
/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: &str = "600";

/// helmet's default headers (v7), for every response.
fn security_headers(h: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests",
    );
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    set(h, "origin-agent-cluster", "?1");
    set(h, "referrer-policy", "no-referrer");
    set(
        h,
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-dns-prefetch-control", "off");
    set(h, "x-download-options", "noopen");
    set(h, "x-frame-options", "SAMEORIGIN");
    set(h, "x-permitted-cross-domain-policies", "none");
    set(h, "x-xss-protection", "0");
}

/// Answers CORS preflights (`OPTIONS` with `Access-Control-Request-Method`) with 204; the
/// CORS headers themselves are added by [`decorate`], only for allowed origins.
pub fn preflight() -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    // Not `warp::options()`: its "method not allowed" would outrank the "not found" of an
    // unknown path, so every unknown GET would answer 405.
    warp::method()
        .and_then(|method: warp::http::Method| async move {
            if method == warp::http::Method::OPTIONS {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(warp::header::<String>("access-control-request-method"))
        .and(named("preflight"))
        .map(|_method: String| {
            warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response()
        })
}

/// The request's `Origin`, when it is one of `origins`.
fn allowed<'a>(origins: &AllowedOrigins, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    origins.contains(origin.to_str().ok()?).then_some(origin)
}

/// Adds the security headers, and the CORS headers when the request's `Origin` is allowed.
pub fn decorate(
    origins: &AllowedOrigins,
    request: &HeaderMap,
    mut response: warp::reply::Response,
) -> warp::reply::Response {
    decorate_headers(origins, request, response.headers_mut());
    response
}

/// [`decorate`] for any response type: works on its headers.
pub fn decorate_headers(origins: &AllowedOrigins, request: &HeaderMap, h: &mut HeaderMap) {
    let preflight = request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    security_headers(h);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = allowed(origins, request) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if preflight {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE_SECS),
            );
        } else {
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSE_HEADERS),
            );
        }
    }
}

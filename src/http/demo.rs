//! `/demo/`: a page that pairs two browsers, joins them and opens a WebRTC data channel
//! between them, built on the reference client (`web/our-memories.js`). Its files are
//! compiled into the binary, so it needs no deployment step. It runs under the server's own
//! security headers (CSP `script-src 'self'`: no inline script). On by default in
//! development, off in production unless `DEMO=on`; off, every path under it is 404.

use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::front::wire::{enabled, named};

/// The page's files: name under `/demo/`, media type, bytes.
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../web/demo/index.html"),
    ),
    (
        "demo.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/demo/demo.js"),
    ),
    (
        "demo.css",
        "text/css; charset=utf-8",
        include_str!("../../web/demo/demo.css"),
    ),
    (
        "our-memories.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/our-memories.js"),
    ),
];

/// The route, or one that matches nothing when `on` is false.
pub fn route(on: bool) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("demo")
        .and(warp::get().or(warp::head()).unify())
        .and(enabled(on))
        .and(named("/demo/"))
        .and(warp::path::tail())
        .and(warp::path::full())
        .and_then(
            |tail: warp::path::Tail, full: warp::path::FullPath| async move {
                // `/demo` without the slash: the page's relative URLs need it.
                if full.as_str() == "/demo" {
                    let mut res = StatusCode::PERMANENT_REDIRECT.into_response();
                    res.headers_mut()
                        .insert(header::LOCATION, HeaderValue::from_static("/demo/"));
                    return Ok(res);
                }
                match FILES.iter().find(|(name, ..)| *name == tail.as_str()) {
                    Some(&(_, media, body)) => Ok(file(media, body)),
                    None => Err(warp::reject::not_found()),
                }
            },
        )
}

/// One file; `no-cache` so a new binary's page is never mixed with an old script.
fn file(media: &'static str, body: &'static str) -> Response {
    let mut res = Response::new(body.into());
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

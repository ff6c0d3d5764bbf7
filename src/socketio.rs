//! The Socket.IO transport at `/socket.io/`: Socket.IO protocol v5 over Engine.IO v4 (what
//! socket.io-client 3.x and 4.x speak), HTTP long-polling with upgrade and WebSocket only, on
//! the same port, rooms, mailboxes, tokens, limits and metrics as `/ws` and REST. The
//! protocol engine is `socketioxide`; warp's routes are its inner service for every other
//! path. [`Gate`] applies the front end's rules to Socket.IO requests before the engine sees
//! them; [`session`] is one socket's events. docs/protocol.md §12 is the contract.

pub mod session;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Either;
use hyper::body::Incoming;
use socketioxide::{SocketIo, TransportType};
use tower_service::Service;
use warp::http::{HeaderMap, Request, Response, header};

use crate::config::AllowedOrigins;
use crate::front::browser;
use crate::front::conn::{Refused, UpgradeSlot};
use crate::front::error::ApiError;
use crate::metrics::RouteSlot;
use crate::state::AppState;

/// Where Socket.IO clients connect (socket.io-client's default `path`).
pub const PATH: &str = "/socket.io/";
/// Engine.IO ping interval: the server pings every 5 s...
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// ...and a client that has not answered within 3 s is gone, so a vanished peer is reported
/// as `peer-left` at most 8 s after its last pong: within the 10 s of `/ws`.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The Socket.IO service over `inner` (warp's routes), configured from the state.
pub fn service<S>(state: &AppState, inner: S) -> Gate<socketioxide::service::SocketIoService<S>>
where
    S: Clone,
{
    let (svc, io) = SocketIo::builder()
        .req_path(PATH)
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        // The namespace CONNECT must follow the handshake as a `/ws` join must follow the upgrade.
        .connect_timeout(state.ws.join_timeout)
        // Room for a 64 KiB payload and its envelope, like WS_MAX_MESSAGE_BYTES: a larger
        // payload still gets a clean `payload_too_large`.
        .max_payload(state.ws.max_message_bytes as u64)
        .ws_max_message_size(state.ws.max_message_bytes)
        .ws_max_frame_size(state.ws.max_message_bytes)
        .ws_read_buffer_size(crate::front::conn::READ_BUFFER_BYTES)
        .max_buffer_size(state.ws.outbound_queue)
        .transports([TransportType::Polling, TransportType::Websocket])
        .build_with_inner_svc(inner);
    session::register(&io, state);
    Gate {
        inner: svc,
        origins: state.origins.clone(),
    }
}

/// Applies the front end's rules to Socket.IO requests (other paths pass untouched): the
/// route is named for the metrics, a connection over a cap gets 503, a browser origin not in
/// `ALLOWED_ORIGINS` gets 403 (polling and upgrade alike), the upgrade handle the accept loop
/// set aside is handed back, and every answer gets the security and CORS headers.
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    origins: AllowedOrigins,
}

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<S, B> Service<Request<Incoming>> for Gate<S>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Either<B, WarpBody>>;
    type Error = Infallible;
    type Future = Boxed<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        if !req.uri().path().starts_with(PATH) {
            let call = self.inner.call(req);
            return Box::pin(async move { Ok(call.await?.map(Either::Left)) });
        }
        if let Some(slot) = req.extensions().get::<RouteSlot>() {
            slot.set(PATH);
        }
        let headers = req.headers().clone();
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("\u{0}"));
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let refused = if let Some(Refused(reason)) = req.extensions().get::<Refused>() {
            Some(ApiError::TooManyConnections(*reason))
        } else if !self.origins.permits(origin, host) {
            Some(ApiError::OriginNotAllowed)
        } else {
            None
        };
        let origins = self.origins.clone();
        if let Some(err) = refused {
            let response = err.into_response().map(Either::Right);
            return Box::pin(async move { Ok(decorated(&origins, &headers, response)) });
        }
        if let Some(on_upgrade) = req
            .extensions()
            .get::<UpgradeSlot>()
            .and_then(UpgradeSlot::take)
        {
            req.extensions_mut().insert(on_upgrade);
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?.map(Either::Left);
            Ok(decorated(&origins, &headers, response))
        })
    }
}

/// The body type of a response, so warp's (which it does not export) can be named.
pub trait HasBody {
    /// The body.
    type Body;
}

impl<B> HasBody for Response<B> {
    type Body = B;
}

/// warp's response body.
pub type WarpBody = <warp::reply::Response as HasBody>::Body;

fn decorated<B>(origins: &AllowedOrigins, request: &HeaderMap, mut r: Response<B>) -> Response<B> {
    browser::decorate_headers(origins, request, r.headers_mut());
    r
}

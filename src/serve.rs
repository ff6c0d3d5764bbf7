//! Our own accept loop on hyper (instead of `warp::serve`): it sets `TCP_NODELAY`, records the
//! peer address, caps connections (per client IP and in total, below the file-descriptor
//! limit), bounds header reads, rejects requests without one valid `Host`, counts and times
//! every request by route template, and owns graceful shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::HeaderMap;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::config::{AllowedOrigins, FD_RESERVE};
use crate::front::browser;
use crate::front::conn::{Counted, PeerAddr, Refused, UpgradeSlot};
use crate::front::error::ApiError;
use crate::metrics::{ConnRefusal, GaugeShare, Metrics, RequestTimer, RouteSlot};
use crate::shutdown::{Shutdown, ShutdownListener};
use crate::telemetry;

/// A client that has not sent its request headers by then is disconnected (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Refused connections answered at once (503, or the probes); beyond, they are closed
/// unanswered. Part of [`FD_RESERVE`].
pub const REFUSED_CONNECTIONS: usize = 64;
/// A refused connection gets this long to send its request head (one request, no keep-alive).
pub const REFUSED_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection cap in force: `configured`, lowered to stay [`FD_RESERVE`] below the
/// file-descriptor limit (after raising the soft limit to the hard one, as Go's runtime does).
#[must_use]
pub fn connection_cap(configured: usize) -> usize {
    let fds = rlimit::increase_nofile_limit(u64::MAX)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(usize::MAX);
    let below_fds = if fds > 2 * FD_RESERVE {
        fds - FD_RESERVE
    } else {
        fds / 2
    };
    configured.min(below_fds).max(1)
}

/// Who is served in full: at most `max` connections, and `per_ip` from one address. Cheap to
/// clone; every admitted connection holds a [`Ticket`] that gives its place back on drop.
#[derive(Clone)]
pub struct Admission(Arc<Counts>);

struct Counts {
    max: usize,
    per_ip: Option<usize>,
    metrics: Metrics,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    served: usize,
    refused: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// How a new connection is served.
pub enum Entry {
    /// In full (with no ticket on a listener that is not counted).
    Served(Option<Ticket>),
    /// With only the probes answered, everything else 503, then closed.
    Refused(ConnRefusal, Ticket),
    /// Not at all: closed at once.
    Dropped,
}

/// A connection's place; dropping it gives the place back.
pub struct Ticket {
    counts: Arc<Counts>,
    ip: IpAddr,
    served: bool,
    _gauge: Option<GaugeShare>,
}

impl Admission {
    /// `max` in total, `per_ip` per client address (`None`: no per-IP cap).
    #[must_use]
    pub fn new(max: usize, per_ip: Option<usize>, metrics: Metrics) -> Self {
        Self(Arc::new(Counts {
            max,
            per_ip,
            metrics,
            open: Mutex::default(),
        }))
    }

    /// Takes a place for a connection from `ip`, counting any refusal.
    pub fn admit(&self, ip: IpAddr) -> Entry {
        let counts = &self.0;
        let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_ip = open.by_ip.get(&ip).copied().unwrap_or(0);
        let refusal = if counts.per_ip.is_some_and(|cap| from_ip >= cap) {
            Some(ConnRefusal::PerIp)
        } else if open.served >= counts.max {
            Some(ConnRefusal::Total)
        } else {
            None
        };
        let ticket = |served| Ticket {
            counts: Arc::clone(counts),
            ip,
            served,
            _gauge: served.then(|| counts.metrics.connection_open()),
        };
        match refusal {
            None => {
                open.served += 1;
                *open.by_ip.entry(ip).or_default() += 1;
                Entry::Served(Some(ticket(true)))
            }
            Some(reason) if open.refused < REFUSED_CONNECTIONS => {
                open.refused += 1;
                counts.metrics.connection_refused(reason);
                Entry::Refused(reason, ticket(false))
            }
            Some(_) => {
                counts.metrics.connection_refused(ConnRefusal::Dropped);
                Entry::Dropped
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.served {
            open.served -= 1;
            if let Some(n) = open.by_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.by_ip.remove(&self.ip);
                }
            }
        } else {
            open.refused -= 1;
        }
    }
}

/// Any error a response body can end with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response, whichever service (warp's routes, Socket.IO) made it.
type Reply = hyper::Response<UnsyncBoxBody<Bytes, BoxError>>;

/// One body type for every response.
fn boxed<B>(body: B) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one `Host`, and it is a valid
/// authority (an HTTP/1.0 request may carry none).
fn host_is_valid(req: &hyper::Request<Incoming>) -> bool {
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) => req.version() < hyper::Version::HTTP_11,
        (Some(host), None) => host.to_str().ok().is_some_and(|h| {
            // An authority without userinfo: `host[:port]`.
            !h.contains('@')
                && h.parse::<hyper::http::uri::Authority>()
                    .is_ok_and(|a| !a.host().is_empty())
        }),
        (Some(_), Some(_)) => false,
    }
}

/// Accepts connections until `stop` resolves; connections already open finish through
/// `shutdown`'s listeners. With `metrics`, every request is counted and timed.
pub async fn accept_loop<S, B>(
    listener: TcpListener,
    service: S,
    counted: Option<(&Metrics, &Admission)>,
    shutdown: &Shutdown,
    stop: impl Future<Output = ()>,
) where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: the error repeats until a
                    // connection closes, so pause instead of spinning (and flooding the log).
                    tracing::warn!(cause = %e, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let entry = match counted {
            Some((_, admission)) => admission.admit(peer.ip()),
            None => Entry::Served(None),
        };
        if matches!(entry, Entry::Dropped) {
            continue;
        }
        tokio::spawn(serve_connection(
            stream,
            peer,
            service.clone(),
            counted.map(|(m, _)| m.clone()),
            shutdown.listener(),
            entry,
        ));
    }
}

async fn serve_connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    metrics: Option<Metrics>,
    mut shutdown: ShutdownListener,
    entry: Entry,
) where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let _ = stream.set_nodelay(true);
    let (refused, ticket) = match entry {
        Entry::Served(ticket) => (None, ticket),
        Entry::Refused(reason, ticket) => (Some(Refused(reason)), Some(ticket)),
        Entry::Dropped => return,
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        let host_ok = host_is_valid(&req);
        let span = telemetry::request_span(req.method(), req.uri().path());
        req.extensions_mut().insert(PeerAddr(peer));
        if let Some(refused) = refused {
            req.extensions_mut().insert(refused);
        }
        if let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
            req.extensions_mut().insert(UpgradeSlot::new(on_upgrade));
        }
        let mut timer = metrics.as_ref().map(|m| {
            let route = RouteSlot::default();
            req.extensions_mut().insert(route.clone());
            RequestTimer::start(m.clone(), route, req.method().clone())
        });
        let response = if host_ok {
            let call = service.clone().call(req);
            futures_util::future::Either::Left(async move { call.await.map(|r| r.map(boxed)) })
        } else {
            let mut bad = ApiError::InvalidHost.into_response();
            // The security headers every response carries (no CORS: no origin is trusted here).
            browser::decorate_headers(
                &AllowedOrigins::default(),
                &HeaderMap::new(),
                bad.headers_mut(),
            );
            bad.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
            futures_util::future::Either::Right(std::future::ready(Ok(bad.map(boxed))))
        };
        let answered = async move {
            let response: Result<Reply, Infallible> = response.await;
            if let Ok(r) = &response {
                telemetry::answered(r.status());
                if let Some(timer) = &mut timer {
                    timer.answered(r.status());
                }
            }
            response
        };
        tracing::Instrument::instrument(answered, span)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(refused.is_none())
        .header_read_timeout(if refused.is_some() {
            REFUSED_HEADER_TIMEOUT
        } else {
            HEADER_READ_TIMEOUT
        })
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .serve_connection(
            TokioIo::new(Counted::new(
                stream,
                ticket.map(|t| Box::new(t) as Box<dyn std::any::Any + Send + Sync>),
            )),
            svc,
        )
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.recv() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(cause = %e, %peer, "connection ended with an error");
    }
}

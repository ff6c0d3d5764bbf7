//! Our own accept loop on hyper (instead of `warp::serve`): it sets `TCP_NODELAY`, records the
//! peer address, bounds header reads, counts and times every request by route template, and
//! owns graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tower_service::Service;

use crate::front::conn::{PeerAddr, UpgradeSlot};
use crate::metrics::{Metrics, RequestTimer, RouteSlot};
use crate::shutdown::{Shutdown, ShutdownListener};

/// A client that has not sent its request headers by then is disconnected (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
pub const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Largest request head (request line + headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Accepts connections until `stop` resolves; connections already open finish through
/// `shutdown`'s listeners. With `metrics`, every request is counted and timed.
pub async fn accept_loop<S>(
    listener: TcpListener,
    service: S,
    metrics: Option<&Metrics>,
    shutdown: &Shutdown,
    stop: impl Future<Output = ()>,
) where
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
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
        tokio::spawn(serve_connection(
            stream,
            peer,
            service.clone(),
            metrics.cloned(),
            shutdown.listener(),
        ));
    }
}

async fn serve_connection<S>(
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
    metrics: Option<Metrics>,
    mut shutdown: ShutdownListener,
) where
    S: Service<hyper::Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(PeerAddr(peer));
        if let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() {
            req.extensions_mut().insert(UpgradeSlot::new(on_upgrade));
        }
        let mut timer = metrics.as_ref().map(|m| {
            let route = RouteSlot::default();
            req.extensions_mut().insert(route.clone());
            RequestTimer::start(m.clone(), route, req.method().clone())
        });
        let response = service.clone().call(req);
        async move {
            let response = response.await;
            if let (Some(timer), Ok(r)) = (&mut timer, &response) {
                timer.answered(r.status());
            }
            response
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES.max(8192))
        .serve_connection(TokioIo::new(stream), svc)
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

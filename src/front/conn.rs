//! Per-connection values the accept loop ([`crate::serve`]) puts into every request's
//! extensions, for the filters of any transport to read, and the socket it serves them on.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use hyper::upgrade::OnUpgrade;
use tokio::net::TcpStream;
use warp::{Filter, Rejection};

use super::error::{ApiError, reject};
use crate::metrics::ConnRefusal;

/// Read buffer of a WebSocket (`/ws` and Socket.IO alike): enough for typical signals; larger
/// messages still work (the buffer is only the unit of each read). tungstenite's 128 KiB
/// default, zero-filled on the first read, would cost every idle socket that much memory.
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The peer's socket address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The connection's upgrade handle, moved out of the request by the accept loop so that an
/// upgrade route (and nothing else) can take it. hyper's `OnUpgrade` is not `Clone`, which
/// warp's extension filters require; the slot is.
#[derive(Clone)]
pub struct UpgradeSlot(Arc<Mutex<Option<OnUpgrade>>>);

impl UpgradeSlot {
    /// Wraps the request's upgrade handle.
    #[must_use]
    pub fn new(on_upgrade: OnUpgrade) -> Self {
        Self(Arc::new(Mutex::new(Some(on_upgrade))))
    }

    /// Takes the handle; `None` if another filter took it already.
    #[must_use]
    pub fn take(&self) -> Option<OnUpgrade> {
        self.0.lock().ok()?.take()
    }
}

/// Marks every request of a connection over a connection cap: only the probes (`/health`,
/// `/ready`, `/metrics`) are answered; everything else gets 503 `too_many_connections`.
#[derive(Debug, Clone, Copy)]
pub struct Refused(pub ConnRefusal);

/// Passes requests of connections served in full; rejects those of a refused connection.
pub fn admitted() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::ext::optional::<Refused>()
        .and_then(|refused: Option<Refused>| async move {
            match refused {
                None => Ok(()),
                Some(Refused(reason)) => Err(reject(ApiError::TooManyConnections(reason))),
            }
        })
        .untuple_one()
}

/// A connection's socket with its place. hyper hands this same object to an upgrade (a
/// `/ws` or Socket.IO WebSocket), so the place is held until the upgraded socket closes, not
/// only until its HTTP exchange ends: WebSockets count against both caps. An upgrade can take
/// it back out of hyper's `Upgraded` (`downcast::<TokioIo<Counted>>`) and talk to the socket
/// directly.
pub struct Counted {
    stream: TcpStream,
    /// The accept loop's place for this connection (its ticket), given back on drop.
    _place: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl Counted {
    /// `stream`, holding `place` for as long as it lives.
    #[must_use]
    pub fn new(stream: TcpStream, place: Option<Box<dyn std::any::Any + Send + Sync>>) -> Self {
        Self {
            stream,
            _place: place,
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

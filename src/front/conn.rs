//! Per-connection values the accept loop ([`crate::serve`]) puts into every request's
//! extensions, for the filters of any transport to read.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::upgrade::OnUpgrade;
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

//! `GET /ws`: the WebSocket upgrade, done here rather than by warp's `ws()` filter so the
//! socket's buffers can be sized: tungstenite's default 128 KiB read buffer, zero-filled on the
//! first read, would cost every idle connection that much memory. Then a [`session`] runs the
//! socket; [`protocol`] is the wire format.

pub mod protocol;
pub mod session;

use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{HeaderValue, StatusCode, header};
use warp::{Filter, Rejection, Reply};

use crate::front::conn::{Counted, UpgradeSlot};
use crate::front::error::{ApiError, reject};
use crate::front::wire::{named, with};
use crate::state::AppState;

pub use crate::front::conn::READ_BUFFER_BYTES;

/// The handshake headers a WebSocket upgrade must carry.
struct Handshake {
    connection: Option<String>,
    upgrade: Option<String>,
    version: Option<String>,
    key: Option<String>,
}

impl Handshake {
    /// The `Sec-WebSocket-Accept` value, if this is a valid RFC 6455 upgrade request.
    fn accept_key(&self) -> Option<String> {
        let connection_ok = self.connection.as_deref().is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
        let upgrade_ok = self
            .upgrade
            .as_deref()
            .is_some_and(|u| u.trim().eq_ignore_ascii_case("websocket"));
        let version_ok = self.version.as_deref().is_some_and(|v| v.trim() == "13");
        let key = self
            .key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())?;
        (connection_ok && upgrade_ok && version_ok).then(|| derive_accept_key(key.as_bytes()))
    }
}

fn socket_config(state: &AppState) -> WebSocketConfig {
    let max = state.ws.max_message_bytes;
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames collect until the session flushes its batch: one write per batch. The
        // buffer grows only as far as a batch needs.
        .write_buffer_size(session::WRITE_BATCH_BYTES)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// The upgrade route.
pub fn route(state: AppState) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let handshake = warp::header::optional::<String>("connection")
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .map(|connection, upgrade, version, key| Handshake {
            connection,
            upgrade,
            version,
            key,
        });
    warp::path!("ws")
        .and(warp::get())
        .and(named("/ws"))
        .and(warp::header::optional::<String>("origin"))
        .and(warp::header::optional::<String>("host"))
        .and(handshake)
        .and(warp::ext::optional::<UpgradeSlot>())
        .and(with(state))
        .and_then(upgrade)
}

async fn upgrade(
    origin: Option<String>,
    host: Option<String>,
    handshake: Handshake,
    slot: Option<UpgradeSlot>,
    state: AppState,
) -> Result<warp::reply::Response, Rejection> {
    if !state.origins.permits(origin.as_deref(), host.as_deref()) {
        return Err(reject(ApiError::OriginNotAllowed));
    }
    let accept = handshake
        .accept_key()
        .ok_or_else(|| reject(ApiError::UpgradeRequired))?;
    let on_upgrade = slot
        .and_then(|s| s.take())
        .ok_or_else(|| reject(ApiError::UpgradeRequired))?;
    let accept = HeaderValue::from_str(&accept)
        .map_err(|e| reject(ApiError::Internal(format!("accept key: {e}"))))?;
    let config = socket_config(&state);
    // The socket outlives the upgrade request: its own span (a process-unique socket number),
    // which names the couple and device once the socket has joined.
    let span = tracing::info_span!(
        "websocket",
        socket = state.next_socket_id(),
        couple_id = tracing::field::Empty,
        device_id = tracing::field::Empty
    );
    let session = async move {
        match on_upgrade.await {
            // Our own connection, taken back from hyper: tungstenite reads and writes the
            // socket directly, not through hyper's boxed, rewinding wrapper and a second
            // adapter (a measurable share of a relayed message's CPU).
            Ok(upgraded) => match upgraded.downcast::<TokioIo<Counted>>() {
                Ok(parts) => {
                    let io = parts.io.into_inner();
                    // Copied out: the bytes share hyper's whole read buffer, which the
                    // session would otherwise keep for its life.
                    let early = parts.read_buf.to_vec();
                    drop(parts.read_buf);
                    let socket = if early.is_empty() {
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
                    } else {
                        // Frames the client sent right behind its upgrade request.
                        WebSocketStream::from_partially_read(io, early, Role::Server, Some(config))
                            .await
                    };
                    session::run(socket, state).await;
                }
                Err(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    session::run(socket, state).await;
                }
            },
            Err(e) => tracing::debug!(cause = %e, "websocket upgrade failed"),
        }
    };
    tokio::spawn(tracing::Instrument::instrument(session, span));
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs(connection: &str, upgrade: &str, version: &str, key: &str) -> Handshake {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Handshake {
            connection: some(connection),
            upgrade: some(upgrade),
            version: some(version),
            key: some(key),
        }
    }

    #[test]
    fn accepts_rfc_6455_handshakes_only() {
        // The example from RFC 6455 section 1.3.
        let ok = hs(
            "keep-alive, Upgrade",
            "WebSocket",
            "13",
            "dGhlIHNhbXBsZSBub25jZQ==",
        );
        assert_eq!(
            ok.accept_key().as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        for bad in [
            hs("", "websocket", "13", "k"),
            hs("close", "websocket", "13", "k"),
            hs("upgrade", "h2c", "13", "k"),
            hs("upgrade", "websocket", "8", "k"),
            hs("upgrade", "websocket", "13", ""),
        ] {
            assert!(bad.accept_key().is_none());
        }
    }
}

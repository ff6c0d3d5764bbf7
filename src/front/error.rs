//! The one place where errors become HTTP statuses and wire codes. HTTP responses carry
//! `{"error":{"code","message"}}`; WebSocket `error` messages use the same codes.

use std::convert::Infallible;

use actors::{BackupError, IdError, Kick, PairingError, RoomError};
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::metrics::{ConnRefusal, Outcome};

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a wrong type, a missing field or an invalid id.
    #[error("{0}")]
    InvalidRequest(String),
    /// A WebSocket message with a `type` the server does not know.
    #[error("unknown message type")]
    UnknownMessageType,
    /// A binary WebSocket frame: the protocol is JSON text only.
    #[error("binary frames are not supported; send JSON text")]
    BinaryFrame,
    /// A WebSocket message that needs `join-couple` first.
    #[error("join a couple first")]
    NotJoined,
    /// A second `join-couple` on a joined socket.
    #[error("already joined; send leave-couple first")]
    AlreadyJoined,
    /// No `Authorization: Bearer` header (or not a bearer one).
    #[error("missing Authorization: Bearer <deviceToken>")]
    MissingToken,
    /// `GET /metrics` without the `METRICS_TOKEN` bearer token (or with another one).
    #[error("metrics need Authorization: Bearer <METRICS_TOKEN>")]
    MetricsUnauthorized,
    /// A browser page from an origin not in `ALLOWED_ORIGINS` tried to open a WebSocket.
    #[error("this origin may not open a WebSocket or Socket.IO connection here")]
    OriginNotAllowed,
    /// The token is valid but for another couple or device than the request touches.
    #[error("this token does not grant access to that couple or device")]
    Forbidden,
    /// Pairing or token verification failed.
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// A room refused the request.
    #[error(transparent)]
    Room(#[from] RoomError),
    /// A backup upload or download failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// No route matches the path.
    #[error("no such route")]
    NotFound,
    /// The path exists with another method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is over the route's limit.
    #[error("request body is too large")]
    BodyTooLarge,
    /// A body was sent without Content-Length.
    #[error("Content-Length is required")]
    LengthRequired,
    /// `GET /ws` without a WebSocket upgrade.
    #[error("this endpoint needs a WebSocket upgrade")]
    UpgradeRequired,
    /// A rate limit was hit; `Retry-After` says when to try again.
    #[error("too many requests; retry in {} s", whole_seconds_up(*retry_after))]
    RateLimited {
        /// How long until the next request would pass.
        retry_after: std::time::Duration,
        /// The limit's size, for `RateLimit-Limit`.
        limit: u32,
        /// The limit's window, for `RateLimit-Policy`.
        window: std::time::Duration,
    },
    /// The connection is over `MAX_CONNECTIONS_PER_IP` or `MAX_CONNECTIONS`.
    #[error("too many connections ({}); close some or retry later", .0.label())]
    TooManyConnections(ConnRefusal),
    /// A JSON body did not arrive within `BODY_TIMEOUT_SECS`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// `Host` is missing (HTTP/1.1), repeated or not a valid authority (RFC 9112 §3.2).
    #[error("a request needs exactly one valid Host header")]
    InvalidHost,
    /// The room dropped the socket (Socket.IO only: `/ws` says it with a close code).
    #[error("{}", kick_text(*.0))]
    Kicked(Kick),
    /// A Socket.IO socket did not join a couple in time (`/ws` closes with 4004).
    #[error("join a couple within the join timeout")]
    JoinTimeout,
    /// A tus request without `Tus-Resumable: 1.0.0` (tus: 412, with `Tus-Version`).
    #[error("Tus-Resumable must be 1.0.0 (the tus version this server speaks)")]
    TusVersion,
    /// A tus chunk without `Content-Type: application/offset+octet-stream` (tus: 415).
    #[error("a chunk must have Content-Type: application/offset+octet-stream")]
    UnsupportedMediaType,
    /// A bug or an unexpected failure; the cause (inside) is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<IdError> for ApiError {
    fn from(e: IdError) -> Self {
        ApiError::InvalidRequest(e.to_string())
    }
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// The HTTP status.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        use BackupError as B;
        use PairingError as P;
        use RoomError as R;
        match self {
            Self::InvalidRequest(_)
            | Self::InvalidHost
            | Self::Backup(B::Interrupted | B::TooManyParts { .. })
            | Self::UnknownMessageType
            | Self::BinaryFrame
            | Self::NotJoined
            | Self::AlreadyJoined
            | Self::Room(R::SelfRecipient)
            | Self::Pairing(P::SelfRevocation) => StatusCode::BAD_REQUEST,
            Self::MissingToken
            | Self::MetricsUnauthorized
            | Self::Kicked(Kick::Revoked)
            | Self::Pairing(P::InvalidToken(_) | P::WrongToken) => StatusCode::UNAUTHORIZED,
            Self::Forbidden | Self::OriginNotAllowed | Self::Pairing(P::WrongDevice) => {
                StatusCode::FORBIDDEN
            }
            Self::NotFound
            | Self::Pairing(P::NotFound | P::UnknownDevice)
            | Self::Room(R::UnknownDevice)
            | Self::Backup(B::NotFound | B::UploadNotFound) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Kicked(Kick::Replaced)
            | Self::Pairing(
                P::AlreadyUsed | P::DeviceTaken | P::CoupleFull { .. } | P::LastDevice,
            )
            | Self::Backup(B::OffsetMismatch { .. }) => StatusCode::CONFLICT,
            Self::Pairing(P::Expired | P::Burned) | Self::Backup(B::UploadExpired) => {
                StatusCode::GONE
            }
            Self::TusVersion => StatusCode::PRECONDITION_FAILED,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            // tus checksum extension: 460 Checksum Mismatch.
            Self::Backup(B::ChunkChecksumMismatch) => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            Self::LengthRequired => StatusCode::LENGTH_REQUIRED,
            Self::BodyTooLarge
            | Self::Room(R::PayloadTooLarge { .. })
            | Self::Backup(B::TooLarge { .. } | B::PastLength { .. } | B::QuotaExceeded { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Backup(B::ChecksumMismatch) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Backup(B::TooSlow) | Self::BodyTimeout | Self::JoinTimeout => {
                StatusCode::REQUEST_TIMEOUT
            }
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::Room(R::MailboxFull)
            | Self::RateLimited { .. }
            | Self::Kicked(Kick::SlowConsumer) => StatusCode::TOO_MANY_REQUESTS,
            Self::Pairing(P::StorageUnavailable | P::Unavailable)
            | Self::Room(R::StorageUnavailable | R::Unavailable)
            | Self::TooManyConnections(_)
            | Self::Backup(B::StorageUnavailable | B::Unavailable | B::Busy) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `snake_case` code clients switch on (listed in docs/protocol.md).
    #[must_use]
    pub fn code(&self) -> &'static str {
        use BackupError as B;
        use PairingError as P;
        use RoomError as R;
        match self {
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidHost => "invalid_host",
            Self::Kicked(Kick::Replaced) => "replaced",
            Self::Kicked(Kick::Revoked) => "device_revoked",
            Self::Kicked(Kick::SlowConsumer) => "slow_consumer",
            Self::JoinTimeout => "join_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::TooManyConnections(_) => "too_many_connections",
            Self::UnknownMessageType => "unknown_type",
            Self::BinaryFrame => "binary_not_supported",
            Self::NotJoined => "not_joined",
            Self::AlreadyJoined => "already_joined",
            Self::MissingToken => "missing_token",
            Self::MetricsUnauthorized => "invalid_metrics_token",
            Self::Forbidden | Self::Pairing(P::WrongDevice) => "forbidden",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::Pairing(P::InvalidToken(_)) => "invalid_token",
            Self::Pairing(P::NotFound) => "pairing_not_found",
            Self::Pairing(P::WrongToken) => "invalid_pairing_token",
            Self::Pairing(P::Expired) => "pairing_expired",
            Self::Pairing(P::Burned) => "pairing_burned",
            Self::Pairing(P::AlreadyUsed) => "pairing_used",
            Self::Pairing(P::DeviceTaken) => "device_id_taken",
            Self::Pairing(P::CoupleFull { .. }) => "couple_full",
            Self::Room(R::UnknownDevice) | Self::Pairing(P::UnknownDevice) => "unknown_device",
            Self::Pairing(P::SelfRevocation) => "cannot_revoke_self",
            Self::Pairing(P::LastDevice) => "last_device",
            Self::Room(R::SelfRecipient) => "invalid_recipient",
            Self::Room(R::MailboxFull) => "mailbox_full",
            Self::Room(R::PayloadTooLarge { .. }) => "payload_too_large",
            Self::Backup(B::TooLarge { .. }) => "backup_too_large",
            Self::Backup(B::ChecksumMismatch) => "checksum_mismatch",
            Self::Backup(B::Interrupted) => "upload_interrupted",
            Self::Backup(B::TooSlow) => "upload_too_slow",
            Self::Backup(B::Busy) => "uploads_busy",
            Self::Backup(B::NotFound) => "backup_not_found",
            Self::Backup(B::UploadNotFound) => "upload_not_found",
            Self::Backup(B::UploadExpired) => "upload_expired",
            Self::Backup(B::OffsetMismatch { .. }) => "offset_mismatch",
            Self::Backup(B::PastLength { .. }) => "upload_length_exceeded",
            Self::Backup(B::ChunkChecksumMismatch) => "chunk_checksum_mismatch",
            Self::Backup(B::QuotaExceeded { .. }) => "quota_exceeded",
            Self::Backup(B::TooManyParts { .. }) => "too_many_parts",
            Self::TusVersion => "tus_version_unsupported",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Pairing(P::StorageUnavailable)
            | Self::Room(R::StorageUnavailable)
            | Self::Backup(B::StorageUnavailable) => "storage_unavailable",
            Self::Pairing(P::Unavailable)
            | Self::Room(R::Unavailable)
            | Self::Backup(B::Unavailable) => "unavailable",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::LengthRequired => "length_required",
            Self::UpgradeRequired => "upgrade_required",
            Self::RateLimited { .. } => "rate_limited",
            Self::Internal(_) => "internal",
        }
    }

    /// The metrics outcome of a request that failed with this error: its code.
    #[must_use]
    pub fn outcome(&self) -> Outcome {
        Outcome::Failed(self.code())
    }

    /// The outcome of a request that ended with `result`.
    #[must_use]
    pub fn outcome_of<T>(result: &Result<T, Self>) -> Outcome {
        result.as_ref().map_or_else(Self::outcome, |_| Outcome::Ok)
    }

    /// The message sent to the client: the error's text, except for 5xx, whose cause may
    /// describe the server's internals (see [`ApiError::report`]).
    #[must_use]
    pub fn public_message(&self) -> String {
        if self.hides_cause() {
            match self.status() {
                StatusCode::SERVICE_UNAVAILABLE => "temporarily unavailable; retry".to_owned(),
                _ => "internal error".to_owned(),
            }
        } else {
            self.to_string()
        }
    }

    /// Logs a server error with its cause, once, where it is answered (the HTTP renderer,
    /// a WebSocket `error` message). Client errors are the client's: not logged here.
    pub fn report(&self) {
        if self.hides_cause() {
            tracing::error!(code = self.code(), cause = ?self, "request failed");
        }
    }

    /// A server-side failure whose cause is internal: logged, never sent. (A connection over
    /// its cap is a 503 too, but says why, and is counted instead of logged.)
    fn hides_cause(&self) -> bool {
        self.status().is_server_error() && !matches!(self, Self::TooManyConnections(_))
    }

    /// The HTTP response.
    #[must_use]
    pub fn into_response(self) -> warp::reply::Response {
        #[derive(Serialize)]
        struct Body<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            code: &'a str,
            message: String,
        }
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.public_message(),
            },
        };
        let mut response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        if self.status() == StatusCode::REQUEST_TIMEOUT {
            // RFC 9110 §15.5.9: the rest of the body was not read, so the connection cannot
            // carry another request; say that it closes.
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        if let Self::RateLimited {
            retry_after,
            limit,
            window,
        } = self
        {
            let secs = whole_seconds_up(retry_after);
            let h = response.headers_mut();
            h.insert("retry-after", secs.into());
            h.insert("ratelimit-limit", limit.into());
            h.insert("ratelimit-remaining", 0.into());
            h.insert("ratelimit-reset", secs.into());
            if let Ok(policy) = format!("{limit};w={}", window.as_secs()).parse() {
                h.insert("ratelimit-policy", policy);
            }
        }
        response
    }
}

/// What a kicked Socket.IO socket is told (the reasons of `/ws`'s close codes).
fn kick_text(kick: Kick) -> &'static str {
    match kick {
        Kick::Replaced => "replaced by a newer connection of this device",
        Kick::Revoked => "device revoked",
        Kick::SlowConsumer => "outbound queue full; reconnect and read faster",
    }
}

/// A warp rejection carrying an [`ApiError`].
#[must_use]
pub fn reject(e: impl Into<ApiError>) -> Rejection {
    warp::reject::custom(e.into())
}

/// Turns every rejection, ours or warp's, into the JSON error body.
pub async fn handle_rejection(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let err = if let Some(e) = r.find::<ApiError>() {
        e.clone()
    } else if r.is_not_found() {
        ApiError::NotFound
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::BodyTooLarge
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::LengthRequired
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidRequest(e.to_string())
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        upgrade_or_invalid(e.name(), e.to_string())
    } else if let Some(e) = r.find::<warp::reject::MissingHeader>() {
        upgrade_or_invalid(e.name(), e.to_string())
    } else {
        ApiError::Internal(format!("unhandled rejection: {r:?}"))
    };
    err.report();
    Ok(err.into_response())
}

/// A missing or wrong WebSocket handshake header means "this needs an upgrade"; any other
/// header problem is a plain bad request.
fn upgrade_or_invalid(header: &str, message: String) -> ApiError {
    let h = header.to_ascii_lowercase();
    if h == "connection" || h == "upgrade" || h.starts_with("sec-websocket") {
        ApiError::UpgradeRequired
    } else {
        ApiError::InvalidRequest(message)
    }
}

/// Whole seconds, rounded up (at least 1): a client that waits this long will pass.
fn whole_seconds_up(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

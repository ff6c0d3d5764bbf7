//! One error enum per actor. Each variant is something a client can act on; the front end maps
//! them to HTTP statuses and wire codes in one place.

use crate::token::TokenError;

/// Why a room refused a join, a signal, an ack or a fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The named recipient is not a device of this couple.
    #[error("no such device in this couple")]
    UnknownDevice,
    /// A device cannot send a signal to itself.
    #[error("a device cannot signal itself")]
    SelfRecipient,
    /// A recipient's mailbox is at its count or byte bound; nothing was accepted.
    #[error("the recipient's mailbox is full; retry after it has caught up")]
    MailboxFull,
    /// The payload is over the configured size once serialized.
    #[error("payload is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The bound, for the message.
        limit: usize,
    },
    /// Persisting a signal for an offline device failed; it was not accepted.
    #[error("storage is unavailable")]
    StorageUnavailable,
    /// The room is restarting or stopping; the client should retry (rejoin).
    #[error("the room is unavailable; retry")]
    Unavailable,
}

/// Why pairing or authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairingError {
    /// No pairing is open for this couple.
    #[error("no pairing is open for this couple")]
    NotFound,
    /// The pairing token does not match (counts toward the attempt cap).
    #[error("pairing token is invalid")]
    WrongToken,
    /// The pairing passed its TTL.
    #[error("pairing has expired")]
    Expired,
    /// Too many wrong tokens were tried; the pairing can no longer be used.
    #[error("pairing was burned after too many wrong tokens")]
    Burned,
    /// The token was already used by a successful confirm.
    #[error("pairing token was already used")]
    AlreadyUsed,
    /// Another device of the couple already has this id.
    #[error("deviceId is already taken in this couple")]
    DeviceTaken,
    /// The couple has its maximum number of devices.
    #[error("couple already has the maximum of {max} devices")]
    CoupleFull {
        /// The configured maximum, for the message.
        max: usize,
    },
    /// The device token is missing, malformed, forged or revoked.
    #[error("device token is invalid")]
    InvalidToken(#[from] TokenError),
    /// The token is valid but speaks for another device than the request names.
    #[error("the token does not belong to this device")]
    WrongDevice,
    /// The device to revoke is not a device of the couple.
    #[error("no such device in this couple")]
    UnknownDevice,
    /// A device cannot revoke itself; another device of the couple must.
    #[error("a device cannot revoke itself; revoke it from another device of the couple")]
    SelfRevocation,
    /// Revoking the device would leave the couple without any device (and its backups out
    /// of reach for good).
    #[error("the couple's last device cannot be revoked")]
    LastDevice,
    /// The store failed; nothing was changed.
    #[error("storage is unavailable")]
    StorageUnavailable,
    /// The pairing actor did not answer in time.
    #[error("pairing service is unavailable")]
    Unavailable,
}

/// Why a backup upload or download failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackupError {
    /// The body passed the size limit; nothing was kept.
    #[error("backup is larger than {limit} bytes")]
    TooLarge {
        /// The limit, for the message.
        limit: u64,
    },
    /// The body's SHA-256 is not the one the client announced; nothing was kept.
    #[error(
        "the backup's SHA-256 does not match the one declared (X-Content-SHA256, or tus sha256)"
    )]
    ChecksumMismatch,
    /// The upload stream broke off (the client went away); nothing was kept.
    #[error("the upload was interrupted")]
    Interrupted,
    /// The client sent nothing for the idle timeout, or the upload ran past its deadline.
    #[error("the upload was too slow and was dropped")]
    TooSlow,
    /// Too many uploads are in progress; retry later.
    #[error("too many uploads in progress; retry later")]
    Busy,
    /// No such backup (or none yet) for this couple.
    #[error("no such backup")]
    NotFound,
    /// The store failed; nothing was published.
    #[error("storage is unavailable")]
    StorageUnavailable,
    /// The backup actor did not answer in time.
    #[error("backup service is unavailable")]
    Unavailable,
    /// No such resumable upload for this couple (never created, terminated, or completed).
    #[error("no such upload")]
    UploadNotFound,
    /// The upload expired before it was completed; its bytes are being deleted.
    #[error("the upload expired")]
    UploadExpired,
    /// `Upload-Offset` is not the upload's offset (tus: 409); nothing was written.
    #[error("Upload-Offset must be {offset}, the bytes received so far")]
    OffsetMismatch {
        /// The upload's offset.
        offset: u64,
    },
    /// The chunk would take the upload past its `Upload-Length`; nothing of it was kept.
    #[error("the chunk goes past Upload-Length ({length} bytes)")]
    PastLength {
        /// The declared length.
        length: u64,
    },
    /// The chunk's `Upload-Checksum` does not match its bytes (tus: 460); nothing of it was
    /// kept.
    #[error("the chunk does not match its Upload-Checksum")]
    ChunkChecksumMismatch,
    /// The upload already has `Settings::upload_max_parts` parts; nothing of this chunk was
    /// kept.
    #[error("the upload already has {limit} parts; send larger chunks")]
    TooManyParts {
        /// The limit.
        limit: usize,
    },
    /// The couple's kept backups and unfinished uploads would pass its storage quota.
    #[error("the couple's storage quota ({limit} bytes) would be exceeded: {used} bytes in use")]
    QuotaExceeded {
        /// `BACKUP_QUOTA_BYTES`.
        limit: u64,
        /// What counts against it now.
        used: u64,
    },
}

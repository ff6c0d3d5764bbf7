//! What the domain needs from persistence, as traits ([`Store`] for records, [`BlobStore`]
//! for backup bytes), so the actors do not know which database sits behind them.
//! [`embedded::EmbeddedStore`] and [`files::FileBlobs`] are the defaults; other backends
//! implement the same traits and pass the same conformance tests. The [`Storage`] handle
//! reports the backends' health.

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
pub mod files;
pub(crate) mod group_commit;
pub(crate) mod measured;

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::digest::Sha256Digest;
use crate::ids::{BackupId, CoupleId, DeviceId, Seq, SignalId, UploadId};
use crate::mailbox::Signal;
use crate::token::{DeviceNonce, TokenHash};

/// A storage failure. Deliberately opaque to clients: any variant is a 503 at the edge.
/// `Clone`, because one failed batch (see [`Store::write_batch`]) is every write's answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or refused the operation; retrying later may work.
    #[error("storage backend unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded: the data on disk is not what this version wrote.
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
}

/// A device registered in a couple. Its existence (with this nonce) is what makes its token live.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// The couple the device belongs to.
    pub couple: CoupleId,
    /// The device's id, unique inside the couple.
    pub device: DeviceId,
    /// Baked into the device's token; a re-paired device gets a new one.
    pub nonce: DeviceNonce,
    /// When the device was paired.
    pub paired_at: Timestamp,
}

/// An open pairing of a couple: at most one per couple, replaced by a newer initiate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingRecord {
    /// The couple a confirming device will join.
    pub couple: CoupleId,
    /// SHA-256 of the one-time token; the token itself is never stored.
    pub token_hash: TokenHash,
    /// After this instant the pairing answers 410 and may be swept.
    pub expires_at: Timestamp,
    /// When the record is deleted: a while after expiry, so a late confirm still gets
    /// `pairing_used` / `pairing_expired` instead of `pairing_not_found`.
    pub purge_at: Timestamp,
    /// Wrong tokens tried so far; at the cap the pairing is burned.
    pub failed_attempts: u32,
    /// Set by a successful confirm: the token is single use.
    pub consumed: bool,
    /// No pairing of this couple was ever confirmed: it has only the device that created it.
    /// Set by the `initiate` that creates a couple, carried over by a later `initiate` of that
    /// device, cleared by a confirm. Such a couple is deleted once this pairing has expired
    /// (see [`Store::expire_unconfirmed_couples`]). Records written before this field existed
    /// read as `false`: their couples are kept.
    #[serde(default)]
    pub unconfirmed: bool,
}

/// A signal waiting in a device's mailbox, kept on disk while its recipient is offline.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSignal {
    /// The couple (room) the signal belongs to.
    pub couple: CoupleId,
    /// The recipient, whose mailbox this is.
    pub to: DeviceId,
    /// Position in the recipient's mailbox.
    pub seq: Seq,
    /// The sender's (or server's) id for de-duplicating resends.
    pub id: SignalId,
    /// The sending device.
    pub from: DeviceId,
    /// The opaque payload, as the JSON text the sender wrote.
    pub payload: String,
    /// When the server accepted it.
    pub created_at: Timestamp,
    /// When it stops being deliverable.
    pub expires_at: Timestamp,
}

impl StoredSignal {
    /// The signal as a room holds it (without its couple and recipient).
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] when the stored payload is not JSON.
    pub fn into_signal(self) -> Result<Signal, StoreError> {
        let payload = crate::mailbox::Payload::parse(self.payload)
            .map_err(|e| StoreError::Corrupt(format!("signal payload is not JSON: {e}")))?;
        Ok(Signal {
            seq: self.seq,
            id: self.id,
            from: self.from,
            payload,
            created_at: self.created_at,
            expires_at: self.expires_at,
        })
    }
}

/// A signal to write into one mailbox, sharing the room's copy of it: a batch of them holds
/// no second copy of the payloads (a mass disconnect writes up to a mailbox's 1 MiB per
/// device). It is stored as the [`StoredSignal`] that [`SignalWrite::stored`] makes.
#[derive(Debug, Clone)]
pub struct SignalWrite {
    /// The couple (room) the signal belongs to.
    pub couple: CoupleId,
    /// The recipient, whose mailbox this is.
    pub to: DeviceId,
    /// The signal, as the room holds it.
    pub signal: Arc<Signal>,
}

impl SignalWrite {
    /// The record as stored, with its own copy of the payload (for backends that write
    /// [`StoredSignal`]s).
    #[must_use]
    pub fn stored(&self) -> StoredSignal {
        let s = &self.signal;
        StoredSignal {
            couple: self.couple.clone(),
            to: self.to.clone(),
            seq: s.seq,
            id: s.id.clone(),
            from: s.from.clone(),
            payload: s.payload.as_str().to_owned(),
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }
}

impl TryFrom<StoredSignal> for SignalWrite {
    type Error = StoreError;

    fn try_from(s: StoredSignal) -> Result<Self, StoreError> {
        Ok(Self {
            couple: s.couple.clone(),
            to: s.to.clone(),
            signal: Arc::new(s.into_signal()?),
        })
    }
}

/// One write of a batch (see [`Store::write_batch`]): the writes that are frequent enough to
/// be worth committing together.
#[derive(Debug, Clone)]
pub enum Write {
    /// [`Store::put_signals`].
    Signals(Vec<SignalWrite>),
    /// [`Store::ack_signals`].
    Ack {
        /// The couple.
        couple: CoupleId,
        /// Whose mailbox.
        device: DeviceId,
        /// Everything up to and including this seq is acknowledged.
        up_to: Seq,
    },
    /// [`Store::save_device_and_pairing`].
    DeviceAndPairing {
        /// The device registered.
        device: DeviceRecord,
        /// The couple's pairing, saved with it.
        pairing: PairingRecord,
    },
}

impl Write {
    /// The name of the [`Store`] method it stands for, for the metrics.
    #[must_use]
    pub fn operation(&self) -> &'static str {
        match self {
            Self::Signals(_) => "put_signals",
            Self::Ack { .. } => "ack_signals",
            Self::DeviceAndPairing { .. } => "save_device_and_pairing",
        }
    }

    /// Payload bytes the write carries: what bounds a batch's size.
    #[must_use]
    pub fn payload_bytes(&self) -> usize {
        match self {
            Self::Signals(signals) => signals.iter().map(|s| s.signal.payload.len()).sum(),
            Self::Ack { .. } | Self::DeviceAndPairing { .. } => 0,
        }
    }
}

/// A stored backup's metadata. The blob itself is in a [`BlobStore`] under the same ids;
/// this record is written only after the blob is durable, which is what makes it "published".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupRecord {
    /// Whose backup.
    pub couple: CoupleId,
    /// Which one.
    pub id: BackupId,
    /// Size of the ciphertext in bytes.
    pub size: u64,
    /// SHA-256 of the ciphertext (lowercase hex when written): the `ETag`.
    pub sha256: Sha256Digest,
    /// The client's opaque metadata (JSON text, at most 4 KiB), stored beside the blob.
    pub meta: Option<String>,
    /// The device that uploaded it.
    pub uploaded_by: DeviceId,
    /// When it was published; the newest is "latest".
    pub created_at: Timestamp,
}

/// A resumable (tus) upload. Each `PATCH` that brought bytes added one part: a blob of its own
/// (under a fresh [`BackupId`]) that was durable before the part was recorded here, so the
/// offset only ever counts durable bytes. Once every byte arrived, `completed` names the
/// backup the parts were assembled into; the record then stays, without parts, until it
/// expires, so that a client asking again learns the upload is done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadRecord {
    /// Whose upload.
    pub couple: CoupleId,
    /// Which one.
    pub id: UploadId,
    /// The device that created it; the backup's `uploaded_by`.
    pub device: DeviceId,
    /// `Upload-Length`: the whole backup's size in bytes.
    pub length: u64,
    /// The parts received so far, in order.
    pub parts: Vec<UploadPart>,
    /// The backup's metadata (JSON text), from `Upload-Metadata`.
    pub meta: Option<String>,
    /// The whole backup's SHA-256, when the client declared it; checked at the end.
    pub sha256: Option<Sha256Digest>,
    /// The backup the parts were assembled into, once every byte arrived.
    pub completed: Option<Completion>,
    /// Bumped by every change: the key of [`Store::update_upload`]'s compare-and-set.
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When the janitor deletes it (and its parts) if it is still incomplete.
    pub expires_at: Timestamp,
}

/// The backup an upload became: claimed (by compare-and-set, so one assembly wins) before it
/// is published, so a crash in between is finished later with the same id and time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Completion {
    /// The assembled blob, and the backup's id.
    pub backup: BackupId,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256Digest,
    /// When the last byte was assembled: the backup's `created_at`.
    pub at: Timestamp,
    /// Whether the backup's record is written.
    pub published: bool,
}

/// One part of an [`UploadRecord`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UploadPart {
    /// The part's blob, under the upload's couple.
    pub blob: BackupId,
    /// Its size in bytes.
    pub size: u64,
}

impl UploadRecord {
    /// Bytes received so far (`Upload-Offset`): all of them once completed.
    #[must_use]
    pub fn offset(&self) -> u64 {
        if self.completed.is_some() {
            return self.length;
        }
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// What one purge deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// Signals past their TTL: none of them was acknowledged (acknowledged ones are gone).
    pub signals: u64,
    /// Pairings past their `purge_at`.
    pub pairings: u64,
}

/// A couple deleted because it was never confirmed and its pairing expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredCouple {
    /// The couple.
    pub couple: CoupleId,
    /// Its devices that were deleted: the initiating one, or none if it was already gone.
    pub devices: Vec<DeviceId>,
}

/// What one compaction of the metadata store gave back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// The file's size before, in bytes.
    pub before: u64,
    /// Its size after.
    pub after: u64,
}

/// A stream of bytes in or out of a blob store.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Where a backup's ciphertext lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlobKey {
    /// Whose backup.
    pub couple: CoupleId,
    /// Which one.
    pub backup: BackupId,
}

/// A blob the store holds, for the orphan sweep.
#[derive(Debug, Clone)]
pub struct BlobEntry {
    /// Its key.
    pub key: BlobKey,
    /// When it was written: young blobs may belong to an upload that is about to publish.
    pub modified: Timestamp,
}

/// A blob being read: its length (for Content-Length) and its bytes.
pub struct Blob {
    /// Exact length in bytes.
    pub len: u64,
    /// The bytes, streamed.
    pub body: ByteStream,
}

/// Why a blob write failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The incoming stream failed (the client went away, or a limit cut it); nothing was kept.
    #[error("upload stream failed: {0}")]
    Body(std::io::Error),
    /// The store failed; nothing was kept.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Free space the local backends (redb, files) want on their file system before they report
/// themselves ready again after a write failed there (a full disk): readiness then means that
/// ordinary writes fit again, not only that one small probe did. 1 MiB is a mailbox's worth of
/// signals; a larger backup upload may still find the disk full, and then fails alone.
pub const WRITE_HEADROOM: u64 = 1024 * 1024;

/// Whether the file system holding `dir` has [`WRITE_HEADROOM`] bytes available to this
/// process (blocking: one `statvfs`).
pub(crate) fn check_headroom(dir: &std::path::Path) -> Result<(), StoreError> {
    let fs = rustix::fs::statvfs(dir).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot read the free space of {}: {e}",
            dir.display()
        ))
    })?;
    let free = fs.f_bavail.saturating_mul(fs.f_frsize);
    if free < WRITE_HEADROOM {
        return Err(StoreError::Unavailable(format!(
            "{free} bytes free on the file system of {}: writes fail",
            dir.display()
        )));
    }
    Ok(())
}

/// Extra room [`fill`] reserves beyond its target for the last incoming chunk.
const FILL_SLACK: usize = 512 * 1024;

/// Reads from `body` into `buf` until it holds `target` bytes or the stream ends; returns
/// whether it ended. Backends that write in fixed-size pieces (S3 parts, GridFS chunks) share
/// this, so each holds one piece in memory at a time.
pub async fn fill(
    body: &mut ByteStream,
    buf: &mut bytes::BytesMut,
    target: usize,
) -> Result<bool, BlobError> {
    use futures_util::StreamExt;
    // One allocation per piece: room for the target plus the chunk that crosses it, so the
    // buffer never doubles (which would leave twice the piece size with the allocator).
    buf.reserve((target + FILL_SLACK).saturating_sub(buf.len()));
    while buf.len() < target {
        let Some(chunk) = body.next().await else {
            return Ok(true);
        };
        buf.extend_from_slice(&chunk.map_err(BlobError::Body)?);
    }
    Ok(false)
}

/// Streaming storage for backup ciphertext. A `put` is all or nothing: when it returns `Ok`
/// the blob is durable; when it fails, nothing under the key is visible.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// A short name for `/health` and logs.
    fn backend(&self) -> &'static str;

    /// Whether the backend answers now (for `/health`), bounded in time.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Streams `body` into the blob `key`, never holding it whole in memory.
    async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<(), BlobError>;

    /// Opens a blob for reading, if it exists.
    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError>;

    /// Deletes a blob; deleting a missing one is not an error.
    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError>;

    /// Every stored blob, for cleaning up the ones no record points to.
    async fn list(&self) -> Result<Vec<BlobEntry>, StoreError>;

    /// Removes what unfinished writes left behind (a crash mid-upload): all of it when
    /// `older_than` is `None` (at start, when no upload can be running), else what was
    /// started before that instant. Returns how many leftovers went.
    async fn clean_partial_writes(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError>;
}

/// Persistence for pairings, devices and mailboxes. Every method is one atomic step; the
/// actors serialise the read-modify-write sequences per couple.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A short name for `/health` and logs (`"embedded"`, `"mongodb"`).
    fn backend(&self) -> &'static str;

    /// Whether the backend answers now (for `/health`), bounded in time.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Registers a device and saves the couple's pairing in one atomic step, so a pairing is
    /// never consumed without its device (or the reverse). Uniqueness of the device inside the
    /// couple is checked by the pairing actor.
    async fn save_device_and_pairing(
        &self,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), StoreError>;

    /// Revokes a device: deletes the couple's open pairing (the revoked device may know its
    /// token), then the device's record, whose absence kills its token at once. Idempotent.
    /// A backend without multi-document transactions keeps this order, so a failure in between
    /// leaves the device registered and the pairing closed, never the reverse.
    async fn revoke_device(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), StoreError>;

    /// One device of a couple, if registered.
    async fn device(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError>;

    /// All devices of a couple.
    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError>;

    /// Creates or replaces the couple's open pairing.
    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError>;

    /// The couple's open pairing, if any and not yet swept (expired ones may still be returned:
    /// the caller decides between 410 and 404 with its own clock).
    async fn pairing(&self, couple: &CoupleId) -> Result<Option<PairingRecord>, StoreError>;

    /// Bumps and returns the couple's mailbox epoch. Each activation of a room takes a new
    /// epoch, which keeps sequence numbers increasing across restarts without a write per signal.
    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError>;

    /// Persists signals for offline recipients; durable when this returns.
    async fn put_signals(&self, signals: &[StoredSignal]) -> Result<(), StoreError>;

    /// Records that `device` has everything up to `up_to`, and forgets those signals.
    async fn ack_signals(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        up_to: Seq,
    ) -> Result<(), StoreError>;

    /// Applies `writes` in their order and returns one outcome per write, in the same order.
    /// A backend with transactions commits them together (one durable commit for the batch,
    /// all or nothing: every outcome is then the same); this default applies them one after
    /// the other with the single-write methods, each with its own outcome. Either way, a write
    /// is never applied before one that precedes it (an ack is never overtaken by an older
    /// put of the same seqs).
    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<(), StoreError>> {
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            outcomes.push(match write {
                Write::Signals(signals) => {
                    let records: Vec<_> = signals.iter().map(SignalWrite::stored).collect();
                    self.put_signals(&records).await
                }
                Write::Ack {
                    couple,
                    device,
                    up_to,
                } => self.ack_signals(&couple, &device, up_to).await,
                Write::DeviceAndPairing { device, pairing } => {
                    self.save_device_and_pairing(&device, &pairing).await
                }
            });
        }
        outcomes
    }

    /// Every unacknowledged, unexpired signal of the couple, ordered by recipient and seq.
    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError>;

    /// Deletes expired signals and pairings past their `purge_at`; returns how many went.
    async fn purge_expired(&self, now: Timestamp) -> Result<Purged, StoreError>;

    /// Deletes every couple that was never confirmed and whose pairing has expired at `now`:
    /// its pairing is `unconfirmed`, not consumed and past `expires_at`, it has at most one
    /// device and no backup. Its device record (the token dies), stored signals, ack
    /// watermarks, epoch and pairing go; returns the couples deleted. A couple with two
    /// devices or with a backup is never deleted. Without transactions, the pairing is
    /// deleted last, so a failure part way leaves the couple to the next call.
    async fn expire_unconfirmed_couples(
        &self,
        now: Timestamp,
    ) -> Result<Vec<ExpiredCouple>, StoreError>;

    /// Gives the space of deleted records back to the file system when much of it is free
    /// (the janitor calls it after each purge); `None` when it did nothing. Backends whose
    /// database manages its own space keep this default.
    async fn reclaim_space(&self) -> Result<Option<Compacted>, StoreError> {
        Ok(None)
    }

    /// Publishes a backup (its blob is already durable).
    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError>;

    /// A couple's published backups, newest first.
    async fn backups(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, StoreError>;

    /// Unpublishes a backup (retention); its blob is deleted afterwards.
    async fn delete_backup(&self, couple: &CoupleId, id: &BackupId) -> Result<(), StoreError>;

    /// Records a new resumable upload.
    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError>;

    /// One upload of a couple, if recorded.
    async fn upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<Option<UploadRecord>, StoreError>;

    /// Replaces an upload's record if its `version` is still `expected_version` (compare and
    /// set: of two `PATCH`es at the same offset, or two assemblies, on any instance, one
    /// wins). `false`: it had changed, or the upload is gone.
    async fn update_upload(
        &self,
        upload: &UploadRecord,
        expected_version: u64,
    ) -> Result<bool, StoreError>;

    /// Forgets an upload if its version is still `upload.version` (its parts are deleted by
    /// the caller): a `PATCH` or an assembly that changed it meanwhile is not lost. `false`:
    /// it had changed, or was gone already.
    async fn delete_upload(&self, upload: &UploadRecord) -> Result<bool, StoreError>;

    /// A couple's uploads, for its quota and its list.
    async fn uploads(&self, couple: &CoupleId) -> Result<Vec<UploadRecord>, StoreError>;

    /// Uploads whose `expires_at` is `now` or earlier, at most `limit` of them, for the
    /// janitor.
    async fn expired_uploads(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError>;
}

/// Handle to the storage backends' health, for `/health` and logs.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
}

/// One backend's name and whether it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// `embedded`, `mongodb`, `files`, `gridfs`, `s3`.
    pub backend: &'static str,
    /// Whether it answered a ping just now.
    pub ok: bool,
}

impl Storage {
    /// A handle over the (measured) backends the domain runs on.
    pub(crate) fn new(store: Arc<dyn Store>, blobs: Arc<dyn BlobStore>) -> Self {
        Self { store, blobs }
    }

    /// Names of the metadata and blob backends.
    #[must_use]
    pub fn backends(&self) -> (&'static str, &'static str) {
        (self.store.backend(), self.blobs.backend())
    }

    /// Pings both backends (each bounded by its own operation timeout).
    pub async fn status(&self) -> (BackendStatus, BackendStatus) {
        let (store, blobs) = tokio::join!(self.store.ping(), self.blobs.ping());
        (
            BackendStatus {
                backend: self.store.backend(),
                ok: store.is_ok(),
            },
            BackendStatus {
                backend: self.blobs.backend(),
                ok: blobs.is_ok(),
            },
        )
    }
}

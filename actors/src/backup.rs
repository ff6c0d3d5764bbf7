//! Encrypted backups: the [`Backups`] handle, the upload algorithm it runs (see
//! [`Backups::upload`]), the backup actor that publishes, and the orphan sweep the janitor
//! runs.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use sha2::{Digest, Sha256};

use crate::call::call_kept;
use crate::clock::{Clock, Timestamp};
use crate::digest::Sha256Digest;
use crate::error::BackupError;
use crate::ids::{BackupId, CoupleId, DeviceId};
use crate::keeper::{Keeper, Slot};
use crate::metrics::{DomainMetrics, Restarted};
use crate::settings::Settings;
use crate::store::{
    BackupRecord, Blob, BlobError, BlobKey, BlobStore, ByteStream, Store, StoreError,
};

mod resumable;
pub use resumable::{ChecksumAlgorithm, ChunkChecksum, NewUpload, Progress, Usage};

/// What a caller of the store answers when the store fails: the cause is logged here, at
/// the failed call, and the client hears only `storage_unavailable`.
#[expect(
    clippy::needless_pass_by_value,
    reason = "takes the error by value to be used as `map_err(storage_failed)`"
)]
fn storage_failed(e: StoreError) -> BackupError {
    tracing::error!(cause = %e, "backup storage failed");
    BackupError::StorageUnavailable
}

/// Handle to encrypted backups: streams uploads into the blob store and downloads out of it.
#[derive(Clone)]
pub struct Backups {
    actor: Slot<BackupMsg>,
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    clock: Clock,
    limits: UploadLimits,
    uploads: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
    quota: u64,
    retention: usize,
    upload_ttl: Duration,
    max_parts: usize,
    quota_lock: Arc<tokio::sync::Mutex<()>>,
}

/// What an upload declares besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadInfo {
    /// Opaque JSON metadata (already checked by the front end).
    pub meta: Option<String>,
    /// The SHA-256 the client computed; a mismatch discards the upload.
    pub expected_sha256: Option<Sha256Digest>,
}

impl Backups {
    /// Spawns the backup actor under its keeper; returns the handle and the keeper (stopped
    /// at shutdown).
    pub(crate) async fn start(
        store: &Arc<dyn Store>,
        blobs: &Arc<dyn BlobStore>,
        settings: &Settings,
        clock: &Clock,
        metrics: &DomainMetrics,
    ) -> Result<(Self, ActorRef<()>), SpawnErr> {
        let args = BackupArgs {
            store: Arc::clone(store),
            blobs: Arc::clone(blobs),
            retention: settings.backup_retention,
        };
        let (keeper, actor) =
            Keeper::<BackupActor>::start(args, metrics.clone(), Restarted::Backup).await?;
        let handle = Self {
            actor,
            store: Arc::clone(store),
            blobs: Arc::clone(blobs),
            clock: clock.clone(),
            limits: UploadLimits {
                max_bytes: settings.backup_max_bytes,
                idle: settings.backup_idle_timeout,
                total: settings.backup_upload_timeout,
            },
            uploads: Arc::new(tokio::sync::Semaphore::new(settings.backup_max_concurrent)),
            timeout: settings.call_timeout,
            quota: settings.backup_quota,
            retention: settings.backup_retention,
            upload_ttl: settings.upload_ttl,
            max_parts: settings.upload_max_parts,
            quota_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        Ok((handle, keeper))
    }

    /// The largest backup accepted.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Streams `body` into storage and publishes it as the couple's latest backup. On any
    /// failure (too large, checksum, client gone, storage) nothing is published and the blob
    /// is deleted.
    ///
    /// 1. The ciphertext streams from the request straight into the blob store, outside
    ///    any actor (at most `backup_max_concurrent` uploads at once). A `Meter` measures
    ///    and hashes it on the way and cuts it off past the size limit, on a stalled client,
    ///    or past the whole upload's deadline.
    /// 2. The measured digest is compared with the one the client declared, if any; a
    ///    mismatch deletes the blob.
    /// 3. The backup actor publishes the metadata record (the blob is already durable, so
    ///    "latest" never points at a partial upload) and applies retention; publishing goes
    ///    through one actor so concurrent uploads of a couple cannot race the retention.
    ///
    /// A blob whose publish failed or timed out is left alone (the record may have been
    /// written); if it was never published, the janitor's orphan sweep deletes it once it is
    /// older than [`ORPHAN_AGE`].
    pub async fn upload(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        info: UploadInfo,
        body: ByteStream,
    ) -> Result<BackupRecord, BackupError> {
        let _slot = Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| BackupError::Busy)?;
        let key = BlobKey {
            couple: couple.clone(),
            backup: BackupId::generate(),
        };
        let (body, meter) = Meter::wrap(body, self.limits);
        let written = self.blobs.put(&key, body).await;
        let measured = {
            let mut m = meter.lock().map_err(|_| BackupError::StorageUnavailable)?;
            match (written, m.cut_off()) {
                (Ok(()), _) => m.finish(),
                (Err(_), Some(Cut::TooLarge)) => {
                    return Err(BackupError::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
                (Err(_), Some(Cut::TooSlow)) => return Err(BackupError::TooSlow),
                (Err(BlobError::Body(_)), None) => return Err(BackupError::Interrupted),
                (Err(BlobError::Store(e)), None) => return Err(storage_failed(e)),
            }
        };
        let record = BackupRecord {
            couple: couple.clone(),
            id: key.backup.clone(),
            size: measured.size,
            sha256: measured.sha256,
            meta: info.meta,
            uploaded_by: device.clone(),
            created_at: self.clock.now(),
        };
        // The quota is decided, and the backup published, one upload at a time in this process.
        let _deciding = self.quota_lock.lock().await;
        let refused = if info
            .expected_sha256
            .is_some_and(|want| want != record.sha256)
        {
            Err(BackupError::ChecksumMismatch)
        } else {
            self.check_quota(couple, record.size).await
        };
        if let Err(e) = refused {
            if let Err(cause) = self.blobs.delete(&key).await {
                tracing::warn!(cause = %cause, "failed to delete a rejected blob; the sweep will");
            }
            return Err(e);
        }
        let publish = |reply| BackupMsg::Publish {
            record: record.clone(),
            reply,
        };
        // On a failed or timed-out publish the record may still have been written, so the
        // blob is left alone: if it was never published, the orphan sweep deletes it.
        call_kept(&self.actor, publish, self.timeout, BackupError::Unavailable).await?;
        Ok(record)
    }

    /// Test hook: makes the backup actor panic and waits until its keeper has restarted it.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let mut slot = self.actor.clone();
        if let Some(actor) = slot.current() {
            let _ = actor.cast(BackupMsg::Panic);
            slot.replaced(actor.get_id()).await;
        }
    }

    /// The couple's backups, newest first.
    pub async fn list(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, BackupError> {
        self.store.backups(couple).await.map_err(storage_failed)
    }

    /// One backup's record: the latest when `id` is `None`.
    pub async fn find(
        &self,
        couple: &CoupleId,
        id: Option<&BackupId>,
    ) -> Result<BackupRecord, BackupError> {
        self.list(couple)
            .await?
            .into_iter()
            .find(|b| id.is_none_or(|id| *id == b.id))
            .ok_or(BackupError::NotFound)
    }

    /// Opens a published backup's bytes.
    pub async fn open(&self, record: &BackupRecord) -> Result<Blob, BackupError> {
        let key = BlobKey {
            couple: record.couple.clone(),
            backup: record.id.clone(),
        };
        // A blob can vanish between reading the record and opening it (retention): not found.
        self.blobs
            .get(&key)
            .await
            .map_err(storage_failed)?
            .ok_or(BackupError::NotFound)
    }
}

/// Size and SHA-256 of a stream, measured while it passes; cuts it off past the size limit,
/// when the client stalls, or when the upload takes too long.
#[derive(Debug)]
pub(crate) struct Meter {
    hasher: Sha256,
    size: u64,
    cut: Option<Cut>,
}

/// Why a [`Meter`] cut a stream off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// More bytes than the limit.
    TooLarge,
    /// No bytes for the idle timeout, or past the whole upload's deadline.
    TooSlow,
}

/// Bounds an upload stream: size, silence between chunks, and total duration. The total is
/// kept below the orphan sweep's age, so the janitor never takes a live upload's parts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UploadLimits {
    /// Most bytes.
    pub max_bytes: u64,
    /// Longest wait for the next chunk.
    pub idle: Duration,
    /// Longest upload.
    pub total: Duration,
}

/// What the meter saw once the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Measured {
    /// Bytes that passed.
    pub size: u64,
    /// Their SHA-256.
    pub sha256: Sha256Digest,
}

impl Meter {
    /// Wraps `body`; the returned handle reads the result after the stream was consumed.
    pub(crate) fn wrap(body: ByteStream, limits: UploadLimits) -> (ByteStream, Arc<Mutex<Meter>>) {
        let meter = Arc::new(Mutex::new(Meter {
            hasher: Sha256::new(),
            size: 0,
            cut: None,
        }));
        let deadline = tokio::time::Instant::now() + limits.total;
        let state = (body, Arc::clone(&meter), false);
        let stream = futures_util::stream::unfold(state, move |(mut body, m, done)| async move {
            if done {
                return None;
            }
            let wait = deadline.min(tokio::time::Instant::now() + limits.idle);
            let next = tokio::time::timeout_at(wait, body.next()).await;
            let item = match next {
                Ok(None) => return None,
                Ok(Some(Err(e))) => Err(e),
                Ok(Some(Ok(chunk))) => Self::record(&m, &chunk, limits.max_bytes).map(|()| chunk),
                Err(_) => {
                    Self::cut(&m, Cut::TooSlow);
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "upload too slow",
                    ))
                }
            };
            let failed = item.is_err();
            Some((item, (body, m, failed)))
        });
        (Box::pin(stream), meter)
    }

    fn record(m: &Mutex<Meter>, chunk: &[u8], max_bytes: u64) -> std::io::Result<()> {
        let mut m = m
            .lock()
            .map_err(|_| std::io::Error::other("backup meter poisoned"))?;
        m.size += chunk.len() as u64;
        if m.size > max_bytes {
            m.cut = Some(Cut::TooLarge);
            return Err(std::io::Error::other("backup exceeds the size limit"));
        }
        m.hasher.update(chunk);
        Ok(())
    }

    fn cut(m: &Mutex<Meter>, why: Cut) {
        if let Ok(mut m) = m.lock() {
            m.cut = Some(why);
        }
    }

    /// Why the stream was cut off, if it was.
    #[must_use]
    pub(crate) fn cut_off(&self) -> Option<Cut> {
        self.cut
    }

    /// The result (consumes the hash state).
    #[must_use]
    pub(crate) fn finish(&mut self) -> Measured {
        let hasher = std::mem::take(&mut self.hasher);
        Measured {
            size: self.size,
            sha256: Sha256Digest::from_bytes(hasher.finalize().into()),
        }
    }
}

/// Requests to the backup actor.
#[derive(Debug)]
pub(crate) enum BackupMsg {
    /// Test hook: make the actor panic, to exercise its restart.
    #[cfg(feature = "fault-injection")]
    Panic,
    /// Publish a backup whose blob is durable, then enforce retention.
    Publish {
        /// The record to publish.
        record: BackupRecord,
        /// Done (or why not).
        reply: RpcReplyPort<Result<(), BackupError>>,
    },
}

/// The backup actor.
#[derive(Default)]
pub(crate) struct BackupActor;

/// What the backup actor works with (cloned into each restart).
#[derive(Clone)]
pub(crate) struct BackupArgs {
    /// Metadata.
    pub store: Arc<dyn Store>,
    /// Ciphertext.
    pub blobs: Arc<dyn BlobStore>,
    /// Backups kept per couple.
    pub retention: usize,
}

impl BackupArgs {
    /// Inserts the record (the publish: once it is written the backup is the latest), then
    /// applies retention. A retention failure does not undo the publish; the next publish
    /// (or the orphan sweep, for blobs) finishes the job.
    async fn publish(&self, record: BackupRecord) -> Result<(), BackupError> {
        self.store
            .insert_backup(&record)
            .await
            .map_err(storage_failed)?;
        if let Err(e) = self.apply_retention(&record.couple).await {
            tracing::warn!(cause = %e, "retention failed; it is retried on the next upload");
        }
        Ok(())
    }

    async fn apply_retention(&self, couple: &CoupleId) -> Result<(), StoreError> {
        let kept = self.store.backups(couple).await?;
        for old in kept.into_iter().skip(self.retention) {
            self.store.delete_backup(&old.couple, &old.id).await?;
            let key = BlobKey {
                couple: old.couple,
                backup: old.id,
            };
            if let Err(e) = self.blobs.delete(&key).await {
                // The orphan sweep deletes it later.
                tracing::warn!(cause = %e, "failed to delete an old backup blob");
            }
        }
        Ok(())
    }
}

impl Actor for BackupActor {
    type Msg = BackupMsg;
    type State = BackupArgs;
    type Arguments = BackupArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<BackupMsg>,
        args: BackupArgs,
    ) -> Result<BackupArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _me: ActorRef<BackupMsg>,
        msg: BackupMsg,
        st: &mut BackupArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BackupMsg::Publish { record, reply } => {
                let _ = reply.send(st.publish(record).await);
            }
            #[cfg(feature = "fault-injection")]
            BackupMsg::Panic => panic!("fault injection: the backup actor panics"),
        }
        Ok(())
    }
}

/// Deletes blobs that no published record or unfinished upload points to: leftovers of
/// uploads interrupted after their blob was written, or of a retention step cut short. With `older_than`, only blobs
/// written before that instant are considered (a younger one may be about to be published).
pub(crate) async fn sweep_orphans(
    store: &dyn Store,
    blobs: &dyn BlobStore,
    older_than: Option<Timestamp>,
) -> Result<usize, StoreError> {
    let mut by_couple: HashMap<_, Vec<_>> = HashMap::new();
    for entry in blobs.list().await? {
        if older_than.is_none_or(|t| entry.modified < t) {
            by_couple
                .entry(entry.key.couple.clone())
                .or_default()
                .push(entry.key);
        }
    }
    let mut deleted = 0;
    for (couple, keys) in by_couple {
        // Blobs of a couple the metadata store does not know: more likely a wrong database
        // (MONGODB_DB, a restored snapshot) than leftovers, so they are kept, loudly.
        if store.devices(&couple).await?.is_empty() {
            tracing::warn!(couple_id = %couple, blobs = keys.len(), "blobs of a couple unknown to the metadata store; not deleting them");
            continue;
        }
        // Published backups, and the parts and future blob of each unfinished upload.
        let mut live: HashSet<_> = store
            .backups(&couple)
            .await?
            .into_iter()
            .map(|b| b.id)
            .collect();
        for upload in store.uploads(&couple).await? {
            live.extend(upload.parts.into_iter().map(|p| p.blob));
            live.extend(upload.completed.map(|c| c.backup));
        }
        for key in keys.into_iter().filter(|k| !live.contains(&k.backup)) {
            blobs.delete(&key).await?;
            deleted += 1;
        }
    }
    if deleted > 0 {
        tracing::info!(deleted, "deleted orphaned backup blobs");
    }
    Ok(deleted)
}

/// How long an unpublished blob may exist before the periodic sweep deletes it.
pub const ORPHAN_AGE: Duration = Duration::from_hours(1);

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn stream(chunks: &[&'static [u8]]) -> ByteStream {
        let items: Vec<std::io::Result<Bytes>> =
            chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures_util::stream::iter(items))
    }

    const LIMITS: UploadLimits = UploadLimits {
        max_bytes: 100,
        idle: Duration::from_mins(1),
        total: Duration::from_mins(10),
    };

    #[tokio::test]
    async fn meter_hashes_and_counts() {
        let (s, meter) = Meter::wrap(stream(&[b"hello ", b"world"]), LIMITS);
        let out: Vec<_> = s.collect().await;
        assert!(out.iter().all(Result::is_ok));
        let m = meter.lock().unwrap().finish();
        assert_eq!(m.size, 11);
        assert_eq!(
            m.sha256.to_string(),
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[tokio::test]
    async fn meter_cuts_the_stream_past_the_limit() {
        let limits = UploadLimits {
            max_bytes: 8,
            ..LIMITS
        };
        let (s, meter) = Meter::wrap(stream(&[b"12345", b"67890", b"x"]), limits);
        let out: Vec<_> = s.collect().await;
        assert_eq!(out.len(), 2, "nothing after the cut");
        assert!(out[0].is_ok() && out[1].is_err());
        assert_eq!(meter.lock().unwrap().cut_off(), Some(Cut::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn meter_cuts_a_stalled_stream() {
        let stalled: ByteStream = Box::pin(
            futures_util::stream::iter([Ok(Bytes::from_static(b"abc"))])
                .chain(futures_util::stream::pending()),
        );
        let (s, meter) = Meter::wrap(stalled, LIMITS);
        let out: Vec<_> = s.collect().await;
        assert!(out[0].is_ok() && out[1].is_err());
        assert_eq!(meter.lock().unwrap().cut_off(), Some(Cut::TooSlow));
    }
}

//! Resumable backup uploads: the domain side of the tus 1.0 protocol (core, creation,
//! termination, checksum, expiration; <https://tus.io/protocols/resumable-upload>). The HTTP
//! side (headers, status codes) is the front end's.
//!
//! An upload is a record in the metadata store plus one blob per `PATCH` that brought bytes
//! (a *part*). A part is durable before it is recorded, and every change of the record is a
//! compare-and-set on its version, so the offset a `HEAD` reports only ever counts durable
//! bytes, and of two `PATCH`es at one offset (on any instance) exactly one wins. A `PATCH` cut
//! off mid-body keeps what arrived.
//!
//! When the last byte is recorded, the parts are streamed into a new blob (measured and hashed
//! on the way) and checked against the declared SHA-256. Then the record *claims* that blob as
//! its backup (compare-and-set: of two assemblies, say a `PATCH` and a `HEAD` after a timeout,
//! one wins and the other deletes its copy), the backup is published through the backup actor
//! exactly like [`Backups::upload`] with the claimed id and time, and the parts are deleted.
//! Only then does the `PATCH` succeed. The record stays, without parts, until it expires: a
//! `HEAD` then says the upload is complete (tus clients that get a 404 start over). A crash
//! after the claim is finished by the next `HEAD` or `PATCH`, or by the janitor, with the same
//! id and time, so a backup is never published twice and never comes back as the latest.

use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::{Backups, Meter, storage_failed};
use crate::call::call_kept;
use crate::clock::Timestamp;
use crate::digest::Sha256Digest;
use crate::error::BackupError;
use crate::ids::{BackupId, CoupleId, DeviceId, UploadId};
use crate::store::{
    BackupRecord, BlobError, BlobKey, ByteStream, Completion, UploadPart, UploadRecord,
};

/// A chunk checksum algorithm of the tus checksum extension (`Tus-Checksum-Algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// `sha1`, which the extension requires servers to support.
    Sha1,
    /// `sha256`.
    Sha256,
}

impl ChecksumAlgorithm {
    /// The names, as `Tus-Checksum-Algorithm` lists them.
    pub const ALL: [(&'static str, Self); 2] = [("sha1", Self::Sha1), ("sha256", Self::Sha256)];
}

/// `Upload-Checksum`: what a chunk's digest must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkChecksum {
    /// The algorithm.
    pub algorithm: ChecksumAlgorithm,
    /// The digest (decoded from base64).
    pub digest: Vec<u8>,
}

/// What a `POST` declares.
#[derive(Debug, Clone, Default)]
pub struct NewUpload {
    /// `Upload-Length`, in bytes.
    pub length: u64,
    /// The backup's metadata (JSON text, checked by the front end).
    pub meta: Option<String>,
    /// The whole backup's SHA-256, checked when the last byte arrived.
    pub sha256: Option<Sha256Digest>,
}

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The upload.
    pub id: UploadId,
    /// Bytes received and durable (`Upload-Offset`).
    pub offset: u64,
    /// `Upload-Length`.
    pub length: u64,
    /// When an unfinished upload expires (`Upload-Expires`); `None` once complete.
    pub expires_at: Option<Timestamp>,
    /// The backup, once every byte arrived and it was published.
    pub backup: Option<BackupId>,
}

impl Progress {
    fn of(upload: &UploadRecord) -> Self {
        let backup = upload.completed.as_ref().map(|c| c.backup.clone());
        Self {
            id: upload.id.clone(),
            offset: upload.offset(),
            length: upload.length,
            expires_at: backup.is_none().then_some(upload.expires_at),
            backup,
        }
    }
}

/// What counts against a couple's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// `BACKUP_QUOTA_BYTES`.
    pub limit: u64,
    /// Bytes of the kept backups plus the `Upload-Length` of the unfinished uploads.
    pub used: u64,
    /// The kept backups, newest first.
    pub backups: Vec<BackupRecord>,
    /// The unfinished uploads, oldest first.
    pub uploads: Vec<Progress>,
}

impl Backups {
    /// Records a new upload (tus creation). Refused when `Upload-Length` is over the size
    /// limit, or when it would take the couple past its quota: the kept backups (but the
    /// oldest, which retention drops when this one is published) plus every unfinished
    /// upload's length plus this one must fit.
    pub async fn create_upload(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        new: NewUpload,
    ) -> Result<Progress, BackupError> {
        if new.length > self.limits.max_bytes {
            return Err(BackupError::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        // One decision at a time in this process, so two creations cannot both take the last
        // room (between instances the race stays: docs/protocol.md §6.5).
        let _deciding = self.quota_lock.lock().await;
        self.check_quota(couple, new.length).await?;
        let now = self.clock.now();
        let upload = UploadRecord {
            couple: couple.clone(),
            id: UploadId::generate(),
            device: device.clone(),
            length: new.length,
            parts: Vec::new(),
            meta: new.meta,
            sha256: new.sha256,
            completed: None,
            version: 0,
            created_at: now,
            expires_at: now.plus(self.upload_ttl),
        };
        self.store
            .create_upload(&upload)
            .await
            .map_err(storage_failed)?;
        Ok(Progress::of(&upload))
    }

    /// Fails with `QuotaExceeded` unless `adding` more bytes fit the couple's quota.
    pub(super) async fn check_quota(
        &self,
        couple: &CoupleId,
        adding: u64,
    ) -> Result<(), BackupError> {
        let usage = self.usage(couple).await?;
        let pending: u64 = usage.uploads.iter().map(|u| u.length).sum();
        let staying: u64 = usage
            .backups
            .iter()
            .take(self.retention.saturating_sub(1))
            .map(|b| b.size)
            .sum();
        if staying + pending + adding > self.quota {
            return Err(BackupError::QuotaExceeded {
                limit: self.quota,
                used: usage.used,
            });
        }
        Ok(())
    }

    /// The couple's quota, what counts against it: its kept backups and unfinished uploads
    /// (a complete upload's backup counts as a backup).
    pub async fn usage(&self, couple: &CoupleId) -> Result<Usage, BackupError> {
        let backups = self.store.backups(couple).await.map_err(storage_failed)?;
        let uploads = self.store.uploads(couple).await.map_err(storage_failed)?;
        let mut unfinished: Vec<&UploadRecord> =
            uploads.iter().filter(|u| u.completed.is_none()).collect();
        unfinished.sort_by_key(|u| (u.created_at, u.id.clone()));
        let used = backups.iter().map(|b| b.size).sum::<u64>()
            + unfinished.iter().map(|u| u.length).sum::<u64>();
        Ok(Usage {
            limit: self.quota,
            used,
            backups,
            uploads: unfinished.into_iter().map(Progress::of).collect(),
        })
    }

    /// An upload's offset (tus `HEAD`). One whose bytes had all arrived but was not published
    /// (a crash, or an answer lost while it was) is published first.
    pub async fn upload_progress(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<Progress, BackupError> {
        let upload = self.live_upload(couple, id).await?;
        if upload.offset() < upload.length || upload.completed.as_ref().is_some_and(|c| c.published)
        {
            return Ok(Progress::of(&upload));
        }
        let _slot = Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| BackupError::Busy)?;
        self.finish(upload).await
    }

    /// Appends `body` at `offset` (tus `PATCH`). Whatever arrives is kept, also when the body
    /// breaks off; past `Upload-Length` nothing of it is. With `checksum`, a chunk that does
    /// not match (a cut-off one included) is dropped. The `PATCH` that brings the last byte
    /// publishes the backup before it returns.
    pub async fn append(
        &self,
        couple: &CoupleId,
        id: &UploadId,
        offset: u64,
        checksum: Option<ChunkChecksum>,
        body: ByteStream,
    ) -> Result<Progress, BackupError> {
        let _slot = Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| BackupError::Busy)?;
        let upload = self.live_upload(couple, id).await?;
        if offset != upload.offset() {
            return Err(BackupError::OffsetMismatch {
                offset: upload.offset(),
            });
        }
        if offset == upload.length {
            return self.finish(upload).await;
        }
        if upload.parts.len() >= self.max_parts {
            return Err(BackupError::TooManyParts {
                limit: self.max_parts,
            });
        }
        let key = BlobKey {
            couple: couple.clone(),
            backup: BackupId::generate(),
        };
        let algorithm = checksum.as_ref().map(|c| c.algorithm);
        let (stream, part) = Part::wrap(body, upload.length - offset, algorithm, self.limits);
        let written = self.blobs.put(&key, stream).await;
        let (size, past_length, digest) = {
            let mut p = part.lock().map_err(|_| BackupError::StorageUnavailable)?;
            (p.size, p.past_length, p.hasher.take().map(Hasher::finish))
        };
        match written {
            Ok(()) => {}
            Err(_) if past_length => {
                return Err(BackupError::PastLength {
                    length: upload.length,
                });
            }
            Err(BlobError::Store(e)) => return Err(storage_failed(e)),
            Err(BlobError::Body(_)) => return Err(BackupError::Interrupted),
        }
        let refused = checksum.is_some_and(|c| digest.is_some_and(|d| d != c.digest));
        if size == 0 || refused {
            self.delete_blob(&key).await;
            if refused {
                return Err(BackupError::ChunkChecksumMismatch);
            }
            return Ok(Progress::of(&upload));
        }
        let mut grown = upload.clone();
        grown.parts.push(UploadPart {
            blob: key.backup.clone(),
            size,
        });
        grown.version += 1;
        let recorded = self.store.update_upload(&grown, upload.version).await;
        if !matches!(recorded, Ok(true)) {
            self.delete_blob(&key).await;
            recorded.map_err(storage_failed)?;
            // Another PATCH moved the offset first (or the upload was terminated).
            let now = self.live_upload(couple, id).await?;
            return Err(BackupError::OffsetMismatch {
                offset: now.offset(),
            });
        }
        if grown.offset() == grown.length {
            return self.finish(grown).await;
        }
        Ok(Progress::of(&grown))
    }

    /// Terminates an upload (tus `DELETE`): the record first (its URL is 404 at once), then
    /// its parts.
    pub async fn terminate(&self, couple: &CoupleId, id: &UploadId) -> Result<(), BackupError> {
        // A PATCH or an assembly may change it between the read and the delete: read again.
        for _ in 0..3 {
            let upload = self.recorded_upload(couple, id).await?;
            // A claimed backup's blob stays: an assembly in flight publishes it.
            if self.forget(&upload, false).await? {
                return Ok(());
            }
        }
        Err(BackupError::Unavailable)
    }

    /// The janitor's part, for uploads past their expiry: an unfinished one is deleted with
    /// its bytes; a complete one that was not published (a crash) is published first, or
    /// deleted if that fails; the record of a published one goes. A failure is logged and
    /// the others still handled. Returns how many unfinished uploads were deleted.
    pub async fn expire_uploads(&self) -> Result<usize, BackupError> {
        let expired = self
            .store
            .expired_uploads(self.clock.now(), EXPIRE_BATCH)
            .await
            .map_err(storage_failed)?;
        let mut deleted = 0;
        for upload in expired {
            let unfinished = upload.offset() < upload.length;
            let pending = upload.completed.as_ref().is_some_and(|c| !c.published);
            if !unfinished
                && upload.completed.as_ref().is_none_or(|c| !c.published)
                && let Err(e) = self.finish(upload.clone()).await
            {
                tracing::error!(cause = %e, upload_id = %upload.id, "could not publish a complete upload before it expired; deleting it");
            }
            // Re-read: the finish above (or another instance) may have changed it.
            let now = match self.store.upload(&upload.couple, &upload.id).await {
                Ok(Some(now)) => now,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(cause = %e, "failed to read an expired upload");
                    continue;
                }
            };
            match self.forget(&now, true).await {
                Ok(true) if unfinished || pending => deleted += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(cause = %e, "failed to delete an expired upload"),
            }
        }
        Ok(deleted)
    }

    /// The upload, if it exists for this couple.
    async fn recorded_upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<UploadRecord, BackupError> {
        self.store
            .upload(couple, id)
            .await
            .map_err(storage_failed)?
            .ok_or(BackupError::UploadNotFound)
    }

    /// The upload, if it exists for this couple and has not expired.
    async fn live_upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<UploadRecord, BackupError> {
        let upload = self.recorded_upload(couple, id).await?;
        if upload.expires_at <= self.clock.now() {
            return Err(BackupError::UploadExpired);
        }
        Ok(upload)
    }

    /// Assembles the parts into a new blob, claims it as the upload's backup, publishes it
    /// and deletes the parts (see the module's doc). Idempotent: a claimed backup is published
    /// (again) with its id and time; a published one is only reported.
    async fn finish(&self, upload: UploadRecord) -> Result<Progress, BackupError> {
        if upload.completed.is_some() {
            return self.publish_claimed(upload).await;
        }
        let couple = upload.couple.clone();
        let key = BlobKey {
            couple: couple.clone(),
            backup: BackupId::generate(),
        };
        let (body, meter) = Meter::wrap(self.parts_of(&upload), self.limits);
        let written = self.blobs.put(&key, body).await;
        let measured = meter
            .lock()
            .map_err(|_| BackupError::StorageUnavailable)?
            .finish();
        if let Err(e) = written {
            tracing::error!(cause = %e, "failed to assemble an upload's parts");
            return Err(BackupError::StorageUnavailable);
        }
        if measured.size != upload.length {
            tracing::error!(
                size = measured.size,
                length = upload.length,
                "an upload's parts do not add up to its length"
            );
            self.delete_blob(&key).await;
            return Err(BackupError::StorageUnavailable);
        }
        if upload.sha256.is_some_and(|want| want != measured.sha256) {
            self.delete_blob(&key).await;
            self.forget(&upload, false).await?;
            return Err(BackupError::ChecksumMismatch);
        }
        let mut claimed = upload.clone();
        claimed.completed = Some(Completion {
            backup: key.backup.clone(),
            size: measured.size,
            sha256: measured.sha256,
            at: self.clock.now(),
            published: false,
        });
        claimed.version += 1;
        let won = self.store.update_upload(&claimed, upload.version).await;
        if !matches!(won, Ok(true)) {
            // Another assembly claimed it first (or the store failed): this copy goes.
            self.delete_blob(&key).await;
            won.map_err(storage_failed)?;
            let now = self.recorded_upload(&couple, &upload.id).await?;
            if now.completed.is_none() {
                return Err(BackupError::UploadNotFound);
            }
            return Box::pin(self.publish_claimed(now)).await;
        }
        self.publish_claimed(claimed).await
    }

    /// Publishes the claimed backup unless it is already (its id and time are the claim's),
    /// marks it published and deletes the parts.
    async fn publish_claimed(&self, upload: UploadRecord) -> Result<Progress, BackupError> {
        let Some(done) = upload.completed.clone() else {
            return Err(BackupError::StorageUnavailable);
        };
        if done.published {
            return Ok(Progress::of(&upload));
        }
        if !self.is_published(&upload.couple, &done.backup).await? {
            let record = BackupRecord {
                couple: upload.couple.clone(),
                id: done.backup.clone(),
                size: done.size,
                sha256: done.sha256,
                meta: upload.meta.clone(),
                uploaded_by: upload.device.clone(),
                created_at: done.at,
            };
            let publish = |reply| super::BackupMsg::Publish {
                record: record.clone(),
                reply,
            };
            call_kept(&self.actor, publish, self.timeout, BackupError::Unavailable).await?;
        }
        let mut published = upload.clone();
        if let Some(c) = published.completed.as_mut() {
            c.published = true;
        }
        published.parts.clear();
        published.version += 1;
        // Lost to a concurrent finish of the same claim: that one did the same.
        if matches!(
            self.store.update_upload(&published, upload.version).await,
            Ok(true)
        ) {
            self.delete_parts(&upload).await;
        }
        Ok(Progress::of(&published))
    }

    /// The upload's bytes, part after part.
    fn parts_of(&self, upload: &UploadRecord) -> ByteStream {
        let blobs = Arc::clone(&self.blobs);
        let keys: Vec<BlobKey> = upload
            .parts
            .iter()
            .map(|p| BlobKey {
                couple: upload.couple.clone(),
                backup: p.blob.clone(),
            })
            .collect();
        Box::pin(
            futures_util::stream::iter(keys)
                .then(move |key| {
                    let blobs = Arc::clone(&blobs);
                    async move {
                        match blobs.get(&key).await {
                            Ok(Some(blob)) => Ok(blob.body),
                            Ok(None) => Err(std::io::Error::other("a part of the upload is gone")),
                            Err(e) => Err(std::io::Error::other(e.to_string())),
                        }
                    }
                })
                .try_flatten(),
        )
    }

    /// Deletes the record if nothing changed it since it was read (its URL answers 404 from
    /// then on), then the parts, and with `claimed` an assembled blob that was never
    /// published; a blob that could not be deleted is left to the orphan sweep. `false`: it
    /// had changed (or was gone), and nothing was deleted.
    async fn forget(&self, upload: &UploadRecord, claimed: bool) -> Result<bool, BackupError> {
        let deleted = self
            .store
            .delete_upload(upload)
            .await
            .map_err(storage_failed)?;
        if !deleted {
            return Ok(false);
        }
        self.delete_parts(upload).await;
        if let Some(c) = upload
            .completed
            .as_ref()
            .filter(|c| claimed && !c.published)
            && !self.is_published(&upload.couple, &c.backup).await?
        {
            self.delete_blob(&BlobKey {
                couple: upload.couple.clone(),
                backup: c.backup.clone(),
            })
            .await;
        }
        Ok(true)
    }

    /// Whether the couple has a published backup with this id.
    async fn is_published(&self, couple: &CoupleId, id: &BackupId) -> Result<bool, BackupError> {
        let kept = self.store.backups(couple).await.map_err(storage_failed)?;
        Ok(kept.iter().any(|b| b.id == *id))
    }

    async fn delete_parts(&self, upload: &UploadRecord) {
        for part in &upload.parts {
            self.delete_blob(&BlobKey {
                couple: upload.couple.clone(),
                backup: part.blob.clone(),
            })
            .await;
        }
    }

    async fn delete_blob(&self, key: &BlobKey) {
        if let Err(e) = self.blobs.delete(key).await {
            tracing::warn!(cause = %e, "failed to delete a blob; the orphan sweep will");
        }
    }
}

/// Expired uploads handled per janitor round.
const EXPIRE_BATCH: usize = 100;

/// A chunk hash in progress.
enum Hasher {
    Sha1(Sha1),
    Sha256(Sha256),
}

impl Hasher {
    fn new(algorithm: ChecksumAlgorithm) -> Self {
        match algorithm {
            ChecksumAlgorithm::Sha1 => Self::Sha1(Sha1::new()),
            ChecksumAlgorithm::Sha256 => Self::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    fn finish(self) -> Vec<u8> {
        match self {
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        }
    }
}

/// One `PATCH` body on its way into a part: counted, hashed when a checksum was sent, ended
/// cleanly where the client stopped (broke off, stalled, or ran past the upload deadline) so
/// that what arrived is kept, and failed (nothing kept) past `Upload-Length`.
struct Part {
    size: u64,
    past_length: bool,
    hasher: Option<Hasher>,
}

impl Part {
    fn wrap(
        body: ByteStream,
        room: u64,
        algorithm: Option<ChecksumAlgorithm>,
        limits: super::UploadLimits,
    ) -> (ByteStream, Arc<Mutex<Self>>) {
        let part = Arc::new(Mutex::new(Self {
            size: 0,
            past_length: false,
            hasher: algorithm.map(Hasher::new),
        }));
        let deadline = tokio::time::Instant::now() + limits.total;
        let state = (body, Arc::clone(&part));
        let stream = futures_util::stream::unfold(state, move |(mut body, p)| async move {
            let wait = deadline.min(tokio::time::Instant::now() + limits.idle);
            // The client's end, however it came: keep what arrived.
            let Ok(Some(Ok(chunk))) = tokio::time::timeout_at(wait, body.next()).await else {
                return None;
            };
            let item = match p.lock() {
                Ok(mut part) if part.size + chunk.len() as u64 <= room => {
                    part.size += chunk.len() as u64;
                    if let Some(h) = part.hasher.as_mut() {
                        h.update(&chunk);
                    }
                    Ok(chunk)
                }
                Ok(mut part) => {
                    part.past_length = true;
                    Err(std::io::Error::other("the chunk goes past Upload-Length"))
                }
                Err(_) => Err(std::io::Error::other("upload part state poisoned")),
            };
            Some((item, (body, p)))
        });
        (Box::pin(stream), part)
    }
}

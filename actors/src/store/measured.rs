//! Wraps any [`Store`] and [`BlobStore`] to time every operation and count its failures, by
//! backend and operation, so every backend is measured the same way without knowing it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{
    BackupRecord, Blob, BlobEntry, BlobError, BlobKey, BlobStore, ByteStream, Compacted,
    DeviceRecord, ExpiredCouple, PairingRecord, Purged, Store, StoreError, StoredSignal,
    UploadRecord, Write,
};
use crate::clock::Timestamp;
use crate::ids::{BackupId, CoupleId, DeviceId, Seq, UploadId};
use crate::metrics::DomainMetrics;

/// A backend with its metrics.
pub(crate) struct Measured<S: ?Sized> {
    inner: Arc<S>,
    backend: &'static str,
    metrics: DomainMetrics,
}

impl Measured<dyn Store> {
    /// Measures a metadata store.
    pub(crate) fn store(inner: Arc<dyn Store>, metrics: DomainMetrics) -> Self {
        let backend = inner.backend();
        Self {
            inner,
            backend,
            metrics,
        }
    }
}

impl Measured<dyn BlobStore> {
    /// Measures a blob store.
    pub(crate) fn blobs(inner: Arc<dyn BlobStore>, metrics: DomainMetrics) -> Self {
        let backend = inner.backend();
        Self {
            inner,
            backend,
            metrics,
        }
    }
}

impl<S: ?Sized> Measured<S> {
    /// Runs one operation, recording its duration and whether it failed in the store.
    async fn op<T, E>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, E>>,
        is_store_failure: impl FnOnce(&E) -> bool,
    ) -> Result<T, E> {
        let started = Instant::now();
        let result = work.await;
        let ok = result.as_ref().err().is_none_or(|e| !is_store_failure(e));
        self.metrics
            .storage_op(self.backend, operation, started.elapsed(), ok);
        result
    }
}

/// Every [`StoreError`] is the store's.
fn always(_: &StoreError) -> bool {
    true
}

#[async_trait]
impl Store for Measured<dyn Store> {
    fn backend(&self) -> &'static str {
        self.backend
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.op("ping", self.inner.ping(), always).await
    }

    async fn save_device_and_pairing(
        &self,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), StoreError> {
        let work = self.inner.save_device_and_pairing(device, pairing);
        self.op("save_device_and_pairing", work, always).await
    }

    async fn revoke_device(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), StoreError> {
        let work = self.inner.revoke_device(couple, device);
        self.op("revoke_device", work, always).await
    }

    async fn device(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        self.op("device", self.inner.device(couple, device), always)
            .await
    }

    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.op("devices", self.inner.devices(couple), always).await
    }

    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        self.op("put_pairing", self.inner.put_pairing(pairing), always)
            .await
    }

    async fn pairing(&self, couple: &CoupleId) -> Result<Option<PairingRecord>, StoreError> {
        self.op("pairing", self.inner.pairing(couple), always).await
    }

    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError> {
        self.op("next_epoch", self.inner.next_epoch(couple), always)
            .await
    }

    async fn put_signals(&self, signals: &[StoredSignal]) -> Result<(), StoreError> {
        self.op("put_signals", self.inner.put_signals(signals), always)
            .await
    }

    async fn ack_signals(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        up_to: Seq,
    ) -> Result<(), StoreError> {
        let work = self.inner.ack_signals(couple, device, up_to);
        self.op("ack_signals", work, always).await
    }

    /// Measured twice: the batch as `write_batch` (one per commit), and each write under its
    /// own operation (`put_signals`, ...) with the batch's duration, which is how long it
    /// took to become durable, so those operations read the same batched or not.
    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<(), StoreError>> {
        let operations: Vec<_> = writes.iter().map(Write::operation).collect();
        let started = Instant::now();
        let outcomes = self.inner.write_batch(writes).await;
        let took = started.elapsed();
        for (operation, outcome) in operations.into_iter().zip(&outcomes) {
            self.metrics
                .storage_op(self.backend, operation, took, outcome.is_ok());
        }
        let ok = outcomes.iter().all(Result::is_ok);
        self.metrics
            .storage_op(self.backend, "write_batch", took, ok);
        outcomes
    }

    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError> {
        let work = self.inner.pending_signals(couple, now);
        self.op("pending_signals", work, always).await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Purged, StoreError> {
        self.op("purge_expired", self.inner.purge_expired(now), always)
            .await
    }

    async fn expire_unconfirmed_couples(
        &self,
        now: Timestamp,
    ) -> Result<Vec<ExpiredCouple>, StoreError> {
        let work = self.inner.expire_unconfirmed_couples(now);
        self.op("expire_unconfirmed_couples", work, always).await
    }

    async fn reclaim_space(&self) -> Result<Option<Compacted>, StoreError> {
        self.op("reclaim_space", self.inner.reclaim_space(), always)
            .await
    }

    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError> {
        self.op("insert_backup", self.inner.insert_backup(backup), always)
            .await
    }

    async fn backups(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, StoreError> {
        self.op("backups", self.inner.backups(couple), always).await
    }

    async fn delete_backup(&self, couple: &CoupleId, id: &BackupId) -> Result<(), StoreError> {
        let work = self.inner.delete_backup(couple, id);
        self.op("delete_backup", work, always).await
    }

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        let work = self.inner.create_upload(upload);
        self.op("create_upload", work, always).await
    }

    async fn upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<Option<UploadRecord>, StoreError> {
        self.op("upload", self.inner.upload(couple, id), always)
            .await
    }

    async fn update_upload(
        &self,
        upload: &UploadRecord,
        expected_version: u64,
    ) -> Result<bool, StoreError> {
        let work = self.inner.update_upload(upload, expected_version);
        self.op("update_upload", work, always).await
    }

    async fn delete_upload(&self, upload: &UploadRecord) -> Result<bool, StoreError> {
        let work = self.inner.delete_upload(upload);
        self.op("delete_upload", work, always).await
    }

    async fn uploads(&self, couple: &CoupleId) -> Result<Vec<UploadRecord>, StoreError> {
        self.op("uploads", self.inner.uploads(couple), always).await
    }

    async fn expired_uploads(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        let work = self.inner.expired_uploads(now, limit);
        self.op("expired_uploads", work, always).await
    }
}

#[async_trait]
impl BlobStore for Measured<dyn BlobStore> {
    fn backend(&self) -> &'static str {
        self.backend
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.op("ping", self.inner.ping(), always).await
    }

    /// A write cut short by its client (gone, or over a limit) is not the store's failure.
    async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<(), BlobError> {
        let is_store = |e: &BlobError| matches!(e, BlobError::Store(_));
        self.op("put_blob", self.inner.put(key, body), is_store)
            .await
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        self.op("get_blob", self.inner.get(key), always).await
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.op("delete_blob", self.inner.delete(key), always).await
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, StoreError> {
        self.op("list_blobs", self.inner.list(), always).await
    }

    async fn clean_partial_writes(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        let work = self.inner.clean_partial_writes(older_than);
        self.op("clean_partial_writes", work, always).await
    }
}

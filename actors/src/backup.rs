//! Encrypted backups. The ciphertext streams from the request straight into the blob store,
//! measured and hashed on the way, outside any actor. The backup actor then publishes the
//! metadata record (the blob is already durable, so "latest" never points at a partial
//! upload) and applies retention; publishing goes through one actor so concurrent uploads of
//! a couple cannot race the retention.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};

use crate::clock::Timestamp;
use crate::error::BackupError;
use crate::store::{BackupRecord, BlobKey, BlobStore, ByteStream, Store, StoreError};

impl From<StoreError> for BackupError {
    fn from(e: StoreError) -> Self {
        tracing::error!(cause = %e, "backup storage failed");
        BackupError::StorageUnavailable
    }
}

/// Size and SHA-256 of a stream, measured while it passes; cuts it off past the limit.
#[derive(Debug)]
pub struct Meter {
    hasher: Sha256,
    size: u64,
    limit: u64,
    over: bool,
}

/// What the meter saw once the stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// Bytes that passed.
    pub size: u64,
    /// Their SHA-256, lowercase hex.
    pub sha256: String,
}

impl Meter {
    /// Wraps `body`; the returned handle reads the result after the stream was consumed.
    pub fn wrap(body: ByteStream, limit: u64) -> (ByteStream, Arc<Mutex<Meter>>) {
        let meter = Arc::new(Mutex::new(Meter {
            hasher: Sha256::new(),
            size: 0,
            limit,
            over: false,
        }));
        let m = Arc::clone(&meter);
        let stream = body.map(move |chunk| {
            let chunk = chunk?;
            // unwrap: the lock is only taken here and after the stream ended; never poisoned
            // by a panic that matters (a poisoned meter just fails the upload).
            let mut m = m
                .lock()
                .map_err(|_| std::io::Error::other("backup meter poisoned"))?;
            m.size += chunk.len() as u64;
            if m.size > m.limit {
                m.over = true;
                return Err(std::io::Error::other("backup exceeds the size limit"));
            }
            m.hasher.update(&chunk);
            Ok(chunk)
        });
        (Box::pin(stream), meter)
    }

    /// Whether the limit cut the stream.
    #[must_use]
    pub fn exceeded(&self) -> bool {
        self.over
    }

    /// The result (consumes the hash state).
    #[must_use]
    pub fn finish(&mut self) -> Measured {
        let hasher = std::mem::take(&mut self.hasher);
        Measured {
            size: self.size,
            sha256: hex::encode(hasher.finalize()),
        }
    }
}

/// Requests to the backup actor.
#[derive(Debug)]
pub enum BackupMsg {
    /// Publish a backup whose blob is durable, then enforce retention.
    Publish {
        /// The record to publish.
        record: BackupRecord,
        /// Done (or why not).
        reply: RpcReplyPort<Result<(), BackupError>>,
    },
}

/// The backup actor.
pub struct BackupActor;

/// What the backup actor works with.
pub struct BackupArgs {
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
        self.store.insert_backup(&record).await?;
        if let Err(e) = self.apply_retention(&record.couple).await {
            tracing::warn!(cause = %e, "retention failed; it is retried on the next upload");
        }
        Ok(())
    }

    async fn apply_retention(&self, couple: &crate::ids::CoupleId) -> Result<(), StoreError> {
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
        }
        Ok(())
    }
}

/// Deletes blobs that no published record points to: leftovers of uploads interrupted after
/// their blob was written, or of a retention step cut short. With `older_than`, only blobs
/// written before that instant are considered (a younger one may be about to be published).
pub async fn sweep_orphans(
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
        let published: HashSet<_> = store
            .backups(&couple)
            .await?
            .into_iter()
            .map(|b| b.id)
            .collect();
        for key in keys.into_iter().filter(|k| !published.contains(&k.backup)) {
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

    #[tokio::test]
    async fn meter_hashes_and_counts() {
        let (s, meter) = Meter::wrap(stream(&[b"hello ", b"world"]), 100);
        let out: Vec<_> = s.collect().await;
        assert!(out.iter().all(Result::is_ok));
        let m = meter.lock().unwrap().finish();
        assert_eq!(m.size, 11);
        assert_eq!(
            m.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
    }

    #[tokio::test]
    async fn meter_cuts_the_stream_past_the_limit() {
        let (s, meter) = Meter::wrap(stream(&[b"12345", b"67890", b"x"]), 8);
        let out: Vec<_> = s.collect().await;
        assert!(out[0].is_ok());
        assert!(out[1].is_err());
        assert!(meter.lock().unwrap().exceeded());
    }
}

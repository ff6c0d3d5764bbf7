//! Actor-level tests of resumable uploads where the store is set up by hand: the state a crash
//! leaves between claiming an assembled backup and publishing it (docs/protocol.md §6.5), which
//! no HTTP request can stop the server in.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use our_memories_actors::store::embedded::EmbeddedStore;
use our_memories_actors::store::files::FileBlobs;
use our_memories_actors::store::{BlobKey, Completion};
use our_memories_actors::{
    BackupId, BlobStore, ByteStream, Clock, CoupleId, DeviceId, Domain, DomainMetrics, NewUpload,
    Settings, Sha256Digest, SigningSecret, Store,
};
use sha2::{Digest, Sha256};

fn body(bytes: &'static [u8]) -> ByteStream {
    Box::pin(futures_util::stream::iter([Ok(Bytes::from_static(bytes))]))
}

#[tokio::test]
async fn a_backup_claimed_but_not_published_before_a_crash_is_published_once_with_its_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let blobs: Arc<dyn BlobStore> = Arc::new(FileBlobs::open(dir.path()).unwrap());
    let clock = Clock::manual();
    let domain = Domain::start(
        Arc::clone(&store),
        Arc::clone(&blobs),
        SigningSecret::generate(),
        Settings::default(),
        clock.clone(),
        DomainMetrics::unregistered(),
        None,
    )
    .await
    .unwrap();
    let backups = &domain.backups;
    let (couple, device) = (CoupleId::generate(), DeviceId::parse("a").unwrap());
    let new = NewUpload {
        length: 5,
        ..NewUpload::default()
    };
    let id = backups
        .create_upload(&couple, &device, new)
        .await
        .unwrap()
        .id;
    backups
        .append(&couple, &id, 0, None, body(b"hel"))
        .await
        .unwrap();

    // What a server leaves when it dies right after the claim: the assembled blob is durable
    // and the record names it, unpublished.
    let claimed = BackupId::generate();
    let key = BlobKey {
        couple: couple.clone(),
        backup: claimed.clone(),
    };
    blobs.put(&key, body(b"hello")).await.unwrap();
    let mut record = store.upload(&couple, &id).await.unwrap().unwrap();
    let part = record.parts[0].blob.clone();
    let at = clock.now();
    record.completed = Some(Completion {
        backup: claimed.clone(),
        size: 5,
        sha256: Sha256Digest::from_bytes(Sha256::digest(b"hello").into()),
        at,
        published: false,
    });
    record.version += 1;
    assert!(
        store
            .update_upload(&record, record.version - 1)
            .await
            .unwrap()
    );
    clock.advance(Duration::from_secs(30));

    // The next HEAD finishes it: published under the claimed id and time, parts deleted.
    for _ in 0..2 {
        let progress = backups.upload_progress(&couple, &id).await.unwrap();
        assert_eq!(
            (progress.offset, progress.backup),
            (5, Some(claimed.clone()))
        );
        let kept = backups.list(&couple).await.unwrap();
        assert_eq!(kept.len(), 1, "published once");
        assert_eq!(
            (kept[0].id.clone(), kept[0].created_at),
            (claimed.clone(), at)
        );
    }
    let now = store.upload(&couple, &id).await.unwrap().unwrap();
    assert!(now.completed.is_some_and(|c| c.published) && now.parts.is_empty());
    let gone = BlobKey {
        couple: couple.clone(),
        backup: part,
    };
    assert!(
        blobs.get(&gone).await.unwrap().is_none(),
        "the part is deleted"
    );
    let blob = backups
        .open(&backups.find(&couple, None).await.unwrap())
        .await
        .unwrap();
    assert_eq!(blob.len, 5);
    domain.shutdown(Duration::from_secs(5)).await;
}

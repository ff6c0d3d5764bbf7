//! The storage conformance suite against the embedded backends (redb + files).

use our_memories_actors::store::conformance::{blob_suite, store_suite};
use our_memories_actors::store::embedded::EmbeddedStore;
use our_memories_actors::store::files::FileBlobs;

#[tokio::test]
async fn embedded_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    store_suite(&EmbeddedStore::open(dir.path()).unwrap()).await;
}

#[tokio::test]
async fn file_blobs_conform() {
    let dir = tempfile::tempdir().unwrap();
    blob_suite(&FileBlobs::open(dir.path()).unwrap()).await;
}

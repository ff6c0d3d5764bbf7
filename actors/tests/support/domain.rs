//! The actor tree on the embedded backends in `dir`, for the actor-level tests (shared by
//! `#[path]`: each file of `tests/` is its own crate).

use std::sync::Arc;

use our_memories_actors::store::embedded::EmbeddedStore;
use our_memories_actors::store::files::FileBlobs;
use our_memories_actors::{Clock, Domain, DomainMetrics, Settings, SigningSecret, Store};

/// Starts a domain on redb and files in `dir`, with a fresh signing secret.
pub async fn domain_with(
    dir: &std::path::Path,
    settings: Settings,
    clock: Clock,
    metrics: DomainMetrics,
) -> Domain {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).expect("store opens"));
    let blobs = Arc::new(FileBlobs::open(dir).expect("blobs open"));
    Domain::start(
        store,
        blobs,
        SigningSecret::generate(),
        settings,
        clock,
        metrics,
        None,
    )
    .await
    .expect("tree starts")
}

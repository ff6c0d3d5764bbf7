//! Storage adapters that need an SDK (MongoDB, S3): they implement the `actors` crate's
//! `Store` and `BlobStore` traits, and [`open`] picks the backends the configuration names.

pub mod mongo;
pub mod s3;

use std::sync::Arc;

use actors::store::embedded::EmbeddedStore;
use actors::store::files::FileBlobs;
use actors::{BlobStore, Store, StoreError};

use crate::config::{BlobBackend, MetadataBackend, StorageConfig};

/// The opened backends.
pub struct Backends {
    /// Pairings, devices, mailboxes, backup metadata.
    pub store: Arc<dyn Store>,
    /// Backup ciphertext.
    pub blobs: Arc<dyn BlobStore>,
}

/// Opens the configured backends; a backend that cannot be reached fails here, within the
/// storage timeout, with a message that names it.
pub async fn open(
    config: &StorageConfig,
    data_dir: &std::path::Path,
) -> Result<Backends, StoreError> {
    let mongo = match &config.metadata {
        MetadataBackend::Embedded => None,
        MetadataBackend::Mongo { uri, database } => Some(
            mongo::MongoStore::connect(uri.expose(), database.as_deref(), config.timeout).await?,
        ),
    };
    let blobs: Arc<dyn BlobStore> = match (&config.blobs, &mongo) {
        (BlobBackend::S3(s3), _) => Arc::new(s3::S3Blobs::connect(s3, config.timeout).await?),
        (BlobBackend::Default, Some(m)) => Arc::new(mongo::GridFsBlobs::new(m).await?),
        (BlobBackend::Default, None) => Arc::new(FileBlobs::open(data_dir)?),
    };
    let store: Arc<dyn Store> = match mongo {
        Some(m) => Arc::new(m),
        None => Arc::new(EmbeddedStore::open(data_dir)?),
    };
    Ok(Backends { store, blobs })
}

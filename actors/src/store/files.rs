//! The default blob store: one file per backup under `DATA_DIR/blobs/<couple>/<backup>`.
//! A write goes to `DATA_DIR/blobs/.partial/`, is fsynced, then renamed into place (and the
//! directory fsynced), so a blob is either complete and durable or absent. Partial files are
//! removed by the janitor (all of them at start: no upload survives a restart).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};

use super::{
    Blob, BlobEntry, BlobError, BlobKey, BlobStore, ByteStream, StoreError, check_headroom,
};
use crate::clock::Timestamp;
use crate::ids::{BackupId, CoupleId, random_id};

/// Where blobs live inside `DATA_DIR`.
pub const BLOB_DIR: &str = "blobs";
/// Unfinished writes, inside the blob directory.
const PARTIAL_DIR: &str = ".partial";
/// Write buffer: big enough to make few syscalls, small enough to keep memory flat.
const WRITE_BUFFER: usize = 256 * 1024;
/// Read chunk for downloads.
const READ_CHUNK: usize = 64 * 1024;
/// What the readiness probe writes (and deletes) while writes fail: one file system block.
const PROBE_BYTES: usize = 4096;

/// Blobs as files. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileBlobs {
    root: PathBuf,
    /// A write failed in the store (a full disk) and the readiness probe has not passed
    /// since; while set, [`BlobStore::ping`] probes like the embedded store's ping: the disk
    /// must have [`super::WRITE_HEADROOM`] free and a small file must be written.
    write_failing: Arc<AtomicBool>,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{what} {}: {e}", path.display()))
}

impl FileBlobs {
    /// Opens `data_dir/blobs`, creating it.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join(BLOB_DIR);
        let partial = root.join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).map_err(|e| io_err("cannot create", &partial, &e))?;
        Ok(Self {
            root,
            write_failing: Arc::default(),
        })
    }

    /// Writes, fsyncs and deletes a small file in the partial directory: whether a write can
    /// succeed now.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let tmp = self.root.join(PARTIAL_DIR).join(random_id());
        let body: ByteStream = Box::pin(futures_util::stream::once(async {
            Ok(Bytes::from_static(&[0; PROBE_BYTES]))
        }));
        let written = self.write(&tmp, body).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        match written {
            Ok(()) => Ok(()),
            Err(BlobError::Store(e)) => Err(e),
            Err(BlobError::Body(e)) => Err(io_err("cannot write", &tmp, &e)),
        }
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root
            .join(key.couple.as_str())
            .join(key.backup.as_str())
    }

    async fn write(&self, tmp: &Path, mut body: ByteStream) -> Result<(), BlobError> {
        let file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| io_err("cannot create", tmp, &e))?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(BlobError::Body)?;
            out.write_all(&chunk)
                .await
                .map_err(|e| io_err("cannot write", tmp, &e))?;
        }
        out.flush()
            .await
            .map_err(|e| io_err("cannot write", tmp, &e))?;
        out.get_ref()
            .sync_all()
            .await
            .map_err(|e| io_err("cannot fsync", tmp, &e))?;
        Ok(())
    }

    async fn put_inner(&self, key: &BlobKey, body: ByteStream) -> Result<(), BlobError> {
        let tmp = self.root.join(PARTIAL_DIR).join(random_id());
        if let Err(e) = self.write(&tmp, body).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        let dest = self.path(key);
        let dir = dest.parent().unwrap_or(&self.root).to_owned();
        let publish = async {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| io_err("cannot create", &dir, &e))?;
            tokio::fs::rename(&tmp, &dest)
                .await
                .map_err(|e| io_err("cannot rename", &dest, &e))?;
            sync_dir(&dir).await
        };
        if let Err(e) = publish.await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e.into());
        }
        Ok(())
    }
}

/// fsyncs a directory so a rename into it is durable.
async fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(|e| io_err("cannot open", dir, &e))?;
    d.sync_all()
        .await
        .map_err(|e| io_err("cannot fsync", dir, &e))
}

#[async_trait]
impl BlobStore for FileBlobs {
    fn backend(&self) -> &'static str {
        "files"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        if self.write_failing.load(Ordering::Acquire) {
            let root = self.root.clone();
            tokio::task::spawn_blocking(move || check_headroom(&root))
                .await
                .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))??;
            self.probe_write().await?;
            self.write_failing.store(false, Ordering::Release);
            tracing::info!("the blob store writes again");
            return Ok(());
        }
        let partial = self.root.join(PARTIAL_DIR);
        tokio::fs::metadata(&partial)
            .await
            .map(|_| ())
            .map_err(|e| io_err("cannot reach", &partial, &e))
    }

    async fn clean_partial_writes(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        let partial = self.root.join(PARTIAL_DIR);
        tokio::task::spawn_blocking(move || {
            let mut removed = 0;
            let entries =
                std::fs::read_dir(&partial).map_err(|e| io_err("cannot list", &partial, &e))?;
            for entry in entries.flatten() {
                if older_than.is_none_or(|cutoff| modified(&entry) < cutoff)
                    && std::fs::remove_file(entry.path()).is_ok()
                {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("cleaning partial writes failed: {e}")))?
    }

    /// A failure in the store (not in the body) marks the store as failing writes until the
    /// readiness probe passes; the partial file goes either way.
    async fn put(&self, key: &BlobKey, body: ByteStream) -> Result<(), BlobError> {
        let result = self.put_inner(key, body).await;
        if let Err(BlobError::Store(_)) = &result {
            self.write_failing.store(true, Ordering::Release);
        }
        result
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        let path = self.path(key);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("cannot open", &path, &e)),
        };
        let len = file
            .metadata()
            .await
            .map_err(|e| io_err("cannot stat", &path, &e))?
            .len();
        let body = futures_util::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Some(Blob {
            len,
            body: Box::pin(body),
        }))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let path = self.path(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("cannot delete", &path, &e)),
        }
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || list_files(&root))
            .await
            .map_err(|e| StoreError::Unavailable(format!("listing blobs failed: {e}")))?
    }
}

/// Walks `root/<couple>/<backup>`, skipping anything that is not a valid pair of ids.
fn list_files(root: &Path) -> Result<Vec<BlobEntry>, StoreError> {
    let mut out = Vec::new();
    let couples = std::fs::read_dir(root).map_err(|e| io_err("cannot list", root, &e))?;
    for couple_dir in couples.flatten() {
        let Ok(couple) = CoupleId::parse(couple_dir.file_name().to_string_lossy()) else {
            continue;
        };
        let Ok(files) = std::fs::read_dir(couple_dir.path()) else {
            continue;
        };
        for file in files.flatten() {
            let Ok(backup) = BackupId::parse(file.file_name().to_string_lossy()) else {
                continue;
            };
            out.push(BlobEntry {
                key: BlobKey {
                    couple: couple.clone(),
                    backup,
                },
                modified: modified(&file),
            });
        }
    }
    Ok(out)
}

/// A directory entry's modification time (the epoch if unknown, so it counts as old).
fn modified(entry: &std::fs::DirEntry) -> Timestamp {
    let ms = entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

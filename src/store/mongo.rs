//! MongoDB backend: pairings, devices, mailboxes and backup metadata in collections with TTL
//! indexes, and backup blobs in the GridFS layout (collections `backup_files` and
//! `backup_chunks`) when S3 is not configured.
//!
//! Reads filter on `expiresAt > now` themselves: a real `mongod` deletes TTL documents only in
//! a sweep about every 60 s. Nothing relies on multi-document transactions (a standalone
//! `mongod` rejects them); where two documents change together, the order is chosen so a crash
//! in between is harmless.

use std::time::Duration;

use actors::store::{
    BackupRecord, Blob, BlobEntry, BlobError, BlobKey, BlobStore, ByteStream, DeviceRecord,
    ExpiredCouple, PairingRecord, Purged, Store, StoreError, StoredSignal, UploadRecord, fill,
};
use actors::{BackupId, CoupleId, DeviceId, Seq, Sha256Digest, Timestamp, UploadId};
use async_trait::async_trait;
use bytes::Bytes;
use bytes::BytesMut;
use futures_util::{StreamExt, TryStreamExt};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument, UpdateOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::{Deserialize, Serialize};

/// Database used when neither `MONGODB_DB` nor the URI names one.
pub const DEFAULT_DATABASE: &str = "our_memories";
/// GridFS file documents of backup blobs. The layout is the GridFS spec's; the names are not
/// the dotted `<bucket>.files` / `<bucket>.chunks`, which MongoDB-protocol servers other than
/// `mongod` (the test server among them) handle as special and incompletely. Renaming the two
/// collections to `blobs.files` / `blobs.chunks` makes them a standard GridFS bucket.
const FILES_COLLECTION: &str = "backup_files";
/// GridFS chunk documents of backup blobs (`files_id`, `n`, `data`).
const CHUNKS_COLLECTION: &str = "backup_chunks";
/// An ack watermark guards only signals that can still arrive late (within their 5-minute
/// TTL); after an hour it guards nothing and expires.
const ACK_TTL: Duration = Duration::from_hours(1);
/// GridFS chunk size (the spec's default, 255 KiB): the only buffer an upload holds.
const CHUNK_SIZE: usize = 255 * 1024;
/// GridFS chunks fetched per round trip when downloading (255 KiB each).
const CHUNK_BATCH: u32 = 4;

fn dt(t: Timestamp) -> DateTime {
    DateTime::from_millis(i64::try_from(t.0).unwrap_or(i64::MAX))
}

fn ts(d: DateTime) -> Timestamp {
    Timestamp(u64::try_from(d.timestamp_millis()).unwrap_or(0))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("mongodb: {e}"))
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("mongodb: {e}"))
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceDoc {
    #[serde(rename = "_id")]
    id: String,
    couple_id: CoupleId,
    device_id: DeviceId,
    nonce: actors::token::DeviceNonce,
    paired_at: DateTime,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PairingDoc {
    #[serde(rename = "_id")]
    couple_id: CoupleId,
    token_hash: String,
    expires_at: DateTime,
    purge_at: DateTime,
    failed_attempts: i64,
    consumed: bool,
    /// Absent in documents written before it existed: such couples are kept.
    #[serde(default)]
    unconfirmed: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignalDoc {
    #[serde(rename = "_id")]
    id: String,
    couple_id: CoupleId,
    to: DeviceId,
    seq: i64,
    signal_id: actors::SignalId,
    from: DeviceId,
    payload: String,
    created_at: DateTime,
    expires_at: DateTime,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackupDoc {
    #[serde(rename = "_id")]
    id: String,
    couple_id: CoupleId,
    backup_id: BackupId,
    size: i64,
    /// Lowercase hex, as the digest serializes.
    sha256: Sha256Digest,
    meta: Option<String>,
    uploaded_by: DeviceId,
    created_at: DateTime,
}

/// A resumable upload: the record as JSON, with the fields queries need beside it (the
/// version for the compare-and-set of `update_upload`, the expiry for the janitor).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UploadDoc {
    #[serde(rename = "_id")]
    id: String,
    couple_id: CoupleId,
    version: i64,
    expires_at: DateTime,
    record: String,
}

impl UploadDoc {
    fn new(u: &UploadRecord) -> Result<Self, StoreError> {
        Ok(Self {
            id: format!("{}/{}", u.couple, u.id),
            couple_id: u.couple.clone(),
            version: to_i64(u.version),
            expires_at: dt(u.expires_at),
            record: serde_json::to_string(u).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        })
    }

    fn record(&self) -> Result<UploadRecord, StoreError> {
        serde_json::from_str(&self.record).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// The MongoDB store. Cheap to clone.
#[derive(Clone)]
pub struct MongoStore {
    db: Database,
    timeout: Duration,
}

impl MongoStore {
    /// Connects, checks the server answers (bounded by `timeout`), and creates the indexes.
    /// The database is `database`, else the URI's default database, else [`DEFAULT_DATABASE`].
    pub async fn connect(
        uri: &str,
        database: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut options = tokio::time::timeout(timeout, ClientOptions::parse(uri))
            .await
            .map_err(|_| unavailable("timed out resolving MONGODB_URI"))?
            .map_err(|e| unavailable(format!("invalid MONGODB_URI: {e}")))?;
        options.server_selection_timeout = Some(timeout);
        options.connect_timeout = Some(timeout);
        options.app_name = Some("our-memories".to_owned());
        let name = database
            .map(str::to_owned)
            .or_else(|| options.default_database.clone())
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let client = Client::with_options(options).map_err(unavailable)?;
        let store = Self {
            db: client.database(&name),
            timeout,
        };
        store
            .op(store.db.run_command(doc! { "ping": 1 }))
            .await
            .map_err(|e| unavailable(format!("cannot reach MongoDB: {e}")))?;
        store.create_indexes().await?;
        Ok(store)
    }

    /// The database, for the GridFS blob store.
    #[must_use]
    pub fn database(&self) -> Database {
        self.db.clone()
    }

    async fn op<T>(
        &self,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.timeout, fut.into_future())
            .await
            .map_err(|_| unavailable("operation timed out"))?
            .map_err(unavailable)
    }

    fn devices(&self) -> Collection<DeviceDoc> {
        self.db.collection("devices")
    }
    fn pairings(&self) -> Collection<PairingDoc> {
        self.db.collection("pairings")
    }
    fn signals(&self) -> Collection<SignalDoc> {
        self.db.collection("signals")
    }
    fn acks(&self) -> Collection<Document> {
        self.db.collection("acks")
    }
    fn epochs(&self) -> Collection<Document> {
        self.db.collection("epochs")
    }
    fn backups_coll(&self) -> Collection<BackupDoc> {
        self.db.collection("backups")
    }
    fn uploads_coll(&self) -> Collection<UploadDoc> {
        self.db.collection("uploads")
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let ttl = |field: &str, after: Duration| {
            IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(IndexOptions::builder().expire_after(after).build())
                .build()
        };
        let keys = |keys: Document| IndexModel::builder().keys(keys).build();
        self.op(self.devices().create_index(keys(doc! { "coupleId": 1 })))
            .await?;
        // The seed's TTL index on pairings.expiresAt, deleting a record one day after it
        // expires (`purgeAt` says the same; `purge_expired` uses it).
        self.op(self
            .pairings()
            .create_index(ttl("expiresAt", actors::PAIRING_KEPT_AFTER_EXPIRY)))
            .await?;
        self.op(self
            .signals()
            .create_index(ttl("expiresAt", Duration::ZERO)))
            .await?;
        self.op(self
            .signals()
            .create_index(keys(doc! { "coupleId": 1, "to": 1, "seq": 1 })))
            .await?;
        self.op(self.acks().create_index(ttl("updatedAt", ACK_TTL)))
            .await?;
        self.op(self.acks().create_index(keys(doc! { "coupleId": 1 })))
            .await?;
        self.op(self
            .backups_coll()
            .create_index(keys(doc! { "coupleId": 1, "createdAt": -1 })))
            .await?;
        self.op(self
            .uploads_coll()
            .create_index(keys(doc! { "coupleId": 1 })))
            .await?;
        self.op(self
            .uploads_coll()
            .create_index(keys(doc! { "expiresAt": 1 })))
            .await?;
        Ok(())
    }

    /// All devices of a couple.
    async fn devices_of(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError> {
        let cursor = self
            .op(self.devices().find(doc! { "coupleId": couple.as_str() }))
            .await?;
        let docs: Vec<DeviceDoc> = self.op(cursor.try_collect()).await?;
        Ok(docs
            .into_iter()
            .map(|d| DeviceRecord {
                couple: d.couple_id,
                device: d.device_id,
                nonce: d.nonce,
                paired_at: ts(d.paired_at),
            })
            .collect())
    }

    fn pairing_doc(p: &PairingRecord) -> PairingDoc {
        PairingDoc {
            couple_id: p.couple.clone(),
            token_hash: hex::encode(p.token_hash.0),
            expires_at: dt(p.expires_at),
            purge_at: dt(p.purge_at),
            failed_attempts: i64::from(p.failed_attempts),
            consumed: p.consumed,
            unconfirmed: p.unconfirmed,
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.op(self.db.run_command(doc! { "ping": 1 }))
            .await
            .map(|_| ())
    }

    /// Pairing first: if the device insert then fails, the pairing may be consumed without a
    /// device (the user pairs again), never the reverse (a usable token and a new device).
    async fn save_device_and_pairing(
        &self,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), StoreError> {
        self.put_pairing(pairing).await?;
        let doc = DeviceDoc {
            id: format!("{}/{}", device.couple, device.device),
            couple_id: device.couple.clone(),
            device_id: device.device.clone(),
            nonce: device.nonce.clone(),
            paired_at: dt(device.paired_at),
        };
        self.op(self
            .devices()
            .replace_one(doc! { "_id": &doc.id }, &doc)
            .upsert(true))
            .await?;
        Ok(())
    }

    /// The pairing first: if deleting the device then fails, the revocation fails with the
    /// device still registered (retry), and no pairing its token may have opened is left.
    async fn revoke_device(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), StoreError> {
        self.op(self.pairings().delete_one(doc! { "_id": couple.as_str() }))
            .await?;
        self.op(self
            .devices()
            .delete_one(doc! { "_id": format!("{couple}/{device}") }))
            .await?;
        Ok(())
    }

    async fn device(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let id = format!("{couple}/{device}");
        let found = self.op(self.devices().find_one(doc! { "_id": id })).await?;
        Ok(found.map(|d| DeviceRecord {
            couple: d.couple_id,
            device: d.device_id,
            nonce: d.nonce,
            paired_at: ts(d.paired_at),
        }))
    }

    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError> {
        self.devices_of(couple).await
    }

    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        let doc = Self::pairing_doc(pairing);
        self.op(self
            .pairings()
            .replace_one(doc! { "_id": pairing.couple.as_str() }, &doc)
            .upsert(true))
            .await?;
        Ok(())
    }

    async fn pairing(&self, couple: &CoupleId) -> Result<Option<PairingRecord>, StoreError> {
        let Some(d) = self
            .op(self.pairings().find_one(doc! { "_id": couple.as_str() }))
            .await?
        else {
            return Ok(None);
        };
        let mut hash = [0u8; 32];
        hex::decode_to_slice(&d.token_hash, &mut hash).map_err(corrupt)?;
        Ok(Some(PairingRecord {
            couple: d.couple_id,
            token_hash: actors::token::TokenHash(hash),
            expires_at: ts(d.expires_at),
            purge_at: ts(d.purge_at),
            failed_attempts: u32::try_from(d.failed_attempts).unwrap_or(u32::MAX),
            consumed: d.consumed,
            unconfirmed: d.unconfirmed,
        }))
    }

    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError> {
        let updated = self
            .op(self
                .epochs()
                .find_one_and_update(
                    doc! { "_id": couple.as_str() },
                    doc! { "$inc": { "epoch": 1_i64 } },
                )
                .upsert(true)
                .return_document(ReturnDocument::After))
            .await?
            .ok_or_else(|| corrupt("epoch upsert returned nothing"))?;
        let epoch = match updated.get("epoch") {
            Some(Bson::Int64(n)) => *n,
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Double(n)) => {
                // Some servers store $inc results as doubles; epochs are small integers.
                #[allow(clippy::cast_possible_truncation)]
                let n = *n as i64;
                n
            }
            other => return Err(corrupt(format!("epoch is {other:?}"))),
        };
        u64::try_from(epoch).map_err(corrupt)
    }

    /// One upsert per signal (no transactions). If one fails, the ones already written are
    /// deleted again (best effort), so a refused broadcast does not come back after a restart.
    async fn put_signals(&self, signals: &[StoredSignal]) -> Result<(), StoreError> {
        let mut written = Vec::new();
        for s in signals {
            let doc = SignalDoc {
                id: format!("{}/{}/{:020}", s.couple, s.to, s.seq.0),
                couple_id: s.couple.clone(),
                to: s.to.clone(),
                seq: to_i64(s.seq.0),
                signal_id: s.id.clone(),
                from: s.from.clone(),
                payload: s.payload.clone(),
                created_at: dt(s.created_at),
                expires_at: dt(s.expires_at),
            };
            let put = self
                .op(self
                    .signals()
                    .replace_one(doc! { "_id": &doc.id }, &doc)
                    .upsert(true))
                .await;
            if let Err(e) = put {
                if !written.is_empty() {
                    let _ = self
                        .op(self
                            .signals()
                            .delete_many(doc! { "_id": { "$in": written } }))
                        .await;
                }
                return Err(e);
            }
            written.push(doc.id);
        }
        Ok(())
    }

    async fn ack_signals(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        up_to: Seq,
    ) -> Result<(), StoreError> {
        let id = format!("{couple}/{device}");
        let now = DateTime::now();
        self.op(
            self.acks()
                .update_one(
                    doc! { "_id": &id },
                    doc! {
                        "$max": { "seq": to_i64(up_to.0) },
                        "$set": { "coupleId": couple.as_str(), "deviceId": device.as_str(), "updatedAt": now },
                    },
                )
                .with_options(UpdateOptions::builder().upsert(true).build()),
        )
        .await?;
        self.op(self.signals().delete_many(doc! {
            "coupleId": couple.as_str(), "to": device.as_str(), "seq": { "$lte": to_i64(up_to.0) }
        }))
        .await?;
        Ok(())
    }

    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError> {
        let cursor = self
            .op(self.acks().find(doc! { "coupleId": couple.as_str() }))
            .await?;
        let acks: Vec<Document> = self.op(cursor.try_collect()).await?;
        let acked = |device: &DeviceId| {
            acks.iter()
                .find(|a| a.get_str("deviceId").is_ok_and(|d| d == device.as_str()))
                .and_then(|a| match a.get("seq") {
                    Some(Bson::Int64(n)) => Some(*n),
                    Some(Bson::Int32(n)) => Some(i64::from(*n)),
                    _ => None,
                })
                .unwrap_or(0)
        };
        let cursor = self
            .op(self
                .signals()
                .find(doc! { "coupleId": couple.as_str(), "expiresAt": { "$gt": dt(now) } })
                .sort(doc! { "to": 1, "seq": 1 }))
            .await?;
        let docs: Vec<SignalDoc> = self.op(cursor.try_collect()).await?;
        Ok(docs
            .into_iter()
            .filter(|d| d.seq > acked(&d.to))
            .map(|d| StoredSignal {
                couple: d.couple_id,
                to: d.to,
                seq: Seq(u64::try_from(d.seq).unwrap_or(0)),
                id: d.signal_id,
                from: d.from,
                payload: d.payload,
                created_at: ts(d.created_at),
                expires_at: ts(d.expires_at),
            })
            .collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Purged, StoreError> {
        let signals = self
            .op(self
                .signals()
                .delete_many(doc! { "expiresAt": { "$lte": dt(now) } }))
            .await?;
        let pairings = self
            .op(self
                .pairings()
                .delete_many(doc! { "purgeAt": { "$lte": dt(now) } }))
            .await?;
        Ok(Purged {
            signals: signals.deleted_count,
            pairings: pairings.deleted_count,
        })
    }

    /// Per couple, in this order: the device (its token dies at once), the stored signals,
    /// ack watermarks and epoch, and the pairing last. The pairing is what marks the couple
    /// for expiry, so a failure part way leaves it to the next call, which finds at most one
    /// device (or none) and finishes.
    async fn expire_unconfirmed_couples(
        &self,
        now: Timestamp,
    ) -> Result<Vec<ExpiredCouple>, StoreError> {
        let cursor = self
            .op(self.pairings().find(doc! {
                "unconfirmed": true, "consumed": false, "expiresAt": { "$lte": dt(now) }
            }))
            .await?;
        let expired: Vec<PairingDoc> = self.op(cursor.try_collect()).await?;
        let mut gone = Vec::new();
        for pairing in expired {
            let couple = pairing.couple_id;
            let members = self.devices_of(&couple).await?;
            let has_backup = self
                .op(self
                    .backups_coll()
                    .find_one(doc! { "coupleId": couple.as_str() }))
                .await?
                .is_some();
            if members.len() > 1 || has_backup {
                continue;
            }
            let c = couple.as_str();
            self.op(self.devices().delete_many(doc! { "coupleId": c }))
                .await?;
            self.op(self.signals().delete_many(doc! { "coupleId": c }))
                .await?;
            self.op(self.acks().delete_many(doc! { "coupleId": c }))
                .await?;
            self.op(self.epochs().delete_one(doc! { "_id": c })).await?;
            self.op(self
                .pairings()
                .delete_one(doc! { "_id": c, "unconfirmed": true, "consumed": false }))
                .await?;
            gone.push(ExpiredCouple {
                couple,
                devices: members.into_iter().map(|d| d.device).collect(),
            });
        }
        Ok(gone)
    }

    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError> {
        let doc = BackupDoc {
            id: format!("{}/{}", backup.couple, backup.id),
            couple_id: backup.couple.clone(),
            backup_id: backup.id.clone(),
            size: to_i64(backup.size),
            sha256: backup.sha256,
            meta: backup.meta.clone(),
            uploaded_by: backup.uploaded_by.clone(),
            created_at: dt(backup.created_at),
        };
        self.op(self.backups_coll().insert_one(&doc)).await?;
        Ok(())
    }

    async fn backups(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, StoreError> {
        let cursor = self
            .op(self
                .backups_coll()
                .find(doc! { "coupleId": couple.as_str() })
                .sort(doc! { "createdAt": -1, "backupId": -1 }))
            .await?;
        let docs: Vec<BackupDoc> = self.op(cursor.try_collect()).await?;
        Ok(docs
            .into_iter()
            .map(|d| BackupRecord {
                couple: d.couple_id,
                id: d.backup_id,
                size: u64::try_from(d.size).unwrap_or(0),
                sha256: d.sha256,
                meta: d.meta,
                uploaded_by: d.uploaded_by,
                created_at: ts(d.created_at),
            })
            .collect())
    }

    async fn delete_backup(&self, couple: &CoupleId, id: &BackupId) -> Result<(), StoreError> {
        self.op(self
            .backups_coll()
            .delete_one(doc! { "_id": format!("{couple}/{id}") }))
            .await?;
        Ok(())
    }

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        self.op(self.uploads_coll().insert_one(UploadDoc::new(upload)?))
            .await?;
        Ok(())
    }

    async fn upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let found = self
            .op(self
                .uploads_coll()
                .find_one(doc! { "_id": format!("{couple}/{id}") }))
            .await?;
        found.map(|d| d.record()).transpose()
    }

    async fn update_upload(
        &self,
        upload: &UploadRecord,
        expected_version: u64,
    ) -> Result<bool, StoreError> {
        let new = UploadDoc::new(upload)?;
        let replaced = self
            .op(self.uploads_coll().replace_one(
                doc! { "_id": &new.id, "version": to_i64(expected_version) },
                &new,
            ))
            .await?;
        Ok(replaced.matched_count == 1)
    }

    async fn delete_upload(&self, upload: &UploadRecord) -> Result<bool, StoreError> {
        let deleted = self
            .op(self.uploads_coll().delete_one(doc! {
                "_id": format!("{}/{}", upload.couple, upload.id),
                "version": to_i64(upload.version),
            }))
            .await?;
        Ok(deleted.deleted_count == 1)
    }

    async fn uploads(&self, couple: &CoupleId) -> Result<Vec<UploadRecord>, StoreError> {
        let cursor = self
            .op(self
                .uploads_coll()
                .find(doc! { "coupleId": couple.as_str() }))
            .await?;
        let docs: Vec<UploadDoc> = self.op(cursor.try_collect()).await?;
        docs.iter().map(UploadDoc::record).collect()
    }

    async fn expired_uploads(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        let cursor = self
            .op(self
                .uploads_coll()
                .find(doc! { "expiresAt": { "$lte": dt(now) } })
                .limit(i64::try_from(limit).unwrap_or(i64::MAX)))
            .await?;
        let docs: Vec<UploadDoc> = self.op(cursor.try_collect()).await?;
        docs.iter().map(UploadDoc::record).collect()
    }
}

/// Backup blobs in the GridFS layout (see [`FILES_COLLECTION`]): written and read here
/// directly rather than through the driver's GridFS API, which creates its indexes lazily and
/// reports deleting a missing file as an error.
#[derive(Clone)]
pub struct GridFsBlobs {
    store: MongoStore,
}

impl GridFsBlobs {
    /// The blob collections of `store`'s database, with the chunk index.
    pub async fn new(store: &MongoStore) -> Result<Self, StoreError> {
        let blobs = Self {
            store: store.clone(),
        };
        let index = IndexModel::builder()
            .keys(doc! { "files_id": 1, "n": 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        blobs.store.op(blobs.chunks().create_index(index)).await?;
        // The partial-upload sweep looks up first chunks (`n: 0`).
        let first_chunks = IndexModel::builder().keys(doc! { "n": 1 }).build();
        blobs
            .store
            .op(blobs.chunks().create_index(first_chunks))
            .await?;
        Ok(blobs)
    }

    fn files(&self) -> Collection<Document> {
        self.store.db.collection(FILES_COLLECTION)
    }

    fn chunks(&self) -> Collection<Document> {
        self.store.db.collection(CHUNKS_COLLECTION)
    }

    fn id(key: &BlobKey) -> Bson {
        Bson::String(format!("{}/{}", key.couple, key.backup))
    }

    /// Deletes chunks whose file document was never written (an upload cut off by a crash),
    /// judging an upload's age by its first chunk's `ObjectId` time.
    async fn delete_partial_chunks(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        let chunks = self.chunks();
        let cursor = self
            .store
            .op(chunks
                .find(doc! { "n": 0 })
                .projection(doc! { "files_id": 1 }))
            .await?;
        let firsts: Vec<Document> = self.store.op(cursor.try_collect()).await?;
        let mut deleted = 0;
        for first in firsts {
            let started = first
                .get_object_id("_id")
                .map_or(Timestamp(0), |id| ts(id.timestamp()));
            if older_than.is_some_and(|cutoff| started >= cutoff) {
                continue;
            }
            let Some(files_id) = first.get("files_id").cloned() else {
                continue;
            };
            let exists = self
                .store
                .op(self.files().find_one(doc! { "_id": files_id.clone() }))
                .await?
                .is_some();
            if !exists {
                self.store
                    .op(chunks.delete_many(doc! { "files_id": files_id }))
                    .await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[async_trait]
impl BlobStore for GridFsBlobs {
    fn backend(&self) -> &'static str {
        "gridfs"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.store.ping().await
    }

    /// Writes the GridFS layout directly: chunks as the body streams in (one 255 KiB buffer),
    /// then the file document, which is what makes the blob visible. On failure the chunks
    /// written so far are deleted.
    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<(), BlobError> {
        let id = Self::id(key);
        let written: Result<u64, BlobError> = async {
            let mut buf = BytesMut::with_capacity(CHUNK_SIZE);
            let mut n: i32 = 0;
            let mut length: u64 = 0;
            let mut ended = false;
            while !ended {
                ended = fill(&mut body, &mut buf, CHUNK_SIZE).await?;
                while buf.len() >= CHUNK_SIZE || (ended && !buf.is_empty()) {
                    let data = buf.split_to(buf.len().min(CHUNK_SIZE));
                    length += data.len() as u64;
                    let chunk = doc! {
                        "files_id": id.clone(),
                        "n": n,
                        "data": Binary { subtype: BinarySubtype::Generic, bytes: data.to_vec() },
                    };
                    self.store.op(self.chunks().insert_one(chunk)).await?;
                    n += 1;
                }
            }
            Ok(length)
        }
        .await;
        let length = match written {
            Ok(length) => length,
            Err(e) => {
                let _ = self
                    .store
                    .op(self.chunks().delete_many(doc! { "files_id": id }))
                    .await;
                return Err(e);
            }
        };
        let file = doc! {
            "_id": id.clone(),
            "length": to_i64(length),
            "chunkSize": i32::try_from(CHUNK_SIZE).unwrap_or(i32::MAX),
            "uploadDate": DateTime::now(),
            "filename": key.backup.as_str(),
        };
        if let Err(e) = self.store.op(self.files().insert_one(file)).await {
            let _ = self
                .store
                .op(self.chunks().delete_many(doc! { "files_id": id }))
                .await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Reads the file document and the chunks directly (not through the driver's download
    /// stream): the chunks are streamed a few at a time, and file documents written by other
    /// GridFS implementations (an `uploadDate` stored as text) are still readable.
    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        let id = Self::id(key);
        let Some(file) = self
            .store
            .op(self.files().find_one(doc! { "_id": id.clone() }))
            .await?
        else {
            return Ok(None);
        };
        let len = match file.get("length") {
            Some(Bson::Int64(n)) => u64::try_from(*n).map_err(corrupt)?,
            Some(Bson::Int32(n)) => u64::try_from(*n).map_err(corrupt)?,
            other => return Err(corrupt(format!("GridFS length is {other:?}"))),
        };
        let cursor = self
            .store
            .op(self
                .chunks()
                .find(doc! { "files_id": id })
                .sort(doc! { "n": 1 })
                .batch_size(CHUNK_BATCH))
            .await?;
        let body = cursor.map(|chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            match chunk.get("data") {
                Some(Bson::Binary(b)) => Ok(Bytes::from(b.bytes.clone())),
                _ => Err(std::io::Error::other("GridFS chunk without data")),
            }
        });
        Ok(Some(Blob {
            len,
            body: Box::pin(body),
        }))
    }

    /// The file document first (the blob disappears at once), then its chunks. Deleting a
    /// missing blob is a no-op.
    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        let id = Self::id(key);
        self.store
            .op(self.files().delete_one(doc! { "_id": id.clone() }))
            .await?;
        self.store
            .op(self.chunks().delete_many(doc! { "files_id": id }))
            .await?;
        Ok(())
    }

    async fn clean_partial_writes(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        self.delete_partial_chunks(older_than).await
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, StoreError> {
        let cursor = self.store.op(self.files().find(doc! {})).await?;
        let files: Vec<Document> = self.store.op(cursor.try_collect()).await?;
        // An upload date that cannot be read counts as "now": the periodic sweep then leaves
        // the blob alone (it may be about to be published); the sweep at start still sees it.
        let now = Timestamp(u64::try_from(DateTime::now().timestamp_millis()).unwrap_or(0));
        Ok(files
            .into_iter()
            .filter_map(|f| {
                let id = f.get_str("_id").ok()?;
                let (couple, backup) = id.split_once('/')?;
                let modified = match f.get("uploadDate") {
                    Some(Bson::DateTime(d)) => ts(*d),
                    Some(Bson::String(s)) => humantime::parse_rfc3339_weak(s)
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(now, |d| {
                            Timestamp(u64::try_from(d.as_millis()).unwrap_or(0))
                        }),
                    _ => now,
                };
                Some(BlobEntry {
                    key: BlobKey {
                        couple: CoupleId::parse(couple).ok()?,
                        backup: BackupId::parse(backup).ok()?,
                    },
                    modified,
                })
            })
            .collect())
    }
}

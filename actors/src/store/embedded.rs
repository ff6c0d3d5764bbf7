//! The default store: one redb file in `DATA_DIR`. redb is a pure-Rust, copy-on-write B-tree
//! with ACID transactions that are durable (fsynced) when `commit` returns, so a killed server
//! loses nothing it acknowledged, and it needs no service and no C toolchain.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BackupRecord, Compacted, DeviceRecord, ExpiredCouple, PairingRecord, Purged, SignalWrite,
    Store, StoreError, StoredSignal, UploadRecord, Write, check_headroom,
};
use crate::clock::Timestamp;
use crate::ids::{BackupId, CoupleId, DeviceId, Seq, SignalId, UploadId};

/// (couple, device) -> `DeviceRecord` JSON.
const DEVICES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("devices");
/// couple -> `PairingRecord` JSON.
const PAIRINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("pairings");
/// couple -> last epoch handed out.
const EPOCHS: TableDefinition<&str, u64> = TableDefinition::new("epochs");
/// (couple, recipient, seq) -> `StoredSignal` JSON.
const SIGNALS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("signals");
/// (couple, recipient) -> highest acknowledged seq, so a late write of an acked signal is ignored.
const ACKS: TableDefinition<(&str, &str), u64> = TableDefinition::new("acks");
/// (couple, backup) -> `BackupRecord` JSON.
const BACKUPS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("backups");
/// (couple, upload) -> `UploadRecord` JSON.
const UPLOADS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("uploads");
/// One row the readiness probe rewrites to learn whether a write can commit (see
/// [`EmbeddedStore::ping`]).
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// What the probe writes: about one small record, so it needs what a real write needs.
const PROBE_VALUE: [u8; 512] = [0; 512];

/// File name of the database inside `DATA_DIR`.
pub const DB_FILE: &str = "our-memories.redb";

/// redb never shrinks its file by itself: after a burst of stored signals is delivered or
/// expires, the space stays free inside the file. [`EmbeddedStore::reclaim_space`] compacts
/// it when at least this share of the file (in percent) is free...
pub const COMPACT_MIN_FREE_PERCENT: u64 = 50;
/// ...and the file is at least this big: below it there is too little to give back to be
/// worth stopping the store for...
pub const COMPACT_MIN_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// ...and at most this much of it is live. Compaction moves the live pages while every other
/// operation of the store waits, so this bounds how long it blocks them (docs/benchmarks.md
/// has the measured time).
pub const COMPACT_MAX_LIVE_BYTES: u64 = 256 * 1024 * 1024;

/// Whether a file of `file` bytes with `live` of them in use is worth compacting.
fn worth_compacting(file: u64, live: u64) -> bool {
    let free = file.saturating_sub(live);
    file >= COMPACT_MIN_FILE_BYTES
        && free.saturating_mul(100) >= file.saturating_mul(COMPACT_MIN_FREE_PERCENT)
        && live <= COMPACT_MAX_LIVE_BYTES
}

/// The embedded, crash-safe store. Cheap to clone; all clones share one open database.
///
/// After an I/O error (a full disk, most often) redb refuses every later operation on that
/// handle ("Previous I/O error occurred. Please close and re-open the database"): the file is
/// left for the next open to recover, which is redb's documented way out. So the store closes
/// and reopens the file itself, before the next operation, instead of failing until a restart.
/// The reopen runs redb's repair from the last durable commit: everything acknowledged is there.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
}

/// What every clone shares.
struct Shared {
    path: PathBuf,
    /// The open database, `None` after a reopen failed. Operations hold it shared for their
    /// whole transaction; a reopen holds it exclusively, so it never closes the file under a
    /// live transaction.
    db: RwLock<Option<Database>>,
    /// An I/O error poisoned the open handle: the next operation reopens the file first.
    broken: AtomicBool,
    /// A write failed on I/O and the readiness probe has not passed since: what `/ready`
    /// reports (see [`EmbeddedStore::ping`]).
    write_failing: AtomicBool,
}

/// Whether an operation reads or writes, for [`Shared::with_db`]'s bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// A failure inside one operation, before it becomes a [`StoreError`]: the redb error is kept
/// so an I/O failure (which poisons redb's handle) can be told from the rest.
enum Fault {
    Redb(redb::Error),
    Corrupt(String),
}

impl Fault {
    /// Whether redb's handle is unusable after this error until it is reopened.
    fn poisons(&self) -> bool {
        matches!(
            self,
            Fault::Redb(redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed)
        )
    }
}

impl From<Fault> for StoreError {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Redb(e) => StoreError::Unavailable(e.to_string()),
            Fault::Corrupt(e) => StoreError::Corrupt(e),
        }
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                Fault::Redb(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Fault> {
    serde_json::to_vec(v).map_err(|e| Fault::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Fault> {
    serde_json::from_slice(bytes).map_err(|e| Fault::Corrupt(e.to_string()))
}

/// A signal as it is encoded in [`SIGNALS`]: the fields of [`StoredSignal`] (which decodes
/// it), borrowed, so a [`SignalWrite`] is encoded without copying its payload first.
#[derive(Serialize)]
struct SignalRow<'a> {
    couple: &'a CoupleId,
    to: &'a DeviceId,
    seq: Seq,
    id: &'a SignalId,
    from: &'a DeviceId,
    payload: &'a str,
    created_at: Timestamp,
    expires_at: Timestamp,
}

impl<'a> From<&'a StoredSignal> for SignalRow<'a> {
    fn from(s: &'a StoredSignal) -> Self {
        Self {
            couple: &s.couple,
            to: &s.to,
            seq: s.seq,
            id: &s.id,
            from: &s.from,
            payload: &s.payload,
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }
}

impl<'a> From<&'a SignalWrite> for SignalRow<'a> {
    fn from(w: &'a SignalWrite) -> Self {
        let s = &*w.signal;
        Self {
            couple: &w.couple,
            to: &w.to,
            seq: s.seq,
            id: &s.id,
            from: &s.from,
            payload: s.payload.as_str(),
            created_at: s.created_at,
            expires_at: s.expires_at,
        }
    }
}

/// The steps of the frequent writes, each inside a caller's transaction: alone (the
/// [`Store`] methods) or together in one commit ([`Store::write_batch`]).
mod step {
    use super::{ACKS, DEVICES, DeviceRecord, Fault, PAIRINGS, PairingRecord, SIGNALS, SignalRow};
    use super::{ReadableTable, WriteTransaction, encode};

    /// Stores signals in their mailboxes.
    pub(super) fn put_signals<'a>(
        txn: &WriteTransaction,
        rows: impl IntoIterator<Item = SignalRow<'a>>,
    ) -> Result<(), Fault> {
        let mut table = txn.open_table(SIGNALS)?;
        for row in rows {
            let bytes = encode(&row)?;
            table.insert(
                (row.couple.as_str(), row.to.as_str(), row.seq.0),
                bytes.as_slice(),
            )?;
        }
        Ok(())
    }

    /// Raises the mailbox's ack watermark (which hides later writes of what it covers) and
    /// deletes what it covers.
    pub(super) fn ack(
        txn: &WriteTransaction,
        couple: &str,
        device: &str,
        up_to: u64,
    ) -> Result<(), Fault> {
        let key = (couple, device);
        let mut acks = txn.open_table(ACKS)?;
        let prev = acks.get(key)?.map_or(0, |v| v.value());
        acks.insert(key, prev.max(up_to))?;
        let mut signals = txn.open_table(SIGNALS)?;
        signals.retain_in((couple, device, 0)..=(couple, device, up_to), |_, _| false)?;
        Ok(())
    }

    /// Registers a device and saves its couple's pairing.
    pub(super) fn save_device_and_pairing(
        txn: &WriteTransaction,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), Fault> {
        let (d, p) = (encode(device)?, encode(pairing)?);
        txn.open_table(DEVICES)?.insert(
            (device.couple.as_str(), device.device.as_str()),
            d.as_slice(),
        )?;
        txn.open_table(PAIRINGS)?
            .insert(pairing.couple.as_str(), p.as_slice())?;
        Ok(())
    }
}

/// Applies one write of a batch inside its transaction.
fn apply(txn: &WriteTransaction, write: &Write) -> Result<(), Fault> {
    match write {
        Write::Signals(signals) => step::put_signals(txn, signals.iter().map(SignalRow::from)),
        Write::Ack {
            couple,
            device,
            up_to,
        } => step::ack(txn, couple.as_str(), device.as_str(), up_to.0),
        Write::DeviceAndPairing { device, pairing } => {
            step::save_device_and_pairing(txn, device, pairing)
        }
    }
}

/// redb's page cache. Its default, 1 GiB, is kept once filled: after a burst of stored
/// signals the process kept hundreds of MiB it no longer needed (docs/benchmarks.md, "Memory
/// and disk after a burst"). The metadata a running server reads again (devices, pairings,
/// a room's mailbox when it starts) is small, so a small cache costs little.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Opens (or creates) the database file with a [`CACHE_BYTES`] cache.
fn create_database(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
}

/// Opens (or creates) the database file, creating every table so reads never miss one.
fn open_database(path: &Path) -> Result<Database, Fault> {
    let db = create_database(path)?;
    let txn = db.begin_write()?;
    txn.open_table(DEVICES)?;
    txn.open_table(PAIRINGS)?;
    txn.open_table(EPOCHS)?;
    txn.open_table(SIGNALS)?;
    txn.open_table(ACKS)?;
    txn.open_table(BACKUPS)?;
    txn.open_table(UPLOADS)?;
    txn.open_table(PROBE)?;
    txn.commit()?;
    Ok(db)
}

impl Shared {
    /// Runs one operation on the open database (reopening it first if an I/O error poisoned
    /// it), and keeps the books on I/O failures.
    fn with_db<T>(
        &self,
        access: Access,
        f: impl FnOnce(&Database) -> Result<T, Fault>,
    ) -> Result<T, StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let result = {
            let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
            let Some(db) = guard.as_ref() else {
                return Err(StoreError::Unavailable(
                    "the database is closed after an I/O error".to_owned(),
                ));
            };
            f(db)
        };
        match &result {
            Err(fault) if fault.poisons() => {
                self.broken.store(true, Ordering::Release);
                if access == Access::Write {
                    self.write_failing.store(true, Ordering::Release);
                }
            }
            _ => {}
        }
        result.map_err(StoreError::from)
    }

    /// Compacts the file when [`worth_compacting`]: under the exclusive lock, so no
    /// transaction is live (redb's `compact` needs `&mut Database` and none running).
    fn compact(&self) -> Result<Option<Compacted>, StoreError> {
        let file_len = || {
            std::fs::metadata(&self.path)
                .map(|m| m.len())
                .map_err(|e| StoreError::Unavailable(format!("cannot stat the database: {e}")))
        };
        // A write transaction that is only read: its stats see the allocator's state.
        let live = self.with_db(Access::Read, |db| {
            let txn = db.begin_write()?;
            let stats = txn.stats()?;
            txn.abort()?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })?;
        let before = file_len()?;
        if !worth_compacting(before, live) {
            return Ok(None);
        }
        let result = {
            let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
            let Some(db) = guard.as_mut() else {
                return Ok(None);
            };
            db.compact().map_err(|e| Fault::Redb(e.into()))
        };
        if let Err(fault) = &result
            && fault.poisons()
        {
            self.broken.store(true, Ordering::Release);
        }
        result?;
        Ok(Some(Compacted {
            before,
            after: file_len()?,
        }))
    }

    /// Closes the poisoned handle and opens the file again. One caller does it; the others
    /// wait on the lock and find it done.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(old) = guard.take() {
            // It fails with the I/O error that poisoned it, and releases the file all the same.
            let _ = old.close();
        }
        // Without the tables' commit of `open_database` (they exist since the first open): on
        // a disk that is still full, it could fail and leave even reads without a database.
        match create_database(&self.path) {
            Ok(db) => {
                *guard = Some(db);
                self.broken.store(false, Ordering::Release);
                tracing::info!("reopened the database after an I/O error");
                Ok(())
            }
            Err(e) => {
                let e = StoreError::from(Fault::from(e));
                tracing::warn!(cause = %e, "cannot reopen the database after an I/O error");
                Err(e)
            }
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let path = dir.join(DB_FILE);
        let db = open_database(&path)?;
        Ok(Self {
            shared: Arc::new(Shared {
                path,
                db: RwLock::new(Some(db)),
                broken: AtomicBool::new(false),
                write_failing: AtomicBool::new(false),
            }),
        })
    }

    /// Runs blocking redb work off the async runtime.
    async fn run<T, F>(&self, access: Access, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fault> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.with_db(access, f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// A read-only transaction.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fault> + Send + 'static,
    {
        self.run(Access::Read, f).await
    }

    /// A write transaction: its failure on I/O marks the store not ready until one commits.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, Fault> + Send + 'static,
    {
        self.run(Access::Write, f).await
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    /// Readiness must fail while writes fail (a full disk still reads fine), and a read
    /// cannot tell. Writing on every ping would cost an fsync per probe on a healthy server,
    /// and a periodic write probe would notice a full disk only at its next tick. So a write
    /// that fails on I/O sets a flag at once, and only while it is set does the ping probe:
    /// the disk must have [`super::WRITE_HEADROOM`] free and a small write must commit. A successful
    /// client write does not clear the flag: on a full disk, the reopen frees the pages of the
    /// failed transaction inside the file, so a few small writes commit between failures, and
    /// readiness would flap. `/ready` is 503 from the first failed write until the disk has
    /// room again, and it finds out by itself when asked (no client traffic needed).
    async fn ping(&self) -> Result<(), StoreError> {
        if self.shared.write_failing.load(Ordering::Acquire) {
            let dir = self
                .shared
                .path
                .parent()
                .unwrap_or(Path::new("."))
                .to_owned();
            tokio::task::spawn_blocking(move || check_headroom(&dir))
                .await
                .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))??;
            self.write(|db| {
                let txn = db.begin_write()?;
                txn.open_table(PROBE)?
                    .insert("probe", PROBE_VALUE.as_slice())?;
                txn.commit()?;
                Ok(())
            })
            .await?;
            self.shared.write_failing.store(false, Ordering::Release);
            tracing::info!("the metadata store writes again");
            return Ok(());
        }
        self.read(|db| {
            db.begin_read()?.open_table(EPOCHS)?;
            Ok(())
        })
        .await
    }

    async fn save_device_and_pairing(
        &self,
        device: &DeviceRecord,
        pairing: &PairingRecord,
    ) -> Result<(), StoreError> {
        let (device, pairing) = (device.clone(), pairing.clone());
        self.write(move |db| {
            let txn = db.begin_write()?;
            step::save_device_and_pairing(&txn, &device, &pairing)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn revoke_device(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), StoreError> {
        let (couple, device) = (couple.clone(), device.clone());
        self.write(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(PAIRINGS)?.remove(couple.as_str())?;
            txn.open_table(DEVICES)?
                .remove((couple.as_str(), device.as_str()))?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn device(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
    ) -> Result<Option<DeviceRecord>, StoreError> {
        let (couple, device) = (couple.clone(), device.clone());
        self.read(move |db| couple_record(db, DEVICES, &couple, device.as_str()))
            .await
    }

    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError> {
        let couple = couple.clone();
        self.read(move |db| couple_records(db, DEVICES, &couple))
            .await
    }

    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        let rec = pairing.clone();
        self.write(move |db| {
            let bytes = encode(&rec)?;
            let txn = db.begin_write()?;
            txn.open_table(PAIRINGS)?
                .insert(rec.couple.as_str(), bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn pairing(&self, couple: &CoupleId) -> Result<Option<PairingRecord>, StoreError> {
        let couple = couple.clone();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PAIRINGS)?;
            let row = table.get(couple.as_str())?;
            row.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError> {
        let couple = couple.clone();
        self.write(move |db| {
            let txn = db.begin_write()?;
            let next = {
                let mut table = txn.open_table(EPOCHS)?;
                let next = table.get(couple.as_str())?.map_or(0, |v| v.value()) + 1;
                table.insert(couple.as_str(), next)?;
                next
            };
            txn.commit()?;
            Ok(next)
        })
        .await
    }

    async fn put_signals(&self, signals: &[StoredSignal]) -> Result<(), StoreError> {
        let signals = signals.to_vec();
        self.write(move |db| {
            let txn = db.begin_write()?;
            step::put_signals(&txn, signals.iter().map(SignalRow::from))?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn ack_signals(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        up_to: Seq,
    ) -> Result<(), StoreError> {
        let (couple, device) = (couple.clone(), device.clone());
        self.write(move |db| {
            let txn = db.begin_write()?;
            step::ack(&txn, couple.as_str(), device.as_str(), up_to.0)?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// One transaction and one durable commit for the whole batch, on one blocking thread.
    async fn write_batch(&self, writes: Vec<Write>) -> Vec<Result<(), StoreError>> {
        let count = writes.len();
        let outcome = self
            .write(move |db| {
                let txn = db.begin_write()?;
                for write in &writes {
                    apply(&txn, write)?;
                }
                txn.commit()?;
                Ok(())
            })
            .await;
        vec![outcome; count]
    }

    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError> {
        let couple = couple.clone();
        self.read(move |db| {
            let txn = db.begin_read()?;
            let signals = txn.open_table(SIGNALS)?;
            let acks = txn.open_table(ACKS)?;
            let mut out = Vec::new();
            for row in signals.range((couple.as_str(), "", 0)..)? {
                let (k, v) = row?;
                let (c, device, seq) = k.value();
                if c != couple.as_str() {
                    break;
                }
                let acked = acks.get((c, device))?.map_or(0, |v| v.value());
                let s: StoredSignal = decode(v.value())?;
                if seq > acked && s.expires_at > now {
                    out.push(s);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<Purged, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write()?;
            let mut purged = Purged::default();
            {
                let mut signals = txn.open_table(SIGNALS)?;
                signals.retain(|_, v| {
                    let keep = decode::<StoredSignal>(v).is_ok_and(|s| s.expires_at > now);
                    purged.signals += u64::from(!keep);
                    keep
                })?;
                let mut pairings = txn.open_table(PAIRINGS)?;
                pairings.retain(|_, v| {
                    let keep = decode::<PairingRecord>(v).is_ok_and(|p| p.purge_at > now);
                    purged.pairings += u64::from(!keep);
                    keep
                })?;
                // An ack watermark only guards signals that may still be on disk; once a
                // device has none left, its watermark goes too.
                let mut live = std::collections::HashSet::new();
                for row in signals.iter()? {
                    let (k, _) = row?;
                    let (c, d, _) = k.value();
                    live.insert((c.to_owned(), d.to_owned()));
                }
                let mut acks = txn.open_table(ACKS)?;
                acks.retain(|(c, d), _| live.contains(&(c.to_owned(), d.to_owned())))?;
            }
            txn.commit()?;
            Ok(purged)
        })
        .await
    }

    async fn expire_unconfirmed_couples(
        &self,
        now: Timestamp,
    ) -> Result<Vec<ExpiredCouple>, StoreError> {
        self.write(move |db| {
            let txn = db.begin_write()?;
            let mut gone: Vec<ExpiredCouple> = Vec::new();
            let mut couples = std::collections::HashSet::new();
            {
                let mut pairings = txn.open_table(PAIRINGS)?;
                let mut devices = txn.open_table(DEVICES)?;
                let backups = txn.open_table(BACKUPS)?;
                let mut epochs = txn.open_table(EPOCHS)?;
                let mut candidates = Vec::new();
                for row in pairings.iter()? {
                    let (k, v) = row?;
                    let expired = decode::<PairingRecord>(v.value())
                        .is_ok_and(|p| p.unconfirmed && !p.consumed && p.expires_at <= now);
                    if expired {
                        candidates.push(k.value().to_owned());
                    }
                }
                for couple in candidates {
                    let c = couple.as_str();
                    let mut members: Vec<DeviceRecord> = Vec::new();
                    for row in devices.range((c, "")..)? {
                        let (k, v) = row?;
                        if k.value().0 != c {
                            break;
                        }
                        members.push(decode(v.value())?);
                    }
                    let has_backup = match backups.range((c, "")..)?.next() {
                        Some(row) => row?.0.value().0 == c,
                        None => false,
                    };
                    if members.len() > 1 || has_backup {
                        continue;
                    }
                    for d in &members {
                        devices.remove((c, d.device.as_str()))?;
                    }
                    pairings.remove(c)?;
                    epochs.remove(c)?;
                    gone.push(ExpiredCouple {
                        couple: CoupleId::parse(couple.clone())
                            .map_err(|e| Fault::Corrupt(e.to_string()))?,
                        devices: members.into_iter().map(|d| d.device).collect(),
                    });
                    couples.insert(couple);
                }
                if !couples.is_empty() {
                    let mut signals = txn.open_table(SIGNALS)?;
                    signals.retain(|(c, _, _), _| !couples.contains(c))?;
                    let mut acks = txn.open_table(ACKS)?;
                    acks.retain(|(c, _), _| !couples.contains(c))?;
                }
            }
            txn.commit()?;
            Ok(gone)
        })
        .await
    }

    /// Compacts the file when much of it is free (see [`COMPACT_MIN_FREE_PERCENT`]).
    async fn reclaim_space(&self) -> Result<Option<Compacted>, StoreError> {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.compact())
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError> {
        let rec = backup.clone();
        self.write(move |db| {
            let bytes = encode(&rec)?;
            let txn = db.begin_write()?;
            txn.open_table(BACKUPS)?
                .insert((rec.couple.as_str(), rec.id.as_str()), bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn backups(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, StoreError> {
        let couple = couple.clone();
        self.read(move |db| {
            let mut out: Vec<BackupRecord> = couple_records(db, BACKUPS, &couple)?;
            out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            Ok(out)
        })
        .await
    }

    async fn delete_backup(&self, couple: &CoupleId, id: &BackupId) -> Result<(), StoreError> {
        let (couple, id) = (couple.clone(), id.clone());
        self.write(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(BACKUPS)?
                .remove((couple.as_str(), id.as_str()))?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn create_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        let upload = upload.clone();
        self.write(move |db| swap_upload(db, &upload.couple, &upload.id, None, Some(&upload)))
            .await
            .map(drop)
    }

    async fn upload(
        &self,
        couple: &CoupleId,
        id: &UploadId,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let (couple, id) = (couple.clone(), id.clone());
        self.read(move |db| couple_record(db, UPLOADS, &couple, id.as_str()))
            .await
    }

    async fn update_upload(
        &self,
        upload: &UploadRecord,
        expected_version: u64,
    ) -> Result<bool, StoreError> {
        let upload = upload.clone();
        self.write(move |db| {
            swap_upload(
                db,
                &upload.couple,
                &upload.id,
                Some(expected_version),
                Some(&upload),
            )
        })
        .await
    }

    async fn delete_upload(&self, upload: &UploadRecord) -> Result<bool, StoreError> {
        let (couple, id, version) = (upload.couple.clone(), upload.id.clone(), upload.version);
        self.write(move |db| swap_upload(db, &couple, &id, Some(version), None))
            .await
    }

    async fn uploads(&self, couple: &CoupleId) -> Result<Vec<UploadRecord>, StoreError> {
        let couple = couple.clone();
        self.read(move |db| couple_records(db, UPLOADS, &couple))
            .await
    }

    async fn expired_uploads(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        self.read(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(UPLOADS)?;
            let mut out = Vec::new();
            // Few rows (each couple's quota bounds its uploads): a scan is enough.
            for row in table.iter()? {
                let upload: UploadRecord = decode(row?.1.value())?;
                if upload.expires_at <= now {
                    out.push(upload);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The record `id` of `couple` in a table keyed by (couple, id), decoded, if there is one.
fn couple_record<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<(&'static str, &'static str), &'static [u8]>,
    couple: &CoupleId,
    id: &str,
) -> Result<Option<T>, Fault> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    let row = table.get((couple.as_str(), id))?;
    row.map(|v| decode(v.value())).transpose()
}

/// Every record of `couple` in a table keyed by (couple, id), decoded.
fn couple_records<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<(&'static str, &'static str), &'static [u8]>,
    couple: &CoupleId,
) -> Result<Vec<T>, Fault> {
    let txn = db.begin_read()?;
    let table = txn.open_table(table)?;
    let mut out = Vec::new();
    for row in table.range((couple.as_str(), "")..)? {
        let (k, v) = row?;
        if k.value().0 != couple.as_str() {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// In one write transaction: if the stored upload's version is `expected` (`None`: there is
/// none), writes `new` in its place (`None`: removes it). Whether it did.
fn swap_upload(
    db: &Database,
    couple: &CoupleId,
    id: &UploadId,
    expected: Option<u64>,
    new: Option<&UploadRecord>,
) -> Result<bool, Fault> {
    let bytes = new.map(encode).transpose()?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(UPLOADS)?;
        let key = (couple.as_str(), id.as_str());
        let current = match table.get(key)? {
            Some(v) => Some(decode::<UploadRecord>(v.value())?.version),
            None => None,
        };
        if current != expected {
            return Ok(false);
        }
        match &bytes {
            Some(b) => drop(table.insert(key, b.as_slice())?),
            None => drop(table.remove(key)?),
        }
    }
    txn.commit()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{DeviceNonce, PairingToken};

    fn signal(couple: &CoupleId, seq: u64, expires: u64) -> StoredSignal {
        StoredSignal {
            couple: couple.clone(),
            to: DeviceId::parse("b").unwrap(),
            seq: Seq(seq),
            id: crate::ids::SignalId::parse(format!("s{seq}")).unwrap(),
            from: DeviceId::parse("a").unwrap(),
            payload: "1".to_owned(),
            created_at: Timestamp(0),
            expires_at: Timestamp(expires),
        }
    }

    #[tokio::test]
    async fn acks_hide_late_writes_and_purge_respects_ttls() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let c = CoupleId::parse("c").unwrap();
        let b = DeviceId::parse("b").unwrap();
        store
            .put_signals(&[signal(&c, 1, 100), signal(&c, 2, 100), signal(&c, 3, 50)])
            .await
            .unwrap();
        store.ack_signals(&c, &b, Seq(1)).await.unwrap();
        // A write of an already acknowledged signal that lands after the ack stays hidden.
        store.put_signals(&[signal(&c, 1, 100)]).await.unwrap();
        let seqs = |v: Vec<StoredSignal>| v.into_iter().map(|s| s.seq.0).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.pending_signals(&c, Timestamp(10)).await.unwrap()),
            [2, 3]
        );
        assert_eq!(
            seqs(store.pending_signals(&c, Timestamp(60)).await.unwrap()),
            [2]
        );

        let token = PairingToken::generate();
        let pairing = PairingRecord {
            couple: c.clone(),
            token_hash: token.hash(),
            expires_at: Timestamp(100),
            purge_at: Timestamp(200),
            failed_attempts: 0,
            consumed: true,
            unconfirmed: false,
        };
        let device = DeviceRecord {
            couple: c.clone(),
            device: b.clone(),
            nonce: DeviceNonce::generate(),
            paired_at: Timestamp(0),
        };
        store
            .save_device_and_pairing(&device, &pairing)
            .await
            .unwrap();
        // Expired signals go; the expired pairing stays until purge_at (late confirms get 410).
        let purged = |signals, pairings| Purged { signals, pairings };
        assert_eq!(
            store.purge_expired(Timestamp(150)).await.unwrap(),
            purged(3, 0)
        );
        assert!(store.pairing(&c).await.unwrap().is_some());
        assert_eq!(
            store.purge_expired(Timestamp(200)).await.unwrap(),
            purged(0, 1)
        );
        assert!(store.pairing(&c).await.unwrap().is_none());
        assert_eq!(
            store.devices(&c).await.unwrap().len(),
            1,
            "devices do not expire"
        );
    }

    #[tokio::test]
    async fn a_file_mostly_free_after_a_burst_is_compacted_and_keeps_what_is_live() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let c = CoupleId::parse("c").unwrap();
        let b = DeviceId::parse("b").unwrap();
        let big = |seq| StoredSignal {
            payload: "x".repeat(60_000),
            ..signal(&c, seq, 100)
        };
        // A burst of 24 MB of stored signals, then all but the last one delivered.
        for batch in 0..20 {
            let signals: Vec<_> = (1..=20).map(|i| big(batch * 20 + i)).collect();
            store.put_signals(&signals).await.unwrap();
        }
        assert_eq!(
            store.reclaim_space().await.unwrap(),
            None,
            "nothing is free yet"
        );
        store.ack_signals(&c, &b, Seq(399)).await.unwrap();
        let size = || std::fs::metadata(dir.path().join(DB_FILE)).unwrap().len();
        let before = size();
        let compacted = store.reclaim_space().await.unwrap().expect("compacted");
        assert_eq!(compacted.before, before);
        assert_eq!(compacted.after, size());
        assert!(compacted.after < before / 4, "{compacted:?}");
        let left = store.pending_signals(&c, Timestamp(0)).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].payload.len(), 60_000);
        // Once compact, there is nothing more to do; the store still writes.
        assert_eq!(store.reclaim_space().await.unwrap(), None);
        store.put_signals(&[signal(&c, 401, 100)]).await.unwrap();
    }

    /// A batch encodes its shared signals exactly as a stored record, which is what reads
    /// decode.
    #[test]
    fn a_signal_row_encodes_like_a_stored_signal() {
        let stored = StoredSignal {
            payload: "{\"sdp\":\"v=0\\r\\n\"}".to_owned(),
            ..signal(&CoupleId::parse("c").unwrap(), 7, 100)
        };
        let shared = SignalWrite::try_from(stored.clone()).unwrap();
        let row = encode(&SignalRow::from(&shared)).ok().unwrap();
        assert_eq!(row, serde_json::to_vec(&stored).unwrap());
        assert_eq!(shared.stored().payload, stored.payload);
    }

    #[test]
    fn compaction_needs_a_big_file_mostly_free_and_a_bounded_live_part() {
        const MIB: u64 = 1024 * 1024;
        assert!(worth_compacting(100 * MIB, 50 * MIB));
        assert!(
            !worth_compacting(100 * MIB, 51 * MIB),
            "less than half free"
        );
        assert!(!worth_compacting(15 * MIB, MIB), "too small to bother");
        assert!(
            !worth_compacting(1024 * MIB, 300 * MIB),
            "too much to move at once"
        );
    }

    #[tokio::test]
    async fn epochs_increase_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = CoupleId::parse("c").unwrap();
        let first = EmbeddedStore::open(dir.path())
            .unwrap()
            .next_epoch(&c)
            .await
            .unwrap();
        let second = EmbeddedStore::open(dir.path())
            .unwrap()
            .next_epoch(&c)
            .await
            .unwrap();
        assert!(second > first);
    }
}

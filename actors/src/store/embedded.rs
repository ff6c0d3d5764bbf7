//! The default store: one redb file in `DATA_DIR`. redb is a pure-Rust, copy-on-write B-tree
//! with ACID transactions that are durable (fsynced) when `commit` returns, so a killed server
//! loses nothing it acknowledged, and it needs no service and no C toolchain.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{
    BackupRecord, DeviceRecord, ExpiredCouple, PairingRecord, Purged, Store, StoreError,
    StoredSignal,
};
use crate::clock::Timestamp;
use crate::ids::{BackupId, CoupleId, DeviceId, Seq};

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

/// File name of the database inside `DATA_DIR`.
pub const DB_FILE: &str = "our-memories.redb";

/// The embedded, crash-safe store. Cheap to clone; all clones share one open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

macro_rules! redb_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::from(redb::Error::from(e))
            }
        }
    )*};
}
redb_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`, creating every table so reads never miss one.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
        })?;
        let db = Database::create(dir.join(DB_FILE))?;
        let txn = db.begin_write()?;
        txn.open_table(DEVICES)?;
        txn.open_table(PAIRINGS)?;
        txn.open_table(EPOCHS)?;
        txn.open_table(SIGNALS)?;
        txn.open_table(ACKS)?;
        txn.open_table(BACKUPS)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Runs blocking redb work off the async runtime.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|db| {
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
        self.run(move |db| {
            let (d, p) = (encode(&device)?, encode(&pairing)?);
            let txn = db.begin_write()?;
            txn.open_table(DEVICES)?.insert(
                (device.couple.as_str(), device.device.as_str()),
                d.as_slice(),
            )?;
            txn.open_table(PAIRINGS)?
                .insert(pairing.couple.as_str(), p.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn revoke_device(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), StoreError> {
        let (couple, device) = (couple.clone(), device.clone());
        self.run(move |db| {
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
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEVICES)?;
            let row = table.get((couple.as_str(), device.as_str()))?;
            row.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, StoreError> {
        let couple = couple.clone();
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEVICES)?;
            let mut out = Vec::new();
            for row in table.range((couple.as_str(), "")..)? {
                let (k, v) = row?;
                if k.value().0 != couple.as_str() {
                    break;
                }
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn put_pairing(&self, pairing: &PairingRecord) -> Result<(), StoreError> {
        let rec = pairing.clone();
        self.run(move |db| {
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
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PAIRINGS)?;
            let row = table.get(couple.as_str())?;
            row.map(|v| decode(v.value())).transpose()
        })
        .await
    }

    async fn next_epoch(&self, couple: &CoupleId) -> Result<u64, StoreError> {
        let couple = couple.clone();
        self.run(move |db| {
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
        self.run(move |db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(SIGNALS)?;
                for s in &signals {
                    let bytes = encode(s)?;
                    table.insert(
                        (s.couple.as_str(), s.to.as_str(), s.seq.0),
                        bytes.as_slice(),
                    )?;
                }
            }
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
        self.run(move |db| {
            let txn = db.begin_write()?;
            {
                let key = (couple.as_str(), device.as_str());
                let mut acks = txn.open_table(ACKS)?;
                let prev = acks.get(key)?.map_or(0, |v| v.value());
                acks.insert(key, prev.max(up_to.0))?;
                let mut signals = txn.open_table(SIGNALS)?;
                signals.retain_in(
                    (couple.as_str(), device.as_str(), 0)
                        ..=(couple.as_str(), device.as_str(), up_to.0),
                    |_, _| false,
                )?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    async fn pending_signals(
        &self,
        couple: &CoupleId,
        now: Timestamp,
    ) -> Result<Vec<StoredSignal>, StoreError> {
        let couple = couple.clone();
        self.run(move |db| {
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
        self.run(move |db| {
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
        self.run(move |db| {
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
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?,
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

    async fn insert_backup(&self, backup: &BackupRecord) -> Result<(), StoreError> {
        let rec = backup.clone();
        self.run(move |db| {
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
        self.run(move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(BACKUPS)?;
            let mut out: Vec<BackupRecord> = Vec::new();
            for row in table.range((couple.as_str(), "")..)? {
                let (k, v) = row?;
                if k.value().0 != couple.as_str() {
                    break;
                }
                out.push(decode(v.value())?);
            }
            out.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
            Ok(out)
        })
        .await
    }

    async fn delete_backup(&self, couple: &CoupleId, id: &BackupId) -> Result<(), StoreError> {
        let (couple, id) = (couple.clone(), id.clone());
        self.run(move |db| {
            let txn = db.begin_write()?;
            txn.open_table(BACKUPS)?
                .remove((couple.as_str(), id.as_str()))?;
            txn.commit()?;
            Ok(())
        })
        .await
    }
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

//! The storage conformance suite: what every [`Store`] and [`BlobStore`] must do, run against
//! each backend (embedded, `MongoDB`, S3) by that backend's tests. Every check uses fresh random
//! ids, so the suite can share a database with other tests.

use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    BackupRecord, BlobError, BlobKey, BlobStore, ByteStream, DeviceRecord, PairingRecord,
    SignalWrite, Store, StoredSignal, UploadPart, UploadRecord, Write,
};
use crate::clock::{Clock, Timestamp};
use crate::digest::Sha256Digest;
use crate::ids::{BackupId, CoupleId, DeviceId, Seq, SignalId, UploadId};
use crate::token::{DeviceNonce, PairingToken};

/// Instants are offsets in whole seconds from one base a minute in the real future: backends
/// with TTL indexes (`MongoDB`) delete or hide documents whose expiry is in the real past, and
/// a backend need only compare times to the second.
fn at(offset_secs: u64) -> Timestamp {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| Clock::System.now().0 / 1_000 * 1_000 + 60_000);
    Timestamp(base + offset_secs * 1_000)
}

fn device(couple: &CoupleId, id: &str) -> DeviceRecord {
    DeviceRecord {
        couple: couple.clone(),
        device: DeviceId::parse(id).expect("valid id"),
        nonce: DeviceNonce::generate(),
        paired_at: at(1_000),
    }
}

fn pairing(couple: &CoupleId, expires: u64, purge: u64) -> PairingRecord {
    PairingRecord {
        couple: couple.clone(),
        token_hash: PairingToken::generate().hash(),
        expires_at: at(expires),
        purge_at: at(purge),
        failed_attempts: 0,
        consumed: false,
        unconfirmed: false,
    }
}

/// The pairing `initiate` opens with a new couple.
fn founding(couple: &CoupleId, expires: u64) -> PairingRecord {
    PairingRecord {
        unconfirmed: true,
        ..pairing(couple, expires, expires + 100)
    }
}

fn signal(couple: &CoupleId, to: &str, seq: u64, expires: u64) -> StoredSignal {
    StoredSignal {
        couple: couple.clone(),
        to: DeviceId::parse(to).expect("valid id"),
        seq: Seq(seq),
        id: SignalId::generate(),
        from: DeviceId::parse("sender").expect("valid id"),
        payload: format!("{{\"n\":{seq}}}"),
        created_at: at(1_000),
        expires_at: at(expires),
    }
}

fn backup(couple: &CoupleId, created: u64) -> BackupRecord {
    BackupRecord {
        couple: couple.clone(),
        id: BackupId::generate(),
        size: created,
        sha256: Sha256Digest::from_bytes([0xab; 32]),
        meta: Some("{\"v\":1}".to_owned()),
        uploaded_by: DeviceId::parse("a").expect("valid id"),
        created_at: at(created),
    }
}

/// Runs every metadata check against `store`.
pub async fn store_suite(store: &dyn Store) {
    devices_and_pairings(store).await;
    epochs_increase(store).await;
    mailboxes(store).await;
    batches(store).await;
    purge(store).await;
    expire_unconfirmed(store).await;
    backups(store).await;
    uploads(store).await;
}

async fn devices_and_pairings(store: &dyn Store) {
    let (c, other) = (CoupleId::generate(), CoupleId::generate());
    let a = device(&c, "a");
    store
        .save_device_and_pairing(&a, &pairing(&c, 5_000, 9_000))
        .await
        .expect("save");
    store
        .save_device_and_pairing(&device(&other, "a"), &pairing(&other, 5_000, 9_000))
        .await
        .expect("save");
    let mut consumed = pairing(&c, 5_000, 9_000);
    consumed.consumed = true;
    consumed.failed_attempts = 2;
    store
        .save_device_and_pairing(&device(&c, "b"), &consumed)
        .await
        .expect("save");

    let got = store
        .device(&c, &a.device)
        .await
        .expect("read")
        .expect("device exists");
    assert_eq!((got.device, got.nonce), (a.device.clone(), a.nonce));
    assert!(
        store
            .device(&c, &DeviceId::parse("zed").expect("id"))
            .await
            .expect("read")
            .is_none()
    );
    let mut ids: Vec<_> = store
        .devices(&c)
        .await
        .expect("read")
        .into_iter()
        .map(|d| d.device.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"], "devices of one couple only");

    // Revocation removes exactly one device, and may be repeated.
    let zed = device(&c, "zed");
    store
        .save_device_and_pairing(&zed, &consumed)
        .await
        .expect("save");
    store.revoke_device(&c, &zed.device).await.expect("revoke");
    store
        .revoke_device(&c, &zed.device)
        .await
        .expect("revoking twice is fine");
    assert!(store.device(&c, &zed.device).await.expect("read").is_none());
    assert_eq!(store.devices(&c).await.expect("read").len(), 2);
    // It closes the couple's open pairing too, and no other couple's.
    assert!(
        store.pairing(&c).await.expect("read").is_none(),
        "revocation closes the couple's pairing"
    );
    assert!(store.pairing(&other).await.expect("read").is_some());
    store.put_pairing(&consumed).await.expect("put");

    let p = store
        .pairing(&c)
        .await
        .expect("read")
        .expect("pairing exists");
    assert!(
        p.consumed && p.failed_attempts == 2,
        "the newer pairing replaced the older"
    );
    assert!(p.token_hash.matches(&consumed.token_hash));
    let mut bumped = p.clone();
    bumped.failed_attempts = 3;
    store.put_pairing(&bumped).await.expect("put");
    assert_eq!(
        store
            .pairing(&c)
            .await
            .expect("read")
            .expect("exists")
            .failed_attempts,
        3
    );
    assert!(
        store
            .pairing(&CoupleId::generate())
            .await
            .expect("read")
            .is_none()
    );
}

async fn epochs_increase(store: &dyn Store) {
    let c = CoupleId::generate();
    let first = store.next_epoch(&c).await.expect("epoch");
    let second = store.next_epoch(&c).await.expect("epoch");
    assert!(first >= 1 && second > first);
    assert!(
        store
            .next_epoch(&CoupleId::generate())
            .await
            .expect("epoch")
            >= 1
    );
}

async fn mailboxes(store: &dyn Store) {
    let (c, other) = (CoupleId::generate(), CoupleId::generate());
    store
        .put_signals(&[
            signal(&c, "b", 3, 10_000),
            signal(&c, "a", 7, 10_000),
            signal(&c, "b", 1, 10_000),
            signal(&c, "b", 2, 2_000),
        ])
        .await
        .expect("put");
    store
        .put_signals(&[signal(&other, "b", 1, 10_000)])
        .await
        .expect("put");
    let pending = store.pending_signals(&c, at(3_000)).await.expect("read");
    let keys: Vec<_> = pending
        .iter()
        .map(|s| (s.to.to_string(), s.seq.0))
        .collect();
    assert_eq!(
        keys,
        [
            ("a".to_owned(), 7),
            ("b".to_owned(), 1),
            ("b".to_owned(), 3)
        ],
        "ordered by device and seq, expired hidden"
    );
    assert_eq!(pending[2].payload, "{\"n\":3}");

    let b = DeviceId::parse("b").expect("id");
    store.ack_signals(&c, &b, Seq(2)).await.expect("ack");
    // A late write of an acknowledged signal stays hidden.
    store
        .put_signals(&[signal(&c, "b", 1, 10_000)])
        .await
        .expect("put");
    // A lower ack does not lower the watermark.
    store.ack_signals(&c, &b, Seq(1)).await.expect("ack");
    let keys: Vec<_> = store
        .pending_signals(&c, at(3_000))
        .await
        .expect("read")
        .iter()
        .map(|s| (s.to.to_string(), s.seq.0))
        .collect();
    assert_eq!(keys, [("a".to_owned(), 7), ("b".to_owned(), 3)]);
    assert_eq!(
        store
            .pending_signals(&other, at(3_000))
            .await
            .expect("read")
            .len(),
        1
    );
}

/// `signal` as a batch writes it.
fn signal_write(couple: &CoupleId, to: &str, seq: u64) -> SignalWrite {
    signal(couple, to, seq, 10_000).try_into().unwrap()
}

/// `write_batch` applies its writes in order, each as its single-write method would, and
/// answers one outcome per write.
async fn batches(store: &dyn Store) {
    assert!(store.write_batch(Vec::new()).await.is_empty());
    let c = CoupleId::generate();
    let b = DeviceId::parse("b").expect("id");
    let ack = |up_to| Write::Ack {
        couple: c.clone(),
        device: b.clone(),
        up_to: Seq(up_to),
    };
    let outcomes = store
        .write_batch(vec![
            Write::Signals((1..=3).map(|seq| signal_write(&c, "b", seq)).collect()),
            ack(2),
            Write::Signals(vec![signal_write(&c, "b", 4)]),
            Write::DeviceAndPairing {
                device: device(&c, "a"),
                pairing: pairing(&c, 5_000, 9_000),
            },
        ])
        .await;
    assert_eq!(outcomes.len(), 4);
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let pending = store.pending_signals(&c, at(3_000)).await.expect("read");
    let seqs: Vec<_> = pending.iter().map(|s| s.seq.0).collect();
    assert_eq!(seqs, [3, 4], "the ack removed what was put before it");
    assert_eq!(pending[0].payload, "{\"n\":3}");
    assert_eq!(store.devices(&c).await.expect("read").len(), 1);
    assert!(store.pairing(&c).await.expect("read").is_some());

    // An ack followed by a late put of what it covers: the put stays hidden.
    let outcomes = store
        .write_batch(vec![ack(4), Write::Signals(vec![signal_write(&c, "b", 3)])])
        .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let pending = store.pending_signals(&c, at(3_000)).await.expect("read");
    assert!(pending.is_empty(), "{pending:?}");
}

async fn purge(store: &dyn Store) {
    let c = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&c, "a"), &pairing(&c, 100, 200))
        .await
        .expect("save");
    store
        .put_signals(&[signal(&c, "a", 1, 100), signal(&c, "a", 2, 1_000_000)])
        .await
        .expect("put");
    let purged = store.purge_expired(at(150)).await.expect("purge");
    assert!(
        purged.signals >= 1,
        "the expired signal is counted: {purged:?}"
    );
    let left: Vec<_> = store
        .pending_signals(&c, at(0))
        .await
        .expect("read")
        .iter()
        .map(|s| s.seq.0)
        .collect();
    assert_eq!(left, [2], "expired signals are deleted, live ones kept");
    assert!(
        store.pairing(&c).await.expect("read").is_some(),
        "kept until purge_at"
    );
    let purged = store.purge_expired(at(250)).await.expect("purge");
    assert!(purged.pairings >= 1, "the pairing is counted: {purged:?}");
    assert!(store.pairing(&c).await.expect("read").is_none());
    assert_eq!(
        store.devices(&c).await.expect("read").len(),
        1,
        "devices do not expire"
    );
}

async fn expire_unconfirmed(store: &dyn Store) {
    // Never confirmed, pairing expired at 100: the couple goes, with its mailbox and epoch.
    let lonely = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&lonely, "a"), &founding(&lonely, 100))
        .await
        .expect("save");
    store
        .put_signals(&[signal(&lonely, "a", 1, 1_000_000)])
        .await
        .expect("put");
    store
        .ack_signals(&lonely, &DeviceId::parse("a").expect("id"), Seq(0))
        .await
        .expect("ack");
    store.next_epoch(&lonely).await.expect("epoch");
    store.next_epoch(&lonely).await.expect("epoch");
    // Never confirmed, pairing still open at 150: kept.
    let open = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&open, "a"), &founding(&open, 200))
        .await
        .expect("save");
    // Confirmed (two devices), and a pairing opened later that expired: kept.
    let confirmed = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&confirmed, "a"), &founding(&confirmed, 100))
        .await
        .expect("save");
    let mut joined = pairing(&confirmed, 100, 200);
    joined.consumed = true;
    store
        .save_device_and_pairing(&device(&confirmed, "b"), &joined)
        .await
        .expect("save");
    store
        .put_pairing(&pairing(&confirmed, 100, 200))
        .await
        .expect("put");
    // One device but a backup: kept.
    let backed_up = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&backed_up, "a"), &founding(&backed_up, 100))
        .await
        .expect("save");
    store
        .insert_backup(&backup(&backed_up, 50))
        .await
        .expect("insert");
    // Two devices and a pairing still marked unconfirmed (not written by this server): kept.
    let two = CoupleId::generate();
    store
        .save_device_and_pairing(&device(&two, "a"), &founding(&two, 100))
        .await
        .expect("save");
    store
        .save_device_and_pairing(&device(&two, "b"), &founding(&two, 100))
        .await
        .expect("save");

    let expired = store
        .expire_unconfirmed_couples(at(150))
        .await
        .expect("expire");
    let ours: Vec<_> = expired
        .iter()
        .filter(|e| [&lonely, &open, &confirmed, &backed_up, &two].contains(&&e.couple))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "only the never-confirmed couple: {expired:?}"
    );
    assert_eq!(ours[0].couple, lonely);
    assert_eq!(ours[0].devices, [DeviceId::parse("a").expect("id")]);
    assert!(store.devices(&lonely).await.expect("read").is_empty());
    assert!(store.pairing(&lonely).await.expect("read").is_none());
    assert!(
        store
            .pending_signals(&lonely, at(0))
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store.next_epoch(&lonely).await.expect("epoch"),
        1,
        "the epoch went too"
    );
    for (kept, devices) in [(&open, 1), (&confirmed, 2), (&backed_up, 1), (&two, 2)] {
        assert_eq!(
            store.devices(kept).await.expect("read").len(),
            devices,
            "a couple that does not qualify keeps its devices"
        );
        assert!(store.pairing(kept).await.expect("read").is_some());
    }
    // Once the open one expires too, it goes; a second call finds nothing more of ours.
    let expired = store
        .expire_unconfirmed_couples(at(250))
        .await
        .expect("expire");
    assert!(expired.iter().any(|e| e.couple == open));
    assert!(!expired.iter().any(|e| e.couple == lonely));
    assert!(store.devices(&open).await.expect("read").is_empty());
}

async fn uploads(store: &dyn Store) {
    let (c, other) = (CoupleId::generate(), CoupleId::generate());
    let upload = |couple: &CoupleId, expires: u64| UploadRecord {
        couple: couple.clone(),
        id: UploadId::generate(),
        device: DeviceId::parse("a").expect("valid id"),
        length: 100,
        parts: Vec::new(),
        meta: Some("{\"v\":1}".to_owned()),
        sha256: None,
        completed: None,
        version: 0,
        created_at: at(1_000),
        expires_at: at(expires),
    };
    let (u, soon, elsewhere) = (upload(&c, 9_000), upload(&c, 2_000), upload(&other, 2_000));
    for x in [&u, &soon, &elsewhere] {
        store.create_upload(x).await.expect("create");
    }
    assert_eq!(
        store.upload(&c, &u.id).await.expect("read"),
        Some(u.clone())
    );
    assert_eq!(
        store.upload(&other, &u.id).await.expect("read"),
        None,
        "per couple"
    );
    let mut grown = u.clone();
    grown.parts.push(UploadPart {
        blob: BackupId::generate(),
        size: 40,
    });
    grown.version = 1;
    assert!(store.update_upload(&grown, 0).await.expect("update"));
    assert!(
        !store.update_upload(&grown, 0).await.expect("update"),
        "the version moved: a second PATCH at offset 0 loses"
    );
    assert_eq!(
        store
            .upload(&c, &u.id)
            .await
            .expect("read")
            .map(|r| r.offset()),
        Some(40)
    );
    let mut ids: Vec<_> = store
        .uploads(&c)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    let mut want = vec![u.id.clone(), soon.id.clone()];
    want.sort();
    assert_eq!(ids, want, "one couple only");
    let expired: Vec<_> = store
        .expired_uploads(at(3_000), 1_000)
        .await
        .expect("expired")
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert!(expired.contains(&soon.id) && expired.contains(&elsewhere.id));
    assert!(!expired.contains(&u.id));
    assert!(
        !store.delete_upload(&u).await.expect("delete"),
        "version 0 is gone: a PATCH changed it meanwhile"
    );
    assert!(store.delete_upload(&grown).await.expect("delete"));
    assert!(
        !store.delete_upload(&grown).await.expect("delete"),
        "deleting twice is fine, and says so"
    );
    assert_eq!(store.upload(&c, &u.id).await.expect("read"), None);
    assert!(
        !store.update_upload(&grown, 1).await.expect("update"),
        "gone"
    );
}

async fn backups(store: &dyn Store) {
    let (c, other) = (CoupleId::generate(), CoupleId::generate());
    let (old, new, newest) = (backup(&c, 1_000), backup(&c, 2_000), backup(&c, 3_000));
    for b in [&new, &old, &newest, &backup(&other, 5_000)] {
        store.insert_backup(b).await.expect("insert");
    }
    assert_eq!(
        store.backups(&c).await.expect("read"),
        [newest.clone(), new.clone(), old.clone()],
        "newest first, one couple only"
    );
    store.delete_backup(&c, &new.id).await.expect("delete");
    store
        .delete_backup(&c, &new.id)
        .await
        .expect("deleting twice is fine");
    assert_eq!(store.backups(&c).await.expect("read"), [newest, old]);
    assert!(
        store
            .backups(&CoupleId::generate())
            .await
            .expect("read")
            .is_empty()
    );
}

fn chunks(total: usize, chunk: usize) -> (ByteStream, Vec<u8>) {
    let data: Vec<u8> = (0..total)
        .map(|i| u8::try_from(i * 7 % 251).unwrap_or(0))
        .collect();
    let parts: Vec<std::io::Result<Bytes>> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    (Box::pin(futures_util::stream::iter(parts)), data)
}

async fn read_all(blobs: &dyn BlobStore, key: &BlobKey) -> Option<(u64, Vec<u8>)> {
    let blob = blobs.get(key).await.expect("get")?;
    let mut body = blob.body;
    let mut out = Vec::new();
    while let Some(chunk) = body.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    Some((blob.len, out))
}

fn key(couple: &CoupleId) -> BlobKey {
    BlobKey {
        couple: couple.clone(),
        backup: BackupId::generate(),
    }
}

/// Runs every blob check against `blobs`, including one blob larger than an S3 part (12 MiB).
pub async fn blob_suite(blobs: &dyn BlobStore) {
    let c = CoupleId::generate();
    for (size, chunk) in [
        (0, 1),
        (1, 1),
        (300_000, 65_536),
        (12 * 1024 * 1024 + 3, 1 << 20),
    ] {
        let k = key(&c);
        let (body, data) = chunks(size, chunk);
        blobs.put(&k, body).await.expect("put");
        let (len, got) = read_all(blobs, &k).await.expect("blob exists");
        assert_eq!(len, size as u64);
        assert!(got == data, "blob of {size} bytes round-trips");
        blobs.delete(&k).await.expect("delete");
        assert!(read_all(blobs, &k).await.is_none(), "deleted");
        blobs.delete(&k).await.expect("deleting twice is fine");
    }

    // A stream that fails half way leaves nothing behind.
    let k = key(&c);
    let parts: Vec<std::io::Result<Bytes>> = vec![
        Ok(Bytes::from(vec![1u8; 6 * 1024 * 1024])),
        Err(std::io::Error::other("client went away")),
    ];
    let failed = blobs
        .put(&k, Box::pin(futures_util::stream::iter(parts)))
        .await;
    assert!(matches!(failed, Err(BlobError::Body(_))), "{failed:?}");
    assert!(
        read_all(blobs, &k).await.is_none(),
        "a failed put is invisible"
    );

    let kept = key(&c);
    let (body, _) = chunks(10, 10);
    blobs.put(&kept, body).await.expect("put");
    let listed: Vec<_> = blobs
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.key)
        .filter(|k| k.couple == c)
        .collect();
    assert_eq!(
        listed,
        std::slice::from_ref(&kept),
        "list shows exactly the committed blobs"
    );
    blobs.delete(&kept).await.expect("delete");
}

//! Typed handles over the actors. The front end calls these methods and never builds an
//! actor message or reply port itself; every wait is bounded by `Settings::call_timeout`.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef, MessagingErr, RpcReplyPort, SpawnErr};
use tokio::task::JoinHandle;

use crate::backup::{
    BackupActor, BackupArgs, BackupMsg, Cut, Meter, ORPHAN_AGE, UploadLimits, sweep_orphans,
};
use crate::clock::{Clock, Timestamp};
use crate::error::{BackupError, PairingError, RoomError};
use crate::ids::{BackupId, CoupleId, DeviceId, Seq, SignalId};
use crate::keeper::{Keeper, Slot};
use crate::mailbox::{Payload, Signal};
use crate::metrics::{DomainMetrics, Restarted};
use crate::pairing::{Confirmed, Initiated, PairingActor, PairingArgs, PairingMsg};
use crate::room::{Accepted, ConnId, Connection, Origin, RoomMsg};
use crate::settings::Settings;
use crate::store::measured::Measured;
use crate::store::{
    BackupRecord, Blob, BlobError, BlobKey, BlobStore, ByteStream, DeviceRecord, Purged, Store,
};
use crate::supervisor::{RoomSupervisor, SupervisorArgs, SupervisorMsg, SupervisorStats};
use crate::token::{DeviceToken, PairingToken, SigningSecret, TokenClaims, TokenError};

/// How often expired signals and pairings are deleted from the store.
pub const PURGE_INTERVAL: Duration = Duration::from_mins(1);

/// How a call to an actor can fail before the actor answered.
enum CallFailure<E> {
    /// The actor answered with an error.
    Refused(E),
    /// The actor was gone (stopped or failed) before it took the message: safe to retry.
    Gone,
    /// No answer (in time, or at all): the actor may have acted on it, so never retry.
    NoAnswer,
}

/// Calls an actor, waiting at most `timeout`.
async fn try_call<M, T, E>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
) -> Result<T, CallFailure<E>>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(r)) => r.map_err(CallFailure::Refused),
        // A timeout, or a reply port dropped because the actor failed while handling the
        // message: either way it may have acted on it, so this is never retried.
        Ok(CallResult::Timeout | CallResult::SenderError) => Err(CallFailure::NoAnswer),
        Err(_) => Err(CallFailure::Gone),
    }
}

/// What to do with a room's answer: `None` means the room was gone or closing, so asking the
/// supervisor for a fresh room and trying once more is safe. A timeout is never retried: the
/// room may still act on the first message.
fn settle<T>(r: Result<T, CallFailure<RoomError>>) -> Option<Result<T, RoomError>> {
    match r {
        Ok(v) => Some(Ok(v)),
        Err(CallFailure::Gone | CallFailure::Refused(RoomError::Unavailable)) => None,
        Err(CallFailure::Refused(e)) => Some(Err(e)),
        Err(CallFailure::NoAnswer) => Some(Err(RoomError::Unavailable)),
    }
}

/// Calls an actor, mapping "no answer" to `unavailable`.
async fn call<M, T, E>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
    unavailable: E,
) -> Result<T, E>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    try_call(actor, build, timeout).await.map_err(|f| match f {
        CallFailure::Refused(e) => e,
        CallFailure::Gone | CallFailure::NoAnswer => unavailable,
    })
}

/// Calls the current instance of a kept actor; none running (a restart is failing) is
/// `unavailable` too.
async fn call_kept<M, T, E>(
    slot: &Slot<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
    unavailable: E,
) -> Result<T, E>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    match slot.current() {
        Some(actor) => call(&actor, build, timeout, unavailable).await,
        None => Err(unavailable),
    }
}

/// The running actor tree of one server: the room supervisor, the pairing and backup actors,
/// and the store janitor.
pub struct Domain {
    /// Signaling rooms.
    pub rooms: Rooms,
    /// Pairing and authentication.
    pub pairing: Pairing,
    /// Encrypted backups.
    pub backups: Backups,
    /// Storage health.
    pub storage: Storage,
    keepers: [ActorRef<()>; 2],
    janitor: JoinHandle<()>,
}

impl Domain {
    /// Spawns the tree. Rooms are not named in ractor's global registry, so several trees
    /// (parallel tests) can live in one process. Every storage operation is measured.
    pub async fn start(
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
        secret: SigningSecret,
        settings: Settings,
        clock: Clock,
        metrics: DomainMetrics,
    ) -> Result<Self, SpawnErr> {
        let store: Arc<dyn Store> = Arc::new(Measured::store(store, metrics.clone()));
        let blobs: Arc<dyn BlobStore> = Arc::new(Measured::blobs(blobs, metrics.clone()));
        let (sup, _) = Actor::spawn(
            None,
            RoomSupervisor,
            SupervisorArgs {
                store: Arc::clone(&store),
                settings: settings.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
            },
        )
        .await?;
        let pairing_args = PairingArgs {
            store: Arc::clone(&store),
            secret: secret.clone(),
            settings: settings.clone(),
            clock: clock.clone(),
            rooms: sup.clone(),
        };
        let (pairing_keeper, pairing) =
            Keeper::<PairingActor>::start(pairing_args, metrics.clone(), Restarted::Pairing)
                .await?;
        let backup_args = BackupArgs {
            store: Arc::clone(&store),
            blobs: Arc::clone(&blobs),
            retention: settings.backup_retention,
        };
        let (backup_keeper, backup) =
            Keeper::<BackupActor>::start(backup_args, metrics.clone(), Restarted::Backup).await?;
        clean_after_restart(store.as_ref(), blobs.as_ref()).await;
        let janitor = tokio::spawn(janitor(
            Arc::clone(&store),
            Arc::clone(&blobs),
            clock.clone(),
            metrics,
        ));
        Ok(Self {
            storage: Storage {
                store: Arc::clone(&store),
                blobs: Arc::clone(&blobs),
            },
            backups: Backups {
                actor: backup,
                store: Arc::clone(&store),
                blobs,
                clock,
                limits: UploadLimits {
                    max_bytes: settings.backup_max_bytes,
                    idle: settings.backup_idle_timeout,
                    total: settings.backup_upload_timeout,
                },
                uploads: Arc::new(tokio::sync::Semaphore::new(settings.backup_max_concurrent)),
                timeout: settings.call_timeout,
            },
            rooms: Rooms {
                sup,
                timeout: settings.call_timeout,
            },
            pairing: Pairing {
                actor: pairing,
                store,
                secret,
                timeout: settings.call_timeout,
            },
            keepers: [pairing_keeper, backup_keeper],
            janitor,
        })
    }

    /// Stops every room (each writes what its connected devices have not acknowledged), then
    /// the supervisor and the pairing actor, waiting at most `timeout` for each step.
    pub async fn shutdown(self, timeout: Duration) {
        self.janitor.abort();
        let sup = self.rooms.sup.get_cell();
        sup.stop_children_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await;
        let _ = sup
            .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await;
        for keeper in self.keepers {
            let _ = keeper
                .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
                .await;
        }
    }
}

/// Removes what a previous run left unfinished: partial blob writes and blobs no record
/// publishes. Runs before the server accepts requests, so no upload can be in flight.
async fn clean_after_restart(store: &dyn Store, blobs: &dyn BlobStore) {
    match blobs.clean_partial_writes(None).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed leftovers of interrupted uploads"),
        Err(e) => tracing::warn!(cause = %e, "failed to clean interrupted uploads"),
    }
    if let Err(e) = sweep_orphans(store, blobs, None).await {
        tracing::warn!(cause = %e, "failed to sweep orphaned blobs");
    }
}

/// Every [`PURGE_INTERVAL`]: deletes expired records, and blob leftovers older than
/// [`ORPHAN_AGE`] (younger ones may belong to an upload still running).
async fn janitor(
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    clock: Clock,
    metrics: DomainMetrics,
) {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + PURGE_INTERVAL, PURGE_INTERVAL);
    loop {
        every.tick().await;
        let now = clock.now();
        match store.purge_expired(now).await {
            Ok(purged) => {
                // Stored signals that expired; those that expired in a running room without
                // a stored copy were counted there.
                metrics.signals_expired(purged.signals);
                if purged != Purged::default() {
                    tracing::debug!(
                        signals = purged.signals,
                        pairings = purged.pairings,
                        "purged expired records"
                    );
                }
            }
            Err(e) => tracing::warn!(cause = %e, "failed to purge expired records"),
        }
        let cutoff = Some(Timestamp(now.0.saturating_sub(
            u64::try_from(ORPHAN_AGE.as_millis()).unwrap_or(u64::MAX),
        )));
        match blobs.clean_partial_writes(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed leftovers of unfinished uploads"),
            Err(e) => tracing::warn!(cause = %e, "failed to clean unfinished uploads"),
        }
        if let Err(e) = sweep_orphans(store.as_ref(), blobs.as_ref(), cutoff).await {
            tracing::warn!(cause = %e, "failed to sweep orphaned blobs");
        }
    }
}

/// Handle to the room supervisor: find a couple's room and talk to it.
#[derive(Clone)]
pub struct Rooms {
    sup: ActorRef<SupervisorMsg>,
    timeout: Duration,
}

impl Rooms {
    async fn room(&self, couple: &CoupleId) -> Result<ActorRef<RoomMsg>, RoomError> {
        let couple = couple.clone();
        call(
            &self.sup,
            |reply| SupervisorMsg::GetRoom { couple, reply },
            self.timeout,
            RoomError::Unavailable,
        )
        .await
    }

    /// Calls the couple's room, retrying once on a fresh room (see [`settle`]).
    async fn call_room<T: Send + 'static>(
        &self,
        couple: &CoupleId,
        mut build: impl FnMut(RpcReplyPort<Result<T, RoomError>>) -> RoomMsg,
    ) -> Result<T, RoomError> {
        for _ in 0..2 {
            let room = self.room(couple).await?;
            if let Some(result) = settle(try_call(&room, &mut build, self.timeout).await) {
                return result;
            }
        }
        Err(RoomError::Unavailable)
    }

    /// Connects a socket of `device`, retrying once like [`Rooms::call_room`]. `connect` makes
    /// a fresh [`Connection`] per attempt.
    /// On success the room has queued `joined` and the backlog on the socket.
    pub async fn join(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        last_seq: Option<Seq>,
        mut connect: impl FnMut() -> Connection,
    ) -> Result<RoomLink, RoomError> {
        for _ in 0..2 {
            let room = self.room(couple).await?;
            let conn = connect();
            let conn_id = conn.id;
            let join = |reply| RoomMsg::Join {
                device: device.clone(),
                conn,
                last_seq,
                reply,
            };
            let outcome = try_call(&room, join, self.timeout).await;
            if matches!(outcome, Err(CallFailure::NoAnswer)) {
                // The room may still take the join later: make it drop this socket again.
                let _ = room.cast(RoomMsg::Leave {
                    device: device.clone(),
                    conn: conn_id,
                });
            }
            if let Some(result) = settle(outcome) {
                return result.map(|()| RoomLink {
                    room,
                    device: device.clone(),
                    conn: conn_id,
                });
            }
        }
        Err(RoomError::Unavailable)
    }

    /// REST send: relays live if the recipient is connected, else stores it; answers once the
    /// signal is accepted (durably, for an offline recipient).
    pub async fn send(
        &self,
        couple: &CoupleId,
        from: &DeviceId,
        to: &DeviceId,
        payload: Payload,
    ) -> Result<Accepted, RoomError> {
        let received = std::time::Instant::now();
        self.call_room(couple, |reply| RoomMsg::Send {
            from: from.clone(),
            to: Some(to.clone()),
            payload: payload.clone(),
            id: None,
            origin: Origin::Rest(reply),
            received,
        })
        .await
    }

    /// REST poll: acknowledges up to `after`, returns what is still waiting for `device`.
    pub async fn fetch(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        after: Option<Seq>,
    ) -> Result<Vec<Arc<Signal>>, RoomError> {
        self.call_room(couple, |reply| RoomMsg::Fetch {
            device: device.clone(),
            after,
            reply,
        })
        .await
    }

    /// Rooms running and rooms failed, for `/health` and tests.
    pub async fn stats(&self) -> Result<SupervisorStats, RoomError> {
        match self
            .sup
            .call(SupervisorMsg::Stats, Some(self.timeout))
            .await
        {
            Ok(CallResult::Success(s)) => Ok(s),
            _ => Err(RoomError::Unavailable),
        }
    }

    /// Test hook: makes the couple's room panic.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self, couple: &CoupleId) -> Result<(), RoomError> {
        let room = self.room(couple).await?;
        room.cast(RoomMsg::Panic)
            .map_err(|_| RoomError::Unavailable)
    }
}

/// A joined socket's line to its room: fire-and-forget messages whose answers come back as
/// events on the socket.
#[derive(Debug, Clone)]
pub struct RoomLink {
    room: ActorRef<RoomMsg>,
    device: DeviceId,
    conn: ConnId,
}

/// The room behind a [`RoomLink`] is gone (stopped or failed); the socket must rejoin.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the room is gone; rejoin")]
pub struct RoomGone;

impl<T> From<MessagingErr<T>> for RoomGone {
    fn from(_: MessagingErr<T>) -> Self {
        RoomGone
    }
}

impl RoomLink {
    /// Relays a signal; `accepted` or `error` arrives as an event.
    pub fn send(
        &self,
        to: Option<DeviceId>,
        payload: Payload,
        id: Option<SignalId>,
    ) -> Result<(), RoomGone> {
        Ok(self.room.cast(RoomMsg::Send {
            from: self.device.clone(),
            to,
            payload,
            id,
            origin: Origin::Socket(self.conn),
            received: std::time::Instant::now(),
        })?)
    }

    /// Cumulative acknowledgement.
    pub fn ack(&self, up_to: Seq) -> Result<(), RoomGone> {
        Ok(self.room.cast(RoomMsg::Ack {
            device: self.device.clone(),
            up_to,
        })?)
    }

    /// Leaves the room (also called when the socket closes).
    pub fn leave(&self) {
        let _ = self.room.cast(RoomMsg::Leave {
            device: self.device.clone(),
            conn: self.conn,
        });
    }
}

/// Handle to encrypted backups: streams uploads into the blob store and downloads out of it.
#[derive(Clone)]
pub struct Backups {
    actor: Slot<BackupMsg>,
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    clock: Clock,
    limits: UploadLimits,
    uploads: Arc<tokio::sync::Semaphore>,
    timeout: Duration,
}

/// What an upload declares besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct UploadInfo {
    /// Opaque JSON metadata (already checked by the front end).
    pub meta: Option<String>,
    /// The SHA-256 the client computed, lowercase hex; a mismatch discards the upload.
    pub expected_sha256: Option<String>,
}

impl Backups {
    /// The largest backup accepted.
    #[must_use]
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Streams `body` into storage and publishes it as the couple's latest backup. On any
    /// failure (too large, checksum, client gone, storage) nothing is published and the blob
    /// is deleted.
    pub async fn upload(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        info: UploadInfo,
        body: ByteStream,
    ) -> Result<BackupRecord, BackupError> {
        let _slot = Arc::clone(&self.uploads)
            .try_acquire_owned()
            .map_err(|_| BackupError::Busy)?;
        let key = BlobKey {
            couple: couple.clone(),
            backup: BackupId::generate(),
        };
        let (body, meter) = Meter::wrap(body, self.limits);
        let written = self.blobs.put(&key, body).await;
        let measured = {
            let mut m = meter.lock().map_err(|_| BackupError::StorageUnavailable)?;
            match (written, m.cut_off()) {
                (Ok(()), _) => m.finish(),
                (Err(_), Some(Cut::TooLarge)) => {
                    return Err(BackupError::TooLarge {
                        limit: self.limits.max_bytes,
                    });
                }
                (Err(_), Some(Cut::TooSlow)) => return Err(BackupError::TooSlow),
                (Err(BlobError::Body(_)), None) => return Err(BackupError::Interrupted),
                (Err(BlobError::Store(e)), None) => return Err(e.into()),
            }
        };
        let record = BackupRecord {
            couple: couple.clone(),
            id: key.backup.clone(),
            size: measured.size,
            sha256: measured.sha256,
            meta: info.meta,
            uploaded_by: device.clone(),
            created_at: self.clock.now(),
        };
        if info
            .expected_sha256
            .is_some_and(|want| !want.eq_ignore_ascii_case(&record.sha256))
        {
            if let Err(cause) = self.blobs.delete(&key).await {
                tracing::warn!(cause = %cause, "failed to delete a rejected blob; the sweep will");
            }
            return Err(BackupError::ChecksumMismatch);
        }
        let publish = |reply| BackupMsg::Publish {
            record: record.clone(),
            reply,
        };
        // On a failed or timed-out publish the record may still have been written, so the
        // blob is left alone: if it was never published, the orphan sweep deletes it.
        call_kept(&self.actor, publish, self.timeout, BackupError::Unavailable).await?;
        Ok(record)
    }

    /// Test hook: makes the backup actor panic and waits until its keeper has restarted it.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let mut slot = self.actor.clone();
        if let Some(actor) = slot.current() {
            let _ = actor.cast(BackupMsg::Panic);
            slot.replaced(actor.get_id()).await;
        }
    }

    /// The couple's backups, newest first.
    pub async fn list(&self, couple: &CoupleId) -> Result<Vec<BackupRecord>, BackupError> {
        Ok(self.store.backups(couple).await?)
    }

    /// One backup's record: the latest when `id` is `None`.
    pub async fn find(
        &self,
        couple: &CoupleId,
        id: Option<&BackupId>,
    ) -> Result<BackupRecord, BackupError> {
        self.list(couple)
            .await?
            .into_iter()
            .find(|b| id.is_none_or(|id| *id == b.id))
            .ok_or(BackupError::NotFound)
    }

    /// Opens a published backup's bytes.
    pub async fn open(&self, record: &BackupRecord) -> Result<Blob, BackupError> {
        let key = BlobKey {
            couple: record.couple.clone(),
            backup: record.id.clone(),
        };
        // A blob can vanish between reading the record and opening it (retention): not found.
        self.blobs.get(&key).await?.ok_or(BackupError::NotFound)
    }
}

/// Handle to pairing and authentication.
#[derive(Clone)]
pub struct Pairing {
    actor: Slot<PairingMsg>,
    store: Arc<dyn Store>,
    secret: SigningSecret,
    timeout: Duration,
}

impl Pairing {
    /// Starts a pairing. With the bearer token of a paired device it adds a device to that
    /// device's couple; without, it creates a couple.
    pub async fn initiate(
        &self,
        device: DeviceId,
        bearer: Option<&DeviceToken>,
    ) -> Result<Initiated, PairingError> {
        let by = match bearer {
            Some(t) => Some(self.authenticate(t).await?),
            None => None,
        };
        call_kept(
            &self.actor,
            |reply| PairingMsg::Initiate { device, by, reply },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// Confirms a pairing with its one-time token.
    pub async fn confirm(
        &self,
        couple: CoupleId,
        token: PairingToken,
        device: DeviceId,
    ) -> Result<Confirmed, PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::Confirm {
                couple,
                token,
                device,
                reply,
            },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// Test hook: makes the pairing actor panic and waits until its keeper has restarted it.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let mut slot = self.actor.clone();
        if let Some(actor) = slot.current() {
            let _ = actor.cast(PairingMsg::Panic);
            slot.replaced(actor.get_id()).await;
        }
    }

    /// Revokes `device` of the caller's couple: its token stops working and its socket is
    /// closed at once.
    pub async fn revoke(&self, by: TokenClaims, device: DeviceId) -> Result<(), PairingError> {
        call_kept(
            &self.actor,
            |reply| PairingMsg::Revoke { by, device, reply },
            self.timeout,
            PairingError::Unavailable,
        )
        .await
    }

    /// The devices of a couple.
    pub async fn devices(&self, couple: &CoupleId) -> Result<Vec<DeviceRecord>, PairingError> {
        Ok(self.store.devices(couple).await?)
    }

    /// Verifies a device token: the signature (constant time) and that the device is still
    /// registered with the same nonce. Read-only, so it does not queue behind pairing work.
    pub async fn authenticate(&self, token: &DeviceToken) -> Result<TokenClaims, PairingError> {
        let claims = self.secret.verify(token)?;
        let device = self.store.device(&claims.couple, &claims.device).await?;
        match device {
            Some(d) if d.nonce == claims.nonce => Ok(claims),
            _ => Err(PairingError::InvalidToken(TokenError::BadSignature)),
        }
    }
}

/// Handle to the storage backends' health, for `/health` and logs.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
}

/// One backend's name and whether it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    /// `embedded`, `mongodb`, `files`, `gridfs`, `s3`.
    pub backend: &'static str,
    /// Whether it answered a ping just now.
    pub ok: bool,
}

impl Storage {
    /// Names of the metadata and blob backends.
    #[must_use]
    pub fn backends(&self) -> (&'static str, &'static str) {
        (self.store.backend(), self.blobs.backend())
    }

    /// Pings both backends (each bounded by its own operation timeout).
    pub async fn status(&self) -> (BackendStatus, BackendStatus) {
        let (store, blobs) = tokio::join!(self.store.ping(), self.blobs.ping());
        (
            BackendStatus {
                backend: self.store.backend(),
                ok: store.is_ok(),
            },
            BackendStatus {
                backend: self.blobs.backend(),
                ok: blobs.is_ok(),
            },
        )
    }
}

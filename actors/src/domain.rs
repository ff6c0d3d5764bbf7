//! The running domain of one server: [`Domain::start`] spawns the actor tree (the room
//! supervisor, the kept pairing and backup actors) and the store janitor, and hands out their
//! handles; [`Domain::shutdown`] stops the tree in order, every wait bounded.

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorRef, SpawnErr};
use tokio::task::JoinHandle;

use crate::backup::{Backups, ORPHAN_AGE, sweep_orphans};
use crate::clock::{Clock, Timestamp};
use crate::cluster::Bus;
use crate::metrics::DomainMetrics;
use crate::pairing::Pairing;
use crate::settings::Settings;
use crate::store::group_commit::GroupCommit;
use crate::store::measured::Measured;
use crate::store::{BlobStore, Purged, Storage, Store};
use crate::supervisor::Rooms;
use crate::token::SigningSecret;

/// How often expired signals, pairings and never-confirmed couples are deleted from the store.
const PURGE_INTERVAL: Duration = Duration::from_mins(1);

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
        bus: Option<Arc<dyn Bus>>,
    ) -> Result<Self, SpawnErr> {
        let store: Arc<dyn Store> = Arc::new(Measured::store(store, metrics.clone()));
        let blobs: Arc<dyn BlobStore> = Arc::new(Measured::blobs(blobs, metrics.clone()));
        // One writer for the frequent writes of every room and of pairing (group commit).
        let writer = GroupCommit::start(Arc::clone(&store));
        let rooms =
            Rooms::start(&store, &writer, &settings, &clock, &metrics, bus.as_ref()).await?;
        let (pairing, pairing_keeper) = Pairing::start(
            &store,
            writer,
            secret,
            &settings,
            &clock,
            rooms.clone(),
            &metrics,
        )
        .await?;
        let (backups, backup_keeper) =
            Backups::start(&store, &blobs, &settings, &clock, &metrics).await?;
        // Other instances share the storage in cluster mode: only what is older than any
        // upload can be is theirs to lose.
        let cutoff = bus.is_some().then(|| orphan_cutoff(clock.now()));
        clean_after_restart(store.as_ref(), blobs.as_ref(), cutoff).await;
        let janitor = tokio::spawn(janitor(
            pairing.clone(),
            backups.clone(),
            Arc::clone(&store),
            Arc::clone(&blobs),
            clock,
            metrics,
        ));
        Ok(Self {
            storage: Storage::new(store, blobs),
            backups,
            rooms,
            pairing,
            keepers: [pairing_keeper, backup_keeper],
            janitor,
        })
    }

    /// Stops every room (each writes what its connected devices have not acknowledged), then
    /// the supervisor and the pairing actor, waiting at most `timeout` for each step.
    pub async fn shutdown(self, timeout: Duration) {
        self.janitor.abort();
        self.rooms.stop(timeout).await;
        for keeper in self.keepers {
            let _ = keeper
                .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
                .await;
        }
    }
}
/// Blob leftovers older than this may be removed: no upload runs for [`ORPHAN_AGE`].
fn orphan_cutoff(now: Timestamp) -> Timestamp {
    Timestamp(
        now.0
            .saturating_sub(u64::try_from(ORPHAN_AGE.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// Removes what a previous run left unfinished: partial blob writes and blobs no record
/// publishes. Runs before the server accepts requests, so no upload of this server can be in
/// flight; with `cutoff` (cluster mode, where other instances upload to the same storage)
/// only what is older than it.
async fn clean_after_restart(store: &dyn Store, blobs: &dyn BlobStore, cutoff: Option<Timestamp>) {
    match blobs.clean_partial_writes(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed leftovers of interrupted uploads"),
        Err(e) => tracing::warn!(cause = %e, "failed to clean interrupted uploads"),
    }
    if let Err(e) = sweep_orphans(store, blobs, cutoff).await {
        tracing::warn!(cause = %e, "failed to sweep orphaned blobs");
    }
}

/// Every [`PURGE_INTERVAL`]: deletes never-confirmed couples whose pairing expired (first,
/// while their pairing record still marks them), expired records and unfinished uploads
/// (publishing those whose bytes had all arrived), gives the metadata store's
/// free space back when much of it is free, and deletes blob leftovers older than
/// [`ORPHAN_AGE`] (younger ones may belong to an upload still running).
async fn janitor(
    pairing: Pairing,
    backups: Backups,
    store: Arc<dyn Store>,
    blobs: Arc<dyn BlobStore>,
    clock: Clock,
    metrics: DomainMetrics,
) {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + PURGE_INTERVAL, PURGE_INTERVAL);
    loop {
        every.tick().await;
        match pairing.expire_unconfirmed_couples().await {
            Ok(0) => {}
            Ok(n) => {
                metrics.couples_expired(n);
                tracing::debug!(couples = n, "deleted never-confirmed couples");
            }
            Err(e) => tracing::warn!(cause = %e, "failed to expire never-confirmed couples"),
        }
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
        let started = std::time::Instant::now();
        match store.reclaim_space().await {
            Ok(Some(c)) => tracing::info!(
                before_bytes = c.before,
                after_bytes = c.after,
                millis = started.elapsed().as_millis(),
                "compacted the metadata store"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(cause = %e, "failed to compact the metadata store"),
        }
        match backups.expire_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "deleted expired unfinished uploads"),
            Err(e) => tracing::warn!(cause = %e, "failed to expire unfinished uploads"),
        }
        let cutoff = Some(orphan_cutoff(now));
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

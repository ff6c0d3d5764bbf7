//! The room's background persistence. Signals for devices that are not connected, and
//! acknowledgements that reach the store, are written in tasks of their own, off the room's
//! hot path; a signal write's outcome comes back to the room as [`RoomMsg::Persisted`].
//! [`Writes`] counts the signal writes in flight: a room with one is not idle, and on stop it
//! cannot trust which signals are marked as stored.

use std::sync::Arc;

use ractor::ActorRef;

use super::{Accepted, Origin, RoomMsg};
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::mailbox::Signal;
use crate::store::{Store, StoredSignal};

/// A batch of signals being written for offline recipients, and who waits for it.
#[derive(Debug)]
pub(crate) struct PersistJob {
    /// Each recipient and the signal written to its mailbox.
    pub(super) signals: Vec<(DeviceId, Arc<Signal>)>,
    /// The sender to answer once the write is done; `None` for a flush nobody waits for.
    pub(super) waiter: Option<Waiter>,
}

/// The sender waiting for a write before it is told "accepted".
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) from: DeviceId,
    pub(super) origin: Origin,
    pub(super) accepted: Accepted,
    /// The id the client gave: a socket hears `accepted` only for signals that carried one.
    pub(super) client_id: Option<SignalId>,
    pub(super) dedupe_key: Option<(DeviceId, SignalId)>,
}

/// Writes to the store on the room's behalf, and how many signal writes are in flight.
pub(super) struct Writes {
    store: Arc<dyn Store>,
    couple: CoupleId,
    in_flight: usize,
}

impl Writes {
    pub(super) fn new(store: Arc<dyn Store>, couple: CoupleId) -> Self {
        Self {
            store,
            couple,
            in_flight: 0,
        }
    }

    /// Whether a signal write has not reported back yet.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Writes signals in a task of its own; the result comes back as [`RoomMsg::Persisted`],
    /// which the room answers with [`Writes::finished`] first.
    pub(super) fn spawn_write(&mut self, me: &ActorRef<RoomMsg>, job: PersistJob) {
        self.in_flight += 1;
        let records = self.records(&job.signals);
        let store = Arc::clone(&self.store);
        let couple = self.couple.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let ok = match store.put_signals(&records).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(couple_id = %couple, cause = %e, "failed to persist signals");
                    false
                }
            };
            // The room may be gone (panic); the write stands and is loaded by its successor.
            let _ = me.cast(RoomMsg::Persisted { job, ok });
        });
    }

    /// A write started by [`Writes::spawn_write`] has reported back.
    pub(super) fn finished(&mut self) {
        self.in_flight -= 1;
    }

    /// Records in the background that `device` has everything up to `up_to`.
    pub(super) fn spawn_ack(&self, device: &DeviceId, up_to: Seq) {
        let store = Arc::clone(&self.store);
        let (couple, device) = (self.couple.clone(), device.clone());
        tokio::spawn(async move {
            if let Err(e) = store.ack_signals(&couple, &device, up_to).await {
                tracing::warn!(couple_id = %couple, cause = %e, "failed to record ack; signals may be redelivered");
            }
        });
    }

    /// Writes signals and waits for it: the room's last write, when it stops.
    pub(super) async fn flush(&self, signals: &[(DeviceId, Arc<Signal>)]) {
        let records = self.records(signals);
        if let Err(e) = self.store.put_signals(&records).await {
            tracing::error!(couple_id = %self.couple, cause = %e, "failed to flush mailboxes on stop");
        }
    }

    fn records(&self, signals: &[(DeviceId, Arc<Signal>)]) -> Vec<StoredSignal> {
        signals
            .iter()
            .map(|(to, s)| StoredSignal {
                couple: self.couple.clone(),
                to: to.clone(),
                seq: s.seq,
                id: s.id.clone(),
                from: s.from.clone(),
                payload: s.payload.as_str().to_owned(),
                created_at: s.created_at,
                expires_at: s.expires_at,
            })
            .collect()
    }
}

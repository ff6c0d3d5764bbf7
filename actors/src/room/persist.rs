//! The room's background persistence. Signals for devices that are not connected, and
//! acknowledgements that reach the store, are queued on the domain's one writer
//! ([`GroupCommit`], which commits them in batches), off the room's hot path; a signal
//! write's outcome comes back to the room as [`RoomMsg::Persisted`].
//! [`Writes`] counts the signal writes in flight: a room with one is not idle, and on stop it
//! cannot trust which signals are marked as stored.

use std::sync::Arc;

use ractor::ActorRef;

use super::{Accepted, Origin, RoomMsg};
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::mailbox::Signal;
use crate::store::group_commit::{Done, GroupCommit};
use crate::store::{SignalWrite, Write};

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

/// Writes to the store on the room's behalf, through the domain's one writer
/// ([`GroupCommit`]), and how many signal writes are in flight.
///
/// The room's handlers are synchronous: they only note writes in `outbox`, in the order they
/// happen, and [`Writes::submit`] queues them on the writer after each message. A full writer
/// queue therefore holds the room (backpressure) instead of piling up tasks, and the room's
/// writes reach the store in the order it made them.
pub(super) struct Writes {
    writer: GroupCommit,
    couple: CoupleId,
    in_flight: usize,
    outbox: Vec<(Write, Done)>,
}

impl Writes {
    pub(super) fn new(writer: GroupCommit, couple: CoupleId) -> Self {
        Self {
            writer,
            couple,
            in_flight: 0,
            outbox: Vec::new(),
        }
    }

    /// Whether a signal write has not reported back yet.
    pub(super) fn in_flight(&self) -> bool {
        self.in_flight > 0
    }

    /// Writes signals; the result comes back as [`RoomMsg::Persisted`], which the room answers
    /// with [`Writes::finished`] first.
    pub(super) fn write(&mut self, me: &ActorRef<RoomMsg>, job: PersistJob) {
        self.in_flight += 1;
        let write = Write::Signals(self.records(&job.signals));
        let couple = self.couple.clone();
        let me = me.clone();
        let done: Done = Box::new(move |outcome| {
            let ok = match outcome {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(couple_id = %couple, cause = %e, "failed to persist signals");
                    false
                }
            };
            // The room may be gone (panic); the write stands and is loaded by its successor.
            let _ = me.cast(RoomMsg::Persisted { job, ok });
        });
        self.outbox.push((write, done));
    }

    /// A write started by [`Writes::write`] has reported back.
    pub(super) fn finished(&mut self) {
        self.in_flight -= 1;
    }

    /// Records that `device` has everything up to `up_to`.
    pub(super) fn ack(&mut self, device: &DeviceId, up_to: Seq) {
        let couple = self.couple.clone();
        let write = Write::Ack {
            couple: couple.clone(),
            device: device.clone(),
            up_to,
        };
        let done: Done = Box::new(move |outcome| {
            if let Err(e) = outcome {
                tracing::warn!(couple_id = %couple, cause = %e, "failed to record ack; signals may be redelivered");
            }
        });
        self.outbox.push((write, done));
    }

    /// Queues the writes noted since the last call, in order, waiting while the writer's
    /// queue is full.
    pub(super) async fn submit(&mut self) {
        for (write, done) in std::mem::take(&mut self.outbox) {
            self.writer.submit(write, done).await;
        }
    }

    /// Writes signals and waits for it (after what is still to be submitted): the room's last
    /// write, when it stops.
    pub(super) async fn flush(&mut self, signals: &[(DeviceId, Arc<Signal>)]) {
        self.submit().await;
        let write = Write::Signals(self.records(signals));
        if let Err(e) = self.writer.write(write).await {
            tracing::error!(couple_id = %self.couple, cause = %e, "failed to flush mailboxes on stop");
        }
    }

    /// The records of `signals`, sharing them (no copy of a payload).
    fn records(&self, signals: &[(DeviceId, Arc<Signal>)]) -> Vec<SignalWrite> {
        signals
            .iter()
            .map(|(to, s)| SignalWrite {
                couple: self.couple.clone(),
                to: to.clone(),
                signal: Arc::clone(s),
            })
            .collect()
    }
}

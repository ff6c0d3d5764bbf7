//! Group commit: the one writer of a domain's frequent writes (signals for offline devices,
//! acknowledgements, pairings). Rooms and the pairing actor queue their writes here; a single
//! task takes everything queued (up to [`MAX_BATCH_WRITES`] writes or [`MAX_BATCH_BYTES`] of
//! payload), hands it to [`Store::write_batch`] (on the embedded store: one transaction, one
//! fsync, one blocking thread), and answers every writer. While one batch commits the next one
//! gathers, so a burst of writes (a mass disconnect) costs a few commits, not one each.
//!
//! Bounded: the queue holds at most [`QUEUE_WRITES`] writes; a writer that finds it full waits
//! for room (backpressure), so a storm grows neither threads nor memory without limit. The
//! queue is FIFO and batches are applied in order, one at a time, so what one writer queues
//! is applied in the order it was queued: an ack is never overtaken by an older put.
//!
//! Pairings have a lane of their own, drained first into each batch: a couple pairing during
//! a storm waits for at most the batch being committed, not for the whole backlog of signal
//! writes (stormbench: a fresh pair+join+relay waited up to 1.3 s behind a mass disconnect).
//! The lanes touch different records (a device exists before any signal is written for it),
//! so their relative order does not matter.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError, Write};

/// Most writes waiting for the writer; beyond it, writers wait.
pub(crate) const QUEUE_WRITES: usize = 1024;
/// Most writes committed together.
pub(crate) const MAX_BATCH_WRITES: usize = 512;
/// Payload bytes after which a batch takes no more writes (it may end up to one write, at most
/// a mailbox's 1 MiB, over): what one transaction holds in memory until it commits, and how
/// long a write outside the writer (a new room's epoch) may wait for redb's lock. At 8 MiB a
/// fresh pair+join+relay waited up to 0.54 s during a mass disconnect, at 2 MiB 0.15 s
/// (docs/benchmarks.md).
pub(crate) const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// What runs once a write is committed (or failed). It runs on the writer's task: it must
/// only hand the outcome on (a reply, a message), never wait.
pub(crate) type Done = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A write and who hears its outcome.
struct Queued {
    write: Write,
    done: Done,
}

/// Handle to the writer. Cheap to clone; the writer stops when the last handle is dropped,
/// after committing what was queued.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<Queued>,
    /// Pairings ([`Write::DeviceAndPairing`]), taken before the queue.
    pairings: mpsc::Sender<Queued>,
}

impl GroupCommit {
    /// Starts the writer over `store`, with a queue of [`QUEUE_WRITES`].
    pub(crate) fn start(store: Arc<dyn Store>) -> Self {
        Self::with_queue(store, QUEUE_WRITES)
    }

    /// Starts the writer with a queue of `capacity` writes.
    pub(crate) fn with_queue(store: Arc<dyn Store>, capacity: usize) -> Self {
        let (queue, rx) = mpsc::channel(capacity);
        let (pairings, pairings_rx) = mpsc::channel(capacity);
        tokio::spawn(run(store, pairings_rx, rx));
        Self { queue, pairings }
    }

    /// Queues a write, waiting while the queue is full; `done` hears its outcome. Writes
    /// queued by one caller, one after the other, are applied in that order.
    pub(crate) async fn submit(&self, write: Write, done: Done) {
        let lane = match write {
            Write::DeviceAndPairing { .. } => &self.pairings,
            Write::Signals(_) | Write::Ack { .. } => &self.queue,
        };
        if let Err(mpsc::error::SendError(q)) = lane.send(Queued { write, done }).await {
            (q.done)(Err(stopped()));
        }
    }

    /// Queues a write and waits until it is committed.
    pub(crate) async fn write(&self, write: Write) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.submit(
            write,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        )
        .await;
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the storage writer stopped".to_owned())
}

/// The writer: one batch at a time, pairings first, until every handle is gone and both
/// lanes are empty.
async fn run(
    store: Arc<dyn Store>,
    mut pairings: mpsc::Receiver<Queued>,
    mut rx: mpsc::Receiver<Queued>,
) {
    loop {
        let first = tokio::select! {
            biased;
            Some(q) = pairings.recv() => q,
            Some(q) = rx.recv() => q,
            else => break,
        };
        let mut bytes = first.write.payload_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = pairings.try_recv().or_else(|_| rx.try_recv()) else {
                break;
            };
            bytes += next.write.payload_bytes();
            batch.push(next);
        }
        let (writes, dones): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|q| (q.write, q.done)).unzip();
        let outcomes = store.write_batch(writes).await;
        debug_assert_eq!(outcomes.len(), dones.len(), "one outcome per write");
        // A backend that answered fewer outcomes than writes leaves nobody waiting forever.
        let mut outcomes = outcomes.into_iter();
        for done in dones {
            done(outcomes.next().unwrap_or_else(|| Err(stopped())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{SignalWrite, StoredSignal};

    use crate::clock::Timestamp;
    use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
    use crate::mailbox::{Payload, Signal};

    fn signal_write(couple: &CoupleId, seq: u64) -> SignalWrite {
        SignalWrite {
            couple: couple.clone(),
            to: DeviceId::parse("b").unwrap(),
            signal: Arc::new(Signal {
                seq: Seq(seq),
                id: SignalId::parse(format!("s{seq}")).unwrap(),
                from: DeviceId::parse("a").unwrap(),
                payload: Payload::parse(format!("{{\"n\":{seq}}}")).unwrap(),
                created_at: Timestamp(0),
                expires_at: Timestamp(1_000),
            }),
        }
    }

    /// Puts and acks queued in order by one writer come out in that order, across batches:
    /// nothing acknowledged comes back, and the answers arrive in queue order.
    #[tokio::test]
    async fn writes_are_applied_and_answered_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        // A queue of 2, so the writer commits several batches and writers wait for room.
        let writer = GroupCommit::with_queue(Arc::clone(&store), 2);
        let c = CoupleId::parse("c").unwrap();
        let b = DeviceId::parse("b").unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        for seq in 1..=20 {
            let ack = Write::Ack {
                couple: c.clone(),
                device: b.clone(),
                up_to: Seq(seq),
            };
            for (n, write) in [
                (seq * 2 - 1, Write::Signals(vec![signal_write(&c, seq)])),
                (seq * 2, ack),
            ] {
                let tx = tx.clone();
                let done: Done = Box::new(move |r| {
                    let _ = tx.send((n, r.is_ok()));
                });
                writer.submit(write, done).await;
            }
        }
        writer
            .submit(Write::Signals(vec![signal_write(&c, 21)]), Box::new(drop))
            .await;
        writer.write(Write::Signals(vec![])).await.unwrap();
        drop(tx);
        let mut answered = Vec::new();
        while let Some((n, ok)) = rx.recv().await {
            assert!(ok);
            answered.push(n);
        }
        assert_eq!(answered, (1..=40).collect::<Vec<_>>());
        let left: Vec<StoredSignal> = store.pending_signals(&c, Timestamp(0)).await.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(
            (left[0].seq, left[0].payload.as_str()),
            (Seq(21), "{\"n\":21}")
        );
    }
}

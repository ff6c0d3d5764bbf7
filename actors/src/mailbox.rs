//! One device's ordered mailbox: signals wait here, by sequence number, until the device
//! acknowledges them or they expire. Pure data; the room actor owns one per device.
//!
//! A signal already handed to the device's live socket is kept for a resume, but never
//! makes a sender fail: when the mailbox is at its bound, the oldest delivered signals make
//! room (they are *evicted*), and the mailbox remembers the newest seq it evicted, so a
//! resume from an older `lastSeq` is told that it did not recover everything. Only a backlog
//! of never-delivered signals fills a mailbox (docs/protocol.md §5.4).

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::clock::Timestamp;
use crate::ids::{DeviceId, Seq, SignalId};

/// A signal's opaque payload: one JSON value, exactly as the sender wrote it. Checked once,
/// where it comes in (or is read back from the store); every delivery writes it out as it is,
/// without parsing it again. A broadcast's recipients share it through the `Arc<Signal>`.
#[derive(Debug, Clone)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// Takes JSON the front end has already parsed (no second check).
    #[must_use]
    pub fn new(json: Box<RawValue>) -> Self {
        Self(json)
    }

    /// Checks that `text` is one JSON value.
    ///
    /// # Errors
    /// The JSON parser's error when it is not.
    pub fn parse(text: impl Into<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.into()).map(Self)
    }

    /// The JSON value, to be written out unchanged.
    #[must_use]
    pub fn as_raw(&self) -> &RawValue {
        &self.0
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Serialized size in bytes: what the payload and mailbox bounds count.
    #[must_use]
    pub fn len(&self) -> usize {
        self.as_str().len()
    }

    /// Whether the payload text is empty (never true for valid JSON).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.as_str().is_empty()
    }
}

/// Payloads are equal when their text is: the bytes are what is relayed.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Payload {}

/// A signal as delivered: immutable and shared between the mailboxes of a broadcast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    /// Position in the recipient's mailbox.
    pub seq: Seq,
    /// The id the sender gave, or one the server chose.
    pub id: SignalId,
    /// The sending device.
    pub from: DeviceId,
    /// The opaque payload.
    pub payload: Payload,
    /// When the server accepted it.
    pub created_at: Timestamp,
    /// When it stops being deliverable.
    pub expires_at: Timestamp,
}

/// A mailbox slot.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The signal.
    pub signal: Arc<Signal>,
    /// Whether a copy is (or is being) written to the store, so an ack must reach the store too.
    pub on_disk: bool,
    /// Whether it was handed to the device's live socket (so it may be evicted for room).
    pub delivered: bool,
}

/// Bounds of one mailbox. A mailbox full of never-delivered signals refuses new ones; it never
/// drops a signal its device has not been handed.
#[derive(Debug, Clone, Copy)]
pub struct MailboxLimits {
    /// Most signals waiting at once.
    pub max_signals: usize,
    /// Most payload bytes waiting at once.
    pub max_bytes: usize,
}

/// What an acknowledgement removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    /// How many signals were removed.
    pub removed: usize,
    /// Whether any removed signal had a copy in the store.
    pub touched_disk: bool,
}

/// An ordered queue of unacknowledged signals for one device.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The newest seq evicted (delivered, never acknowledged) and not acknowledged since.
    evicted_through: Option<Seq>,
    /// No entry expires before this (a lower bound: removals do not raise it), so a check on
    /// every send costs a comparison until something is due.
    first_expiry: Option<Timestamp>,
}

impl Mailbox {
    /// Whether a signal of `len` payload bytes fits without evicting anything.
    #[must_use]
    pub(crate) fn has_room(&self, len: usize, limits: MailboxLimits) -> bool {
        self.entries.len() < limits.max_signals && self.bytes + len <= limits.max_bytes
    }

    /// How many of the oldest entries must be evicted for a signal of `len` bytes to fit:
    /// `Some(0)` when it fits, `None` when only never-delivered signals stand in the way.
    #[must_use]
    pub(crate) fn evictions_needed(&self, len: usize, limits: MailboxLimits) -> Option<usize> {
        if self.has_room(len, limits) {
            return Some(0);
        }
        let (mut count, mut bytes) = (self.entries.len(), self.bytes);
        let mut evict = 0;
        for e in &self.entries {
            if count < limits.max_signals && bytes + len <= limits.max_bytes {
                return Some(evict);
            }
            if !e.delivered {
                return None;
            }
            count -= 1;
            bytes -= e.signal.payload.len();
            evict += 1;
        }
        (len <= limits.max_bytes && limits.max_signals > 0).then_some(evict)
    }

    /// Evicts the `n` oldest entries (delivered ones, per [`Mailbox::evictions_needed`]);
    /// returns what went, and through which seq, so the store can forget them too.
    pub(crate) fn evict(&mut self, n: usize) -> (Acked, Option<Seq>) {
        let mut acked = Acked::default();
        let mut through = None;
        for _ in 0..n {
            let Some(e) = self.entries.pop_front() else {
                break;
            };
            debug_assert!(e.delivered, "only delivered signals are evicted");
            acked.removed += 1;
            acked.touched_disk |= e.on_disk;
            self.bytes -= e.signal.payload.len();
            through = Some(e.signal.seq);
        }
        if through.is_some() {
            self.evicted_through = through.max(self.evicted_through);
        }
        (acked, through)
    }

    /// Whether a device that processed everything through `last_seq` (nothing, if `None`)
    /// gets everything after it: false when a signal after it was evicted.
    #[must_use]
    pub(crate) fn recovers_from(&self, last_seq: Option<Seq>) -> bool {
        self.evicted_through
            .is_none_or(|evicted| last_seq.is_some_and(|last| last >= evicted))
    }

    /// Notes that a signal was handed to the device's live socket.
    pub(crate) fn mark_delivered(&mut self, seq: Seq) {
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.signal.seq == seq) {
            e.delivered = true;
        }
    }

    /// Notes that every waiting signal was handed to the device's (new) socket.
    pub(crate) fn mark_all_delivered(&mut self) {
        for e in &mut self.entries {
            e.delivered = true;
        }
    }

    /// Appends a signal. Callers check [`Mailbox::has_room`] first and push in seq order.
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert!(
            self.entries
                .back()
                .is_none_or(|last| last.signal.seq < entry.signal.seq)
        );
        self.bytes += entry.signal.payload.len();
        let expires = entry.signal.expires_at;
        self.first_expiry = Some(self.first_expiry.map_or(expires, |t| t.min(expires)));
        self.entries.push_back(entry);
    }

    /// Cumulative acknowledgement: drops every signal with `seq <= up_to`.
    pub(crate) fn ack(&mut self, up_to: Seq) -> Acked {
        if self.evicted_through.is_some_and(|evicted| evicted <= up_to) {
            self.evicted_through = None;
        }
        let mut acked = Acked::default();
        while let Some(front) = self.entries.front() {
            if front.signal.seq > up_to {
                break;
            }
            acked.removed += 1;
            acked.touched_disk |= front.on_disk;
            self.bytes -= front.signal.payload.len();
            self.entries.pop_front();
        }
        acked
    }

    /// Drops signals whose TTL has passed; returns how many of them had no copy in the store
    /// (a stored copy is counted when the store purges it).
    pub(crate) fn expire(&mut self, now: Timestamp) -> u64 {
        if self.first_expiry.is_none_or(|first| first > now) {
            return 0;
        }
        let mut only_here = 0;
        self.entries.retain(|e| {
            let keep = e.signal.expires_at > now;
            only_here += u64::from(!keep && !e.on_disk);
            keep
        });
        self.bytes = self.entries.iter().map(|e| e.signal.payload.len()).sum();
        self.first_expiry = self.entries.iter().map(|e| e.signal.expires_at).min();
        only_here
    }

    /// Removes one signal (a write that failed); returns whether it was there.
    pub(crate) fn remove(&mut self, seq: Seq) -> bool {
        let Some(pos) = self.entries.iter().position(|e| e.signal.seq == seq) else {
            return false;
        };
        if let Some(e) = self.entries.remove(pos) {
            self.bytes -= e.signal.payload.len();
        }
        true
    }

    /// Notes that a signal is being written to the store.
    pub(crate) fn mark_on_disk(&mut self, seq: Seq) {
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.signal.seq == seq) {
            e.on_disk = true;
        }
    }

    /// Notes that a write of a signal failed, so it is written again later.
    pub(crate) fn mark_in_memory(&mut self, seq: Seq) {
        if let Some(e) = self.entries.iter_mut().rev().find(|e| e.signal.seq == seq) {
            e.on_disk = false;
        }
    }

    /// Every waiting signal, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// Signals with no copy in the store yet, marking them as written (the caller writes them).
    pub(crate) fn take_unpersisted(&mut self) -> Vec<Arc<Signal>> {
        self.entries
            .iter_mut()
            .filter(|e| !e.on_disk)
            .map(|e| {
                e.on_disk = true;
                Arc::clone(&e.signal)
            })
            .collect()
    }

    /// Number of waiting signals.
    #[must_use]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MailboxLimits = MailboxLimits {
        max_signals: 3,
        max_bytes: 10,
    };

    fn entry(seq: u64, payload: &str, expires: u64, on_disk: bool) -> Entry {
        Entry {
            signal: Arc::new(Signal {
                seq: Seq(seq),
                id: SignalId::parse(format!("s{seq}")).unwrap(),
                from: DeviceId::parse("a").unwrap(),
                payload: Payload::parse(payload).unwrap(),
                created_at: Timestamp(0),
                expires_at: Timestamp(expires),
            }),
            on_disk,
            delivered: false,
        }
    }

    fn delivered(seq: u64, payload: &str) -> Entry {
        Entry {
            delivered: true,
            ..entry(seq, payload, 100, false)
        }
    }

    #[test]
    fn delivered_signals_make_room_and_undelivered_ones_do_not() {
        let mut m = Mailbox::default();
        m.push(delivered(1, "1234"));
        m.push(delivered(2, "12"));
        m.push(entry(3, "1", 100, false));
        assert!(!m.has_room(1, LIMITS), "count bound");
        assert_eq!(m.evictions_needed(1, LIMITS), Some(1));
        assert_eq!(
            m.evictions_needed(8, LIMITS),
            Some(2),
            "the byte bound evicts more"
        );
        assert_eq!(
            m.evictions_needed(10, LIMITS),
            None,
            "only an undelivered one is left"
        );
        assert!(m.recovers_from(None));
        let (acked, through) = m.evict(1);
        assert_eq!((acked.removed, through), (1, Some(Seq(1))));
        assert!(m.has_room(1, LIMITS));
        assert!(!m.recovers_from(None), "signal 1 is gone");
        assert!(
            m.recovers_from(Some(Seq(1))),
            "a device that had 1 misses nothing"
        );
        m.ack(Seq(1));
        assert!(m.recovers_from(None), "acknowledged since");
    }

    #[test]
    fn a_mailbox_of_undelivered_signals_stays_full() {
        let mut m = Mailbox::default();
        for seq in 1..=3 {
            m.push(entry(seq, "1", 100, false));
        }
        assert_eq!(m.evictions_needed(1, LIMITS), None);
        m.mark_delivered(Seq(2));
        assert_eq!(m.evictions_needed(1, LIMITS), None, "oldest first");
        m.mark_all_delivered();
        assert_eq!(m.evictions_needed(1, LIMITS), Some(1));
    }

    #[test]
    fn bounds_count_and_bytes() {
        let mut m = Mailbox::default();
        assert!(m.has_room(10, LIMITS));
        assert!(!m.has_room(11, LIMITS));
        m.push(entry(1, "1234", 100, false));
        m.push(entry(2, "1234", 100, false));
        assert!(!m.has_room(3, LIMITS), "byte bound");
        assert!(m.has_room(2, LIMITS));
        m.push(entry(3, "1", 100, false));
        assert!(!m.has_room(0, LIMITS), "count bound");
    }

    #[test]
    fn ack_is_cumulative_and_reports_disk_copies() {
        let mut m = Mailbox::default();
        m.push(entry(1, "1", 100, false));
        m.push(entry(5, "2", 100, true));
        m.push(entry(9, "3", 100, false));
        assert_eq!(
            m.ack(Seq(6)),
            Acked {
                removed: 2,
                touched_disk: true
            }
        );
        assert_eq!(m.iter().map(|e| e.signal.seq.0).collect::<Vec<_>>(), [9]);
        assert_eq!(m.ack(Seq(6)), Acked::default(), "acks are idempotent");
    }

    #[test]
    fn expiry_and_removal_keep_byte_count_right() {
        let mut m = Mailbox::default();
        m.push(entry(1, "12345", 10, false));
        m.push(entry(2, "12345", 20, false));
        m.push(entry(3, "0", 10, true));
        assert_eq!(
            m.expire(Timestamp(10)),
            1,
            "the stored one is counted by the store"
        );
        assert!(m.has_room(5, LIMITS));
        assert!(m.remove(Seq(2)));
        assert!(!m.remove(Seq(2)));
        assert!(m.is_empty());
        assert!(m.has_room(10, LIMITS));
    }

    #[test]
    fn expiry_finds_the_earliest_deadline_in_any_order() {
        let mut m = Mailbox::default();
        m.push(entry(1, "1", 30, false));
        m.push(entry(2, "2", 10, false));
        assert_eq!(m.expire(Timestamp(9)), 0);
        assert_eq!(m.len(), 2);
        assert_eq!(m.expire(Timestamp(10)), 1, "the later entry is due first");
        assert_eq!(m.iter().map(|e| e.signal.seq.0).collect::<Vec<_>>(), [1]);
        assert_eq!(m.expire(Timestamp(29)), 0);
        m.ack(Seq(1));
        m.push(entry(3, "3", 40, false));
        assert_eq!(
            m.expire(Timestamp(30)),
            0,
            "the acked entry's deadline is gone"
        );
        assert_eq!(m.expire(Timestamp(40)), 1);
        assert!(m.is_empty());
    }

    #[test]
    fn take_unpersisted_marks_once() {
        let mut m = Mailbox::default();
        m.push(entry(1, "1", 100, true));
        m.push(entry(2, "1", 100, false));
        assert_eq!(m.take_unpersisted().len(), 1);
        assert!(m.take_unpersisted().is_empty());
    }
}

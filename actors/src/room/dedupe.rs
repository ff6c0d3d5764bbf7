//! The room's resend window: signal ids seen recently, per sender, and the seq each got, so a
//! resend is answered with the original's outcome instead of being delivered twice. An id
//! whose write to the store is still in flight is in its own state: resends wait there for
//! the write's outcome rather than hearing "accepted" before the signal is durable.

use std::collections::HashMap;

use crate::clock::Timestamp;
use crate::ids::{DeviceId, Seq, SignalId};

/// A sender and the id it gave a signal.
pub(super) type Key = (DeviceId, SignalId);

/// Where a recently seen signal stands.
enum State<W> {
    /// Taken, and durable where it had to be: a resend hears "accepted" at once.
    Taken,
    /// Its write is in flight: resends wait here for the outcome.
    Writing(Vec<W>),
}

/// One id in the window.
struct Seen<W> {
    seq: Seq,
    expires_at: Timestamp,
    state: State<W>,
}

/// What the window knows of a signal id.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup {
    /// Not seen, or seen longer ago than the window: a fresh signal.
    New,
    /// Taken with this seq: answer the resend with it.
    Taken(Seq),
    /// Its write is in flight: the resend waits for it ([`ResendWindow::wait`]).
    Writing,
}

/// Recently seen signal ids; `W` is whoever waits for an in-flight write (the room's
/// `Origin`: a socket or a REST reply).
pub(super) struct ResendWindow<W> {
    seen: HashMap<Key, Seen<W>>,
}

impl<W> Default for ResendWindow<W> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
        }
    }
}

impl<W> ResendWindow<W> {
    /// What the window knows of `key` at `now`.
    pub(super) fn lookup(&self, key: &Key, now: Timestamp) -> Lookup {
        match self.seen.get(key).filter(|s| s.expires_at > now) {
            None => Lookup::New,
            Some(Seen {
                state: State::Writing(_),
                ..
            }) => Lookup::Writing,
            Some(seen) => Lookup::Taken(seen.seq),
        }
    }

    /// Records a signal just taken, remembered until `expires_at`.
    pub(super) fn taken(&mut self, key: Key, seq: Seq, expires_at: Timestamp) {
        let seen = Seen {
            seq,
            expires_at,
            state: State::Taken,
        };
        self.seen.insert(key, seen);
    }

    /// Notes that the signal's write is in flight: resends wait for its outcome from now on.
    pub(super) fn writing(&mut self, key: &Key) {
        if let Some(seen) = self.seen.get_mut(key) {
            seen.state = State::Writing(Vec::new());
        }
    }

    /// Lets a resend wait for the in-flight write of `key`; it is dropped if `key` is no
    /// longer in the window.
    pub(super) fn wait(&mut self, key: &Key, waiter: W) {
        if let Some(seen) = self.seen.get_mut(key) {
            match &mut seen.state {
                State::Writing(waiting) => waiting.push(waiter),
                state @ State::Taken => *state = State::Writing(vec![waiter]),
            }
        }
    }

    /// The write of `key` is durable: the signal counts as taken, and the resends that
    /// waited are returned to hear "accepted".
    pub(super) fn written(&mut self, key: &Key) -> Vec<W> {
        match self.seen.get_mut(key) {
            Some(seen) => match std::mem::replace(&mut seen.state, State::Taken) {
                State::Writing(waiting) => waiting,
                State::Taken => Vec::new(),
            },
            None => Vec::new(),
        }
    }

    /// The write of `key` failed: the id is forgotten (a resend is a fresh signal), and the
    /// resends that waited are returned to hear the error.
    pub(super) fn failed(&mut self, key: &Key) -> Vec<W> {
        match self.seen.remove(key) {
            Some(Seen {
                state: State::Writing(waiting),
                ..
            }) => waiting,
            _ => Vec::new(),
        }
    }

    /// Whether no id is remembered.
    pub(super) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets ids older than the window.
    pub(super) fn expire(&mut self, now: Timestamp) {
        self.seen.retain(|_, s| s.expires_at > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        (DeviceId::parse("a").unwrap(), SignalId::parse(id).unwrap())
    }

    #[test]
    fn a_taken_id_is_known_until_it_expires() {
        let mut w = ResendWindow::<u8>::default();
        assert_eq!(w.lookup(&key("s1"), Timestamp(0)), Lookup::New);
        w.taken(key("s1"), Seq(7), Timestamp(10));
        assert_eq!(w.lookup(&key("s1"), Timestamp(9)), Lookup::Taken(Seq(7)));
        assert_eq!(w.lookup(&key("s1"), Timestamp(10)), Lookup::New, "expired");
        assert_eq!(w.lookup(&key("s2"), Timestamp(9)), Lookup::New, "other id");
        w.expire(Timestamp(10));
        assert!(w.seen.is_empty());
    }

    #[test]
    fn resends_wait_for_the_write_and_hear_its_outcome() {
        let mut w = ResendWindow::default();
        w.taken(key("s1"), Seq(1), Timestamp(10));
        w.writing(&key("s1"));
        assert_eq!(w.lookup(&key("s1"), Timestamp(0)), Lookup::Writing);
        w.wait(&key("s1"), 'a');
        w.wait(&key("s1"), 'b');
        assert_eq!(w.written(&key("s1")), vec!['a', 'b']);
        assert_eq!(w.lookup(&key("s1"), Timestamp(0)), Lookup::Taken(Seq(1)));
        assert!(w.written(&key("s1")).is_empty(), "nobody waits any more");
    }

    #[test]
    fn a_failed_write_forgets_the_id() {
        let mut w = ResendWindow::default();
        w.taken(key("s1"), Seq(1), Timestamp(10));
        w.writing(&key("s1"));
        w.wait(&key("s1"), 'a');
        assert_eq!(w.failed(&key("s1")), vec!['a']);
        assert_eq!(w.lookup(&key("s1"), Timestamp(0)), Lookup::New);
        assert!(w.failed(&key("s1")).is_empty());
    }

    #[test]
    fn waiting_on_an_unknown_id_drops_the_waiter() {
        let mut w = ResendWindow::default();
        w.wait(&key("s1"), 'a');
        assert_eq!(w.lookup(&key("s1"), Timestamp(0)), Lookup::New);
        assert!(w.written(&key("s1")).is_empty());
    }
}

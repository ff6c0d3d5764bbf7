//! Cluster mode: many identical instances share every couple's signaling state through a
//! [`Bus`] (the front end implements it on Redis), so any device may connect to any instance.
//!
//! What lives where:
//! - On the bus, one key space per couple: the seq counter and its epoch, the paired devices,
//!   one ordered stream per device (the mailbox), the resend ids, and presence: which socket,
//!   on which instance, is each device's one socket. Every change is one atomic script that
//!   also publishes the change on the couple's channel, so the channel's order is the seq
//!   order (the design of centrifuge's Redis broker).
//! - In each instance, a [`room::ClusterRoom`] per couple that has a socket (or a REST call)
//!   here: it holds the local sockets only, and turns the couple's channel into their events.
//! - In the store (MongoDB): devices, pairings, backups, and the epoch counter, so seq numbers
//!   keep growing even when the bus loses its data.
//!
//! Instances renew a lease on the bus every second; a room that sees a peer whose instance
//! lost its lease removes that presence (exactly one remover wins and publishes the
//! `peer-left`), so a killed (SIGKILL) instance's devices are reported gone within the protocol's
//! 10 s.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::clock::Timestamp;
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::mailbox::{Payload, Signal};
use crate::settings::Settings;
use crate::store::DeviceRecord;

pub(crate) mod room;

/// A change on a couple's channel, as every subscribed instance receives it, in order.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A signal was appended to the mailboxes of `to`.
    Signal {
        /// The signal.
        signal: Arc<Signal>,
        /// Its recipients.
        to: Vec<DeviceId>,
        /// When the instance that took it published it (wall clock, ms since the Unix
        /// epoch): where it is delivered, the relay latency is measured from it.
        published_ms: u64,
    },
    /// A device connected where none was (`owner` names its socket).
    Joined {
        /// The device.
        device: DeviceId,
        /// Its socket: `<instance>.<connection>`.
        owner: String,
    },
    /// A device connected again: `new` replaces the socket `old`, wherever that was.
    Replaced {
        /// The device.
        device: DeviceId,
        /// The socket that must close.
        old: String,
        /// The socket that now holds the device.
        new: String,
    },
    /// The socket `owner` of a device is gone (left, closed, timed out, or its instance died).
    Left {
        /// The device.
        device: DeviceId,
        /// The socket that was removed.
        owner: String,
    },
    /// A device was revoked: its socket closes wherever it is.
    Revoked {
        /// The device.
        device: DeviceId,
    },
    /// The subscription was lost and is back: events may have been missed, so the room reads
    /// what it needs again.
    Resync,
}

/// Where a couple's channel events go (the room's mailbox). Called from the bus's reader;
/// must not block.
pub type BusSink = Box<dyn Fn(BusEvent) + Send + Sync>;

/// Why the bus refused an operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The couple's state on the bus has no epoch (new couple, lost data, a restarted bus, or
    /// a used-up counter): take a new one from the store and [`Bus::seed`] it.
    #[error("the couple needs a new epoch")]
    NeedsEpoch,
    /// The recipient (or the joining device) is not a paired device of the couple.
    #[error("no such device in this couple")]
    UnknownDevice,
    /// A recipient's mailbox is full of undelivered signals.
    #[error("mailbox full")]
    MailboxFull,
    /// The bus did not answer (down, or slower than the storage timeout).
    #[error("cluster bus unavailable: {0}")]
    Unavailable(String),
}

/// A signal to append.
#[derive(Debug)]
pub struct Append<'a> {
    /// Whose couple.
    pub couple: &'a CoupleId,
    /// The sender.
    pub from: &'a DeviceId,
    /// One recipient, or every other paired device.
    pub to: Option<&'a DeviceId>,
    /// The signal's id.
    pub id: &'a SignalId,
    /// Whether the id came from the client (then a resend within the window is answered with
    /// the first seq instead of being appended twice).
    pub dedupe: bool,
    /// The payload.
    pub payload: &'a Payload,
    /// The domain's clock now (expiry and the resend window follow it).
    pub now: Timestamp,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A new signal with this seq; `expired` and `evicted` count entries it removed first.
    Fresh {
        /// Its seq.
        seq: Seq,
        /// Expired entries dropped from the recipients' mailboxes.
        expired: usize,
        /// Delivered entries evicted to make room.
        evicted: usize,
    },
    /// A resend of a signal already appended with this seq.
    Duplicate(Seq),
}

/// What a join found.
#[derive(Debug, Clone)]
pub struct JoinState {
    /// The newest seq handed out when the join took effect: every later signal arrives as a
    /// channel event.
    pub head: Seq,
    /// Whether nothing after the join's `lastSeq` was evicted.
    pub recovered: bool,
    /// Every device with a socket now, with its owner (the joining one included).
    pub present: Vec<(DeviceId, String)>,
    /// The device's mailbox, oldest first.
    pub backlog: Vec<Signal>,
    /// Expired entries dropped.
    pub expired: usize,
}

/// The shared state of cluster mode. Every method is one atomic step on the bus.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// This instance's id (unique in the cluster).
    fn instance(&self) -> &str;

    /// Starts delivering the couple's channel to `sink` (in place of an earlier sink);
    /// returns once the subscription is confirmed, so nothing published afterwards is
    /// missed. The number names this subscription for [`Bus::unsubscribe`].
    async fn subscribe(&self, couple: &CoupleId, sink: BusSink) -> Result<u64, BusError>;

    /// Stops delivering the couple's channel here, unless a later subscription replaced
    /// `subscription` (a room stopping while the couple's next room starts).
    async fn unsubscribe(&self, couple: &CoupleId, subscription: u64);

    /// Installs `epoch` (only if above the current one; 0 keeps it) and the couple's paired
    /// devices, as the store has them: one new to the list starts with an empty mailbox, one
    /// gone from it is revoked. Called when a device is paired, and by rooms when the bus
    /// answers [`BusError::NeedsEpoch`] or [`BusError::UnknownDevice`].
    async fn seed(
        &self,
        couple: &CoupleId,
        epoch: u64,
        devices: &[DeviceRecord],
    ) -> Result<(), BusError>;

    /// Appends a signal to its recipients' mailboxes (bounds as in `Mailbox`, expiry and
    /// eviction of delivered entries first) and publishes it.
    async fn append(&self, signal: Append<'_>, settings: &Settings) -> Result<Appended, BusError>;

    /// Makes `owner` the device's one socket (publishing a join or a replacement),
    /// acknowledges through `last_seq`, and returns its mailbox and who else is present.
    async fn join(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
        last_seq: Option<Seq>,
        now: Timestamp,
    ) -> Result<JoinState, BusError>;

    /// Removes the device's presence if `owner` still holds it, and publishes that it left;
    /// whether it did.
    async fn leave(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
    ) -> Result<bool, BusError>;

    /// Removes the device's presence if `owner` still holds it and its instance's lease has
    /// run out (checked by the bus itself, not on a possibly stale view), publishing that it
    /// left; whether it did.
    async fn sweep(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        owner: &str,
    ) -> Result<bool, BusError>;

    /// Keeps the couple's shared state alive while its sockets are quiet.
    async fn touch(&self, couple: &CoupleId) -> Result<(), BusError>;

    /// Cumulative acknowledgement (clamped to the newest seq handed out).
    async fn ack(&self, couple: &CoupleId, device: &DeviceId, up_to: Seq) -> Result<(), BusError>;

    /// Acknowledges through `ack`, then returns the device's unexpired signals after `after`,
    /// oldest first, and how many expired.
    async fn fetch(
        &self,
        couple: &CoupleId,
        device: &DeviceId,
        ack: Option<Seq>,
        after: Option<Seq>,
        now: Timestamp,
    ) -> Result<(Vec<Signal>, usize), BusError>;

    /// Who has a socket now, with its owner.
    async fn presence(&self, couple: &CoupleId) -> Result<Vec<(DeviceId, String)>, BusError>;

    /// A device was revoked: its mailbox is dropped and its socket closed wherever it is.
    async fn device_revoked(&self, couple: &CoupleId, device: &DeviceId) -> Result<(), BusError>;

    /// Takes the couple's cluster-wide lock, for changes that must not interleave across
    /// instances (a pairing confirm, a revocation); waits at most `wait` for it. The lock
    /// expires by itself if its holder dies. Returns the token that releases it.
    async fn lock(&self, couple: &CoupleId, wait: Duration) -> Result<String, BusError>;

    /// Releases the couple's lock if `token` still holds it.
    async fn unlock(&self, couple: &CoupleId, token: &str);

    /// The instances whose lease is live, as of the last renewal (`None` while unknown: a
    /// room never removes a presence on a guess).
    fn live_instances(&self) -> Option<Arc<HashSet<String>>>;

    /// Whether the bus answers now (for readiness).
    async fn ping(&self) -> Result<(), BusError>;
}

/// Runs `work` holding the couple's cluster-wide lock (waiting at most `wait` for it), and
/// releases it after.
pub(crate) async fn exclusive<T>(
    bus: &dyn Bus,
    couple: &CoupleId,
    wait: Duration,
    work: impl Future<Output = T>,
) -> Result<T, BusError> {
    let token = bus.lock(couple, wait).await?;
    let out = work.await;
    bus.unlock(couple, &token).await;
    Ok(out)
}

/// The instance part of an owner (`<instance>.<connection>`).
pub fn owner_instance(owner: &str) -> &str {
    owner
        .rsplit_once('.')
        .map_or(owner, |(instance, _)| instance)
}

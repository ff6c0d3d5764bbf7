//! The room of one couple: owns the bounded senders of its connected sockets and the ordered
//! mailbox of each of its devices. Relaying between connected devices touches no storage;
//! only signals for a device that is not connected are written, off the actor's hot path.
//!
//! Its sub-states have modules of their own: `room/dedupe.rs`, the resend window (a signal id
//! is taken, or its write is in flight and resends wait for it); `room/persist.rs`, the
//! background writes (through the domain's one writer, `store/group_commit.rs`) and their
//! count.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, Timestamp};
use crate::cluster::BusEvent;
use crate::error::RoomError;
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::mailbox::{Entry, Mailbox, MailboxLimits, Payload, Signal};
use crate::metrics::{DomainMetrics, GaugeShare, Transport};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::group_commit::GroupCommit;
use crate::supervisor::SupervisorMsg;

mod dedupe;
mod persist;

use dedupe::{Lookup, ResendWindow};
pub(crate) use persist::PersistJob;
use persist::{Waiter, Writes};

/// Sequence numbers are `epoch << EPOCH_SHIFT | counter`: each room activation takes a new
/// epoch from the store, so numbers keep increasing across restarts without a write per signal.
const EPOCH_SHIFT: u32 = 24;

/// Identifies one socket's membership, so a stale socket cannot remove its replacement.
pub type ConnId = u64;

/// What a room tells a connected socket. The front end turns each into a wire message.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    /// The join succeeded. Boxed: the largest variant sets the size of every slot of every
    /// socket's queue (the first block of 32 is allocated with the queue).
    Joined(Box<Joined>),
    /// Another device connected.
    PeerJoined(DeviceId),
    /// Another device disconnected (close, leave, timeout or kick).
    PeerLeft(DeviceId),
    /// A signal from the device's mailbox, in seq order.
    Signal {
        /// The signal.
        signal: Arc<Signal>,
        /// When the server received it, for a live relay (not for a backlog replay): the
        /// socket's writer measures the relay latency from it.
        received: Option<std::time::Instant>,
    },
    /// The room has taken (and, for offline recipients, stored) this signal.
    Accepted(Accepted),
    /// A signal this socket sent was refused.
    Rejected {
        /// The id the signal carried, if any.
        id: Option<SignalId>,
        /// Why.
        error: RoomError,
    },
}

/// What a socket hears when its join succeeds.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    /// The couple joined.
    pub couple: CoupleId,
    /// The joining device.
    pub device: DeviceId,
    /// Other devices connected at this moment.
    pub peers: Vec<DeviceId>,
    /// Whether every signal after the join's `lastSeq` is still here: false when some were
    /// evicted from a full mailbox (delivered to an earlier socket, never acknowledged).
    pub recovered: bool,
}

/// Why a room dropped a socket; the front end turns it into a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// The same device joined again from another socket.
    Replaced,
    /// The socket's outbound queue was full: the client reads too slowly.
    SlowConsumer,
    /// The device was revoked by another device of the couple.
    Revoked,
}

/// A socket's membership in a room: where to send events, and how to tell it it was dropped.
/// If the room goes away (stop or panic) both ends close, which the socket notices.
#[derive(Debug)]
pub struct Connection {
    /// Distinguishes this socket from a later one of the same device.
    pub id: ConnId,
    /// Bounded: the room only ever uses `try_send`, so a slow client cannot stall it.
    pub events: mpsc::Sender<RoomEvent>,
    /// Fired once if the room drops this socket on purpose.
    pub kick: oneshot::Sender<Kick>,
    /// Which transport the socket speaks, for the relay metrics.
    pub transport: Transport,
}

/// What a signal accepted over REST returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The signal's id (client-given or generated).
    pub id: SignalId,
    /// Its seq in the recipient's mailbox.
    pub seq: Seq,
}

/// Where the answer to a send goes.
#[derive(Debug)]
pub(crate) enum Origin {
    /// A connected socket: `accepted` or `error` is pushed to it as an event.
    Socket(ConnId, Transport),
    /// A REST request waiting for its reply.
    Rest(RpcReplyPort<Result<Accepted, RoomError>>),
}

impl Origin {
    pub(crate) fn transport(&self) -> Transport {
        match self {
            Self::Socket(_, transport) => *transport,
            Self::Rest(_) => Transport::Rest,
        }
    }
}

/// A request to one room.
#[derive(Debug)]
pub(crate) enum RoomMsg {
    /// Connect a socket for `device`; `last_seq` acknowledges everything up to it first.
    Join {
        /// The authenticated device.
        device: DeviceId,
        /// Its socket.
        conn: Connection,
        /// The last seq the device has processed, if resuming.
        last_seq: Option<Seq>,
        /// Ok once `joined` and the backlog are queued on the socket.
        reply: RpcReplyPort<Result<(), RoomError>>,
    },
    /// A socket left (or closed); ignored if it was already replaced.
    Leave {
        /// The device.
        device: DeviceId,
        /// Which of its sockets.
        conn: ConnId,
    },
    /// Relay a signal to one device (`to`) or to every other device of the couple.
    Send {
        /// The signal.
        relay: Relay,
        /// Where the answer goes.
        origin: Origin,
    },
    /// Cumulative acknowledgement of a device's mailbox.
    Ack {
        /// The device.
        device: DeviceId,
        /// Everything up to and including this seq was processed.
        up_to: Seq,
    },
    /// REST polling: acknowledge up to `after`, then return what is still waiting.
    Fetch {
        /// The device.
        device: DeviceId,
        /// Acknowledges everything up to it.
        after: Option<Seq>,
        /// The waiting signals, oldest first.
        reply: RpcReplyPort<Result<Vec<Arc<Signal>>, RoomError>>,
    },
    /// A device was paired into the couple while the room was running.
    DeviceAdded(DeviceId),
    /// A device was revoked: its socket is closed and its mailbox dropped.
    DeviceRevoked(DeviceId),
    /// A background write of signals finished.
    Persisted {
        /// What was written.
        job: PersistJob,
        /// Whether it is durable.
        ok: bool,
    },
    /// Periodic housekeeping: expiry and idleness.
    Tick,
    /// The supervisor asks whether the room may stop; if so it closes itself.
    StopIfIdle(RpcReplyPort<bool>),
    /// A change on the couple's cluster channel (cluster mode only).
    Bus(BusEvent),
    /// Test hook: make the room panic, to exercise supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Answers a message that arrived after a room decided to stop: callers retry elsewhere.
pub(crate) fn refuse(msg: RoomMsg) {
    match msg {
        RoomMsg::Join { reply, .. } => {
            let _ = reply.send(Err(RoomError::Unavailable));
        }
        RoomMsg::Fetch { reply, .. } => {
            let _ = reply.send(Err(RoomError::Unavailable));
        }
        RoomMsg::Send {
            origin: Origin::Rest(reply),
            ..
        } => {
            let _ = reply.send(Err(RoomError::Unavailable));
        }
        RoomMsg::StopIfIdle(reply) => {
            let _ = reply.send(true);
        }
        _ => {}
    }
}

/// Tells the sender how its signal fared: a REST reply is sent here; for a socket, returns
/// the event to push to it (`accepted` only when the client gave an id, whose value `id` is).
pub(crate) fn answer(
    origin: Origin,
    id: Option<SignalId>,
    result: Result<Accepted, RoomError>,
) -> Option<(ConnId, RoomEvent)> {
    match origin {
        Origin::Rest(reply) => {
            let _ = reply.send(result);
            None
        }
        Origin::Socket(conn, _) => {
            let event = match (result, id) {
                (Ok(a), Some(_)) => RoomEvent::Accepted(a),
                (Ok(_), None) => return None,
                (Err(error), id) => RoomEvent::Rejected { id, error },
            };
            Some((conn, event))
        }
    }
}

/// A signal to relay, as [`RoomMsg::Send`] carries it.
#[derive(Debug)]
pub(crate) struct Relay {
    /// The authenticated sender.
    pub(crate) from: DeviceId,
    /// One recipient, or `None` for all other devices.
    pub(crate) to: Option<DeviceId>,
    /// The opaque payload.
    pub(crate) payload: Payload,
    /// For de-duplication of resends.
    pub(crate) id: Option<SignalId>,
    /// When the front end received it.
    pub(crate) received: std::time::Instant,
}

/// What a room is started with.
pub(crate) struct RoomArgs {
    /// Whose room.
    pub couple: CoupleId,
    /// Where mailboxes are loaded from (and epochs taken).
    pub store: Arc<dyn Store>,
    /// Where signal writes and acks go: the domain's one writer.
    pub writer: GroupCommit,
    /// TTLs and bounds.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// To report idleness.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Rooms, mailbox depth, relays, expiry.
    pub metrics: DomainMetrics,
}

/// The actor. Holds nothing; all mutable data is in [`RoomState`].
pub(crate) struct RoomActor;

/// One device of the couple as the room sees it.
#[derive(Default)]
struct Member {
    mailbox: Mailbox,
    conn: Option<Connection>,
}

/// What validating a send found.
enum Checked {
    /// A new signal for these recipients.
    Fresh(Vec<DeviceId>),
    /// A resend of a signal already taken.
    Duplicate(Accepted),
    /// A resend of a signal whose write is still in flight.
    DuplicatePending,
}

/// Everything a room owns.
pub(crate) struct RoomState {
    args: RoomArgs,
    epoch: u64,
    counter: u64,
    members: HashMap<DeviceId, Member>,
    /// Signal ids seen recently, so a resend is not delivered twice.
    resends: ResendWindow<Origin>,
    /// Background writes to the store.
    writes: Writes,
    last_active: Instant,
    closing: bool,
    /// The periodic [`RoomMsg::Tick`], running only while there is something to expire or
    /// the room is idle ([`RoomState::needs_tick`]): a lone connected device with nothing
    /// pending costs no timer wake-ups.
    ticker: Option<JoinHandle<()>>,
    /// This room in `rooms_active`, and its mailboxes in `mailbox_signals`; both are taken
    /// off when the state is dropped, also after a panic.
    _running: GaugeShare,
    mailbox_depth: GaugeShare,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RoomMsg>,
        args: RoomArgs,
    ) -> Result<RoomState, ActorProcessingErr> {
        Ok(RoomState {
            _running: args.metrics.room_guard(),
            mailbox_depth: args.metrics.mailbox_share(),
            writes: Writes::new(args.writer.clone(), args.couple.clone()),
            args,
            epoch: 0,
            counter: 0,
            members: HashMap::new(),
            resends: ResendWindow::default(),
            last_active: Instant::now(),
            closing: false,
            ticker: None,
        })
    }

    /// Loads the couple's devices and stored mailboxes. Runs in the room's own task, so the
    /// supervisor is never blocked on storage; messages wait until this is done.
    async fn post_start(
        &self,
        me: ActorRef<RoomMsg>,
        st: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        let store = Arc::clone(&st.args.store);
        let couple = st.args.couple.clone();
        st.epoch = store.next_epoch(&couple).await?;
        let mut paired_at = HashMap::new();
        for d in store.devices(&couple).await? {
            st.members.entry(d.device.clone()).or_default();
            paired_at.insert(d.device, d.paired_at);
        }
        for s in store.pending_signals(&couple, st.args.clock.now()).await? {
            // Only signals for a device that is still paired, and sent after it was paired:
            // a revoked device's leftovers never reach a device paired again under its id.
            if paired_at.get(&s.to).is_none_or(|at| s.created_at < *at) {
                continue;
            }
            let to = s.to.clone();
            let signal = match s.into_signal() {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::error!(couple_id = %couple, cause = %e, "skipping a stored signal");
                    continue;
                }
            };
            let entry = Entry {
                signal: Arc::new(signal),
                on_disk: true,
                delivered: false,
            };
            st.members.entry(to).or_default().mailbox.push(entry);
        }
        st.report_depth();
        st.schedule_tick(&me);
        tracing::debug!(couple_id = %couple, epoch = st.epoch, "room started");
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<RoomMsg>,
        msg: RoomMsg,
        st: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        // No span of its own: every event the room logs names its couple, and entering a span
        // per message was a measurable share of the relay's CPU (docs/benchmarks.md).
        let result = st.handle(&me, msg).await;
        // The message's writes, in order; a full writer queue holds the room here.
        st.writes.submit().await;
        st.report_depth();
        st.schedule_tick(&me);
        result
    }

    /// On a clean stop, writes what connected devices have not acknowledged yet, so a graceful
    /// shutdown loses nothing.
    async fn post_stop(
        &self,
        _me: ActorRef<RoomMsg>,
        st: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        // With writes still in flight their outcome will never be seen, so write everything
        // (writes are idempotent, and stored acks hide what was acknowledged meanwhile).
        let everything = st.writes.in_flight();
        let pending: Vec<_> = st
            .members
            .iter_mut()
            .flat_map(|(d, m)| {
                let signals = if everything {
                    m.mailbox.iter().map(|e| Arc::clone(&e.signal)).collect()
                } else {
                    m.mailbox.take_unpersisted()
                };
                signals.into_iter().map(move |s| (d.clone(), s))
            })
            .collect();
        if pending.is_empty() {
            st.writes.submit().await;
        } else {
            st.writes.flush(&pending).await;
        }
        Ok(())
    }
}

impl RoomState {
    /// Publishes how many signals wait in this room's mailboxes.
    fn report_depth(&mut self) {
        let depth = self.members.values().map(|m| m.mailbox.len()).sum();
        self.mailbox_depth.set(depth);
    }

    async fn handle(
        &mut self,
        me: &ActorRef<RoomMsg>,
        msg: RoomMsg,
    ) -> Result<(), ActorProcessingErr> {
        if self.closing {
            refuse(msg);
            return Ok(());
        }
        if !matches!(msg, RoomMsg::Tick | RoomMsg::Persisted { .. }) {
            self.last_active = Instant::now();
        }
        match msg {
            RoomMsg::Join {
                device,
                conn,
                last_seq,
                reply,
            } => {
                self.join(me, &device, conn, last_seq);
                let _ = reply.send(Ok(()));
            }
            RoomMsg::Leave { device, conn } => self.leave(me, &device, conn),
            RoomMsg::Send { relay, origin } => self.send(me, relay, origin).await?,
            RoomMsg::Ack { device, up_to } => self.ack(&device, up_to),
            RoomMsg::Fetch {
                device,
                after,
                reply,
            } => {
                let _ = reply.send(Ok(self.fetch(device, after)));
            }
            RoomMsg::DeviceAdded(device) => {
                self.members.entry(device).or_default();
            }
            RoomMsg::DeviceRevoked(device) => self.revoke(me, &device),
            RoomMsg::Persisted { job, ok } => self.persisted(me, job, ok),
            RoomMsg::Tick => self.tick(me),
            // Only cluster rooms subscribe to a channel.
            RoomMsg::Bus(_) => {}
            RoomMsg::StopIfIdle(reply) => {
                let idle = self.is_idle();
                if idle {
                    self.closing = true;
                    me.stop(Some("idle".to_owned()));
                }
                let _ = reply.send(idle);
            }
            #[cfg(feature = "fault-injection")]
            RoomMsg::Panic => panic!("fault injection: room {} panics", self.args.couple),
        }
        Ok(())
    }

    fn limits(&self) -> MailboxLimits {
        self.args.settings.mailbox
    }

    /// Whether a [`RoomMsg::Tick`] has work to do: signals or resend ids to expire, or no
    /// socket connected (the idle countdown).
    fn needs_tick(&self) -> bool {
        !self.resends.is_empty()
            || self.members.values().all(|m| m.conn.is_none())
            || self.members.values().any(|m| !m.mailbox.is_empty())
    }

    /// Starts or stops the periodic tick as [`RoomState::needs_tick`] says.
    fn schedule_tick(&mut self, me: &ActorRef<RoomMsg>) {
        match (self.needs_tick(), &self.ticker) {
            (true, None) => {
                self.ticker =
                    Some(me.send_interval(self.args.settings.room_tick, || RoomMsg::Tick));
            }
            (false, Some(_)) => {
                if let Some(t) = self.ticker.take() {
                    t.abort();
                }
            }
            _ => {}
        }
    }

    fn is_idle(&self) -> bool {
        !self.writes.in_flight() && self.members.values().all(|m| m.conn.is_none())
    }

    fn connected_peers(&self, except: &DeviceId) -> Vec<DeviceId> {
        self.members
            .iter()
            .filter(|(d, m)| *d != except && m.conn.is_some())
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Sends an event to every connected device but `except`.
    fn broadcast(&mut self, me: &ActorRef<RoomMsg>, except: &DeviceId, event: &RoomEvent) {
        let targets: Vec<DeviceId> = self.connected_peers(except);
        for d in targets {
            self.push(me, &d, event.clone());
        }
    }

    /// Pushes one event to a device's socket; a full queue disconnects it as a slow consumer.
    /// Returns whether the event was queued.
    fn push(&mut self, me: &ActorRef<RoomMsg>, device: &DeviceId, event: RoomEvent) -> bool {
        let Some(member) = self.members.get_mut(device) else {
            return false;
        };
        let Some(conn) = &member.conn else {
            return false;
        };
        match conn.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(couple_id = %self.args.couple, device_id = %device, "disconnecting slow consumer");
                self.disconnect(me, device, Some(Kick::SlowConsumer));
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.disconnect(me, device, None);
                false
            }
        }
    }

    /// Drops a device's socket, tells the others, and writes what it has not acknowledged
    /// (it may never have reached the device).
    fn disconnect(&mut self, me: &ActorRef<RoomMsg>, device: &DeviceId, kick: Option<Kick>) {
        let Some(member) = self.members.get_mut(device) else {
            return;
        };
        let Some(conn) = member.conn.take() else {
            return;
        };
        if let Some(k) = kick {
            let _ = conn.kick.send(k);
        }
        let unwritten: Vec<_> = member
            .mailbox
            .take_unpersisted()
            .into_iter()
            .map(|s| (device.clone(), s))
            .collect();
        if !unwritten.is_empty() {
            self.writes.write(
                me,
                PersistJob {
                    signals: unwritten,
                    waiter: None,
                },
            );
        }
        self.broadcast(me, device, &RoomEvent::PeerLeft(device.clone()));
    }

    /// Connects a socket: replaces an older one of the device, applies `last_seq`, queues
    /// `joined` and the backlog (a socket too slow for its backlog is dropped at once).
    fn join(
        &mut self,
        me: &ActorRef<RoomMsg>,
        device: &DeviceId,
        conn: Connection,
        last_seq: Option<Seq>,
    ) {
        let now = self.args.clock.now();
        let peers = self.connected_peers(device);
        let member = self.members.entry(device.clone()).or_default();
        let was_connected = if let Some(old) = member.conn.take() {
            let _ = old.kick.send(Kick::Replaced);
            true
        } else {
            false
        };
        if let Some(seq) = last_seq {
            self.ack(device, seq);
        }
        let member = self.members.entry(device.clone()).or_default();
        self.args
            .metrics
            .signals_expired(member.mailbox.expire(now));
        let backlog = std::iter::once(RoomEvent::Joined(Box::new(Joined {
            couple: self.args.couple.clone(),
            device: device.clone(),
            peers,
            recovered: member.mailbox.recovers_from(last_seq),
        })))
        .chain(member.mailbox.iter().map(|e| RoomEvent::Signal {
            signal: Arc::clone(&e.signal),
            received: None,
        }))
        .collect::<Vec<_>>();
        for event in backlog {
            if conn.events.try_send(event).is_err() {
                let _ = conn.kick.send(Kick::SlowConsumer);
                if was_connected {
                    self.broadcast(me, device, &RoomEvent::PeerLeft(device.clone()));
                }
                return;
            }
        }
        let member = self.members.entry(device.clone()).or_default();
        member.mailbox.mark_all_delivered();
        member.conn = Some(conn);
        if !was_connected {
            self.broadcast(me, device, &RoomEvent::PeerJoined(device.clone()));
        }
    }

    /// Closes a revoked device's socket and forgets its mailbox, here and in the store (an
    /// acknowledgement up to the newest seq, so a device paired again under the same id does
    /// not receive the old one's signals).
    fn revoke(&mut self, me: &ActorRef<RoomMsg>, device: &DeviceId) {
        if let Some(conn) = self.members.get_mut(device).and_then(|m| m.conn.take()) {
            let _ = conn.kick.send(Kick::Revoked);
            self.broadcast(me, device, &RoomEvent::PeerLeft(device.clone()));
        }
        if self.members.remove(device).is_some() {
            self.writes.ack(device, self.clamp(Seq(u64::MAX)));
        }
    }

    /// Whether `conn` is still `device`'s socket (not replaced or gone since).
    fn is_current(&self, device: &DeviceId, conn: ConnId) -> bool {
        self.members
            .get(device)
            .and_then(|m| m.conn.as_ref())
            .is_some_and(|c| c.id == conn)
    }

    fn leave(&mut self, me: &ActorRef<RoomMsg>, device: &DeviceId, conn: ConnId) {
        if self.is_current(device, conn) {
            self.disconnect(me, device, None);
        }
    }

    async fn next_seq(&mut self) -> Result<Seq, ActorProcessingErr> {
        self.counter += 1;
        if self.counter >= 1 << EPOCH_SHIFT {
            self.epoch = self.args.store.next_epoch(&self.args.couple).await?;
            self.counter = 1;
        }
        Ok(Seq(self.epoch << EPOCH_SHIFT | self.counter))
    }

    fn recipients(
        &self,
        from: &DeviceId,
        to: Option<DeviceId>,
    ) -> Result<Vec<DeviceId>, RoomError> {
        match to {
            Some(to) if &to == from => Err(RoomError::SelfRecipient),
            Some(to) if self.members.contains_key(&to) => Ok(vec![to]),
            Some(_) => Err(RoomError::UnknownDevice),
            None => Ok(self
                .members
                .keys()
                .filter(|d| *d != from)
                .cloned()
                .collect()),
        }
    }

    async fn send(
        &mut self,
        me: &ActorRef<RoomMsg>,
        relay: Relay,
        origin: Origin,
    ) -> Result<(), ActorProcessingErr> {
        let Relay {
            from,
            to,
            payload,
            id,
            received,
        } = relay;
        let now = self.args.clock.now();
        let checked = self.check_send(&from, to, &payload, id.as_ref(), now);
        let recipients = match checked {
            Ok(Checked::Fresh(r)) => r,
            Ok(Checked::Duplicate(dup)) => {
                self.answer(me, &from, origin, id, Ok(dup));
                return Ok(());
            }
            Ok(Checked::DuplicatePending) => {
                if let Some(id) = id {
                    self.resends.wait(&(from, id), origin);
                }
                return Ok(());
            }
            Err(error) => {
                self.answer(me, &from, origin, id, Err(error));
                return Ok(());
            }
        };
        let seq = self.next_seq().await?;
        self.args.metrics.signal_relayed(origin.transport());
        let client_id = id.clone();
        let id = id.unwrap_or_else(SignalId::generate);
        let signal = Arc::new(Signal {
            seq,
            id: id.clone(),
            from: from.clone(),
            payload,
            created_at: now,
            expires_at: now.plus(self.args.settings.signal_ttl),
        });
        let offline = self.deliver(me, recipients, &signal, received);
        // Only a client's own id can come back in a resend: a generated one is never
        // remembered (it cost a hash insert per signal, and kept the room's tick running).
        let dedupe_key = client_id.as_ref().map(|cid| (from.clone(), cid.clone()));
        if let Some(key) = &dedupe_key {
            self.resends
                .taken(key.clone(), seq, now.plus(self.args.settings.dedupe_window));
        }
        let accepted = Accepted { id, seq };
        // Recipients that were kicked while pushing had their mailbox written by `disconnect`;
        // the rest of the offline ones are written here before the sender hears "accepted".
        let to_write: Vec<_> = offline
            .into_iter()
            .filter_map(|d| {
                let m = self.members.get_mut(&d)?;
                let e = m.mailbox.iter().find(|e| e.signal.seq == seq)?;
                (!e.on_disk).then_some(d)
            })
            .collect();
        if to_write.is_empty() {
            self.answer(me, &from, origin, client_id, Ok(accepted));
            return Ok(());
        }
        let signals = to_write
            .into_iter()
            .map(|d| {
                self.mark_on_disk(&d, seq);
                (d, Arc::clone(&signal))
            })
            .collect();
        if let Some(key) = &dedupe_key {
            self.resends.writing(key);
        }
        self.writes.write(
            me,
            PersistJob {
                signals,
                waiter: Some(Waiter {
                    from,
                    origin,
                    accepted,
                    client_id,
                    dedupe_key,
                }),
            },
        );
        Ok(())
    }

    /// Puts a new signal in each recipient's mailbox and on its socket; returns the
    /// recipients that are not connected.
    fn deliver(
        &mut self,
        me: &ActorRef<RoomMsg>,
        recipients: Vec<DeviceId>,
        signal: &Arc<Signal>,
        received: std::time::Instant,
    ) -> Vec<DeviceId> {
        let mut offline = Vec::new();
        for to in recipients {
            let entry = Entry {
                signal: Arc::clone(signal),
                on_disk: false,
                delivered: false,
            };
            if let Some(m) = self.members.get_mut(&to) {
                m.mailbox.push(entry);
            }
            let live = RoomEvent::Signal {
                signal: Arc::clone(signal),
                received: Some(received),
            };
            if self.push(me, &to, live) {
                if let Some(m) = self.members.get_mut(&to) {
                    m.mailbox.mark_delivered(signal.seq);
                }
            } else {
                offline.push(to);
            }
        }
        offline
    }

    /// Validates a send: size, resend, recipients, mailbox bounds (all or nothing).
    fn check_send(
        &mut self,
        from: &DeviceId,
        to: Option<DeviceId>,
        payload: &Payload,
        id: Option<&SignalId>,
        now: Timestamp,
    ) -> Result<Checked, RoomError> {
        let limit = self.args.settings.max_payload_bytes;
        if payload.len() > limit {
            return Err(RoomError::PayloadTooLarge { limit });
        }
        if let Some(id) = id {
            match self.resends.lookup(&(from.clone(), id.clone()), now) {
                Lookup::New => {}
                Lookup::Taken(seq) => {
                    let id = id.clone();
                    return Ok(Checked::Duplicate(Accepted { id, seq }));
                }
                Lookup::Writing => return Ok(Checked::DuplicatePending),
            }
        }
        self.members.entry(from.clone()).or_default();
        let recipients = self.recipients(from, to)?;
        let limits = self.limits();
        let mut evictions = Vec::new();
        for r in &recipients {
            let m = self.members.entry(r.clone()).or_default();
            self.args.metrics.signals_expired(m.mailbox.expire(now));
            match m.mailbox.evictions_needed(payload.len(), limits) {
                None => return Err(RoomError::MailboxFull),
                Some(0) => {}
                Some(n) => evictions.push((r.clone(), n)),
            }
        }
        // All or nothing: only once every recipient has room (or can make it) is anything
        // evicted. Stored copies of evicted signals are forgotten like acknowledged ones.
        for (r, n) in evictions {
            let Some(m) = self.members.get_mut(&r) else {
                continue;
            };
            let (evicted, through) = m.mailbox.evict(n);
            self.args.metrics.signals_evicted(evicted.removed);
            if let (true, Some(through)) = (evicted.touched_disk, through) {
                self.writes.ack(&r, through);
            }
        }
        Ok(Checked::Fresh(recipients))
    }

    fn mark_on_disk(&mut self, device: &DeviceId, seq: Seq) {
        if let Some(m) = self.members.get_mut(device) {
            m.mailbox.mark_on_disk(seq);
        }
    }

    /// Tells the sender how its signal fared (see [`answer`]).
    fn answer(
        &mut self,
        me: &ActorRef<RoomMsg>,
        from: &DeviceId,
        origin: Origin,
        id: Option<SignalId>,
        result: Result<Accepted, RoomError>,
    ) {
        if let Some((conn, event)) = answer(origin, id, result) {
            self.push_to_conn(me, from, conn, event);
        }
    }

    /// Pushes to a device only if `conn` is still its socket (not replaced since).
    fn push_to_conn(
        &mut self,
        me: &ActorRef<RoomMsg>,
        device: &DeviceId,
        conn: ConnId,
        event: RoomEvent,
    ) {
        if self.is_current(device, conn) {
            self.push(me, device, event);
        }
    }

    /// A background write finished: answer the waiting sender, or undo the signal on failure.
    fn persisted(&mut self, me: &ActorRef<RoomMsg>, job: PersistJob, ok: bool) {
        self.writes.finished();
        let Some(waiter) = job.waiter else {
            if !ok {
                // A flush nobody waits for: mark the signals unwritten so the flush on stop
                // (or the next disconnect) tries again.
                for (to, s) in &job.signals {
                    if let Some(m) = self.members.get_mut(to) {
                        m.mailbox.mark_in_memory(s.seq);
                    }
                }
            }
            return;
        };
        let id = waiter.client_id;
        // Resends that arrived during the write hear the same outcome as the original; after
        // a failure the id is forgotten, so a later resend is a fresh signal.
        let resends = match &waiter.dedupe_key {
            Some(key) if ok => self.resends.written(key),
            Some(key) => self.resends.failed(key),
            None => Vec::new(),
        };
        let result = if ok {
            Ok(waiter.accepted)
        } else {
            for (to, s) in &job.signals {
                if let Some(m) = self.members.get_mut(to) {
                    m.mailbox.remove(s.seq);
                }
            }
            Err(RoomError::StorageUnavailable)
        };
        for origin in resends {
            self.answer(me, &waiter.from, origin, id.clone(), result.clone());
        }
        self.answer(me, &waiter.from, waiter.origin, id, result);
    }

    /// The highest seq this room can have handed out: acks beyond it are clamped, so a bogus
    /// `ack` or `lastSeq` cannot hide signals that arrive later.
    fn clamp(&self, up_to: Seq) -> Seq {
        up_to.min(Seq(self.epoch << EPOCH_SHIFT | self.counter))
    }

    fn ack(&mut self, device: &DeviceId, up_to: Seq) {
        let up_to = self.clamp(up_to);
        if let Some(m) = self.members.get_mut(device)
            && m.mailbox.ack(up_to).touched_disk
        {
            self.writes.ack(device, up_to);
        }
    }

    fn fetch(&mut self, device: DeviceId, after: Option<Seq>) -> Vec<Arc<Signal>> {
        if let Some(seq) = after {
            self.ack(&device, seq);
        }
        let now = self.args.clock.now();
        let m = self.members.entry(device).or_default();
        self.args.metrics.signals_expired(m.mailbox.expire(now));
        m.mailbox.iter().map(|e| Arc::clone(&e.signal)).collect()
    }

    fn tick(&mut self, me: &ActorRef<RoomMsg>) {
        let now = self.args.clock.now();
        for m in self.members.values_mut() {
            self.args.metrics.signals_expired(m.mailbox.expire(now));
        }
        self.resends.expire(now);
        if self.is_idle() && self.last_active.elapsed() >= self.args.settings.room_idle_after {
            let _ = self.args.supervisor.cast(SupervisorMsg::RoomIdle {
                couple: self.args.couple.clone(),
                room: me.get_id(),
            });
        }
    }
}

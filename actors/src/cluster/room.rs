//! A couple's room in cluster mode: the same messages as `RoomActor` (so the transports do
//! not know which one they talk to), but the mailboxes, seq numbers, resend ids and presence
//! live on the [`Bus`]. This actor holds the sockets connected to *this* instance and turns
//! the couple's channel into their events.
//!
//! Ordering: every change is published by the script that made it, so the channel arrives in
//! seq order. A join's script returns the newest seq at that moment (`head`); channel
//! signals at or below a socket's mark are already in its backlog and are dropped. The actor
//! awaits each bus call inside its handler, so channel events that arrive meanwhile wait in
//! its mailbox and are applied after the reply, never before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Append, Appended, Bus, BusError, BusEvent, exclusive, owner_instance};
use crate::clock::Clock;
use crate::error::RoomError;
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::metrics::{DomainMetrics, GaugeShare};
use crate::room::{Accepted, Connection, Joined, Kick, Origin, Relay, RoomEvent, RoomMsg, answer};
use crate::settings::Settings;
use crate::store::Store;
use crate::supervisor::SupervisorMsg;

/// How often a room with peers on other instances checks their instances' leases. With a
/// 3 s lease renewed every second, a killed (SIGKILL) instance's devices are reported gone within
/// about 5 s, inside the protocol's 10 s.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often a room with sockets renews its couple's keys on the bus (they expire two hours
/// after their last write, so a quiet connected couple's presence must not).
const TOUCH_EVERY: Duration = Duration::from_mins(10);

/// The instant a signal published at `published_ms` (wall clock) was received, on this
/// host's monotonic clock; `None` if the clocks disagree (it would be in the future).
fn received_at(published_ms: u64) -> Option<std::time::Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let ago = now.checked_sub(Duration::from_millis(published_ms))?;
    std::time::Instant::now().checked_sub(ago)
}

/// What a cluster room is started with.
pub(crate) struct ClusterArgs {
    /// Whose room.
    pub couple: CoupleId,
    /// The shared state.
    pub bus: Arc<dyn Bus>,
    /// Where epochs and the paired devices come from when the bus needs them.
    pub store: Arc<dyn Store>,
    /// TTLs and bounds.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// To report idleness.
    pub supervisor: ActorRef<SupervisorMsg>,
    /// Rooms, relays, expiry.
    pub metrics: DomainMetrics,
}

/// The actor. Holds nothing; all mutable data is in [`ClusterState`].
pub(crate) struct ClusterRoom;

/// A socket connected here.
struct Local {
    conn: Connection,
    /// `<instance>.<conn id>`: how the bus names this socket.
    owner: String,
    /// The newest seq this socket has been handed (or that its backlog covered).
    through: Seq,
}

/// Everything a cluster room owns.
pub(crate) struct ClusterState {
    args: ClusterArgs,
    local: HashMap<DeviceId, Local>,
    /// Every device with a socket anywhere, and that socket.
    present: HashMap<DeviceId, String>,
    last_active: Instant,
    closing: bool,
    ticker: Option<JoinHandle<()>>,
    /// When the couple's keys were last renewed.
    touched: Instant,
    /// This room's subscription to the couple's channel (`None`: the bus was down when the
    /// room started; the next join subscribes).
    subscription: Option<u64>,
    _running: GaugeShare,
}

impl Actor for ClusterRoom {
    type Msg = RoomMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<RoomMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        Ok(ClusterState {
            _running: args.metrics.room_guard(),
            args,
            local: HashMap::new(),
            present: HashMap::new(),
            last_active: Instant::now(),
            closing: false,
            ticker: None,
            touched: Instant::now(),
            subscription: None,
        })
    }

    /// Subscribes to the couple's channel before anything else, so no event published after
    /// this room's first bus call is missed. (If the bus is down, the room starts anyway and
    /// its first join subscribes or answers `storage_unavailable`.)
    async fn post_start(
        &self,
        me: ActorRef<RoomMsg>,
        st: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        let _ = st.subscribed(&me).await;
        let every = SWEEP_EVERY.min(st.args.settings.room_tick);
        st.ticker = Some(me.send_interval(every, || RoomMsg::Tick));
        Ok(())
    }

    async fn handle(
        &self,
        me: ActorRef<RoomMsg>,
        msg: RoomMsg,
        st: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        st.handle(&me, msg).await;
        Ok(())
    }

    /// Gives up this instance's sockets on the bus (peers hear `peer-left` at once, not after
    /// the lease runs out) and unsubscribes.
    async fn post_stop(
        &self,
        _me: ActorRef<RoomMsg>,
        st: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        let locals: Vec<_> = st.local.drain().collect();
        for (device, local) in locals {
            let _ = st
                .args
                .bus
                .leave(&st.args.couple, &device, &local.owner)
                .await;
        }
        if let Some(t) = st.ticker.take() {
            t.abort();
        }
        if let Some(subscription) = st.subscription {
            st.args.bus.unsubscribe(&st.args.couple, subscription).await;
        }
        Ok(())
    }
}

impl From<BusError> for RoomError {
    fn from(e: BusError) -> Self {
        match e {
            BusError::UnknownDevice => RoomError::UnknownDevice,
            BusError::MailboxFull => RoomError::MailboxFull,
            BusError::NeedsEpoch | BusError::Unavailable(_) => RoomError::StorageUnavailable,
        }
    }
}

impl ClusterState {
    /// Subscribes to the couple's channel unless it already is.
    async fn subscribed(&mut self, me: &ActorRef<RoomMsg>) -> Result<(), RoomError> {
        if self.subscription.is_some() {
            return Ok(());
        }
        let sink = me.clone();
        let subscribed = self
            .args
            .bus
            .subscribe(
                &self.args.couple,
                Box::new(move |event| {
                    let _ = sink.cast(RoomMsg::Bus(event));
                }),
            )
            .await;
        match subscribed {
            Ok(id) => {
                self.subscription = Some(id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(couple_id = %self.args.couple, cause = %e, "cannot subscribe to the couple's channel");
                Err(RoomError::StorageUnavailable)
            }
        }
    }

    async fn handle(&mut self, me: &ActorRef<RoomMsg>, msg: RoomMsg) {
        if self.closing {
            crate::room::refuse(msg);
            return;
        }
        if !matches!(msg, RoomMsg::Tick | RoomMsg::Bus(_)) {
            self.last_active = Instant::now();
        }
        match msg {
            RoomMsg::Join {
                device,
                conn,
                last_seq,
                reply,
            } => {
                let joined = match self.subscribed(me).await {
                    Ok(()) => self.join(device, conn, last_seq).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(joined);
            }
            RoomMsg::Leave { device, conn } => {
                if self.local.get(&device).is_some_and(|l| l.conn.id == conn) {
                    self.drop_local(&device, None).await;
                }
            }
            RoomMsg::Send { relay, origin } => self.send(relay, origin).await,
            RoomMsg::Ack { device, up_to } => {
                if let Err(e) = self.args.bus.ack(&self.args.couple, &device, up_to).await {
                    tracing::warn!(couple_id = %self.args.couple, cause = %e, "ack not recorded");
                }
            }
            RoomMsg::Fetch {
                device,
                after,
                reply,
            } => {
                let now = self.args.clock.now();
                let fetched = self
                    .args
                    .bus
                    .fetch(&self.args.couple, &device, after, None, now)
                    .await
                    .map(|(signals, expired)| {
                        self.args.metrics.signals_expired(expired as u64);
                        signals.into_iter().map(Arc::new).collect()
                    })
                    .map_err(RoomError::from);
                let _ = reply.send(fetched);
            }
            RoomMsg::Bus(event) => self.on_event(event).await,
            RoomMsg::Tick => self.tick(me).await,
            RoomMsg::StopIfIdle(reply) => {
                let idle = self.local.is_empty();
                if idle {
                    self.closing = true;
                    me.stop(Some("idle".to_owned()));
                }
                let _ = reply.send(idle);
            }
            // The bus carries these to every instance (`Rooms` runs them there).
            RoomMsg::DeviceAdded(_) | RoomMsg::DeviceRevoked(_) | RoomMsg::Persisted { .. } => {}
            #[cfg(feature = "fault-injection")]
            RoomMsg::Panic => panic!("fault injection: room {} panics", self.args.couple),
        }
    }

    /// Runs `op`; when the bus lacks what it needs, refreshes it from the store and runs `op`
    /// again: a couple with no epoch there gets a new one (and its devices), a device the bus
    /// does not know gets the store's device list (a device paired since, or revoked).
    async fn refreshed<T, F>(&self, mut op: impl FnMut() -> F) -> Result<T, BusError>
    where
        F: Future<Output = Result<T, BusError>>,
    {
        let couple = &self.args.couple;
        let store = &self.args.store;
        let unavailable = |e: crate::store::StoreError| BusError::Unavailable(e.to_string());
        let mut refreshed_devices = false;
        // At most a new epoch and a device refresh, then the last word is the bus's.
        for _ in 0..2 {
            let epoch = match op().await {
                Err(BusError::NeedsEpoch) => store.next_epoch(couple).await.map_err(unavailable)?,
                Err(BusError::UnknownDevice) if !refreshed_devices => 0,
                other => return other,
            };
            refreshed_devices = true;
            // Under the couple's lock, so a revocation on another instance cannot fall
            // between this read and the seed (and bring the device back).
            let bus = self.args.bus.as_ref();
            let refresh = async {
                let devices = store.devices(couple).await.map_err(unavailable)?;
                bus.seed(couple, epoch, &devices).await
            };
            exclusive(bus, couple, self.args.settings.call_timeout / 2, refresh).await??;
            if epoch > 0 {
                tracing::info!(couple_id = %couple, epoch, "took a new epoch for the cluster bus");
            }
        }
        op().await
    }

    async fn join(
        &mut self,
        device: DeviceId,
        conn: Connection,
        last_seq: Option<Seq>,
    ) -> Result<(), RoomError> {
        let owner = format!("{}.{}", self.args.bus.instance(), conn.id);
        let now = self.args.clock.now();
        let (bus, couple) = (&self.args.bus, &self.args.couple);
        let state = self
            .refreshed(|| bus.join(couple, &device, &owner, last_seq, now))
            .await?;
        self.args.metrics.signals_expired(state.expired as u64);
        // A socket of the device on this instance is replaced at once; one elsewhere hears it
        // from the channel.
        if let Some(old) = self.local.remove(&device) {
            let _ = old.conn.kick.send(Kick::Replaced);
        }
        self.apply_presence(state.present.into_iter().collect(), Some(&device))
            .await;
        let peers = self
            .present
            .keys()
            .filter(|d| **d != device)
            .cloned()
            .collect();
        let joined = RoomEvent::Joined(Box::new(Joined {
            couple: self.args.couple.clone(),
            device: device.clone(),
            peers,
            recovered: state.recovered,
        }));
        let backlog = state.backlog.into_iter().map(|s| RoomEvent::Signal {
            signal: Arc::new(s),
            received: None,
        });
        for event in std::iter::once(joined).chain(backlog) {
            if conn.events.try_send(event).is_err() {
                let _ = conn.kick.send(Kick::SlowConsumer);
                let _ = self
                    .args
                    .bus
                    .leave(&self.args.couple, &device, &owner)
                    .await;
                return Ok(());
            }
        }
        let local = Local {
            conn,
            owner,
            through: state.head,
        };
        self.local.insert(device, local);
        Ok(())
    }

    /// Drops a local socket (kicking it if `kick`) and gives up its presence on the bus.
    async fn drop_local(&mut self, device: &DeviceId, kick: Option<Kick>) {
        let Some(local) = self.local.remove(device) else {
            return;
        };
        if let Some(k) = kick {
            let _ = local.conn.kick.send(k);
        }
        let left = self
            .args
            .bus
            .leave(&self.args.couple, device, &local.owner)
            .await;
        if let Err(e) = left {
            // Its instance's lease keeps it present until a sweep, or the device rejoins.
            tracing::warn!(couple_id = %self.args.couple, cause = %e, "leave not recorded");
        }
    }

    async fn send(&mut self, relay: Relay, origin: Origin) {
        let Relay {
            from,
            to,
            payload,
            id,
            received: _,
        } = relay;
        let limit = self.args.settings.max_payload_bytes;
        let checked = if payload.len() > limit {
            Err(RoomError::PayloadTooLarge { limit })
        } else if to.as_ref() == Some(&from) {
            Err(RoomError::SelfRecipient)
        } else {
            Ok(())
        };
        if let Err(e) = checked {
            self.answer(&from, origin, id, Err(e)).await;
            return;
        }
        let signal_id = id.clone().unwrap_or_else(SignalId::generate);
        let now = self.args.clock.now();
        let (bus, settings) = (&self.args.bus, &self.args.settings);
        let append = || {
            bus.append(
                Append {
                    couple: &self.args.couple,
                    from: &from,
                    to: to.as_ref(),
                    id: &signal_id,
                    dedupe: id.is_some(),
                    payload: &payload,
                    now,
                },
                settings,
            )
        };
        let result = match self.refreshed(append).await {
            Ok(Appended::Fresh {
                seq,
                expired,
                evicted,
            }) => {
                self.args.metrics.signal_relayed(origin.transport());
                self.args.metrics.signals_expired(expired as u64);
                self.args.metrics.signals_evicted(evicted);
                Ok(seq)
            }
            Ok(Appended::Duplicate(seq)) => Ok(seq),
            Err(e) => Err(RoomError::from(e)),
        };
        let result = result.map(|seq| Accepted { id: signal_id, seq });
        self.answer(&from, origin, id, result).await;
    }

    /// Tells the sender how its signal fared (see `room::answer`).
    async fn answer(
        &mut self,
        from: &DeviceId,
        origin: Origin,
        id: Option<SignalId>,
        result: Result<Accepted, RoomError>,
    ) {
        let Some((conn, event)) = answer(origin, id, result) else {
            return;
        };
        if self.local.get(from).is_some_and(|l| l.conn.id == conn) {
            self.push(from, event).await;
        }
    }

    /// Pushes one event to a local socket; a full queue drops it as a slow consumer.
    async fn push(&mut self, device: &DeviceId, event: RoomEvent) -> bool {
        let Some(local) = self.local.get(device) else {
            return false;
        };
        match local.conn.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(couple_id = %self.args.couple, device_id = %device, "disconnecting slow consumer");
                self.drop_local(device, Some(Kick::SlowConsumer)).await;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.drop_local(device, None).await;
                false
            }
        }
    }

    /// Sends an event to every local socket but `except`'s.
    async fn broadcast(&mut self, except: &DeviceId, event: &RoomEvent) {
        let targets: Vec<DeviceId> = self
            .local
            .keys()
            .filter(|d| *d != except)
            .cloned()
            .collect();
        for d in targets {
            self.push(&d, event.clone()).await;
        }
    }

    async fn on_event(&mut self, event: BusEvent) {
        match event {
            BusEvent::Signal {
                signal,
                to,
                published_ms,
            } => {
                let received = received_at(published_ms);
                for d in to {
                    self.deliver(&d, &signal, received).await;
                }
            }
            BusEvent::Joined { device, owner } => {
                // A join's presence snapshot may have announced it already.
                if self.present.insert(device.clone(), owner.clone()) != Some(owner) {
                    self.broadcast(&device, &RoomEvent::PeerJoined(device.clone()))
                        .await;
                }
            }
            BusEvent::Replaced { device, old, new } => {
                self.present.insert(device.clone(), new);
                if self.local.get(&device).is_some_and(|l| l.owner == old)
                    && let Some(local) = self.local.remove(&device)
                {
                    let _ = local.conn.kick.send(Kick::Replaced);
                }
            }
            BusEvent::Left { device, owner } => {
                // Our own socket, removed by another instance: this instance was taken for
                // dead (it lost its lease). The socket is let go without a close, so its
                // client hears the room is gone and joins again (protocol §5.7).
                if self.local.get(&device).is_some_and(|l| l.owner == owner) {
                    self.local.remove(&device);
                }
                if self.present.get(&device) == Some(&owner) {
                    self.present.remove(&device);
                    self.broadcast(&device, &RoomEvent::PeerLeft(device.clone()))
                        .await;
                }
            }
            BusEvent::Revoked { device } => {
                if let Some(local) = self.local.remove(&device) {
                    let _ = local.conn.kick.send(Kick::Revoked);
                }
                if self.present.remove(&device).is_some() {
                    self.broadcast(&device, &RoomEvent::PeerLeft(device.clone()))
                        .await;
                }
            }
            BusEvent::Resync => self.resync().await,
        }
    }

    /// Hands a channel signal to the recipient's local socket, unless its backlog (or an
    /// earlier event) already covered it; `received` (a live relay) is for the latency metric.
    async fn deliver(
        &mut self,
        device: &DeviceId,
        signal: &Arc<crate::mailbox::Signal>,
        received: Option<std::time::Instant>,
    ) {
        let Some(local) = self.local.get_mut(device) else {
            return;
        };
        if signal.seq <= local.through {
            return;
        }
        local.through = signal.seq;
        let event = RoomEvent::Signal {
            signal: Arc::clone(signal),
            received,
        };
        self.push(device, event).await;
    }

    /// After a lost subscription: reads what each local socket may have missed, and the
    /// presence, and tells the sockets the difference (and lets go of the ones the bus no
    /// longer names).
    async fn resync(&mut self) {
        let now = self.args.clock.now();
        let devices: Vec<(DeviceId, Seq)> = self
            .local
            .iter()
            .map(|(d, l)| (d.clone(), l.through))
            .collect();
        for (device, through) in devices {
            let missed = self
                .args
                .bus
                .fetch(&self.args.couple, &device, None, Some(through), now)
                .await;
            match missed {
                Ok((signals, _)) => {
                    for s in signals {
                        self.deliver(&device, &Arc::new(s), None).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(couple_id = %self.args.couple, cause = %e, "resync failed");
                }
            }
        }
        let Ok(present) = self.args.bus.presence(&self.args.couple).await else {
            return;
        };
        let present: HashMap<DeviceId, String> = present.into_iter().collect();
        // A local socket the bus no longer names (swept while this instance was cut off, or
        // Redis lost its data) is let go: its client joins again (protocol §5.7).
        self.local
            .retain(|d, l| present.get(d).is_some_and(|owner| *owner == l.owner));
        self.apply_presence(present, None).await;
    }

    /// Takes the bus's view of who is present, telling the local sockets what changed since
    /// this room's view (events queued behind a join, or lost with a subscription, would
    /// otherwise never be told). `except` is the joining device: its own event (a join or a
    /// replacement, queued behind) announces it, so its entry stays as it was until then.
    async fn apply_presence(
        &mut self,
        mut present: HashMap<DeviceId, String>,
        except: Option<&DeviceId>,
    ) {
        if let Some(d) = except {
            match self.present.get(d) {
                Some(owner) => present.insert(d.clone(), owner.clone()),
                None => present.remove(d),
            };
        }
        let gone: Vec<DeviceId> = self
            .present
            .keys()
            .filter(|d| !present.contains_key(*d))
            .cloned()
            .collect();
        let new: Vec<DeviceId> = present
            .keys()
            .filter(|d| !self.present.contains_key(*d))
            .cloned()
            .collect();
        self.present = present;
        for d in gone {
            self.broadcast(&d, &RoomEvent::PeerLeft(d.clone())).await;
        }
        for d in new {
            self.broadcast(&d, &RoomEvent::PeerJoined(d.clone())).await;
        }
    }

    /// Removes presences that no socket holds any more (the bus publishes the `peer-left`):
    /// those of an instance whose lease ran out (the bus checks the lease itself), and those
    /// of this instance that no local socket owns (a leave that failed). Keeps the couple's
    /// state alive while sockets are quiet, and reports idleness.
    async fn tick(&mut self, me: &ActorRef<RoomMsg>) {
        let here = self.args.bus.instance().to_owned();
        let live = self.args.bus.live_instances();
        let stale: Vec<(DeviceId, String)> = self
            .present
            .iter()
            .filter(|(d, owner)| {
                let instance = owner_instance(owner);
                if instance == here {
                    self.local.get(*d).is_none_or(|l| l.owner != **owner)
                } else {
                    live.as_ref().is_some_and(|live| !live.contains(instance))
                }
            })
            .map(|(d, o)| (d.clone(), o.clone()))
            .collect();
        for (device, owner) in stale {
            let (bus, couple) = (&self.args.bus, &self.args.couple);
            let removed = if owner_instance(&owner) == here {
                bus.leave(couple, &device, &owner).await
            } else {
                bus.sweep(couple, &device, &owner).await
            };
            if let Ok(true) = removed {
                tracing::info!(couple_id = %couple, device_id = %device, "removed the presence of a socket that is gone");
            }
        }
        if !self.local.is_empty() && self.touched.elapsed() >= TOUCH_EVERY {
            self.touched = Instant::now();
            if let Err(e) = self.args.bus.touch(&self.args.couple).await {
                tracing::warn!(couple_id = %self.args.couple, cause = %e, "could not renew the couple's keys");
            }
        }
        if self.local.is_empty() && self.last_active.elapsed() >= self.args.settings.room_idle_after
        {
            let _ = self.args.supervisor.cast(SupervisorMsg::RoomIdle {
                couple: self.args.couple.clone(),
                room: me.get_id(),
            });
        }
    }
}

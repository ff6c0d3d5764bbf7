//! The room supervisor: the one map from couple to room actor. It spawns rooms on demand,
//! stops idle ones, and forgets a room that failed so the next request starts a fresh one
//! from durable state, without any other room noticing.
//!
//! Beside it are its handles: [`Rooms`], which the front end (and the pairing actor) calls to
//! reach a couple's room, and [`RoomLink`], a joined socket's line to its room.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SpawnErr,
    SupervisionEvent,
};

use crate::call::{CallFailure, call, try_call};
use crate::clock::Clock;
use crate::cluster::Bus;
use crate::cluster::room::{ClusterArgs, ClusterRoom};
use crate::error::RoomError;
use crate::ids::{CoupleId, DeviceId, Seq, SignalId};
use crate::mailbox::{Payload, Signal};
use crate::metrics::{DomainMetrics, Restarted, Transport};
use crate::room::{Accepted, ConnId, Connection, Origin, Relay, RoomActor, RoomArgs, RoomMsg};
use crate::settings::Settings;
use crate::store::Store;
use crate::store::group_commit::GroupCommit;

/// Attempts (backing off to 30 s) to publish a revocation the bus refused: about an hour.
const REVOKE_RETRIES: u32 = 130;

/// Requests to the supervisor.
#[derive(Debug)]
pub(crate) enum SupervisorMsg {
    /// The couple's room, started if needed.
    GetRoom {
        /// Whose room.
        couple: CoupleId,
        /// The running room.
        reply: RpcReplyPort<Result<ActorRef<RoomMsg>, RoomError>>,
    },
    /// Passes a message to the couple's room only if it is running (a stopped room reloads
    /// everything from the store anyway).
    Forward {
        /// Whose room.
        couple: CoupleId,
        /// The message.
        msg: RoomMsg,
    },
    /// A room reports it has been idle; the supervisor confirms and stops it.
    RoomIdle {
        /// Whose room.
        couple: CoupleId,
        /// Which activation, so a newer room is never stopped by an older report.
        room: ActorId,
    },
    /// Counters for health and tests.
    Stats(RpcReplyPort<SupervisorStats>),
}

/// What the supervisor has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    /// Rooms running now.
    pub rooms: usize,
    /// Rooms that failed (panicked or could not load) since start.
    pub failures: u64,
}

/// The supervisor actor.
pub(crate) struct RoomSupervisor;

/// What the supervisor starts rooms with.
pub(crate) struct SupervisorArgs {
    /// Shared by all rooms.
    pub store: Arc<dyn Store>,
    /// The domain's one writer, shared by all rooms.
    pub writer: GroupCommit,
    /// TTLs and bounds.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// Shared with every room.
    pub metrics: DomainMetrics,
    /// Cluster mode: rooms keep their state on this bus.
    pub bus: Option<Arc<dyn Bus>>,
}

/// The supervisor's map of running rooms.
pub(crate) struct SupervisorState {
    args: SupervisorArgs,
    rooms: HashMap<CoupleId, ActorRef<RoomMsg>>,
    couples: HashMap<ActorId, CoupleId>,
    failures: u64,
}

impl SupervisorState {
    /// Starts the couple's room: a cluster room when there is a bus.
    async fn spawn(
        &self,
        me: &ActorRef<SupervisorMsg>,
        couple: &CoupleId,
    ) -> Result<ActorRef<RoomMsg>, SpawnErr> {
        let a = &self.args;
        let spawned = if let Some(bus) = &a.bus {
            let args = ClusterArgs {
                couple: couple.clone(),
                bus: Arc::clone(bus),
                store: Arc::clone(&a.store),
                settings: a.settings.clone(),
                clock: a.clock.clone(),
                supervisor: me.clone(),
                metrics: a.metrics.clone(),
            };
            Actor::spawn_linked(None, ClusterRoom, args, me.get_cell()).await
        } else {
            let args = RoomArgs {
                couple: couple.clone(),
                store: Arc::clone(&a.store),
                writer: a.writer.clone(),
                settings: a.settings.clone(),
                clock: a.clock.clone(),
                supervisor: me.clone(),
                metrics: a.metrics.clone(),
            };
            Actor::spawn_linked(None, RoomActor, args, me.get_cell()).await
        };
        spawned.map(|(room, _)| room)
    }

    fn forget(&mut self, room: ActorId) -> Option<CoupleId> {
        let couple = self.couples.remove(&room)?;
        if self.rooms.get(&couple).is_some_and(|r| r.get_id() == room) {
            self.rooms.remove(&couple);
        }
        Some(couple)
    }
}

impl Actor for RoomSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        _me: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState {
            args,
            rooms: HashMap::new(),
            couples: HashMap::new(),
            failures: 0,
        })
    }

    async fn handle(
        &self,
        me: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::GetRoom { couple, reply } => {
                if let Some(room) = st.rooms.get(&couple) {
                    let _ = reply.send(Ok(room.clone()));
                    return Ok(());
                }
                match st.spawn(&me, &couple).await {
                    Ok(room) => {
                        st.couples.insert(room.get_id(), couple.clone());
                        st.rooms.insert(couple, room.clone());
                        let _ = reply.send(Ok(room));
                    }
                    Err(e) => {
                        tracing::error!(couple_id = %couple, cause = %e, "failed to start room");
                        let _ = reply.send(Err(RoomError::Unavailable));
                    }
                }
            }
            SupervisorMsg::Forward { couple, msg } => {
                if let Some(room) = st.rooms.get(&couple) {
                    let _ = room.cast(msg);
                }
            }
            SupervisorMsg::RoomIdle { couple, room } => {
                let Some(current) = st.rooms.get(&couple).filter(|r| r.get_id() == room) else {
                    return Ok(());
                };
                let stopped = current
                    .call(RoomMsg::StopIfIdle, Some(st.args.settings.call_timeout))
                    .await;
                if matches!(stopped, Ok(CallResult::Success(true))) {
                    st.forget(room);
                    tracing::debug!(couple_id = %couple, "stopped idle room");
                }
            }
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(SupervisorStats {
                    rooms: st.rooms.len(),
                    failures: st.failures,
                });
            }
        }
        Ok(())
    }

    /// A failed room is forgotten, not respawned here: its durable state is reloaded by the
    /// next request for the couple, and a room whose storage is down cannot loop on restarts.
    async fn handle_supervisor_evt(
        &self,
        _me: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                st.failures += 1;
                st.args.metrics.actor_restarted(Restarted::Room);
                if let Some(couple) = st.forget(cell.get_id()) {
                    tracing::error!(couple_id = %couple, cause = %err, "room failed; it restarts on next use");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.forget(cell.get_id());
            }
            _ => {}
        }
        Ok(())
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

/// Handle to the room supervisor: find a couple's room and talk to it.
#[derive(Clone)]
pub struct Rooms {
    sup: ActorRef<SupervisorMsg>,
    timeout: Duration,
    bus: Option<Arc<dyn Bus>>,
}

impl Rooms {
    /// Spawns the supervisor (unnamed, so parallel trees do not collide) and returns its
    /// handle.
    pub(crate) async fn start(
        store: &Arc<dyn Store>,
        writer: &GroupCommit,
        settings: &Settings,
        clock: &Clock,
        metrics: &DomainMetrics,
        bus: Option<&Arc<dyn Bus>>,
    ) -> Result<Self, SpawnErr> {
        let (sup, _) = Actor::spawn(
            None,
            RoomSupervisor,
            SupervisorArgs {
                store: Arc::clone(store),
                writer: writer.clone(),
                settings: settings.clone(),
                clock: clock.clone(),
                metrics: metrics.clone(),
                bus: bus.cloned(),
            },
        )
        .await?;
        Ok(Self {
            sup,
            timeout: settings.call_timeout,
            bus: bus.cloned(),
        })
    }

    /// Stops every room (each writes what its connected devices have not acknowledged), then
    /// the supervisor, waiting at most `timeout` for each step.
    pub(crate) async fn stop(&self, timeout: Duration) {
        let sup = self.sup.get_cell();
        sup.stop_children_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await;
        let _ = sup
            .stop_and_wait(Some("shutdown".to_owned()), Some(timeout))
            .await;
    }

    /// Tells the couple's room, if it is running, that `device` was paired into the couple
    /// (`devices`: all of them now). In cluster mode the bus learns the new list at once, so
    /// a broadcast sent right after the pairing reaches the new device too; if that fails,
    /// rooms learn it from the store the first time the bus does not know the device.
    pub(crate) async fn device_added(
        &self,
        couple: CoupleId,
        device: DeviceId,
        devices: &[crate::store::DeviceRecord],
    ) {
        let Some(bus) = &self.bus else {
            self.forward(couple, RoomMsg::DeviceAdded(device));
            return;
        };
        if let Err(e) = bus.seed(&couple, 0, devices).await {
            tracing::warn!(couple_id = %couple, device_id = %device, cause = %e, "the cluster bus does not know the new device yet");
        }
    }

    /// Tells the couple's room that `device` was revoked: its socket is closed and its
    /// mailbox dropped. In cluster mode this happens on the bus, for every instance, before
    /// this returns (a failure is logged: the device's token is already dead).
    pub(crate) async fn device_revoked(&self, couple: CoupleId, device: DeviceId) {
        let Some(bus) = &self.bus else {
            self.forward(couple, RoomMsg::DeviceRevoked(device));
            return;
        };
        if bus.device_revoked(&couple, &device).await.is_ok() {
            return;
        }
        // The store has revoked it (its token is dead), but its open socket, wherever it is,
        // only closes once the bus knows: keep trying in the background.
        tracing::error!(couple_id = %couple, device_id = %device, "revocation not yet on the cluster bus; retrying");
        let bus = Arc::clone(bus);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(200);
            for _ in 0..REVOKE_RETRIES {
                tokio::time::sleep(pause).await;
                if bus.device_revoked(&couple, &device).await.is_ok() {
                    tracing::info!(couple_id = %couple, device_id = %device, "revocation reached the cluster bus");
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(30));
            }
            tracing::error!(couple_id = %couple, device_id = %device, "revocation never reached the cluster bus; the next refresh of the couple's devices removes it");
        });
    }

    /// Runs `work` holding the couple's cluster-wide lock (at once, without a bus: the
    /// calling actor already serialises it in its process).
    ///
    /// # Errors
    /// `None` when the lock could not be taken (Redis down or the couple busy for longer
    /// than the call timeout).
    pub(crate) async fn exclusive<T>(
        &self,
        couple: &CoupleId,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let Some(bus) = &self.bus else {
            return Some(work.await);
        };
        // Half the call timeout, so a caller waiting behind a busy couple hears 503 before
        // its own call times out (and never after the work was done).
        crate::cluster::exclusive(bus.as_ref(), couple, self.timeout / 2, work)
            .await
            .inspect_err(|e| {
                tracing::warn!(couple_id = %couple, cause = %e, "could not take the couple's cluster lock");
            })
            .ok()
    }

    /// Whether the cluster bus answers (always, without one).
    pub async fn cluster_ok(&self) -> Option<bool> {
        let bus = self.bus.as_ref()?;
        Some(bus.ping().await.is_ok())
    }

    /// Passes `msg` to the couple's room only if it is running (a stopped room reloads
    /// everything from the store anyway).
    fn forward(&self, couple: CoupleId, msg: RoomMsg) {
        let _ = self.sup.cast(SupervisorMsg::Forward { couple, msg });
    }

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
            let (conn_id, transport) = (conn.id, conn.transport);
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
                    transport,
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
            relay: Relay {
                from: from.clone(),
                to: Some(to.clone()),
                payload: payload.clone(),
                id: None,
                received,
            },
            origin: Origin::Rest(reply),
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
    transport: Transport,
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
        let relay = Relay {
            from: self.device.clone(),
            to,
            payload,
            id,
            received: std::time::Instant::now(),
        };
        Ok(self.room.cast(RoomMsg::Send {
            relay,
            origin: Origin::Socket(self.conn, self.transport),
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

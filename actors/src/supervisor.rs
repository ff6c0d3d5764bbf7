//! The room supervisor: the one map from couple to room actor. It spawns rooms on demand,
//! stops idle ones, and forgets a room that failed so the next request starts a fresh one
//! from durable state, without any other room noticing.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use crate::clock::Clock;
use crate::error::RoomError;
use crate::ids::CoupleId;
use crate::metrics::{DomainMetrics, Restarted};
use crate::room::{RoomActor, RoomArgs, RoomMsg};
use crate::settings::Settings;
use crate::store::Store;

/// Requests to the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
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
pub struct RoomSupervisor;

/// What the supervisor starts rooms with.
pub struct SupervisorArgs {
    /// Shared by all rooms.
    pub store: Arc<dyn Store>,
    /// TTLs and bounds.
    pub settings: Settings,
    /// Time source.
    pub clock: Clock,
    /// Shared with every room.
    pub metrics: DomainMetrics,
}

/// The supervisor's map of running rooms.
pub struct SupervisorState {
    args: SupervisorArgs,
    rooms: HashMap<CoupleId, ActorRef<RoomMsg>>,
    couples: HashMap<ActorId, CoupleId>,
    failures: u64,
}

impl SupervisorState {
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
                let args = RoomArgs {
                    couple: couple.clone(),
                    store: Arc::clone(&st.args.store),
                    settings: st.args.settings.clone(),
                    clock: st.args.clock.clone(),
                    supervisor: me.clone(),
                    metrics: st.args.metrics.clone(),
                };
                match Actor::spawn_linked(None, RoomActor, args, me.get_cell()).await {
                    Ok((room, _)) => {
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

//! Keeps a singleton actor (pairing, backup) running: it is spawned linked to a keeper, and
//! when it fails the keeper starts a fresh one from the same arguments and publishes its
//! address. Handles read the current address from a [`Slot`], so a restart is invisible to
//! them. (Rooms have their own supervisor: there are many, and they restart lazily.)

use std::marker::PhantomData;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use tokio::sync::watch;

use crate::metrics::{DomainMetrics, Restarted};

/// Where handles find the current instance of a kept actor.
pub(crate) struct Slot<M>(watch::Receiver<Option<ActorRef<M>>>);

impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: ractor::Message> Slot<M> {
    /// The running instance (`None` only while a restart is failing).
    #[must_use]
    pub(crate) fn current(&self) -> Option<ActorRef<M>> {
        self.0.borrow().clone()
    }

    /// Waits until an instance other than `old` is published (tests: after a fault).
    #[cfg(feature = "fault-injection")]
    pub(crate) async fn replaced(&mut self, old: ractor::ActorId) {
        loop {
            if self
                .0
                .borrow_and_update()
                .as_ref()
                .is_some_and(|a| a.get_id() != old)
            {
                return;
            }
            if self.0.changed().await.is_err() {
                return; // the keeper is gone
            }
        }
    }
}

/// What a keeper is started with.
pub(crate) struct KeeperArgs<A: Actor> {
    args: A::Arguments,
    metrics: DomainMetrics,
    which: Restarted,
    slot: watch::Sender<Option<ActorRef<A::Msg>>>,
}

/// The keeper actor of one singleton of type `A`.
pub(crate) struct Keeper<A>(PhantomData<fn() -> A>);

/// What a keeper holds.
pub(crate) struct KeeperState<A: Actor> {
    args: A::Arguments,
    metrics: DomainMetrics,
    which: Restarted,
    slot: watch::Sender<Option<ActorRef<A::Msg>>>,
    child: Option<ActorCell>,
}

impl<A> Keeper<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    /// Starts the keeper and its first child; returns the keeper and the slot to read.
    /// Restarts are counted as `which`.
    pub(crate) async fn start(
        args: A::Arguments,
        metrics: DomainMetrics,
        which: Restarted,
    ) -> Result<(ActorRef<()>, Slot<A::Msg>), SpawnErr> {
        let (tx, rx) = watch::channel(None);
        let start = KeeperArgs {
            args,
            metrics,
            which,
            slot: tx,
        };
        let (keeper, _) = Actor::spawn(None, Keeper::<A>(PhantomData), start).await?;
        Ok((keeper, Slot(rx)))
    }
}

impl<A> KeeperState<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    async fn spawn_child(&mut self, keeper: &ActorRef<()>) -> Result<(), SpawnErr> {
        let (child, _) =
            Actor::spawn_linked(None, A::default(), self.args.clone(), keeper.get_cell()).await?;
        self.child = Some(child.get_cell());
        let _ = self.slot.send(Some(child));
        Ok(())
    }
}

impl<A> Actor for Keeper<A>
where
    A: Actor + Default,
    A::Arguments: Clone + Sync,
{
    type Msg = ();
    type State = KeeperState<A>;
    type Arguments = KeeperArgs<A>;

    async fn pre_start(
        &self,
        me: ActorRef<()>,
        start: KeeperArgs<A>,
    ) -> Result<KeeperState<A>, ActorProcessingErr> {
        let mut st = KeeperState {
            args: start.args,
            metrics: start.metrics,
            which: start.which,
            slot: start.slot,
            child: None,
        };
        st.spawn_child(&me).await?;
        Ok(st)
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<()>,
        event: SupervisionEvent,
        st: &mut KeeperState<A>,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = event
            && st
                .child
                .as_ref()
                .is_some_and(|c| c.get_id() == cell.get_id())
        {
            tracing::error!(actor = std::any::type_name::<A>(), cause = %err, "actor failed; restarting it");
            let _ = st.slot.send(None);
            st.metrics.actor_restarted(st.which);
            st.spawn_child(&me).await?;
        }
        Ok(())
    }

    /// Stops the child with the keeper (shutdown).
    async fn post_stop(
        &self,
        _me: ActorRef<()>,
        st: &mut KeeperState<A>,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(child) = st.child.take() {
            let _ = child
                .stop_and_wait(
                    Some("shutdown".to_owned()),
                    Some(std::time::Duration::from_secs(5)),
                )
                .await;
        }
        Ok(())
    }
}

//! How the handles call their actors: every wait is bounded by a timeout, and a failed call
//! says whether the actor may have acted on the message (so whether a retry is safe).
//! Shared by the handles in [`crate::supervisor`], [`crate::pairing`] and [`crate::backup`].

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, RpcReplyPort};

use crate::keeper::Slot;

/// How a call to an actor can fail before the actor answered.
pub(crate) enum CallFailure<E> {
    /// The actor answered with an error.
    Refused(E),
    /// The actor was gone (stopped or failed) before it took the message: safe to retry.
    Gone,
    /// No answer (in time, or at all): the actor may have acted on it, so never retry.
    NoAnswer,
}

/// Calls an actor, waiting at most `timeout`.
pub(crate) async fn try_call<M, T, E>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
) -> Result<T, CallFailure<E>>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(r)) => r.map_err(CallFailure::Refused),
        // A timeout, or a reply port dropped because the actor failed while handling the
        // message: either way it may have acted on it, so this is never retried.
        Ok(CallResult::Timeout | CallResult::SenderError) => Err(CallFailure::NoAnswer),
        Err(_) => Err(CallFailure::Gone),
    }
}

/// Calls an actor, mapping "no answer" to `unavailable`.
pub(crate) async fn call<M, T, E>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
    unavailable: E,
) -> Result<T, E>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    try_call(actor, build, timeout).await.map_err(|f| match f {
        CallFailure::Refused(e) => e,
        CallFailure::Gone | CallFailure::NoAnswer => unavailable,
    })
}

/// Calls the current instance of a kept actor; none running (a restart is failing) is
/// `unavailable` too.
pub(crate) async fn call_kept<M, T, E>(
    slot: &Slot<M>,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
    timeout: Duration,
    unavailable: E,
) -> Result<T, E>
where
    M: ractor::Message,
    T: Send + 'static,
    E: Send + 'static,
{
    match slot.current() {
        Some(actor) => call(&actor, build, timeout, unavailable).await,
        None => Err(unavailable),
    }
}

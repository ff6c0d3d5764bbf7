//! Graceful shutdown: one trigger, many listeners, and a bounded wait until every listener
//! (HTTP connection, WebSocket session) has finished. The listeners' drop is the "done"
//! signal, as in mini-redis.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Owned by the server loop.
pub struct Shutdown {
    notify: watch::Sender<bool>,
    done_tx: mpsc::Sender<()>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by each task that must finish before the server exits.
#[derive(Clone)]
pub struct ShutdownListener {
    notify: watch::Receiver<bool>,
    _done: Option<mpsc::Sender<()>>,
}

/// What shared, long-lived state holds (the [`crate::state::AppState`] that route filters and
/// Socket.IO's handlers keep): it tells whether shutdown has begun and gives a task its own
/// [`ShutdownListener`], without holding the server open itself. (Socket.IO keeps its
/// handlers, and so this, for as long as any Engine.IO connection lives, including one that
/// never connects a namespace.)
#[derive(Clone)]
pub struct ShutdownHandle {
    notify: watch::Receiver<bool>,
    done: mpsc::WeakSender<()>,
}

impl ShutdownHandle {
    /// Whether shutdown has begun (for readiness).
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        *self.notify.borrow()
    }

    /// A listener for a task that the server waits for (a session).
    #[must_use]
    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            notify: self.notify.clone(),
            _done: self.done.upgrade(),
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        let (notify, _) = watch::channel(false);
        let (done_tx, done_rx) = mpsc::channel(1);
        Self {
            notify,
            done_tx,
            done_rx,
        }
    }
}

impl Shutdown {
    /// A new listener.
    #[must_use]
    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            notify: self.notify.subscribe(),
            _done: Some(self.done_tx.clone()),
        }
    }

    /// A handle for shared state, which does not hold the server open.
    #[must_use]
    pub fn handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            notify: self.notify.subscribe(),
            done: self.done_tx.downgrade(),
        }
    }

    /// Tells every listener to finish and waits for all of them, at most `timeout`.
    /// Returns whether everyone finished in time.
    pub async fn trigger_and_wait(self, timeout: Duration) -> bool {
        let Self {
            notify,
            done_tx,
            mut done_rx,
        } = self;
        let _ = notify.send(true);
        drop(done_tx);
        tokio::time::timeout(timeout, done_rx.recv()).await.is_ok()
    }
}

impl ShutdownListener {
    /// Resolves once shutdown has begun.
    pub async fn recv(&mut self) {
        let _ = self.notify.wait_for(|stop| *stop).await;
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_listeners_and_is_bounded() {
        let s = Shutdown::default();
        let mut l = s.listener();
        let task = tokio::spawn(async move {
            l.recv().await;
        });
        assert!(s.trigger_and_wait(Duration::from_secs(5)).await);
        task.await.unwrap();

        let s = Shutdown::default();
        let stuck = s.listener();
        assert!(!s.trigger_and_wait(Duration::from_millis(10)).await);
        drop(stuck);
    }

    #[tokio::test]
    async fn a_handle_does_not_hold_the_server_open_but_its_listeners_do() {
        let s = Shutdown::default();
        let handle = s.handle();
        let stuck = handle.listener();
        assert!(!s.trigger_and_wait(Duration::from_millis(10)).await);
        drop(stuck);

        let s = Shutdown::default();
        let handle = s.handle();
        let mut l = handle.listener();
        let task = tokio::spawn(async move { l.recv().await });
        assert!(s.trigger_and_wait(Duration::from_secs(5)).await);
        task.await.unwrap();
        assert!(handle.is_shutting_down());
    }
}

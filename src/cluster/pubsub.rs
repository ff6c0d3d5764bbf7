//! The instance's one subscriber connection: couple channels are subscribed while a room of
//! the couple runs here, and each message goes to that room. When the connection drops it
//! reconnects (backing off from 100 ms to 2 s), subscribes every channel again, and tells
//! every room to resync: pub/sub delivers at most once, so what was published meanwhile is
//! read back from the streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actors::cluster::{BusError, BusEvent, BusSink};
use futures_util::StreamExt;
use redis::Client;
use redis::aio::PubSubSink;
use tokio::task::JoinHandle;

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// A subscribed channel: its room's sink, and which subscription that is.
struct Entry {
    id: u64,
    sink: Arc<BusSink>,
}

/// Channel → room, and the live subscriber connection.
pub(super) struct Subscriptions {
    rooms: Mutex<HashMap<String, Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Bound on every call on the subscriber connection.
    timeout: Duration,
    /// Tells the reader to drop the connection and reconnect (it stopped answering pings).
    reset: tokio::sync::Notify,
}

impl Subscriptions {
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            rooms: Mutex::default(),
            next_id: std::sync::atomic::AtomicU64::new(0),
            sink: tokio::sync::Mutex::default(),
            timeout,
            reset: tokio::sync::Notify::new(),
        }
    }

    /// Pings Redis over the subscriber connection; one that does not answer in time is
    /// dropped and opened again (a half-open connection would otherwise never end, and the
    /// rooms would stop hearing their channels without knowing).
    pub(super) async fn check(&self) {
        let mut slot = self.sink.lock().await;
        let Some(sink) = slot.as_mut() else { return };
        let pong = tokio::time::timeout(self.timeout, sink.ping::<redis::Value>()).await;
        if !matches!(pong, Ok(Ok(_))) {
            *slot = None;
            self.reset.notify_one();
        }
    }

    /// Opens the subscriber connection (failing if Redis does not answer) and spawns the
    /// task that reads it and reconnects.
    pub(super) async fn start(
        self: &Arc<Self>,
        client: Client,
    ) -> redis::RedisResult<JoinHandle<()>> {
        let (sink, stream) = client.get_async_pubsub().await?.split();
        *self.sink.lock().await = Some(sink);
        let subs = Arc::clone(self);
        Ok(tokio::spawn(async move {
            let mut stream = stream;
            loop {
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => subs.dispatch(msg.get_channel_name(), msg.get_payload_bytes()),
                            None => break,
                        },
                        () = subs.reset.notified() => break,
                    }
                }
                *subs.sink.lock().await = None;
                tracing::warn!("lost the Redis subscriber connection; reconnecting");
                stream = subs.reconnect(&client).await;
            }
        }))
    }

    /// Reconnects until it succeeds, subscribes every channel again, and asks every room to
    /// resync.
    async fn reconnect(&self, client: &Client) -> redis::aio::PubSubStream {
        let mut backoff = BACKOFF_MIN;
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let Ok(pubsub) = client.get_async_pubsub().await else {
                continue;
            };
            let (mut sink, stream) = pubsub.split();
            let mut slot = self.sink.lock().await;
            let channels: Vec<String> = self.rooms().keys().cloned().collect();
            if !channels.is_empty()
                && !matches!(
                    tokio::time::timeout(self.timeout, sink.subscribe(&channels)).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
            *slot = Some(sink);
            drop(slot);
            tracing::info!(
                channels = channels.len(),
                "Redis subscriber connection is back"
            );
            let sinks: Vec<Arc<BusSink>> =
                self.rooms().values().map(|e| Arc::clone(&e.sink)).collect();
            for sink in sinks {
                sink(BusEvent::Resync);
            }
            return stream;
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dispatch(&self, channel: &str, payload: &[u8]) {
        let sink = self.rooms().get(channel).map(|e| Arc::clone(&e.sink));
        let Some(sink) = sink else { return };
        if let Some(event) = super::wire::event(payload) {
            sink(event);
        } else {
            tracing::error!(channel, "ignoring a malformed cluster message");
        }
    }

    /// Routes `channel` to `sink` and subscribes it; returns once Redis confirmed.
    pub(super) async fn subscribe(&self, channel: String, sink: BusSink) -> Result<u64, BusError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let entry = Entry {
            id,
            sink: Arc::new(sink),
        };
        self.rooms().insert(channel.clone(), entry);
        let mut slot = self.sink.lock().await;
        let subscribed = match slot.as_mut() {
            Some(sink) => {
                match tokio::time::timeout(self.timeout, sink.subscribe(&channel)).await {
                    Ok(done) => done.map_err(|e| BusError::Unavailable(e.to_string())),
                    Err(_) => Err(BusError::Unavailable(
                        "Redis did not confirm the subscription in time".to_owned(),
                    )),
                }
            }
            None => Err(BusError::Unavailable(
                "the Redis subscriber connection is down".to_owned(),
            )),
        };
        drop(slot);
        if subscribed.is_err() {
            self.forget(&channel, id);
        }
        subscribed.map(|()| id)
    }

    /// Drops `channel`'s route if it is still subscription `id`'s, and unsubscribes it.
    /// Holds the connection meanwhile, so a new subscription of the channel either replaced
    /// the route before (and nothing is unsubscribed) or subscribes after.
    pub(super) async fn unsubscribe(&self, channel: &str, id: u64) {
        let mut slot = self.sink.lock().await;
        if self.forget(channel, id)
            && let Some(sink) = slot.as_mut()
        {
            let _ = tokio::time::timeout(self.timeout, sink.unsubscribe(channel)).await;
        }
    }

    fn forget(&self, channel: &str, id: u64) -> bool {
        let mut rooms = self.rooms();
        if rooms.get(channel).is_some_and(|e| e.id == id) {
            rooms.remove(channel);
            return true;
        }
        false
    }
}

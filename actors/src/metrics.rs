//! The domain's Prometheus metrics. They live in a registry the caller owns (not the
//! process-global one), so two servers in one process never mix their counts. Every label is a
//! closed set (transport, actor, backend, operation): never a couple, device or token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Prefix of every metric the server defines (`our_memories_...`).
pub const NAMESPACE: &str = "our_memories";

/// Relay latency buckets, in seconds: a live relay takes well under a millisecond unloaded.
const RELAY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Storage operation buckets, in seconds: from an embedded read to a 100 MiB blob write.
const STORAGE_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// The transports a signal can arrive on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A joined WebSocket (`GET /ws`).
    WebSocket,
    /// A joined Socket.IO socket (`/socket.io/`).
    SocketIo,
    /// `POST /api/signal`.
    Rest,
}

impl Transport {
    fn label(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::SocketIo => "socketio",
            Self::Rest => "rest",
        }
    }
}

/// The actors that are restarted after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restarted {
    /// A couple's room (restarted lazily, on the couple's next request).
    Room,
    /// The pairing actor.
    Pairing,
    /// The backup actor.
    Backup,
}

impl Restarted {
    fn label(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Pairing => "pairing",
            Self::Backup => "backup",
        }
    }
}

/// Handles to the domain's metric families; cheap to clone into every actor.
#[derive(Clone)]
pub struct DomainMetrics(Arc<Families>);

struct Families {
    rooms_active: IntGauge,
    mailbox_signals: IntGauge,
    /// `signals_relayed_total` by transport, resolved once: counted on every relay.
    relayed_websocket: IntCounter,
    relayed_socketio: IntCounter,
    relayed_rest: IntCounter,
    relay_latency: Histogram,
    signals_expired: IntCounter,
    signals_evicted: IntCounter,
    couples_expired: IntCounter,
    actor_restarts: IntCounterVec,
    storage_duration: HistogramVec,
    storage_errors: IntCounterVec,
}

/// Options for a counter or gauge named `our_memories_<name>`.
pub fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// Options for a histogram named `our_memories_<name>` with these buckets (seconds).
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(buckets.to_vec())
}

/// Registers a collector and hands it back.
pub fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

impl DomainMetrics {
    /// Creates the families in `registry`. Fails only if the names are taken there already.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let r = registry;
        let relayed = registered(
            r,
            IntCounterVec::new(
                opts(
                    "signals_relayed_total",
                    "Signals accepted for relay, by the transport the sender used.",
                ),
                &["transport"],
            )?,
        )?;
        let families = Families {
            rooms_active: registered(
                r,
                IntGauge::with_opts(opts("rooms_active", "Couple rooms running now."))?,
            )?,
            mailbox_signals: registered(
                r,
                IntGauge::with_opts(opts(
                    "mailbox_signals",
                    "Signals waiting for acknowledgement in the mailboxes of running rooms.",
                ))?,
            )?,
            relayed_websocket: relayed.with_label_values(&[Transport::WebSocket.label()]),
            relayed_socketio: relayed.with_label_values(&[Transport::SocketIo.label()]),
            relayed_rest: relayed.with_label_values(&[Transport::Rest.label()]),
            relay_latency: registered(
                r,
                Histogram::with_opts(histogram(
                    "signal_relay_latency_seconds",
                    "Time from the server receiving a signal to writing it to the recipient's socket (live relays only).",
                    RELAY_BUCKETS,
                ))?,
            )?,
            signals_expired: registered(
                r,
                IntCounter::with_opts(opts(
                    "signals_expired_total",
                    "Signals whose TTL (SIGNAL_TTL_SECS) passed before their recipient acknowledged them.",
                ))?,
            )?,
            signals_evicted: registered(
                r,
                IntCounter::with_opts(opts(
                    "signals_evicted_total",
                    "Delivered but unacknowledged signals dropped to make room in a full mailbox.",
                ))?,
            )?,
            couples_expired: registered(
                r,
                IntCounter::with_opts(opts(
                    "couples_expired_total",
                    "Couples deleted because their pairing expired (PAIRING_TTL_SECS) before any device confirmed it.",
                ))?,
            )?,
            actor_restarts: registered(
                r,
                IntCounterVec::new(
                    opts(
                        "actor_restarts_total",
                        "Actors that failed and were restarted, by actor.",
                    ),
                    &["actor"],
                )?,
            )?,
            storage_duration: registered(
                r,
                HistogramVec::new(
                    histogram(
                        "storage_operation_duration_seconds",
                        "Duration of storage operations, by backend and operation.",
                        STORAGE_BUCKETS,
                    ),
                    &["backend", "operation"],
                )?,
            )?,
            storage_errors: registered(
                r,
                IntCounterVec::new(
                    opts(
                        "storage_operation_errors_total",
                        "Storage operations that failed, by backend and operation.",
                    ),
                    &["backend", "operation"],
                )?,
            )?,
        };
        // Known label values start at zero, so rates and alerts see them before the first event.
        for a in [Restarted::Room, Restarted::Pairing, Restarted::Backup] {
            families.actor_restarts.with_label_values(&[a.label()]);
        }
        Ok(Self(Arc::new(families)))
    }

    /// Metrics in a registry of their own, for tests that do not read them.
    #[must_use]
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).unwrap_or_else(|_| unreachable!("a new registry is empty"))
    }

    /// A running room: counted while the guard lives (a panicking room drops it too).
    pub(crate) fn room_guard(&self) -> GaugeShare {
        GaugeShare::new(self.0.rooms_active.clone(), 1)
    }

    /// A room's share of the mailbox-depth gauge, returned when the room goes away.
    pub(crate) fn mailbox_share(&self) -> GaugeShare {
        GaugeShare::new(self.0.mailbox_signals.clone(), 0)
    }

    /// A signal accepted for relay.
    pub(crate) fn signal_relayed(&self, transport: Transport) {
        match transport {
            Transport::WebSocket => self.0.relayed_websocket.inc(),
            Transport::SocketIo => self.0.relayed_socketio.inc(),
            Transport::Rest => self.0.relayed_rest.inc(),
        }
    }

    /// A live signal written to its recipient's socket, `received` being when it arrived.
    pub fn signal_written(&self, received: Instant) {
        self.0
            .relay_latency
            .observe(received.elapsed().as_secs_f64());
    }

    /// Signals that expired undelivered.
    pub(crate) fn signals_expired(&self, count: u64) {
        if count > 0 {
            self.0.signals_expired.inc_by(count);
        }
    }

    /// Delivered signals evicted from a full mailbox.
    pub(crate) fn signals_evicted(&self, count: usize) {
        self.0.signals_evicted.inc_by(count as u64);
    }

    /// Never-confirmed couples deleted by the janitor.
    pub(crate) fn couples_expired(&self, count: u64) {
        self.0.couples_expired.inc_by(count);
    }

    /// An actor failed and was (or will be) restarted.
    pub(crate) fn actor_restarted(&self, actor: Restarted) {
        self.0
            .actor_restarts
            .with_label_values(&[actor.label()])
            .inc();
    }

    /// One storage operation's outcome and duration (the cluster bus's too, recorded by the
    /// front end, which implements it).
    pub fn storage_op(&self, backend: &str, operation: &str, took: Duration, ok: bool) {
        let labels = [backend, operation];
        self.0
            .storage_duration
            .with_label_values(&labels)
            .observe(took.as_secs_f64());
        // The error series exists from the first operation on, at zero while all is well.
        let errors = self.0.storage_errors.with_label_values(&labels);
        if !ok {
            errors.inc();
        }
    }
}

/// One owner's part of a shared gauge: set it with [`GaugeShare::set`]; whatever it holds is
/// taken off the gauge when the share is dropped, whichever way its owner ends.
pub struct GaugeShare {
    gauge: IntGauge,
    value: i64,
}

impl GaugeShare {
    /// Adds `value` to `gauge` until the share is dropped.
    #[must_use]
    pub fn new(gauge: IntGauge, value: i64) -> Self {
        gauge.add(value);
        Self { gauge, value }
    }

    /// Makes this owner's part `value`.
    pub(crate) fn set(&mut self, value: usize) {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        self.gauge.add(value - self.value);
        self.value = value;
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.gauge.sub(self.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_leave_with_their_owner() {
        let registry = Registry::new();
        let m = DomainMetrics::register(&registry).unwrap();
        let mut a = m.mailbox_share();
        let mut b = m.mailbox_share();
        a.set(3);
        b.set(4);
        a.set(1);
        assert_eq!(m.0.mailbox_signals.get(), 5);
        drop(b);
        assert_eq!(m.0.mailbox_signals.get(), 1);
        let room = m.room_guard();
        assert_eq!(m.0.rooms_active.get(), 1);
        drop(room);
        drop(a);
        assert_eq!((m.0.rooms_active.get(), m.0.mailbox_signals.get()), (0, 0));
    }

    #[test]
    fn names_follow_the_conventions_and_taken_names_are_an_error() {
        let registry = Registry::new();
        DomainMetrics::register(&registry).unwrap();
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("our_memories_")),
            "{names:?}"
        );
        assert!(names.contains(&"our_memories_signals_relayed_total".to_owned()));
        assert!(DomainMetrics::register(&registry).is_err());
    }
}

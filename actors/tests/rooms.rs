//! Actor-level tests: a fresh tree per test, driven through the typed handles (no HTTP).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

#[path = "support/domain.rs"]
mod support;
use support::domain_with;

use our_memories_actors::{
    Clock, Connection, CoupleId, DeviceId, Domain, DomainMetrics, Kick, Payload, RoomError,
    RoomEvent, Settings, Transport,
};

async fn domain(dir: &std::path::Path, settings: Settings) -> Domain {
    domain_with_clock(dir, settings, Clock::manual()).await
}

async fn domain_with_clock(dir: &std::path::Path, settings: Settings, clock: Clock) -> Domain {
    domain_with(dir, settings, clock, DomainMetrics::unregistered()).await
}

/// Pairs a couple `a` + `b` through the pairing handle.
async fn pair(d: &Domain) -> CoupleId {
    let a = DeviceId::parse("a").unwrap();
    let started = d.pairing.initiate(a, None).await.unwrap();
    d.pairing
        .confirm(
            started.couple.clone(),
            started.pairing_token,
            DeviceId::parse("b").unwrap(),
        )
        .await
        .unwrap();
    started.couple
}

#[tokio::test(start_paused = true)]
async fn idle_rooms_stop_and_a_later_request_restarts_them_with_their_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        room_idle_after: Duration::from_mins(1),
        room_tick: Duration::from_secs(5),
        ..Settings::default()
    };
    let d = domain(dir.path(), settings).await;
    let couple = pair(&d).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    let sent = d
        .rooms
        .send(&couple, &a, &b, Payload::parse("{\"sdp\":1}").unwrap())
        .await
        .unwrap();
    assert_eq!(d.rooms.stats().await.unwrap().rooms, 1);

    // Virtual time: the room ticks, finds itself idle, and the supervisor stops it.
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(d.rooms.stats().await.unwrap().rooms, 0);

    // The next request starts a fresh room, which reloads the stored signal.
    let pending = d.rooms.fetch(&couple, &b, None).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].id.clone(), pending[0].seq), (sent.id, sent.seq));
    assert_eq!(
        d.rooms.stats().await.unwrap(),
        our_memories_actors::SupervisorStats {
            rooms: 1,
            failures: 0
        }
    );
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_tree_stops_cleanly_and_handles_then_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path(), Settings::default()).await;
    let couple = pair(&d).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    assert_eq!(
        d.rooms
            .send(&couple, &a, &a, Payload::parse("1").unwrap())
            .await,
        Err(RoomError::SelfRecipient)
    );
    d.rooms
        .send(&couple, &a, &b, Payload::parse("1").unwrap())
        .await
        .unwrap();
    let rooms = d.rooms.clone();
    d.shutdown(Duration::from_secs(5)).await;
    // Every actor is gone: the handle answers "unavailable" instead of hanging.
    assert_eq!(rooms.stats().await, Err(RoomError::Unavailable));
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_and_loses_nothing() {
    use our_memories_actors::{Connection, Kick, RoomEvent, Seq};

    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path(), Settings::default()).await;
    let couple = pair(&d).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    // b's socket queue holds 3 events and nobody reads it.
    let (events, mut queue) = mpsc::channel::<RoomEvent>(3);
    let (kick, mut kicked) = oneshot::channel();
    let mut conn = Some(Connection {
        id: 1,
        events,
        kick,
        transport: Transport::WebSocket,
    });
    d.rooms
        .join(&couple, &b, None, || conn.take().unwrap())
        .await
        .unwrap();
    for i in 0..5 {
        d.rooms
            .send(&couple, &a, &b, Payload::parse(i.to_string()).unwrap())
            .await
            .unwrap();
    }
    assert_eq!(kicked.try_recv(), Ok(Kick::SlowConsumer));
    // Nothing accepted was dropped: the mailbox still has all five, in order.
    let pending = d.rooms.fetch(&couple, &b, None).await.unwrap();
    let payloads: Vec<_> = pending
        .iter()
        .map(|s| s.payload.as_str().to_owned())
        .collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4"]);
    // What did reach the queue before the kick is a prefix, in order.
    assert!(matches!(queue.try_recv(), Ok(RoomEvent::Joined(_))));
    let mut last = Seq(0);
    while let Ok(RoomEvent::Signal { signal: s, .. }) = queue.try_recv() {
        assert!(s.seq > last);
        last = s.seq;
    }
    d.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(start_paused = true)]
async fn a_device_paired_again_under_a_revoked_id_never_gets_the_old_ones_signals() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let d = domain_with_clock(dir.path(), Settings::default(), clock.clone()).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    let started = d.pairing.initiate(a.clone(), None).await.unwrap();
    let (couple, a_token) = (started.couple.clone(), started.device_token);
    d.pairing
        .confirm(couple.clone(), started.pairing_token, b.clone())
        .await
        .unwrap();
    d.rooms
        .send(
            &couple,
            &a,
            &b,
            Payload::parse("\"for the old b\"").unwrap(),
        )
        .await
        .unwrap();
    // The room goes idle and stops; then b is revoked while no room runs.
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(d.rooms.stats().await.unwrap().rooms, 0);
    let claims = d.pairing.authenticate(&a_token).await.unwrap();
    d.pairing.revoke(claims, b.clone()).await.unwrap();
    // A moment later a new device takes the id b: the old b's stored signal is not its.
    clock.advance(Duration::from_secs(1));
    let again = d
        .pairing
        .initiate(
            a.clone(),
            Some(d.pairing.authenticate(&a_token).await.unwrap()),
        )
        .await
        .unwrap();
    d.pairing
        .confirm(couple.clone(), again.pairing_token, b.clone())
        .await
        .unwrap();
    assert!(d.rooms.fetch(&couple, &b, None).await.unwrap().is_empty());
    d.shutdown(Duration::from_secs(5)).await;
}

/// One series' value in the text exposition, e.g. `our_memories_rooms_active` or
/// `our_memories_signals_relayed_total{transport="rest"}`; `None` when it is not exported.
fn sample(registry: &prometheus::Registry, series: &str) -> Option<String> {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    text.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| *name == series)
        .map(|(_, v)| v.to_owned())
}

#[tokio::test]
async fn metrics_follow_rooms_mailboxes_relays_expiry_and_storage() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let registry = prometheus::Registry::new();
    let metrics = DomainMetrics::register(&registry).unwrap();
    let d = domain_with(dir.path(), Settings::default(), clock.clone(), metrics).await;
    let get = |series: &str| sample(&registry, series).unwrap_or_default();
    assert_eq!(get("our_memories_rooms_active"), "0");
    let couple = pair(&d).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());

    // b is connected and never acknowledges: the signal waits in memory only.
    let (events, mut queue) = mpsc::channel(16);
    let (kick, _kicked) = oneshot::channel();
    let mut conn = Some(Connection {
        id: 1,
        events,
        kick,
        transport: Transport::WebSocket,
    });
    let _link = d
        .rooms
        .join(&couple, &b, None, || conn.take().unwrap())
        .await
        .unwrap();
    d.rooms
        .send(&couple, &a, &b, Payload::parse("1").unwrap())
        .await
        .unwrap();
    assert_eq!(get("our_memories_rooms_active"), "1");
    assert_eq!(get("our_memories_mailbox_signals"), "1");
    assert_eq!(
        get(r#"our_memories_signals_relayed_total{transport="rest"}"#),
        "1"
    );
    assert_eq!(
        get(r#"our_memories_signals_relayed_total{transport="websocket"}"#),
        "0"
    );
    let live = std::iter::from_fn(|| queue.try_recv().ok())
        .find_map(|e| match e {
            RoomEvent::Signal { received, .. } => Some(received),
            _ => None,
        })
        .expect("relayed live");
    assert!(live.is_some(), "a live relay carries its arrival time");

    // Past the TTL, the room drops it and counts it as expired undelivered.
    clock.advance(Duration::from_mins(6));
    assert!(d.rooms.fetch(&couple, &b, None).await.unwrap().is_empty());
    assert_eq!(get("our_memories_signals_expired_total"), "1");
    assert_eq!(get("our_memories_mailbox_signals"), "0");

    // Storage operations are timed by backend and operation.
    assert!(
        get(
            r#"our_memories_storage_operation_duration_seconds_count{backend="embedded",operation="save_device_and_pairing"}"#
        )
        .parse::<u64>()
        .unwrap()
            >= 1
    );
    assert_eq!(
        get(
            r#"our_memories_storage_operation_errors_total{backend="embedded",operation="save_device_and_pairing"}"#
        ),
        "0"
    );
    d.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        get("our_memories_rooms_active"),
        "0",
        "a stopped room leaves the gauge"
    );
}

/// Commits of the domain's writer so far (`write_batch`), and writes of `operation` so far
/// (each write of a batch is counted under its own operation too).
fn storage_count(registry: &prometheus::Registry, operation: &str) -> u64 {
    let series = format!(
        r#"our_memories_storage_operation_duration_seconds_count{{backend="embedded",operation="{operation}"}}"#
    );
    sample(registry, &series).map_or(0, |v| v.parse().unwrap())
}

/// A socket's end of a [`Connection`]: its events and the kick sender's other end.
fn socket(
    id: u64,
) -> (
    Connection,
    mpsc::Receiver<RoomEvent>,
    oneshot::Receiver<Kick>,
) {
    let (events, queue) = mpsc::channel(64);
    let (kick, kicked) = oneshot::channel();
    let conn = Connection {
        id,
        events,
        kick,
        transport: Transport::WebSocket,
    };
    (conn, queue, kicked)
}

/// Many devices dropping their sockets at once, each with signals it never acknowledged: the
/// writes go to the store in a few group commits, not one transaction each, and every signal
/// is kept.
#[tokio::test]
async fn a_mass_disconnect_is_committed_in_a_few_batches_and_keeps_every_signal() {
    const COUPLES: usize = 64;
    const SIGNALS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let metrics = DomainMetrics::register(&registry).unwrap();
    let d = domain_with(dir.path(), Settings::default(), Clock::manual(), metrics).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    let mut sockets = Vec::new();
    for _ in 0..COUPLES {
        let couple = pair(&d).await;
        let (a_conn, a_events, a_kick) = socket(1);
        let (b_conn, mut b_events, b_kick) = socket(2);
        let mut a_conn = Some(a_conn);
        let mut b_conn = Some(b_conn);
        let a_link = d
            .rooms
            .join(&couple, &a, None, || a_conn.take().unwrap())
            .await
            .unwrap();
        let b_link = d
            .rooms
            .join(&couple, &b, None, || b_conn.take().unwrap())
            .await
            .unwrap();
        for i in 0..SIGNALS {
            a_link
                .send(
                    Some(b.clone()),
                    Payload::parse(i.to_string()).unwrap(),
                    None,
                )
                .unwrap();
        }
        // b is handed every signal and acknowledges none.
        let mut received = 0;
        while received < SIGNALS {
            if let RoomEvent::Signal { .. } = b_events.recv().await.unwrap() {
                received += 1;
            }
        }
        sockets.push((couple, a_events, b_link, [a_kick, b_kick], b_events));
    }
    let (commits, puts) = (
        storage_count(&registry, "write_batch"),
        storage_count(&registry, "put_signals"),
    );
    for (_, _, b_link, _, _) in &sockets {
        b_link.leave();
    }
    // Every room has handled its leave (and queued its write) once a hears `peer-left`.
    for (_, a_events, _, _, _) in &mut sockets {
        while a_events.recv().await.unwrap() != RoomEvent::PeerLeft(b.clone()) {}
    }
    // The writer is one FIFO queue: a write queued now commits after all of them.
    d.pairing.initiate(a.clone(), None).await.unwrap();
    assert_eq!(
        storage_count(&registry, "put_signals") - puts,
        COUPLES as u64,
        "each disconnect writes what its device did not acknowledge"
    );
    let commits = storage_count(&registry, "write_batch") - commits;
    assert!(
        (1..=COUPLES as u64 / 8).contains(&commits),
        "{COUPLES} disconnects took {commits} commits"
    );
    d.shutdown(Duration::from_secs(5)).await;
    let store = our_memories_actors::store::embedded::EmbeddedStore::open(dir.path()).unwrap();
    for (couple, ..) in &sockets {
        let kept = our_memories_actors::Store::pending_signals(
            &store,
            couple,
            our_memories_actors::Timestamp(0),
        )
        .await
        .unwrap();
        assert_eq!(kept.len(), SIGNALS, "couple {couple}");
    }
}

/// Initiates that create couples do not wait for each other's commit: concurrent ones share
/// a few commits, and each answers only once its couple is durable.
#[tokio::test]
async fn concurrent_initiates_share_commits() {
    const INITIATES: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let metrics = DomainMetrics::register(&registry).unwrap();
    let d = domain_with(dir.path(), Settings::default(), Clock::manual(), metrics).await;
    let a = DeviceId::parse("a").unwrap();
    let initiated =
        futures_util::future::join_all((0..INITIATES).map(|_| d.pairing.initiate(a.clone(), None)))
            .await;
    let commits = storage_count(&registry, "write_batch");
    assert!(
        (1..=INITIATES as u64 / 8).contains(&commits),
        "{INITIATES} initiates took {commits} commits"
    );
    let mut couples = std::collections::HashSet::new();
    for started in initiated {
        let started = started.unwrap();
        d.pairing.authenticate(&started.device_token).await.unwrap();
        couples.insert(started.couple);
    }
    assert_eq!(couples.len(), INITIATES);
    d.shutdown(Duration::from_secs(5)).await;
}

/// A stored signal whose payload is not JSON (a damaged store) is left out when the room
/// loads its mailboxes; the others are delivered, and nothing is written out unchecked.
#[tokio::test(start_paused = true)]
async fn a_stored_payload_that_is_not_json_is_skipped_on_load() {
    use our_memories_actors::store::StoredSignal;
    use our_memories_actors::store::embedded::EmbeddedStore;
    use our_memories_actors::{Seq, SignalId, Store, Timestamp};
    let dir = tempfile::tempdir().unwrap();
    let clock = Clock::manual();
    let d = domain_with_clock(dir.path(), Settings::default(), clock.clone()).await;
    let couple = pair(&d).await;
    d.shutdown(Duration::from_secs(5)).await;
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    let now = clock.now();
    let stored = |seq: u64, payload: &str| StoredSignal {
        couple: couple.clone(),
        to: b.clone(),
        seq: Seq(seq),
        id: SignalId::parse(format!("s{seq}")).unwrap(),
        from: a.clone(),
        payload: payload.to_owned(),
        created_at: now,
        expires_at: Timestamp(now.0 + 60_000),
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let rows = [
            stored(1, "{\"ok\":1}"),
            stored(2, "{not json"),
            stored(3, "[3]"),
        ];
        store.put_signals(&rows).await.unwrap();
    }
    clock.advance(Duration::from_secs(1));
    let d = domain_with_clock(dir.path(), Settings::default(), clock).await;
    let left = d.rooms.fetch(&couple, &b, None).await.unwrap();
    let payloads: Vec<_> = left.iter().map(|s| s.payload.as_str()).collect();
    assert_eq!(payloads, ["{\"ok\":1}", "[3]"]);
    d.shutdown(Duration::from_secs(5)).await;
}

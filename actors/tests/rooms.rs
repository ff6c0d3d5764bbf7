//! Actor-level tests: a fresh tree per test, driven through the typed handles (no HTTP).

use std::sync::Arc;
use std::time::Duration;

use our_memories_actors::store::embedded::EmbeddedStore;
use our_memories_actors::store::files::FileBlobs;
use our_memories_actors::{
    Clock, CoupleId, DeviceId, Domain, Payload, RoomError, Settings, SigningSecret, Store,
};

async fn domain(dir: &std::path::Path, settings: Settings) -> Domain {
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir).expect("store opens"));
    let blobs = Arc::new(FileBlobs::open(dir).expect("blobs open"));
    Domain::start(
        store,
        blobs,
        SigningSecret::generate(),
        settings,
        Clock::manual(),
    )
    .await
    .expect("tree starts")
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
        .send(&couple, &a, &b, Payload::new("{\"sdp\":1}"))
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
        our_memories_actors::supervisor::SupervisorStats {
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
        d.rooms.send(&couple, &a, &a, Payload::new("1")).await,
        Err(RoomError::SelfRecipient)
    );
    d.rooms
        .send(&couple, &a, &b, Payload::new("1"))
        .await
        .unwrap();
    let rooms = d.rooms.clone();
    d.shutdown(Duration::from_secs(5)).await;
    // Every actor is gone: the handle answers "unavailable" instead of hanging.
    assert_eq!(rooms.stats().await, Err(RoomError::Unavailable));
}

//! Property tests of the mailbox through a real room: under any interleaving of sends,
//! disconnects, reconnects (with `lastSeq`) and acknowledgements, a receiver that follows the
//! documented rule (process seq > last processed, ack, resume with lastSeq) processes every
//! accepted signal exactly once and in order.

use std::sync::Arc;

use our_memories_actors::store::embedded::EmbeddedStore;
use our_memories_actors::store::files::FileBlobs;
use our_memories_actors::{
    Clock, ConnId, Connection, CoupleId, DeviceId, Domain, DomainMetrics, Payload, RoomEvent,
    RoomLink, Seq, Settings, SigningSecret, Store,
};
use proptest::prelude::*;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone)]
enum Op {
    /// `a` sends the next payload to `b` over REST.
    Send,
    /// `b`'s socket goes away.
    Disconnect,
    /// `b` connects again, resuming from what it processed.
    Connect,
    /// `b` acknowledges what it processed.
    Ack,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        1 => Just(Op::Ack),
    ]
}

/// The receiving device, following the client rules of docs/protocol.md.
struct Receiver {
    socket: Option<(
        RoomLink,
        mpsc::Receiver<RoomEvent>,
        oneshot::Receiver<our_memories_actors::Kick>,
    )>,
    last: Seq,
    processed: Vec<String>,
    next_conn: ConnId,
}

impl Receiver {
    fn drain(&mut self) {
        let Some((_, events, _)) = &mut self.socket else {
            return;
        };
        while let Ok(event) = events.try_recv() {
            if let RoomEvent::Signal { signal: s, .. } = event
                && s.seq > self.last
            {
                self.last = s.seq;
                self.processed.push(s.payload.as_str().to_owned());
            }
        }
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let blobs = Arc::new(FileBlobs::open(dir.path()).unwrap());
    let d = Domain::start(
        store,
        blobs,
        SigningSecret::generate(),
        Settings::default(),
        Clock::manual(),
        DomainMetrics::unregistered(),
    )
    .await
    .unwrap();
    let a = DeviceId::parse("a").unwrap();
    let b = DeviceId::parse("b").unwrap();
    let started = d.pairing.initiate(a.clone(), None).await.unwrap();
    let couple: CoupleId = started.couple.clone();
    d.pairing
        .confirm(couple.clone(), started.pairing_token, b.clone())
        .await
        .unwrap();

    let mut rx = Receiver {
        socket: None,
        last: Seq(0),
        processed: Vec::new(),
        next_conn: 1,
    };
    let mut sent = Vec::new();
    for op in ops.into_iter().chain([Op::Connect]) {
        match op {
            Op::Send => {
                let payload = format!("{}", sent.len());
                // A call: when it returns, the room has pushed the signal to b's queue (if any).
                d.rooms
                    .send(&couple, &a, &b, Payload::new(payload.clone()))
                    .await
                    .unwrap();
                sent.push(payload);
            }
            Op::Disconnect => {
                rx.drain();
                if let Some((link, _, _)) = rx.socket.take() {
                    link.leave();
                }
            }
            Op::Connect => {
                rx.drain();
                if let Some((link, _, _)) = rx.socket.take() {
                    link.leave();
                }
                let (tx, events) = mpsc::channel(1024);
                let mut kicked = None;
                let id = rx.next_conn;
                rx.next_conn += 1;
                let link = d
                    .rooms
                    .join(&couple, &b, Some(rx.last), || {
                        let (kick, k) = oneshot::channel();
                        kicked = Some(k);
                        Connection {
                            id,
                            events: tx.clone(),
                            kick,
                        }
                    })
                    .await
                    .unwrap();
                rx.socket = Some((link, events, kicked.unwrap()));
            }
            Op::Ack => {
                rx.drain();
                if let Some((link, _, _)) = &rx.socket {
                    link.ack(rx.last).unwrap();
                }
            }
        }
        rx.drain();
    }
    // A final call through the room so every cast before it has been handled, then read.
    d.rooms.fetch(&couple, &a, None).await.unwrap();
    rx.drain();
    prop_assert_eq!(
        &rx.processed,
        &sent,
        "every accepted signal exactly once, in order"
    );
    d.shutdown(std::time::Duration::from_secs(5)).await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn exactly_once_in_order_under_any_interleaving(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}

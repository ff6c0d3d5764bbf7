//! Property tests of the mailbox through a real room: under any interleaving of sends,
//! disconnects, reconnects (with `lastSeq`) and acknowledgements, a receiver that follows the
//! documented rule (process seq > last processed, ack, resume with lastSeq) processes every
//! accepted signal exactly once and in order. A third device that stays connected and never
//! acknowledges (as a Socket.IO app written for the original server) receives every signal
//! sent to it, in order, and never makes its sender fail, however small the mailbox.

use our_memories_actors::{
    Clock, ConnId, Connection, CoupleId, DeviceId, Domain, DomainMetrics, MailboxLimits, Payload,
    RoomError, RoomEvent, RoomLink, Seq, Settings, Transport,
};
use proptest::prelude::*;

#[path = "support/domain.rs"]
mod support;
use support::domain_with;
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
    /// `a` sends the next payload to `c`, which never acknowledges.
    SendToSilent,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Send),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        1 => Just(Op::Ack),
        3 => Just(Op::SendToSilent),
    ]
}

/// The receiving device, following the client rules of docs/protocol.md.
struct Receiver {
    socket: Option<Socket>,
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

/// A small mailbox, so that full mailboxes (and evictions) happen within a test case.
const MAILBOX: MailboxLimits = MailboxLimits {
    max_signals: 6,
    max_bytes: 1024 * 1024,
};

type Socket = (
    RoomLink,
    mpsc::Receiver<RoomEvent>,
    oneshot::Receiver<our_memories_actors::Kick>,
);

/// Joins `device` with a fresh socket (a queue long enough for any test case).
async fn connect(
    d: &Domain,
    couple: &CoupleId,
    device: &DeviceId,
    last: Option<Seq>,
    id: ConnId,
) -> Socket {
    let (tx, events) = mpsc::channel(1024);
    let mut kicked = None;
    let link = d
        .rooms
        .join(couple, device, last, || {
            let (kick, k) = oneshot::channel();
            kicked = Some(k);
            Connection {
                id,
                events: tx.clone(),
                kick,
                transport: Transport::WebSocket,
            }
        })
        .await
        .unwrap();
    (link, events, kicked.unwrap())
}

/// A domain with a small mailbox, and a pairing opened by device `a`.
async fn start() -> (tempfile::TempDir, Domain, our_memories_actors::Initiated) {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        mailbox: MAILBOX,
        ..Settings::default()
    };
    let d = domain_with(
        dir.path(),
        settings,
        Clock::manual(),
        DomainMetrics::unregistered(),
    )
    .await;
    let a = DeviceId::parse("a").unwrap();
    let started = d.pairing.initiate(a, None).await.unwrap();
    (dir, d, started)
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let (_dir, d, started) = start().await;
    let couple: CoupleId = started.couple.clone();
    let (a, b) = (DeviceId::parse("a").unwrap(), DeviceId::parse("b").unwrap());
    d.pairing
        .confirm(couple.clone(), started.pairing_token, b.clone())
        .await
        .unwrap();
    // The silent device c joins the couple through a second pairing, opened by a.
    let silent_device = DeviceId::parse("c").unwrap();
    let again = d
        .pairing
        .initiate(
            a.clone(),
            Some(d.pairing.authenticate(&started.device_token).await.unwrap()),
        )
        .await
        .unwrap();
    d.pairing
        .confirm(couple.clone(), again.pairing_token, silent_device.clone())
        .await
        .unwrap();
    let (_silent_link, mut silent, _) = connect(&d, &couple, &silent_device, None, 0).await;
    let mut sent_to_silent = Vec::new();
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
                match d
                    .rooms
                    .send(&couple, &a, &b, Payload::parse(payload.clone()).unwrap())
                    .await
                {
                    Ok(_) => sent.push(payload),
                    // Only a backlog b was never handed fills its mailbox.
                    Err(RoomError::MailboxFull) => prop_assert!(rx.socket.is_none()),
                    Err(e) => return Err(TestCaseError::fail(format!("send to b: {e}"))),
                }
            }
            Op::SendToSilent => {
                let payload = format!("\"c{}\"", sent_to_silent.len());
                let json = Payload::parse(payload.clone()).unwrap();
                let sent = d.rooms.send(&couple, &a, &silent_device, json).await;
                prop_assert!(sent.is_ok(), "a never-acking device never fails its sender");
                sent_to_silent.push(payload);
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
                let id = rx.next_conn;
                rx.next_conn += 1;
                rx.socket = Some(connect(&d, &couple, &b, Some(rx.last), id).await);
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
    let mut heard = Vec::new();
    while let Ok(event) = silent.try_recv() {
        if let RoomEvent::Signal { signal, .. } = event {
            heard.push(signal.payload.as_str().to_owned());
        }
    }
    prop_assert_eq!(
        &heard,
        &sent_to_silent,
        "the silent device hears all, in order"
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

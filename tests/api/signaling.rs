//! Signaling over WebSocket: presence, relay, broadcast, ordering, resume, de-duplication,
//! bounds, expiry, denial, heartbeat.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{TestApp, join_msg, signal};

#[tokio::test]
async fn join_reports_peers_and_presence() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, joined) = app.join(&couple, &couple.a, None).await;
    assert_eq!(
        joined,
        json!({ "type": "joined", "coupleId": couple.id, "deviceId": "a", "peers": [], "recovered": true })
    );
    let (b, joined) = app.join(&couple, &couple.b, None).await;
    assert_eq!(joined["peers"], json!(["a"]));
    assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
    b.close().await;
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    app.stop().await;
}

#[tokio::test]
async fn leave_couple_is_reported_and_the_socket_can_rejoin() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    b.send(json!({ "type": "leave-couple" })).await;
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    b.send(join_msg(&couple.id, &couple.b, None)).await;
    b.recv_type("joined").await;
    assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
    app.stop().await;
}

#[tokio::test]
async fn signals_relay_both_ways_and_ids_are_accepted() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;

    a.send(signal(Some("b"), &json!({ "sdp": "offer" }), Some("o1")))
        .await;
    assert_eq!(a.recv_type("accepted").await["id"], "o1");
    let got = b.recv_type("webrtc-signal").await;
    assert_eq!(
        (
            got["from"].clone(),
            got["payload"].clone(),
            got["id"].clone()
        ),
        (json!("a"), json!({ "sdp": "offer" }), json!("o1"))
    );
    assert!(got["seq"].as_u64().is_some());

    b.send(signal(Some("a"), &json!({ "sdp": "answer" }), None))
        .await;
    let got = a.recv_type("webrtc-signal").await;
    assert_eq!(
        (got["from"].clone(), got["payload"].clone()),
        (json!("b"), json!({ "sdp": "answer" }))
    );
    assert!(
        got["id"].as_str().is_some_and(|id| !id.is_empty()),
        "server assigns an id"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_signal_without_recipient_reaches_every_other_device() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let c = app.add_device(&couple, "c").await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let (mut cw, _) = app.join(&couple, &c, None).await;
    a.send(signal(None, &json!("hello all"), Some("bc1"))).await;
    // a sees two peer-joined first, then accepted; it never receives its own signal.
    for m in [a.recv().await, a.recv().await, a.recv().await] {
        assert_ne!(m["type"], "webrtc-signal", "{m}");
    }
    for ws in [&mut b, &mut cw] {
        let m = loop {
            let m = ws.recv().await;
            if m["type"] == "webrtc-signal" {
                break m;
            }
        };
        assert_eq!(
            (m["from"].clone(), m["payload"].clone()),
            (json!("a"), json!("hello all"))
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn signals_arrive_in_order_with_increasing_seq() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    for i in 0..100 {
        a.send(signal(Some("b"), &json!(i), None)).await;
    }
    let mut last = 0;
    for i in 0..100 {
        let m = b.recv_type("webrtc-signal").await;
        assert_eq!(m["payload"], i);
        let seq = m["seq"].as_u64().unwrap();
        assert!(seq > last, "seq {seq} after {last}");
        last = seq;
    }
    app.stop().await;
}

/// Receives the next `n` signals and returns their payloads and the last seq.
async fn take_signals(ws: &mut crate::helpers::Ws, n: usize) -> (Vec<Value>, u64) {
    let mut payloads = Vec::new();
    let mut last = 0;
    while payloads.len() < n {
        let m = ws.recv().await;
        if m["type"] == "webrtc-signal" {
            payloads.push(m["payload"].clone());
            last = m["seq"].as_u64().unwrap();
        }
    }
    (payloads, last)
}

#[tokio::test]
async fn a_reconnecting_device_resumes_without_loss_or_duplicates() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    for i in 1..=5 {
        a.send(signal(Some("b"), &json!(i), None)).await;
    }
    let (got, last) = take_signals(&mut b, 5).await;
    assert_eq!(got, (1..=5).map(Value::from).collect::<Vec<_>>());
    b.close().await; // no ack sent: lastSeq is the only acknowledgement
    assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    for i in 6..=10 {
        a.send(signal(Some("b"), &json!(i), Some(&format!("s{i}"))))
            .await;
        a.recv_type("accepted").await; // stored for the offline device before it is accepted
    }
    let (mut b, _) = app.join(&couple, &couple.b, Some(last)).await;
    let (got, _) = take_signals(&mut b, 5).await;
    assert_eq!(got, (6..=10).map(Value::from).collect::<Vec<_>>());
    // Nothing else was queued: the next signal is the one sent now.
    a.send(signal(Some("b"), &json!("barrier"), None)).await;
    let (got, _) = take_signals(&mut b, 1).await;
    assert_eq!(got, [json!("barrier")]);
    app.stop().await;
}

#[tokio::test]
async fn unacknowledged_signals_are_redelivered_and_ack_is_cumulative() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let mut seqs = Vec::new();
    for i in 1..=4 {
        a.send(signal(Some("b"), &json!(i), None)).await;
        let m = b.recv_type("webrtc-signal").await;
        seqs.push(m["seq"].as_u64().unwrap());
    }
    b.send(json!({ "type": "ack", "seq": seqs[1] })).await;
    b.close().await;
    // A rejoin without lastSeq gets exactly what was not acknowledged.
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let (got, _) = take_signals(&mut b, 2).await;
    assert_eq!(got, [json!(3), json!(4)]);
    app.stop().await;
}

#[tokio::test]
async fn a_resent_id_is_not_delivered_twice() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    for _ in 0..2 {
        a.send(signal(Some("b"), &json!("once"), Some("dup-1")))
            .await;
        assert_eq!(a.recv_type("accepted").await["id"], "dup-1");
    }
    a.send(signal(Some("b"), &json!("next"), Some("dup-2")))
        .await;
    let (got, _) = take_signals(&mut b, 2).await;
    assert_eq!(got, [json!("once"), json!("next")]);
    app.stop().await;
}

#[tokio::test]
async fn a_full_mailbox_refuses_and_keeps_what_it_accepted() {
    let app = TestApp::spawn_with(|c| {
        c.settings.mailbox.max_signals = 3;
    })
    .await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    for i in 0..3 {
        a.send(signal(Some("b"), &json!(i), Some(&format!("m{i}"))))
            .await;
        a.recv_type("accepted").await;
    }
    a.send(signal(Some("b"), &json!(3), Some("m3"))).await;
    let err = a.recv_error("mailbox_full").await;
    assert_eq!(err["id"], "m3");
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let (got, _) = take_signals(&mut b, 3).await;
    assert_eq!(got, [json!(0), json!(1), json!(2)]);
    app.stop().await;
}

#[tokio::test]
async fn a_device_that_never_acks_never_makes_its_sender_fail() {
    let app = TestApp::spawn_with(|c| c.settings.mailbox.max_signals = 8).await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    // b reads every signal but never sends `ack`, like an app written for the original server.
    let mut seqs = Vec::new();
    for i in 0..100 {
        a.send(signal(Some("b"), &json!(i), Some(&format!("n{i}"))))
            .await;
        assert_eq!(a.recv_type("accepted").await["id"], format!("n{i}"));
        let (got, seq) = take_signals(&mut b, 1).await;
        assert_eq!(got, [json!(i)]);
        seqs.push(seq);
    }
    b.close().await;
    // Only the newest 8 are kept: a resume from signal 49 did not recover what came between.
    let (mut b, joined) = app.join(&couple, &couple.b, Some(seqs[49])).await;
    assert_eq!(joined["recovered"], false);
    let (kept, _) = take_signals(&mut b, 8).await;
    assert_eq!(kept, (92..100).map(|i| json!(i)).collect::<Vec<_>>());
    b.close().await;
    // A resume from the newest signal misses nothing.
    let (_b, joined) = app.join(&couple, &couple.b, Some(seqs[99])).await;
    assert_eq!(joined["recovered"], true);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_payload_is_refused_and_the_socket_survives() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let big = "x".repeat(64 * 1024); // serialized with quotes: 64 KiB + 2
    a.send(signal(Some("b"), &json!(big), Some("big"))).await;
    assert_eq!(a.recv_error("payload_too_large").await["id"], "big");
    let fits = "x".repeat(64 * 1024 - 2);
    a.send(signal(Some("b"), &json!(fits), Some("fits"))).await;
    assert_eq!(a.recv_type("accepted").await["id"], "fits");
    app.stop().await;
}

#[tokio::test]
async fn undelivered_signals_expire_after_their_ttl() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    for i in 0..2 {
        a.send(signal(Some("b"), &json!(i), Some(&format!("e{i}"))))
            .await;
        a.recv_type("accepted").await;
    }
    app.clock.advance(Duration::from_secs(5 * 60 + 1));
    let res = app
        .get_signals(&couple.id, "b", Some(&couple.b.token), None)
        .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["signals"], json!([]));
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.send(signal(Some("b"), &json!("fresh"), None)).await;
    let (got, _) = take_signals(&mut b, 1).await;
    assert_eq!(got, [json!("fresh")]);
    app.stop().await;
}

#[tokio::test]
async fn a_token_opens_only_its_own_couple_and_device() {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let two = app.pair().await;
    let mut ws = app.ws().await;
    // Couple one's token naming couple two, and device a's token naming device b.
    ws.send(join_msg(&two.id, &one.a, None)).await;
    ws.recv_error("forbidden").await;
    let mut as_b = one.a.clone();
    as_b.id = "b".into();
    ws.send(join_msg(&one.id, &as_b, None)).await;
    ws.recv_error("forbidden").await;
    let mut tampered = one.a.clone();
    tampered.token.push('x');
    ws.send(join_msg(&one.id, &tampered, None)).await;
    ws.recv_error("invalid_token").await;
    // The socket still works after refusals.
    ws.send(join_msg(&one.id, &one.a, None)).await;
    ws.recv_type("joined").await;
    app.stop().await;
}

#[tokio::test]
async fn bad_messages_get_clear_errors_and_the_socket_survives() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let mut ws = app.ws().await;
    ws.send(signal(Some("b"), &json!(1), Some("early"))).await;
    assert_eq!(ws.recv_error("not_joined").await["id"], "early");
    ws.send_raw(Message::text("{not json")).await;
    ws.recv_error("invalid_request").await;
    ws.send(json!({ "type": "teleport" })).await;
    ws.recv_error("unknown_type").await;
    ws.send(json!({ "type": "ack", "seq": "three" })).await;
    ws.recv_error("invalid_request").await;
    ws.send_raw(Message::text(format!(
        "{}{}",
        "[".repeat(1000),
        "]".repeat(1000)
    )))
    .await;
    ws.recv_error("invalid_request").await;
    ws.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    ws.recv_error("binary_not_supported").await;
    ws.send(json!({ "type": "ping" })).await;
    ws.recv_type("pong").await;
    ws.send(join_msg(&couple.id, &couple.a, None)).await;
    ws.recv_type("joined").await;
    ws.send(join_msg(&couple.id, &couple.a, None)).await;
    ws.recv_error("already_joined").await;
    ws.send(signal(Some("zed"), &json!(1), None)).await;
    ws.recv_error("unknown_device").await;
    ws.send(signal(Some("a"), &json!(1), None)).await;
    ws.recv_error("invalid_recipient").await;
    app.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_closes_with_1009() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    ws.send_raw(Message::text("x".repeat(200 * 1024))).await;
    assert_eq!(ws.recv_close().await, Some(1009));
    app.stop().await;
}

#[tokio::test]
async fn a_second_socket_of_the_same_device_replaces_the_first() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut first, _) = app.join(&couple, &couple.a, None).await;
    let (_second, _) = app.join(&couple, &couple.a, None).await;
    assert_eq!(first.recv_close().await, Some(4000));
    app.stop().await;
}

#[tokio::test]
async fn a_silent_peer_is_reported_gone_after_the_client_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.ws.heartbeat = Duration::from_millis(50);
        c.ws.client_timeout = Duration::from_millis(300);
    })
    .await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    let silent = b.into_silent(); // never read again: pings go unanswered
    // a keeps reading (so its pings are answered) and sees b leave.
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    drop(silent);
    app.stop().await;
}

#[tokio::test]
async fn peer_left_comes_at_the_client_timeout_whatever_the_heartbeat_phase() {
    // Checked on heartbeat ticks, silence past 2.5 s was seen only at the 4 s tick.
    let app = TestApp::spawn_with(|c| {
        c.ws.heartbeat = Duration::from_secs(2);
        c.ws.client_timeout = Duration::from_millis(2500);
    })
    .await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (b, _) = app.join(&couple, &couple.b, None).await;
    // b's join was its last frame: the clock starts no later than now.
    let silent_since = tokio::time::Instant::now();
    let silent = b.into_silent();
    a.recv_type("peer-joined").await;
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    let took = silent_since.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "peer-left after {took:?}"
    );
    drop(silent);
    app.stop().await;
}

/// A server whose heartbeat runs fast: pings every 50 ms and a 300 ms client timeout while a
/// peer watches, a ping every 3 s alone.
async fn fast_heartbeat() -> TestApp {
    TestApp::spawn_with(|c| {
        c.ws.heartbeat = Duration::from_millis(50);
        c.ws.alone_heartbeat = Duration::from_secs(3);
        c.ws.client_timeout = Duration::from_millis(300);
    })
    .await
}

#[tokio::test]
async fn a_socket_alone_is_kept_past_the_client_timeout_and_watched_once_a_peer_joins() {
    // Alone, a is closed only after one missed slow ping plus the timeout (3.3 s); once b
    // joins, a silent a is pinged at once and reported gone within the client timeout.
    let app = fast_heartbeat().await;
    let couple = app.pair().await;
    let (a, _) = app.join(&couple, &couple.a, None).await;
    let silent = a.into_silent(); // never read again: pings go unanswered
    // Silent for twice the client timeout: with nobody watching, that is allowed.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let joined_at = tokio::time::Instant::now();
    let (mut b, joined) = app.join(&couple, &couple.b, None).await;
    assert_eq!(joined["peers"], json!(["a"]), "a is still connected");
    assert_eq!(b.recv_type("peer-left").await["deviceId"], "a");
    let took = joined_at.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "peer-left {took:?} after b joined"
    );
    drop(silent);
    app.stop().await;
}

#[tokio::test]
async fn a_socket_whose_peer_left_is_alone_again() {
    // a is watched while b is connected; once b has left, a silent a is kept past the client
    // timeout again, as a socket that was always alone.
    let app = fast_heartbeat().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (b, _) = app.join(&couple, &couple.b, None).await;
    assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
    drop(b);
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    let silent = a.into_silent();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_b, joined) = app.join(&couple, &couple.b, None).await;
    assert_eq!(joined["peers"], json!(["a"]), "a was kept while alone");
    drop(silent);
    app.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_with_going_away() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (ws, _) = app.join(&couple, &couple.a, None).await;
    let mut stream = ws.into_silent();
    app.stop().await;
    let code = loop {
        match stream.next().await {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    assert_eq!(code, Some(1001));
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1002() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let app = TestApp::spawn().await;
    let mut ws = app.ws().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    ws.send_raw(Message::Frame(frame)).await;
    assert_eq!(ws.recv_close().await, Some(1002));
    app.stop().await;
}

/// A client may send frames right behind its upgrade request, before the 101 arrives (they
/// reach the server in the same read): the session reads them, not only what comes later.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::spawn().await;
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let mut bytes = b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".to_vec();
    // A masked text frame (RFC 6455 §5.2): `ping`, which any socket may send.
    let text = br#"{"type":"ping"}"#;
    let mask = [7u8, 1, 2, 3];
    bytes.extend([0x81, 0x80 | u8::try_from(text.len()).unwrap()]);
    bytes.extend(mask);
    bytes.extend(text.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    tcp.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains(r#"{"type":"pong"}"#) {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(crate::helpers::WAIT, tcp.read(&mut buf))
            .await
            .expect("the pong comes")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 101"));
    app.stop().await;
}

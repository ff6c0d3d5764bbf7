//! What one client can hold: connection caps per IP and in total (with the probes still
//! answering), the JSON body deadline, the WebSocket join deadline, the `Host` rule of
//! RFC 9112 §3.2 and the JSON nesting limit.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::helpers::{TestApp, WAIT, assert_error, ok_json, raw_response, signal};
use crate::metrics::scrape_until;

/// Opens `n` idle connections that the server has accepted (a request answered on a
/// further connection proves the accept loop got past them: it accepts in order).
async fn hold(app: &TestApp, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(TcpStream::connect(app.addr).await.expect("connects"));
    }
    held
}

/// The status line and body of one request on a fresh connection.
async fn request(app: &TestApp, head: &str) -> (String, String) {
    parts(&raw_response(app.addr, head.as_bytes()).await)
}

/// The status line and body of a raw response.
fn parts(text: &str) -> (String, String) {
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// Waits until a request is served in full again (401: it reached the route, without a
/// token), the places of closed connections given back.
async fn served_again(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _) = request(app, &get("/api/devices")).await;
        if status.starts_with("HTTP/1.1 401") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
}

fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    v["error"]["code"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn over_the_per_ip_cap_only_the_probes_answer_and_refusals_are_counted() {
    let app = TestApp::spawn_with(|c| c.conn.per_ip = 3).await;
    let held = hold(&app, 3).await;
    let (status, body) = request(&app, &get("/api/devices")).await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    assert_eq!(code(&body), "too_many_connections");
    let (status, _) = request(&app, &get("/health")).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // The scrape itself comes over refused connections too: probes answer there.
    let (_, m) = scrape_until(&app, |m| {
        m.count(
            "our_memories_connections_refused_total",
            &[("reason", "per_ip")],
        ) >= 2
    })
    .await;
    assert_eq!(m.count("our_memories_connections", &[]), 3);
    drop(held);
    // Closed connections give their places back.
    served_again(&app).await;
    app.stop().await;
}

/// An upgraded connection keeps its place until the socket closes: WebSockets (`/ws` and
/// Socket.IO's) count against the caps like any other connection.
#[tokio::test]
async fn websockets_hold_their_place_under_the_caps_until_they_close() {
    crate::single_instance_only!("connection caps are per instance");
    let app = TestApp::spawn_with(|c| {
        c.conn.per_ip = 3;
        c.ws.join_timeout = Duration::from_mins(1);
    })
    .await;
    let ws_a = app.ws().await;
    let ws_b = app.ws().await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (socketio, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("Socket.IO upgrades");
    let (status, body) = request(&app, &get("/api/devices")).await;
    assert!(status.starts_with("HTTP/1.1 503"), "{status} {body}");
    assert_eq!(code(&body), "too_many_connections");
    let (_, m) = scrape_until(&app, |m| m.count("our_memories_connections", &[]) == 3).await;
    assert_eq!(m.count("our_memories_connections", &[]), 3);
    drop((ws_a, ws_b, socketio));
    served_again(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn over_the_total_cap_requests_get_503_and_health_still_answers() {
    let app = TestApp::spawn_with(|c| {
        c.conn.max = 4;
        c.conn.per_ip = 1000;
    })
    .await;
    let held = hold(&app, 4).await;
    let res = app.initiate("a", None).await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "too_many_connections").await;
    let (status, body) = request(&app, &get("/ready")).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    scrape_until(&app, |m| {
        m.count(
            "our_memories_connections_refused_total",
            &[("reason", "total")],
        ) >= 2
    })
    .await;
    drop(held);
    app.stop().await;
}

#[tokio::test]
async fn a_json_body_that_trickles_in_gets_408_and_frees_the_connection() {
    let app = TestApp::spawn_with(|c| c.conn.body_timeout = Duration::from_millis(300)).await;
    let head = "POST /api/pair/initiate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n{\"dev";
    let started = tokio::time::Instant::now();
    // Read to the end: the server closes the connection, and says so.
    let text = raw_response(app.addr, head.as_bytes()).await;
    let (status, body) = parts(&text);
    assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{text}"
    );
    assert_eq!(code(&body), "body_timeout");
    assert!(
        started.elapsed() < WAIT,
        "answered at the deadline, not held"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_websocket_that_never_joins_is_closed_with_4004() {
    let app = TestApp::spawn_with(|c| c.ws.join_timeout = Duration::from_millis(300)).await;
    let mut idle = app.ws().await;
    // It answers pings (the client reads), yet is closed: joining is what keeps it open.
    assert_eq!(idle.recv_close().await, Some(4004));
    // After leave-couple the clock starts again.
    let couple = app.pair().await;
    let (mut left, _) = app.join(&couple, &couple.a, None).await;
    left.send(json!({ "type": "leave-couple" })).await;
    assert_eq!(left.recv_close().await, Some(4004));
    app.stop().await;
}

#[tokio::test]
async fn requests_need_exactly_one_valid_host() {
    let app = TestApp::spawn().await;
    for head in [
        "GET /health HTTP/1.1\r\nconnection: close\r\n\r\n",
        "GET /health HTTP/1.1\r\nhost: a\r\nhost: b\r\nconnection: close\r\n\r\n",
        "GET /health HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n",
        "GET /health HTTP/1.1\r\nhost: user@a\r\nconnection: close\r\n\r\n",
        "GET /health HTTP/1.1\r\nhost: \r\nconnection: close\r\n\r\n",
        // A WebSocket upgrade without Host is refused before any upgrade.
        "GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    ] {
        let text = raw_response(app.addr, head.as_bytes()).await;
        let (status, body) = parts(&text);
        assert!(status.starts_with("HTTP/1.1 400"), "{head:?}: {status}");
        assert_eq!(code(&body), "invalid_host", "{head:?}");
        assert!(
            text.contains("x-content-type-options: nosniff"),
            "security headers: {text}"
        );
    }
    // HTTP/1.0 may omit it; a host with a port is fine.
    let (status, _) = request(&app, "GET /health HTTP/1.0\r\n\r\n").await;
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    let (status, _) = request(
        &app,
        "GET /health HTTP/1.1\r\nhost: [::1]:3000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    app.stop().await;
}

#[tokio::test]
async fn json_nested_deeper_than_the_limit_is_refused_at_ingest() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let deep: Value = serde_json::from_str(&format!("{}1{}", "[".repeat(33), "]".repeat(33)))
        .expect("valid JSON");
    let shallow: Value =
        serde_json::from_str(&format!("{}1{}", "[".repeat(32), "]".repeat(32))).unwrap();
    let res = app
        .post_signal(&couple.id, &couple.a, "b", deep.clone())
        .await;
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    let res = app.post_signal(&couple.id, &couple.a, "b", shallow).await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let (mut ws, _) = app.join(&couple, &couple.a, None).await;
    ws.send(signal(Some("b"), &deep, Some("s1"))).await;
    let err = ws.recv_error("invalid_request").await;
    assert!(
        err["message"].as_str().unwrap().contains("nests deeper"),
        "{err}"
    );
    let res = app
        .http
        .post(app.url("/api/backup"))
        .bearer_auth(&couple.a.token)
        .header("x-backup-meta", deep.to_string())
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    ok_json(
        app.get_auth(&format!("/api/backups/{}", couple.id), &couple.a)
            .await,
        StatusCode::OK,
    )
    .await;
    app.stop().await;
}

/// A Socket.IO connection that never connects a namespace does not hold the server open
/// while it stops (Socket.IO keeps it, and its handlers, until its connect timeout).
#[tokio::test]
async fn a_socketio_connection_that_never_connects_does_not_delay_shutdown() {
    let app = TestApp::spawn_with(|c| c.ws.join_timeout = Duration::from_mins(1)).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", app.addr);
    let (socketio, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("Socket.IO upgrades");
    drop(socketio);
    let started = tokio::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        started.elapsed()
    );
}

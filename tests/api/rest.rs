//! The REST fallback and its interplay with WebSocket delivery, and REST access control.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, ok_json, raw_response, signal};

#[tokio::test]
async fn a_rest_signal_reaches_a_connected_device_live() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let sent = ok_json(
        app.post_signal(&couple.id, &couple.a, "b", json!({ "ice": 1 }))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let got = b.recv_type("webrtc-signal").await;
    assert_eq!(got["payload"], json!({ "ice": 1 }));
    assert_eq!(got["seq"], sent["seq"]);
    assert_eq!(got["id"], sent["id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_websocket_signal_for_an_offline_device_is_fetched_over_rest_and_acked_with_after() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    for i in 0..3 {
        a.send(signal(Some("b"), &json!(i), Some(&format!("r{i}"))))
            .await;
        a.recv_type("accepted").await;
    }
    let body = ok_json(
        app.get_signals(&couple.id, "b", Some(&couple.b.token), None)
            .await,
        StatusCode::OK,
    )
    .await;
    let signals = body["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 3);
    assert_eq!(signals[0]["fromDeviceId"], "a");
    assert_eq!(signals[0]["signalPayload"], 0);
    assert_eq!(signals[0]["id"], "r0");
    assert!(signals[0]["createdAt"].as_str().unwrap().ends_with('Z'));
    // Fetching again without `after` returns the same: nothing is acknowledged implicitly.
    let again = ok_json(
        app.get_signals(&couple.id, "b", Some(&couple.b.token), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again, body);
    let second = signals[1]["seq"].as_u64().unwrap();
    let rest = ok_json(
        app.get_signals(&couple.id, "b", Some(&couple.b.token), Some(second))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rest["signals"].as_array().unwrap().len(), 1);
    assert_eq!(rest["signals"][0]["signalPayload"], 2);
    // What REST acknowledged is not delivered again over WebSocket.
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    let m = b.recv_type("webrtc-signal").await;
    assert_eq!(m["payload"], 2);
    app.stop().await;
}

#[tokio::test]
async fn rest_access_is_limited_to_the_tokens_couple_and_device() {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let two = app.pair().await;
    // Another couple's token, on both routes.
    assert_error(
        app.get_signals(&two.id, "b", Some(&one.b.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.post_signal(&two.id, &one.a, "b", json!(1)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // Another device's mailbox, and sending as another device.
    assert_error(
        app.get_signals(&one.id, "b", Some(&one.a.token), None)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let mut impostor = one.a.clone();
    impostor.id = "b".into();
    assert_error(
        app.post_signal(&one.id, &impostor, "a", json!(1)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    // No token, a tampered token.
    assert_error(
        app.get_signals(&one.id, "b", None, None).await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    )
    .await;
    let tampered = format!("{}A", one.b.token);
    assert_error(
        app.get_signals(&one.id, "b", Some(&tampered), None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn rest_signal_errors_are_clear() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    assert_error(
        app.post_signal(&couple.id, &couple.a, "zed", json!(1))
            .await,
        StatusCode::NOT_FOUND,
        "unknown_device",
    )
    .await;
    assert_error(
        app.post_signal(&couple.id, &couple.a, "a", json!(1)).await,
        StatusCode::BAD_REQUEST,
        "invalid_recipient",
    )
    .await;
    let big = "x".repeat(64 * 1024);
    assert_error(
        app.post_signal(&couple.id, &couple.a, "b", json!(big))
            .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    let res = app
        .get_signals(&couple.id, "bad id", Some(&couple.b.token), None)
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = app
        .http
        .get(app.url(&format!("/api/signals/{}/b?after=x", couple.id)))
        .bearer_auth(&couple.b.token)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    let res = app.http.get(app.url("/ws")).send().await.unwrap();
    assert_error(res, StatusCode::UPGRADE_REQUIRED, "upgrade_required").await;
    let res = app
        .http
        .get(app.url("/ws"))
        .header("connection", "upgrade")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UPGRADE_REQUIRED, "upgrade_required").await;
    let res = app.http.get(app.url("/health")).send().await.unwrap();
    let health: Value = ok_json(res, StatusCode::OK).await;
    let expected = match crate::helpers::Backend::from_env() {
        crate::helpers::Backend::Embedded => ("embedded", "files"),
        crate::helpers::Backend::Mongo | crate::helpers::Backend::Cluster => ("mongodb", "gridfs"),
        crate::helpers::Backend::MongoS3 => ("mongodb", "s3"),
    };
    assert_eq!(health["status"], "ok");
    assert_eq!(
        health["storage"]["metadata"],
        json!({ "backend": expected.0, "ok": true })
    );
    assert_eq!(
        health["storage"]["blobs"],
        json!({ "backend": expected.1, "ok": true })
    );
    let res = app.http.get(app.url("/ready")).send().await.unwrap();
    let ready: Value = ok_json(res, StatusCode::OK).await;
    assert_eq!(ready["status"], "ready");
    assert!(ready["uptimeSecs"].is_u64() && ready["version"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn invalid_request_messages_name_the_field_without_serdes_position() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let post = |body: String| {
        app.http
            .post(app.url("/api/signal"))
            .bearer_auth(&couple.a.token)
            .body(body)
            .send()
    };
    let refused = async |res: reqwest::Response| {
        let body = ok_json(res, StatusCode::BAD_REQUEST).await;
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert!(!message.contains("line 1 column"), "{message}");
        message
    };
    let (id, a) = (&couple.id, &couple.a.id);
    let missing = format!(r#"{{"coupleId":"{id}","fromDeviceId":"{a}","toDeviceId":"b"}}"#);
    assert_eq!(
        refused(post(missing).await.unwrap()).await,
        "missing field `signalPayload`"
    );
    let wrong_type = format!(
        r#"{{"coupleId":"{id}","fromDeviceId":"{a}","toDeviceId":7,"signalPayload":{{}}}}"#
    );
    assert_eq!(
        refused(post(wrong_type).await.unwrap()).await,
        "`toDeviceId`: expected a string, got integer `7`"
    );
    // Where the JSON itself breaks, the column is what helps.
    let broken = format!(r#"{{"coupleId":"{id}" "fromDeviceId":"{a}"}}"#);
    let column = broken.find(r#""fromDeviceId""#).unwrap() + 1;
    assert_eq!(
        refused(post(broken).await.unwrap()).await,
        format!("body is not valid JSON: expected `,` or `}}` (column {column})")
    );
    let meta = app
        .upload(&couple.a, b"x".to_vec(), &[("x-backup-meta", "{\"v\":1,}")])
        .await;
    assert_eq!(
        refused(meta).await,
        "x-backup-meta is not valid JSON: key must be a string (column 8)"
    );
    let query = app
        .http
        .get(app.url(&format!("/api/signals/{id}/b?after=x")))
        .bearer_auth(&couple.b.token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused(query).await,
        "query string: expected only `after`, a non-negative integer"
    );
    let mut ws = app.ws().await;
    ws.send(json!({ "type": "ack", "seq": "three" })).await;
    assert_eq!(
        ws.recv_error("invalid_request").await["message"],
        r#"`seq`: expected a non-negative integer, got string "three""#
    );
    ws.send(json!({ "type": "join-couple", "coupleId": id, "deviceId": a }))
        .await;
    assert_eq!(
        ws.recv_error("invalid_request").await["message"],
        "missing field `token`"
    );
    app.stop().await;
}

/// Sends a raw request head and returns the response's status line.
async fn raw_status(app: &TestApp, head: String) -> String {
    raw_response(app.addr, head.as_bytes())
        .await
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn oversized_headers_and_urls_are_refused() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(20 * 1024);
    let header = raw_status(
        &app,
        format!("GET /health HTTP/1.1\r\nhost: x\r\nx-filler: {big}\r\n\r\n"),
    )
    .await;
    assert!(header.starts_with("HTTP/1.1 431"), "{header}");
    let url = raw_status(
        &app,
        format!("GET /health?{big} HTTP/1.1\r\nhost: x\r\n\r\n"),
    )
    .await;
    assert!(
        url.starts_with("HTTP/1.1 431") || url.starts_with("HTTP/1.1 414"),
        "{url}"
    );
    // The server is unharmed.
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

//! Rate limits: per IP on pairing (stricter on confirm), per device on signals over REST and
//! WebSocket, the 429 answer and its headers, `RATE_LIMIT=off`, `TRUST_PROXY`.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, ok_json, signal};

async fn assert_limited(res: reqwest::Response, limit: &str) {
    let h = res.headers().clone();
    assert_error(res, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(h["ratelimit-limit"], limit);
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"].to_str().unwrap(), retry.to_string());
}

#[tokio::test]
async fn pairing_is_limited_per_ip_and_confirm_more_strictly() {
    crate::single_instance_only!("rate limits are per instance");
    let app = TestApp::spawn_with(|c| {
        c.rate.pairing_per_15min = 4;
        c.rate.confirm_per_15min = 2;
    })
    .await;
    let started = ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    let couple = started["coupleId"].as_str().unwrap();
    for _ in 0..2 {
        let res = app.confirm(couple, "wrong", "b").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    // The third confirm is over the confirm limit although the pairing limit has room.
    assert_limited(app.confirm(couple, "wrong", "b").await, "2").await;
    // 1 initiate + 3 confirms (the refused one counted too) = 4: the pairing limit is reached.
    assert_limited(app.initiate("c", None).await, "4").await;
    app.stop().await;
}

#[tokio::test]
async fn signals_are_limited_per_device_over_rest_and_websocket() {
    crate::single_instance_only!("rate limits are per instance");
    let app = TestApp::spawn_with(|c| {
        c.rate.signals_burst = 5;
        c.rate.signals_per_sec = 1;
    })
    .await;
    let couple = app.pair().await;
    for i in 0..5 {
        let res = app.post_signal(&couple.id, &couple.a, "b", json!(i)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    assert_limited(
        app.post_signal(&couple.id, &couple.a, "b", json!(5)).await,
        "5",
    )
    .await;
    // Device b has its own budget; its WebSocket messages count like REST signals.
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    for _ in 0..5 {
        b.recv_type("webrtc-signal").await; // the backlog a sent over REST
    }
    for i in 0..5 {
        b.send(signal(Some("a"), &json!(i), Some(&format!("w{i}"))))
            .await;
        b.recv_type("accepted").await;
    }
    b.send(signal(Some("a"), &json!(5), Some("w5"))).await;
    assert_eq!(b.recv_error("rate_limited").await["id"], "w5");
    // The socket survives the refusal: the next message is answered, not the connection closed.
    b.send(json!({ "type": "ping" })).await;
    b.recv_error("rate_limited").await;
    app.stop().await;
}

#[tokio::test]
async fn a_trickle_ice_burst_is_never_limited_by_default() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    for i in 0..60 {
        a.send(signal(
            Some("b"),
            &json!({ "candidate": i }),
            Some(&format!("ice{i}")),
        ))
        .await;
    }
    for _ in 0..60 {
        a.recv_type("accepted").await;
        b.recv_type("webrtc-signal").await;
    }
    app.stop().await;
}

#[tokio::test]
async fn rate_limit_off_disables_every_limit() {
    let app = TestApp::spawn_with(|c| {
        c.rate.enabled = false;
        c.rate.pairing_per_15min = 1;
    })
    .await;
    for _ in 0..5 {
        ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let app = TestApp::spawn_with(|c| {
        c.rate.trusted_proxies = 1;
        c.rate.pairing_per_15min = 1;
    })
    .await;
    let initiate = |ip: &'static str| {
        app.http
            .post(app.url("/api/pair/initiate"))
            .header("x-forwarded-for", ip)
            .json(&json!({ "deviceId": "a" }))
            .send()
    };
    assert_eq!(
        initiate("203.0.113.1").await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        initiate("203.0.113.2").await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_limited(initiate("203.0.113.1").await.unwrap(), "1").await;
    app.stop().await;
}

#[tokio::test]
async fn a_client_cannot_pick_its_key_through_a_proxy_that_appends() {
    crate::single_instance_only!("rate limits are per instance");
    // nginx's default `$proxy_add_x_forwarded_for` keeps what the client sent and appends
    // the address it saw: the client's own entries are on the left.
    let app = TestApp::spawn_with(|c| {
        c.rate.trusted_proxies = 1;
        c.rate.pairing_per_15min = 3;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..10 {
        let res = app
            .http
            .post(app.url("/api/pair/initiate"))
            .header("x-forwarded-for", format!("198.51.100.{i}, 203.0.113.7"))
            .json(&json!({ "deviceId": "a" }))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [201, 201, 201, 429, 429, 429, 429, 429, 429, 429]);
    app.stop().await;
}

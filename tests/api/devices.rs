//! The couple's devices: listing, and revocation by another device.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestApp, assert_error, join_msg, ok_json};

/// The `deviceId`s of a `GET /api/devices` answer, in order.
fn device_ids(body: &serde_json::Value) -> Vec<serde_json::Value> {
    body["devices"]
        .as_array()
        .expect("a device list")
        .iter()
        .map(|d| d["deviceId"].clone())
        .collect()
}

async fn delete_device(app: &TestApp, token: &str, device: &str) -> reqwest::Response {
    app.http
        .delete(app.url(&format!("/api/devices/{device}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn devices_are_listed_for_the_tokens_couple_only() {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let _two = app.pair().await;
    let body = ok_json(app.get_auth("/api/devices", &one.b).await, StatusCode::OK).await;
    let ids = device_ids(&body);
    assert_eq!(ids, [json!("a"), json!("b")]);
    assert!(
        body["devices"][0]["pairedAt"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let res = app.http.get(app.url("/api/devices")).send().await.unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_device_is_disconnected_and_its_token_stops_working() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;

    assert_eq!(
        delete_device(&app, &couple.a.token, "b").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(b.recv_close().await, Some(4003));
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    // Every use of b's token now fails.
    let res = app
        .get_signals(&couple.id, "b", Some(&couple.b.token), None)
        .await;
    assert_error(res, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_error(
        delete_device(&app, &couple.b.token, "a").await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let mut ws = app.ws().await;
    ws.send(join_msg(&couple.id, &couple.b, None)).await;
    ws.recv_error("invalid_token").await;
    // And b is gone from the couple.
    let body = ok_json(
        app.get_auth("/api/devices", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);
    assert_error(
        app.post_signal(&couple.id, &couple.a, "b", json!(1)).await,
        StatusCode::NOT_FOUND,
        "unknown_device",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn revocation_errors_are_clear() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    assert_error(
        delete_device(&app, &couple.a.token, "a").await,
        StatusCode::BAD_REQUEST,
        "cannot_revoke_self",
    )
    .await;
    assert_error(
        delete_device(&app, &couple.a.token, "zed").await,
        StatusCode::NOT_FOUND,
        "unknown_device",
    )
    .await;
    assert_error(
        delete_device(&app, &couple.a.token, "bad id").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let res = app
        .http
        .delete(app.url("/api/devices/b"))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    app.stop().await;
}

#[tokio::test]
async fn two_devices_revoking_each_other_at_once_leave_exactly_one() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        let couple = app.pair().await;
        let (by_a, by_b) = tokio::join!(
            delete_device(&app, &couple.a.token, "b"),
            delete_device(&app, &couple.b.token, "a"),
        );
        let (won, lost, survivor) = if by_a.status() == StatusCode::NO_CONTENT {
            (by_a, by_b, &couple.a)
        } else {
            (by_b, by_a, &couple.b)
        };
        assert_eq!(won.status(), StatusCode::NO_CONTENT);
        // The loser was revoked while its request waited: its token is dead.
        assert_error(lost, StatusCode::UNAUTHORIZED, "invalid_token").await;
        let body = ok_json(app.get_auth("/api/devices", survivor).await, StatusCode::OK).await;
        let ids = device_ids(&body);
        assert_eq!(ids, [json!(survivor.id)], "the couple keeps its survivor");
    }
    app.stop().await;
}

#[tokio::test]
async fn revocation_closes_the_couples_open_pairing() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    // The device about to be revoked opens a pairing for a device of its own.
    let opened = ok_json(
        app.initiate("b", Some(&couple.b.token)).await,
        StatusCode::CREATED,
    )
    .await;
    let token = opened["pairingToken"].as_str().unwrap();
    assert_eq!(
        delete_device(&app, &couple.a.token, "b").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_error(
        app.confirm(&couple.id, token, "c").await,
        StatusCode::NOT_FOUND,
        "pairing_not_found",
    )
    .await;
    let body = ok_json(
        app.get_auth("/api/devices", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 1);
    // A remaining device opens a new pairing as usual.
    let again = ok_json(
        app.initiate("a", Some(&couple.a.token)).await,
        StatusCode::CREATED,
    )
    .await;
    let token = again["pairingToken"].as_str().unwrap();
    ok_json(app.confirm(&couple.id, token, "c").await, StatusCode::OK).await;
    app.stop().await;
}

//! Pairing: every success and error case of initiate and confirm.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, ok_json};

#[tokio::test]
async fn initiate_then_confirm_pairs_two_devices() {
    let app = TestApp::spawn().await;
    let started = ok_json(app.initiate("phone", None).await, StatusCode::CREATED).await;
    let couple = started["coupleId"].as_str().unwrap();
    let token = started["pairingToken"].as_str().unwrap();
    // >= 128 random bits, unpadded base64url.
    assert!(token.len() >= 22, "{token}");
    assert!(started["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert!(started["deviceToken"].as_str().unwrap().starts_with(couple));

    let confirmed = ok_json(app.confirm(couple, token, "laptop").await, StatusCode::OK).await;
    assert_eq!(confirmed["coupleId"], couple);
    let b_token = confirmed["deviceToken"].as_str().unwrap();
    // The new token works for its own mailbox.
    let res = app.get_signals(couple, "laptop", Some(b_token), None).await;
    assert_eq!(ok_json(res, StatusCode::OK).await["signals"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_pairing_token_is_single_use() {
    let app = TestApp::spawn().await;
    let (couple, token) = app.open_pairing().await;
    let (couple, token) = (couple.as_str(), token.as_str());
    ok_json(app.confirm(couple, token, "b").await, StatusCode::OK).await;
    assert_error(
        app.confirm(couple, token, "c").await,
        StatusCode::CONFLICT,
        "pairing_used",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn wrong_tokens_are_401_and_the_fifth_burns_the_pairing() {
    let app = TestApp::spawn().await;
    let (couple, token) = app.open_pairing().await;
    let (couple, token) = (couple.as_str(), token.as_str());
    app.guess_until_burned(couple, token).await;
    app.stop().await;
}

#[tokio::test]
async fn an_expired_pairing_is_410() {
    let app = TestApp::spawn().await;
    let (couple, token) = app.open_pairing().await;
    let (couple, token) = (couple.as_str(), token.as_str());
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert_error(
        app.confirm(couple, token, "b").await,
        StatusCode::GONE,
        "pairing_expired",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_taken_device_id_is_409_and_does_not_consume_the_pairing() {
    let app = TestApp::spawn().await;
    let (couple, token) = app.open_pairing().await;
    let (couple, token) = (couple.as_str(), token.as_str());
    assert_error(
        app.confirm(couple, token, "a").await,
        StatusCode::CONFLICT,
        "device_id_taken",
    )
    .await;
    ok_json(app.confirm(couple, token, "b").await, StatusCode::OK).await;
    app.stop().await;
}

#[tokio::test]
async fn a_paired_device_can_add_a_third_device_to_its_couple() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let c = app.add_device(&couple, "tablet").await;
    assert!(c.token.starts_with(&couple.id));
    let res = app
        .get_signals(&couple.id, "tablet", Some(&c.token), None)
        .await;
    ok_json(res, StatusCode::OK).await;
    app.stop().await;
}

#[tokio::test]
async fn a_full_couple_refuses_more_devices() {
    let app = TestApp::spawn_with(|c| c.settings.max_devices_per_couple = 2).await;
    let couple = app.pair().await;
    let res = app.initiate("a", Some(&couple.a.token)).await;
    assert_error(res, StatusCode::CONFLICT, "couple_full").await;
    app.stop().await;
}

#[tokio::test]
async fn initiate_with_a_token_must_name_the_tokens_device() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    assert_error(
        app.initiate("b", Some(&couple.a.token)).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn bad_bearer_tokens_are_401() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let tampered = format!("{}x", couple.a.token);
    for token in [tampered.as_str(), "garbage", "a.b.c.d"] {
        assert_error(
            app.initiate("a", Some(token)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    app.stop().await;
}

#[tokio::test]
async fn unknown_couple_is_404() {
    let app = TestApp::spawn().await;
    assert_error(
        app.confirm("nope", "token", "b").await,
        StatusCode::NOT_FOUND,
        "pairing_not_found",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn invalid_ids_and_bodies_are_400_with_a_message() {
    let app = TestApp::spawn().await;
    let long = "x".repeat(65);
    for body in [
        json!({ "deviceId": "has space" }),
        json!({ "deviceId": "" }),
        json!({ "deviceId": long }),
        json!({ "deviceId": 7 }),
        json!({}),
        json!({ "deviceId": "a", "extra": 1 }),
    ] {
        let res = app
            .http
            .post(app.url("/api/pair/initiate"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let res = app
        .http
        .post(app.url("/api/pair/initiate"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    let res = app
        .http
        .post(app.url("/api/pair/confirm"))
        .body(vec![b'a'; 8 * 1024])
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let res = app
        .http
        .get(app.url("/api/pair/confirm"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_couple_never_confirmed_expires_with_its_pairing_unless_it_holds_a_backup() {
    let app = TestApp::spawn().await;
    let lonely = ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    let backed_up = ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    let device = |v: &Value| crate::helpers::Device {
        id: "a".to_owned(),
        token: v["deviceToken"].as_str().unwrap().to_owned(),
    };
    let (lonely_a, backed_up_a) = (device(&lonely), device(&backed_up));
    assert_eq!(
        app.upload(&backed_up_a, b"ciphertext".to_vec(), &[])
            .await
            .status(),
        StatusCode::CREATED
    );
    let paired = app.pair().await;

    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    // What the janitor does every minute.
    assert_eq!(app.pairing.expire_unconfirmed_couples().await.unwrap(), 1);
    assert_error(
        app.get_auth("/api/devices", &lonely_a).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_error(
        app.confirm(
            lonely["coupleId"].as_str().unwrap(),
            lonely["pairingToken"].as_str().unwrap(),
            "b",
        )
        .await,
        StatusCode::NOT_FOUND,
        "pairing_not_found",
    )
    .await;
    // A couple with a backup, and a confirmed couple, are kept.
    for kept in [&backed_up_a, &paired.a, &paired.b] {
        ok_json(app.get_auth("/api/devices", kept).await, StatusCode::OK).await;
    }
    app.stop().await;
}

//! The access matrix: every route and WebSocket message against every kind of credential —
//! another couple's token, a revoked token, a tampered token, no token — all denied as
//! documented; the owner's token (the control) is let through. Plus expired pairings and
//! pairing brute force.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::{Couple, Device, TestApp, assert_error, join_msg, ok_json, signal};

/// A credential to try.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Owner,
    OtherCouple,
    Revoked,
    Tampered,
    Nobody,
}

const EVERYONE: [Who; 5] = [
    Who::Owner,
    Who::OtherCouple,
    Who::Revoked,
    Who::Tampered,
    Who::Nobody,
];

struct World {
    app: TestApp,
    one: Couple,
    two: Couple,
    revoked: Device,
    backup_id: String,
}

async fn world() -> World {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let two = app.pair().await;
    let revoked = app.add_device(&one, "gone").await;
    let res = app
        .http
        .delete(app.url("/api/devices/gone"))
        .bearer_auth(&one.a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let backup = ok_json(
        app.upload(&one.a, b"secret".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    World {
        backup_id: backup["backupId"].as_str().unwrap().to_owned(),
        app,
        one,
        two,
        revoked,
    }
}

impl World {
    fn token(&self, who: Who) -> Option<String> {
        match who {
            Who::Owner => Some(self.one.a.token.clone()),
            Who::OtherCouple => Some(self.two.a.token.clone()),
            Who::Revoked => Some(self.revoked.token.clone()),
            Who::Tampered => Some(format!("{}x", self.one.a.token)),
            Who::Nobody => None,
        }
    }

    /// What a denied credential gets.
    fn denial(who: Who) -> (StatusCode, &'static str) {
        match who {
            Who::OtherCouple => (StatusCode::FORBIDDEN, "forbidden"),
            Who::Revoked | Who::Tampered => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Who::Nobody => (StatusCode::UNAUTHORIZED, "missing_token"),
            Who::Owner => unreachable!("the owner is not denied"),
        }
    }
}

#[tokio::test]
async fn every_route_denies_every_foreign_credential() {
    let w = world().await;
    let c = &w.one.id;
    let routes: Vec<(Method, String, Option<serde_json::Value>, StatusCode)> = vec![
        (
            Method::POST,
            "/api/signal".into(),
            Some(
                json!({ "coupleId": c, "fromDeviceId": "a", "toDeviceId": "b", "signalPayload": 1 }),
            ),
            StatusCode::ACCEPTED,
        ),
        (
            Method::GET,
            format!("/api/signals/{c}/a"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/api/backup/{c}"),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/api/backup/{c}/{}", w.backup_id),
            None,
            StatusCode::OK,
        ),
        (
            Method::GET,
            format!("/api/backups/{c}"),
            None,
            StatusCode::OK,
        ),
    ];
    for (method, path, body, ok) in &routes {
        for who in EVERYONE {
            let mut req = w.app.http.request(method.clone(), w.app.url(path));
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(t) = w.token(who) {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.unwrap();
            if who == Who::Owner {
                assert_eq!(res.status(), *ok, "{method} {path} as the owner");
            } else {
                let (status, code) = World::denial(who);
                let got = res.status();
                let body: serde_json::Value = res.json().await.unwrap();
                assert_eq!(
                    (got, body["error"]["code"].as_str()),
                    (status, Some(code)),
                    "{method} {path} as {who:?}"
                );
            }
        }
    }
    w.app.stop().await;
}

#[tokio::test]
async fn routes_scoped_to_the_tokens_own_couple_reject_bad_tokens() {
    // These act on the token's own couple, so another couple's token acts on its own data;
    // revoked, tampered and missing tokens are refused.
    let w = world().await;
    for who in [Who::Revoked, Who::Tampered, Who::Nobody] {
        let (status, code) = World::denial(who);
        let with = |req: reqwest::RequestBuilder| match w.token(who) {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let reqs = [
            with(w.app.http.get(w.app.url("/api/devices"))),
            with(w.app.http.delete(w.app.url("/api/devices/b"))),
            with(w.app.http.post(w.app.url("/api/backup")).body("x")),
        ];
        for req in reqs {
            assert_error(req.send().await.unwrap(), status, code).await;
        }
        // initiate with a bad bearer is refused too (without one it creates a new couple).
        if let Some(t) = w.token(who) {
            assert_error(w.app.initiate("a", Some(&t)).await, status, code).await;
        }
    }
    // Another couple's token lists only its own devices.
    let body = ok_json(
        w.app.get_auth("/api/devices", &w.two.a).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["devices"].as_array().unwrap().len(), 2);
    w.app.stop().await;
}

#[tokio::test]
async fn every_websocket_message_needs_a_join_with_the_owners_token() {
    let w = world().await;
    for who in [Who::OtherCouple, Who::Revoked, Who::Tampered] {
        let mut ws = w.app.ws().await;
        let device = Device {
            id: "a".into(),
            token: w.token(who).unwrap(),
        };
        ws.send(join_msg(&w.one.id, &device, None)).await;
        let code = match who {
            Who::OtherCouple => "forbidden",
            _ => "invalid_token",
        };
        ws.recv_error(code).await;
        // Nothing else is possible on an unjoined socket.
        ws.send(signal(Some("b"), &json!(1), Some("x"))).await;
        ws.recv_error("not_joined").await;
        ws.send(json!({ "type": "ack", "seq": 1 })).await;
        ws.recv_error("not_joined").await;
    }
    let mut ws = w.app.ws().await;
    ws.send(json!({ "type": "join-couple", "coupleId": w.one.id, "deviceId": "a" }))
        .await;
    ws.recv_error("invalid_request").await;
    let (_, joined) = w.app.join(&w.one, &w.one.a, None).await;
    assert_eq!(joined["deviceId"], "a");
    w.app.stop().await;
}

#[tokio::test]
async fn expired_pairings_and_brute_force_are_stopped() {
    crate::single_instance_only!("the confirm rate limit is per instance");
    let app = TestApp::spawn_with(|c| c.rate.confirm_per_15min = 12).await;
    let (couple, token) = app.open_pairing().await;
    let (couple, token) = (couple.as_str(), token.as_str());
    // Guessing: the attempt cap burns the pairing after 5 wrong tokens...
    app.guess_until_burned(couple, token).await;
    // ...and the per-IP confirm limit stops guessing across pairings.
    for _ in 0..6 {
        let res = app.confirm(couple, "guess", "b").await;
        assert_eq!(res.status(), StatusCode::GONE);
    }
    assert_error(
        app.confirm(couple, "guess", "b").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;

    app.stop().await;

    // An expired pairing is refused even with the right token (a fresh server: fresh budget).
    let app = TestApp::spawn().await;
    let started = ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let (couple, token) = (
        started["coupleId"].as_str().unwrap(),
        started["pairingToken"].as_str().unwrap(),
    );
    assert_error(
        app.confirm(couple, token, "b").await,
        StatusCode::GONE,
        "pairing_expired",
    )
    .await;
    app.stop().await;
}

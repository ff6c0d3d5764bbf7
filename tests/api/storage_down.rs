//! A storage backend that goes away: requests that need it fail fast with 503, signaling
//! between connected devices keeps working, `/health` says so, and the server recovers by
//! itself when the backend returns. Uses a private MongoDB-protocol server it can kill.

use std::time::{Duration, Instant};

use our_memories::config::{MetadataBackend, Secret};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    Backend, PrivateServer, TestApp, assert_error, ok_json, service_env, signal, unique_name,
};
use crate::metrics::Exposition;

async fn health(app: &TestApp) -> Value {
    app.http
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn mongodb_down_means_503_fast_live_signaling_continues_and_recovery_is_automatic() {
    // One backend pass is enough; this test brings its own server.
    if Backend::from_env() != Backend::Mongo {
        return;
    }
    let Some(bin) = service_env("OM_TEST_NX_BIN") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_string_lossy().into_owned();
    let mut mongo = PrivateServer::new(&bin, |port| {
        vec![
            "--data-dir".to_owned(),
            dir_arg.clone(),
            "--host".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            port.to_string(),
        ]
    });
    mongo.start();
    let uri = format!("mongodb://127.0.0.1:{}", mongo.port);
    let app = TestApp::spawn_with(|c| {
        c.storage.metadata = MetadataBackend::Mongo {
            uri: Secret::new(uri.clone()),
            database: Some(unique_name("om_test_")),
        };
        c.storage.blobs = our_memories::config::BlobBackend::Default;
        c.storage.timeout = Duration::from_secs(1);
    })
    .await;
    let couple = app.pair().await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;

    mongo.kill();

    // Connected devices keep relaying: the hot path never touches storage.
    a.send(signal(Some("b"), &json!("still live"), Some("l1")))
        .await;
    a.recv_type("accepted").await;
    assert_eq!(b.recv_type("webrtc-signal").await["payload"], "still live");
    // Anything that needs storage answers 503 quickly.
    let started = Instant::now();
    let res = app
        .get_signals(&couple.id, "b", Some(&couple.b.token), None)
        .await;
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded: {:?}",
        started.elapsed()
    );
    assert_error(
        app.upload(&couple.a, b"x".to_vec(), &[]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
    )
    .await;
    let h = health(&app).await;
    assert_eq!(
        (h["status"].clone(), h["storage"]["metadata"]["ok"].clone()),
        (json!("degraded"), json!(false))
    );

    let ready = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The failures are counted by backend, and the 503s by route.
    let text = app.http.get(app.url("/metrics")).send().await.unwrap();
    let m = Exposition::parse(&text.text().await.unwrap());
    let mongo_errors = [("backend", "mongodb")];
    assert!(m.count("our_memories_storage_operation_errors_total", &mongo_errors) >= 2);
    let unavailable = [("route", "/api/backup"), ("code", "503")];
    assert_eq!(m.count("our_memories_http_requests_total", &unavailable), 1);
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "not_ready");
    mongo.start();
    // The driver reconnects by itself; wait (bounded) for the server to see it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while health(&app).await["status"] != "ok" {
        assert!(Instant::now() < deadline, "storage did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = app
        .get_signals(&couple.id, "b", Some(&couple.b.token), None)
        .await;
    ok_json(res, StatusCode::OK).await;
    ok_json(
        app.upload(&couple.a, b"after".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    app.stop().await;
}

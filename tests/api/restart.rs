//! The real binary, killed and restarted on the same data directory: pending signals survive,
//! and sequence numbers keep increasing.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{Backend, create_bucket, ok_json, s3_settings, service_env, unique_name};

/// The environment that points the binary at this run's backend (empty for embedded).
async fn storage_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    if Backend::from_env() == Backend::Embedded {
        return env;
    }
    let uri = service_env("OM_TEST_MONGODB_URI").expect("MongoDB for this backend");
    env.push(("MONGODB_URI".to_owned(), uri));
    env.push(("MONGODB_DB".to_owned(), unique_name("om_test_")));
    if Backend::from_env() == Backend::MongoS3 {
        let s3 = s3_settings(&unique_name("om-test-")).expect("S3 for this backend");
        create_bucket(&s3).await;
        env.push(("S3_BUCKET".to_owned(), s3.bucket.clone()));
        env.push(("AWS_REGION".to_owned(), s3.region.clone()));
        env.push(("AWS_ACCESS_KEY_ID".to_owned(), s3.access_key.clone()));
        env.push(("AWS_SECRET_ACCESS_KEY".to_owned(), s3.secret_key.clone()));
        env.push((
            "S3_ENDPOINT".to_owned(),
            s3.endpoint.clone().unwrap_or_default(),
        ));
    }
    env
}

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts the binary and waits for its "listening" line to learn the port.
    fn start(data_dir: &std::path::Path, secret: &str, storage: &[(String, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_our-memories"))
            .env_clear()
            .envs(storage.iter().map(|(k, v)| (k, v)))
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("DATA_DIR", data_dir)
            .env("SIGNALING_SECRET", secret)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("server binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server logs before exiting")
                .expect("log line");
            if let Some(rest) = line
                .split("addr=")
                .nth(1)
                .filter(|_| line.contains("listening"))
            {
                break rest.split_whitespace().next().expect("address").to_owned();
            }
        };
        // Keep draining logs so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

#[tokio::test]
async fn pending_signals_survive_a_kill_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let secret = "an-integration-test-secret-of-at-least-32-bytes";
    let http = reqwest::Client::new();
    let storage = storage_env().await;
    let mut server = Server::start(data.path(), secret, &storage);

    // Pair through the real binary (TestApp's helpers need an in-process app, so inline).
    let started = ok_json(
        http.post(server.url("/api/pair/initiate"))
            .json(&json!({ "deviceId": "a" }))
            .send()
            .await
            .unwrap(),
        StatusCode::CREATED,
    )
    .await;
    let couple = started["coupleId"].as_str().unwrap().to_owned();
    let a_token = started["deviceToken"].as_str().unwrap().to_owned();
    let confirm =
        json!({ "coupleId": couple, "pairingToken": started["pairingToken"], "deviceId": "b" });
    let confirmed = ok_json(
        http.post(server.url("/api/pair/confirm"))
            .json(&confirm)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let b_token = confirmed["deviceToken"].as_str().unwrap().to_owned();

    let mut sent = Vec::new();
    for i in 0..3 {
        let body = json!({ "coupleId": couple, "fromDeviceId": "a", "toDeviceId": "b", "signalPayload": { "n": i } });
        let res = http
            .post(server.url("/api/signal"))
            .bearer_auth(&a_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        sent.push(ok_json(res, StatusCode::ACCEPTED).await);
    }
    // SIGKILL: no shutdown hook runs; only what was durable before 202 survives.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = Server::start(data.path(), secret, &storage);
    let fetch = server.url(&format!("/api/signals/{couple}/b"));
    let body = ok_json(
        http.get(&fetch).bearer_auth(&b_token).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let got = body["signals"].as_array().unwrap();
    assert_eq!(got.len(), 3);
    for (g, s) in got.iter().zip(&sent) {
        assert_eq!((&g["id"], &g["seq"]), (&s["id"], &s["seq"]));
    }
    assert_eq!(got[2]["signalPayload"], json!({ "n": 2 }));
    // New signals after the restart are numbered after the old ones.
    let body = json!({ "coupleId": couple, "fromDeviceId": "a", "toDeviceId": "b", "signalPayload": "new" });
    let res = http
        .post(server.url("/api/signal"))
        .bearer_auth(&a_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let new = ok_json(res, StatusCode::ACCEPTED).await;
    assert!(new["seq"].as_u64().unwrap() > sent[2]["seq"].as_u64().unwrap());

    // SIGTERM is a graceful shutdown that exits 0.
    let pid = server.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

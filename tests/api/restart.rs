//! The real binary, killed and restarted on the same data directory: pending signals survive,
//! and sequence numbers keep increasing.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::binary::Server;
use crate::helpers::{
    Backend, create_bucket, ok_json, partial_upload, s3_settings, service_env, unique_name,
    wait_for_partial_upload,
};

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

impl Server {
    /// Starts the binary and waits for its "listening" line to learn the port.
    fn start(data_dir: &std::path::Path, secret: &str, storage: &[(String, String)]) -> Self {
        let mut env = storage.to_vec();
        env.push(("SIGNALING_SECRET".to_owned(), secret.to_owned()));
        env.push(("RUST_LOG".to_owned(), "info".to_owned()));
        Self::start_with(data_dir, &env)
    }

    /// Pairs devices `a` and `b` into a new couple.
    async fn pair(&self, http: &reqwest::Client) -> Paired {
        let started = self.initiate(http).await;
        let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap().to_owned();
        let (couple, pairing_token) =
            (field(&started, "coupleId"), field(&started, "pairingToken"));
        let confirm = json!({ "coupleId": couple, "pairingToken": pairing_token, "deviceId": "b" });
        let res = http
            .post(self.url("/api/pair/confirm"))
            .json(&confirm)
            .send()
            .await
            .unwrap();
        let confirmed = ok_json(res, StatusCode::OK).await;
        Paired {
            a_token: field(&started, "deviceToken"),
            b_token: field(&confirmed, "deviceToken"),
            couple,
            pairing_token,
        }
    }

    /// Starts a couple with device `a` (the in-process `TestApp` helpers do not apply here).
    async fn initiate(&self, http: &reqwest::Client) -> serde_json::Value {
        let res = http
            .post(self.url("/api/pair/initiate"))
            .json(&json!({ "deviceId": "a" }))
            .send()
            .await
            .unwrap();
        ok_json(res, StatusCode::CREATED).await
    }
}

/// The binary's `SIGNALING_SECRET` in these tests (the same across a restart).
const SECRET: &str = "an-integration-test-secret-of-at-least-32-bytes";

/// A couple paired through the binary.
struct Paired {
    couple: String,
    pairing_token: String,
    a_token: String,
    b_token: String,
}

#[tokio::test]
async fn pending_signals_survive_a_kill_and_restart() {
    let data = tempfile::tempdir().unwrap();
    let secret = SECRET;
    let http = reqwest::Client::new();
    let storage = storage_env().await;
    let mut server = Server::start(data.path(), secret, &storage);

    let Paired {
        couple,
        a_token,
        b_token,
        ..
    } = server.pair(&http).await;

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

/// Sends SIGTERM and waits for a clean exit.
fn terminate(server: &mut Server) {
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

#[tokio::test]
async fn a_server_killed_mid_upload_keeps_the_previous_backup_and_cleans_up_on_restart() {
    let data = tempfile::tempdir().unwrap();
    let secret = SECRET;
    let http = reqwest::Client::new();
    let storage = storage_env().await;
    let mut server = Server::start(data.path(), secret, &storage);
    let started = server.initiate(&http).await;
    let couple = started["coupleId"].as_str().unwrap().to_owned();
    let token = started["deviceToken"].as_str().unwrap().to_owned();
    let upload = |body: Vec<u8>| {
        http.post(server.url("/api/backup"))
            .bearer_auth(&token)
            .body(body)
            .send()
    };
    let first = ok_json(
        upload(b"the good one".to_vec()).await.unwrap(),
        StatusCode::CREATED,
    )
    .await;

    // Half of a 16 MiB upload, then the server dies.
    let tcp = partial_upload(server.addr.as_str(), &token, 16 << 20, 8 << 20).await;
    if storage.is_empty() {
        // Embedded: wait until part of it is on disk, so the kill is really mid-write.
        wait_for_partial_upload(data.path(), 1).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(tcp);

    let mut server = Server::start(data.path(), secret, &storage);
    let res = latest(&http, &server, &couple, &token).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["x-backup-id"],
        first["backupId"].as_str().unwrap()
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"the good one");
    let list = ok_json(
        http.get(server.url(&format!("/api/backups/{couple}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    terminate(&mut server);

    // The restart already removed the leftovers: nothing partial, one complete blob.
    let vars: std::collections::HashMap<_, _> = storage.into_iter().collect();
    let config = our_memories::config::Config::from_vars(|k| vars.get(k).cloned()).unwrap();
    let backends = our_memories::store::open(&config.storage, data.path())
        .await
        .unwrap();
    assert_eq!(backends.blobs.clean_partial_writes(None).await.unwrap(), 0);
    assert_eq!(backends.blobs.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unreachable_mongodb_stops_start_up_with_a_clear_message() {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_our-memories"))
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", tempfile::tempdir().unwrap().path())
        .env("MONGODB_URI", "mongodb://127.0.0.1:9")
        .env("STORAGE_TIMEOUT_SECS", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("cannot reach MongoDB").count(),
        1,
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "bounded wait"
    );
}

#[test]
fn help_and_version_print_and_exit_without_serving() {
    let run = |args: &str| {
        Command::new(env!("CARGO_BIN_EXE_our-memories"))
            .args(args.split(' '))
            .env_clear()
            .env("PORT", "1") // a privileged port: serving would fail, printing does not
            .output()
            .unwrap()
    };
    let help = run("--help");
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("Usage:") && text.contains("healthcheck"),
        "{text}"
    );
    let version = run("--version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("our-memories {}", env!("CARGO_PKG_VERSION"))
    );
    let unknown = run("--serve-faster");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--help"));
    // The probe's own help prints rather than probing (port 1 would answer "unhealthy").
    let probe_help = run("healthcheck --help");
    assert!(probe_help.status.success());
    let text = String::from_utf8_lossy(&probe_help.stdout);
    assert!(text.contains("our-memories healthcheck"), "{text}");
    assert_eq!(run("healthcheck --now").status.code(), Some(2));
}

#[tokio::test]
async fn production_logs_are_json_lines_with_request_ids_and_never_hold_secrets() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let data = tempfile::tempdir().unwrap();
    let secret = SECRET;
    let env: Vec<(String, String)> = [
        ("NODE_ENV", "production"),
        ("SIGNALING_SECRET", secret),
        ("RUST_LOG", "debug"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut server = Server::start_with(data.path(), &env);
    let http = reqwest::Client::new();

    // Exercise every path that handles a secret or user content.
    let Paired {
        couple,
        pairing_token,
        a_token,
        b_token,
    } = server.pair(&http).await;
    let body = json!({ "coupleId": couple, "fromDeviceId": "a", "toDeviceId": "b", "signalPayload": { "sdp": "REST-PAYLOAD-MARKER" } });
    let res = http
        .post(server.url("/api/signal"))
        .bearer_auth(&a_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    let join =
        json!({ "type": "join-couple", "coupleId": couple, "deviceId": "b", "token": b_token });
    ws.send(Message::text(join.to_string())).await.unwrap();
    let signal = json!({ "type": "webrtc-signal", "to": "a", "id": "m1", "payload": { "ice": "WS-PAYLOAD-MARKER" } });
    ws.send(Message::text(signal.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            panic!("socket closed")
        };
        if t.as_str().contains("\"accepted\"") {
            break;
        }
    }
    let res = http
        .post(server.url("/api/backup"))
        .bearer_auth(&a_token)
        .header("x-backup-meta", r#"{"note":"META-MARKER"}"#)
        .body("BACKUP-BYTES-MARKER")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = latest(&http, &server, &couple, &b_token).await;
    assert_eq!(res.text().await.unwrap(), "BACKUP-BYTES-MARKER");
    let res = http.get(server.url("/api/devices")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    drop(ws);
    terminate(&mut server);

    let logs = server.logs.lock().unwrap().join("\n");
    // A client's mistake is routine: one INFO line, no warning.
    let refused = logs
        .lines()
        .find(|l| l.contains("\"status\":401"))
        .expect("the 401 is logged");
    assert!(refused.contains("\"level\":\"INFO\""), "{refused}");
    let warnings: Vec<_> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") && l.contains("status"))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    for secret in [
        secret,
        pairing_token.as_str(),
        a_token.as_str(),
        b_token.as_str(),
        "REST-PAYLOAD-MARKER",
        "WS-PAYLOAD-MARKER",
        "META-MARKER",
        "BACKUP-BYTES-MARKER",
    ] {
        assert!(!logs.contains(secret), "the logs contain {secret:?}");
    }
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        logs.contains("request_id"),
        "requests are logged with their id"
    );
}

#[tokio::test]
async fn a_revoked_token_stays_dead_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let secret = SECRET;
    let http = reqwest::Client::new();
    let storage = storage_env().await;
    let mut server = Server::start(data.path(), secret, &storage);
    let Paired {
        couple,
        a_token,
        b_token,
        ..
    } = server.pair(&http).await;
    let res = http
        .delete(server.url("/api/devices/b"))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let mut server = Server::start(data.path(), secret, &storage);
    let res = http
        .get(server.url(&format!("/api/signals/{couple}/b")))
        .bearer_auth(&b_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = http
        .get(server.url("/api/devices"))
        .bearer_auth(&a_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok_json(res, StatusCode::OK).await["devices"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    terminate(&mut server);
}

/// Runs `our-memories healthcheck` against `port` on loopback.
fn healthcheck(port: u16) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_our-memories"))
        .arg("healthcheck")
        .env_clear()
        .env("HOST", "0.0.0.0")
        .env("PORT", port.to_string())
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_healthcheck_command_passes_on_a_healthy_server_and_fails_otherwise() {
    let app = crate::helpers::TestApp::spawn().await;
    let port = app.addr.port();
    let ok = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    app.stop().await;
    let down = tokio::task::spawn_blocking(move || healthcheck(port))
        .await
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("unhealthy"));
}

/// `GET /api/backup/:coupleId` (the latest backup) on `server`.
async fn latest(
    http: &reqwest::Client,
    server: &Server,
    couple: &str,
    token: &str,
) -> reqwest::Response {
    http.get(server.url(&format!("/api/backup/{couple}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// A tus `PATCH` of `body` at `offset` to `at` (a path) on `server`.
async fn tus_patch(
    http: &reqwest::Client,
    server: &Server,
    token: &str,
    at: &str,
    offset: usize,
    body: Vec<u8>,
) -> reqwest::Response {
    http.patch(server.url(at))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset)
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_server_killed_during_a_tus_patch_resumes_from_a_durable_offset() {
    use tokio::io::AsyncWriteExt;
    const MIB: usize = 1 << 20;
    let data = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let storage = storage_env().await;
    let mut server = Server::start(data.path(), SECRET, &storage);
    let started = server.initiate(&http).await;
    let (couple, token) = (
        started["coupleId"].as_str().unwrap().to_owned(),
        started["deviceToken"].as_str().unwrap().to_owned(),
    );
    let backup: Vec<u8> = (0..3 * MIB)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    let res = http
        .post(server.url("/api/backup/uploads"))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", backup.len())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let at = res.headers()["location"].to_str().unwrap().to_owned();
    let res = tus_patch(&http, &server, &token, &at, 0, backup[..MIB].to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // The second chunk is half sent when the server dies.
    let mut tcp = tokio::net::TcpStream::connect(server.addr.as_str())
        .await
        .unwrap();
    let head = format!(
        "PATCH {at} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ntus-resumable: 1.0.0\r\nupload-offset: {MIB}\r\ncontent-type: application/offset+octet-stream\r\ncontent-length: {}\r\n\r\n",
        2 * MIB
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&backup[MIB..2 * MIB]).await.unwrap();
    if storage.is_empty() {
        // Embedded: wait until part of it is on disk, so the kill is really mid-write.
        wait_for_partial_upload(data.path(), 1).await;
    }
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    drop(tcp);

    let server = Server::start(data.path(), SECRET, &storage);
    let res = http
        .head(server.url(&at))
        .bearer_auth(&token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["upload-offset"],
        MIB.to_string().as_str(),
        "the acknowledged chunk, and nothing of the one cut by the kill"
    );
    let res = tus_patch(&http, &server, &token, &at, MIB, backup[MIB..].to_vec()).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = latest(&http, &server, &couple, &token).await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), backup.as_slice());
}

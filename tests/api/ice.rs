//! `GET /api/ice-servers`: STUN and TURN servers for a paired device, with TURN REST
//! credentials that a real coturn (`use-auth-secret`) accepts, and refuses once tampered with
//! or expired.

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use our_memories::config::{Secret, TurnConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PrivateServer, TestApp, assert_error, free_port, ok_json, service_env};

const TURN_SECRET: &str = "an-ice-test-turn-secret";

/// An app handing out `stun:` and `turn:` URLs (the TURN one at `turn_port`).
async fn app_with_turn(turn_port: u16) -> TestApp {
    TestApp::spawn_with(|c| {
        c.ice.stun_urls = vec!["stun:127.0.0.1:3478".to_owned()];
        c.ice.turn = Some(TurnConfig {
            urls: vec![format!("turn:127.0.0.1:{turn_port}?transport=udp")],
            secret: Secret::new(TURN_SECRET.to_owned()),
        });
    })
    .await
}

/// `base64(HMAC-SHA1(secret, username))`: the TURN REST credential.
fn sign(username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(TURN_SECRET.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn ice_servers_are_for_paired_devices_in_the_shape_rtcpeerconnection_takes() {
    let app = app_with_turn(3478).await;
    let couple = app.pair().await;
    let res = app
        .http
        .get(app.url("/api/ice-servers"))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;

    let body = ok_json(
        app.get_auth("/api/ice-servers", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["ttl"], 86_400);
    assert_eq!(
        body["iceServers"][0],
        json!({ "urls": ["stun:127.0.0.1:3478"] })
    );
    let turn = &body["iceServers"][1];
    assert_eq!(turn["urls"], json!(["turn:127.0.0.1:3478?transport=udp"]));
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry.abs_diff(unix_now() + 86_400) < 60, "expiry {expiry}");
    // An opaque pseudonym: neither the couple nor the device shows in TURN logs.
    assert_eq!(user.len(), 32);
    assert!(user.bytes().all(|b| b.is_ascii_hexdigit()) && !username.contains(&couple.id));
    assert_eq!(turn["credential"], sign(username));
    // Stable per device, different between devices.
    let again = ok_json(
        app.get_auth("/api/ice-servers", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    let other = ok_json(
        app.get_auth("/api/ice-servers", &couple.b).await,
        StatusCode::OK,
    )
    .await;
    let user_of = |v: &Value| {
        v["iceServers"][1]["username"]
            .as_str()
            .unwrap()
            .split_once(':')
            .unwrap()
            .1
            .to_owned()
    };
    assert_eq!(user_of(&again), user);
    assert_ne!(user_of(&other), user);
    app.stop().await;
}

#[tokio::test]
async fn without_turn_only_stun_or_nothing_is_handed_out() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let body = ok_json(
        app.get_auth("/api/ice-servers", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body, json!({ "iceServers": [], "ttl": 86_400 }));
    app.stop().await;
}

/// A private coturn with the app's secret, logging (verbosely) to a file of the test's own.
struct Turn {
    server: PrivateServer,
    peer: std::process::Child,
    peer_port: u16,
    bin: std::path::PathBuf,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.peer.kill();
        let _ = self.peer.wait();
    }
}

impl Turn {
    fn start(bin: &str) -> Self {
        let bin = std::path::PathBuf::from(bin);
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("turn.log");
        let relay = free_port();
        let (log_arg, db_arg) = (
            format!("--log-file={}", log.display()),
            format!("--userdb={}", dir.path().join("turndb").display()),
        );
        let mut server = PrivateServer::new(&bin.join("turnserver").to_string_lossy(), |port| {
            [
                "-n",
                "-v",
                "--listening-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--relay-ip=127.0.0.1",
                &format!("--min-port={relay}"),
                &format!("--max-port={}", relay.saturating_add(20)),
                "--use-auth-secret",
                &format!("--static-auth-secret={TURN_SECRET}"),
                "--realm=our-memories.test",
                // Only for this loopback test: production must keep loopback peers denied.
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                &log_arg,
                "--simple-log",
                &db_arg,
            ]
            .map(str::to_owned)
            .to_vec()
        });
        server.start();
        let peer_port = free_port();
        let peer = Command::new(bin.join("turnutils_peer"))
            .args(["-L", "127.0.0.1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("turnutils_peer starts");
        Self {
            server,
            peer,
            peer_port,
            bin,
            log,
            _dir: dir,
        }
    }

    /// Allocates a relay with these credentials and sends five packets through it to the
    /// peer: (whether it succeeded, what the client printed).
    fn relay(&self, username: &str, credential: &str) -> (bool, String) {
        let out = Command::new(self.bin.join("turnutils_uclient"))
            .args(["-u", username, "-w", credential])
            .args(["-p", &self.server.port.to_string(), "-e", "127.0.0.1"])
            .args([
                "-r",
                &self.peer_port.to_string(),
                "-n",
                "5",
                "-m",
                "1",
                "127.0.0.1",
            ])
            .output()
            .expect("turnutils_uclient runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// Whether the server answered 401 to a request naming `username`.
    fn refused(&self, username: &str) -> bool {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines()
            .any(|l| l.contains(&format!("user <{username}>")) && l.contains("error 401"))
    }
}

#[tokio::test]
async fn a_real_turn_server_accepts_the_credentials_and_refuses_tampered_or_expired_ones() {
    let Some(bin) = service_env("OM_TEST_COTURN_BIN") else {
        return;
    };
    let turn = Turn::start(&bin);
    let app = app_with_turn(turn.server.port).await;
    let couple = app.pair().await;
    let body = ok_json(
        app.get_auth("/api/ice-servers", &couple.a).await,
        StatusCode::OK,
    )
    .await;
    app.stop().await;
    let server = &body["iceServers"][1];
    let (username, credential) = (
        server["username"].as_str().unwrap(),
        server["credential"].as_str().unwrap(),
    );

    // The relay works with what the server handed out (five packets there and back)…
    let (ok, out) = turn.relay(username, credential);
    assert!(ok && out.contains("Total lost packets 0"), "{out}");
    assert!(!turn.refused(username));
    // …not with a credential changed by one character…
    let mut tampered = credential.to_owned();
    let at = tampered.len() - 2;
    let other = if &tampered[at..=at] == "A" { "B" } else { "A" };
    tampered.replace_range(at..=at, other);
    let (ok, out) = turn.relay(username, &tampered);
    assert!(!ok && out.contains("Cannot complete Allocation"), "{out}");
    assert!(turn.refused(username));
    // …nor with a correctly signed one whose expiry has passed.
    let user = username.split_once(':').unwrap().1;
    let expired = format!("{}:{user}", unix_now() - 60);
    let (ok, out) = turn.relay(&expired, &sign(&expired));
    assert!(!ok, "{out}");
    assert!(turn.refused(&expired));
}

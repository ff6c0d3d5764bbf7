//! Cluster mode (`REDIS_URL`): instances of the real binary share one MongoDB database and one
//! Redis key prefix, and a couple's devices on different instances must see each other as if
//! they were on one: relay both ways, presence, one socket per device, resends, revocation,
//! and an instance killed mid-call losing nothing.
//!
//! These tests bring their own database and key prefix, whatever `OM_TEST_BACKEND` says, so
//! they run in the first (embedded) pass of `.ci/test` only.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::binary::Server;
use crate::helpers::{
    Backend, Couple, Device, PrivateServer, Ws, assert_error, join_msg, ok_json, service_env,
    signal, unique_name,
};
use crate::metrics::{Exposition, scrape_url_until};

/// The protocol's bound for telling peers that a device is gone (docs/protocol.md §6).
const PRESENCE_BOUND: Duration = Duration::from_secs(10);

/// Instances sharing one MongoDB database and one Redis key prefix.
struct Cluster {
    servers: Vec<Server>,
    http: reqwest::Client,
    _data: Vec<tempfile::TempDir>,
}

/// The environment every instance of one cluster shares, or `None` (a loud skip) outside
/// the first pass or without the services.
fn cluster_env() -> Option<Vec<(String, String)>> {
    if Backend::from_env() != Backend::Embedded {
        eprintln!("SKIPPED: the cluster tests run once, in the embedded pass");
        return None;
    }
    let mongo = service_env("OM_TEST_MONGODB_URI")?;
    let redis = service_env("OM_TEST_REDIS_URL")?;
    Some(
        [
            ("MONGODB_URI", mongo),
            ("MONGODB_DB", unique_name("om_cluster_")),
            ("REDIS_URL", redis),
            ("REDIS_KEY_PREFIX", unique_name("om")),
            (
                "SIGNALING_SECRET",
                "a-cluster-test-secret-of-at-least-32-bytes".to_owned(),
            ),
            ("RUST_LOG", "info".to_owned()),
            ("STORAGE_TIMEOUT_SECS", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    )
}

impl Cluster {
    fn start(n: usize, env: &[(String, String)]) -> Self {
        let mut data = Vec::new();
        let servers = (0..n)
            .map(|i| {
                let dir = tempfile::tempdir().expect("temp dir");
                let mut env = env.to_vec();
                env.push(("INSTANCE_ID".to_owned(), format!("i{i}")));
                let server = Server::start_with(dir.path(), &env);
                data.push(dir);
                server
            })
            .collect();
        Self {
            servers,
            http: reqwest::Client::new(),
            _data: data,
        }
    }

    fn url(&self, i: usize, path: &str) -> String {
        self.servers[i].url(path)
    }

    /// Pairs `a` (through instance 0) and `b` (through instance 1).
    async fn pair(&self) -> Couple {
        let (started, a) = self.initiate().await;
        self.confirm(&started, a).await
    }

    /// Starts a couple with device `a` on instance 0: its pairing answer and `a`.
    async fn initiate(&self) -> (Value, Device) {
        let res = self
            .http
            .post(self.url(0, "/api/pair/initiate"))
            .json(&json!({ "deviceId": "a" }))
            .send()
            .await
            .unwrap();
        let started = ok_json(res, StatusCode::CREATED).await;
        let a = Device {
            id: "a".to_owned(),
            token: started["deviceToken"].as_str().unwrap().to_owned(),
        };
        (started, a)
    }

    /// Confirms `b` into the couple `started` (an initiate's answer) on instance 1.
    async fn confirm(&self, started: &Value, a: Device) -> Couple {
        let id = started["coupleId"].as_str().unwrap().to_owned();
        let confirm =
            json!({ "coupleId": id, "pairingToken": started["pairingToken"], "deviceId": "b" });
        let res = self
            .http
            .post(self.url(1, "/api/pair/confirm"))
            .json(&confirm)
            .send()
            .await
            .unwrap();
        let confirmed = ok_json(res, StatusCode::OK).await;
        let b = Device {
            id: "b".to_owned(),
            token: confirmed["deviceToken"].as_str().unwrap().to_owned(),
        };
        Couple { id, a, b }
    }

    /// `n` instances (or `None`: a loud skip, see [`cluster_env`]) and a couple whose `a` is
    /// joined on instance 0 and `b` on instance 1, each having seen the other.
    async fn in_call(n: usize) -> Option<(Self, Couple, Ws, Ws)> {
        Some(Self::in_call_with(n, &cluster_env()?).await)
    }

    /// [`Cluster::in_call`] with this environment.
    async fn in_call_with(n: usize, env: &[(String, String)]) -> (Self, Couple, Ws, Ws) {
        let c = Self::start(n, env);
        let couple = c.pair().await;
        let (mut a, _) = c.join(0, &couple, &couple.a, None).await;
        let (b, joined) = c.join(1, &couple, &couple.b, None).await;
        assert_eq!(joined["peers"], json!(["a"]));
        assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
        (c, couple, a, b)
    }

    /// Instance `i`'s metrics, once `ready` holds.
    async fn metrics_until(&self, i: usize, ready: impl Fn(&Exposition) -> bool) -> Exposition {
        scrape_url_until(&self.http, || self.url(i, "/metrics"), ready)
            .await
            .1
    }

    /// `GET /api/signals/:couple/:device{query}` on instance `i`, with `device`'s token.
    async fn poll(
        &self,
        i: usize,
        couple: &Couple,
        device: &Device,
        query: &str,
    ) -> reqwest::Response {
        let path = format!("/api/signals/{}/{}{query}", couple.id, device.id);
        self.http
            .get(self.url(i, &path))
            .bearer_auth(&device.token)
            .send()
            .await
            .unwrap()
    }

    /// `/ready`'s status on instance `i`.
    async fn ready(&self, i: usize) -> StatusCode {
        let res = self.http.get(self.url(i, "/ready")).send().await.unwrap();
        res.status()
    }

    /// Connects `device` to instance `i` and joins; returns the socket and `joined`.
    async fn join(
        &self,
        i: usize,
        couple: &Couple,
        device: &Device,
        last: Option<u64>,
    ) -> (Ws, Value) {
        let mut ws = Ws::connect(&self.servers[i].addr).await;
        ws.send(join_msg(&couple.id, device, last)).await;
        let joined = ws.recv_type("joined").await;
        (ws, joined)
    }

    async fn post_signal(
        &self,
        i: usize,
        couple: &Couple,
        from: &Device,
        to: &str,
        payload: Value,
    ) -> Value {
        let body = json!({ "coupleId": couple.id, "fromDeviceId": from.id, "toDeviceId": to, "signalPayload": payload });
        let res = self
            .http
            .post(self.url(i, "/api/signal"))
            .bearer_auth(&from.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        ok_json(res, StatusCode::ACCEPTED).await
    }
}

/// Sends a signal with `id` and waits for its `accepted`.
async fn send_acked(ws: &mut Ws, to: &str, payload: &Value, id: &str) {
    ws.send(signal(Some(to), payload, Some(id))).await;
    let accepted = ws.recv_type("accepted").await;
    assert_eq!(accepted["id"], id, "{accepted}");
}

/// The next signal on `ws`: (payload, seq).
async fn recv_signal(ws: &mut Ws) -> (Value, u64) {
    let got = ws.recv_type("webrtc-signal").await;
    (got["payload"].clone(), got["seq"].as_u64().expect("a seq"))
}

#[tokio::test]
async fn devices_on_different_instances_relay_both_ways() {
    let Some((c, couple, mut a, mut b)) = Cluster::in_call(3).await else {
        return;
    };

    send_acked(&mut a, "b", &json!({ "sdp": "offer" }), "x1").await;
    let (payload, s1) = recv_signal(&mut b).await;
    assert_eq!(payload, json!({ "sdp": "offer" }));
    send_acked(&mut b, "a", &json!({ "sdp": "answer" }), "y1").await;
    let (payload, s2) = recv_signal(&mut a).await;
    assert_eq!(payload, json!({ "sdp": "answer" }));
    assert!(
        s2 > s1,
        "seq numbers only grow across instances: {s1} then {s2}"
    );

    // REST on a third instance reaches b's socket; REST polling on the first sees the same
    // mailbox.
    let rest = c
        .post_signal(2, &couple, &couple.a, "b", json!("via-rest"))
        .await;
    let (payload, seq) = recv_signal(&mut b).await;
    assert_eq!(
        (payload, json!(seq)),
        (json!("via-rest"), rest["seq"].clone())
    );
    let res = c.poll(0, &couple, &couple.b, &format!("?after={s1}")).await;
    let polled = ok_json(res, StatusCode::OK).await;
    assert_eq!(
        polled["signals"].as_array().map(Vec::len),
        Some(1),
        "{polled}"
    );
    assert_eq!(polled["signals"][0]["seq"], rest["seq"]);

    // Metrics stay per instance: a relay is counted where it was taken, its latency where it
    // was delivered (recorded once the frame is written), and Redis calls as a storage
    // backend.
    let relayed = |m: &Exposition, transport| {
        m.count(
            "our_memories_signals_relayed_total",
            &[("transport", transport)],
        )
    };
    let m = c
        .metrics_until(1, |m| {
            m.count("our_memories_signal_relay_latency_seconds_count", &[]) >= 2
        })
        .await;
    assert_eq!(relayed(&m, "websocket"), 1);
    let m = c
        .metrics_until(0, |m| {
            m.count("our_memories_signal_relay_latency_seconds_count", &[]) >= 1
        })
        .await;
    assert_eq!(relayed(&m, "websocket"), 1);
    let redis_appends = [("backend", "redis"), ("operation", "append")];
    assert_eq!(
        m.count(
            "our_memories_storage_operation_duration_seconds_count",
            &redis_appends
        ),
        1
    );
    let m = c.metrics_until(2, |_| true).await;
    assert_eq!((relayed(&m, "rest"), relayed(&m, "websocket")), (1, 0));
}

#[tokio::test]
async fn one_socket_per_device_and_resends_are_deduplicated_across_instances() {
    let Some((c, couple, mut a, mut b)) = Cluster::in_call(3).await else {
        return;
    };
    send_acked(&mut a, "b", &json!(1), "once").await;
    assert_eq!(recv_signal(&mut b).await.0, json!(1));

    // a joins again on another instance: its first socket is replaced (4000), b sees no
    // leave and no join.
    let (mut a2, joined) = c.join(2, &couple, &couple.a, None).await;
    assert_eq!(joined["peers"], json!(["b"]));
    assert_eq!(a.recv_close().await, Some(4000));
    // The resend of the same id is accepted and not delivered again: the next message b
    // sees is the next signal.
    send_acked(&mut a2, "b", &json!(1), "once").await;
    send_acked(&mut a2, "b", &json!(2), "twice").await;
    let got = b.recv().await;
    assert_eq!(
        (&got["type"], &got["payload"]),
        (&json!("webrtc-signal"), &json!(2)),
        "{got}"
    );
}

#[tokio::test]
async fn a_killed_instance_loses_nothing_and_its_peers_see_it_leave() {
    let Some((mut c, couple, mut a, mut b)) = Cluster::in_call(3).await else {
        return;
    };

    let mut seqs = Vec::new();
    for i in 0..4 {
        send_acked(&mut b, "a", &json!(i), &format!("before-{i}")).await;
        let (payload, seq) = recv_signal(&mut a).await;
        assert_eq!(payload, json!(i));
        seqs.push(seq);
    }
    // a processed the first two only, and acknowledged them.
    a.send(json!({ "type": "ack", "seq": seqs[1] })).await;

    // SIGKILL the instance that holds a, mid-call.
    let killed_at = Instant::now();
    c.servers[0].child.kill().unwrap();
    c.servers[0].child.wait().unwrap();
    assert_eq!(b.recv_type("peer-left").await["deviceId"], "a");
    let took = killed_at.elapsed();
    assert!(took < PRESENCE_BOUND, "peer-left after {took:?}");
    eprintln!("peer-left {took:?} after the SIGKILL");
    drop(a);

    // b keeps sending while a is away.
    for i in 0..3 {
        send_acked(&mut b, "a", &json!(10 + i), &format!("during-{i}")).await;
    }
    // a resumes on another instance: everything after what it processed, once, in order.
    let (mut a, joined) = c.join(2, &couple, &couple.a, Some(seqs[1])).await;
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["peers"], json!(["b"]));
    let mut last = seqs[1];
    for expected in [2, 3, 10, 11, 12] {
        let (payload, seq) = recv_signal(&mut a).await;
        assert_eq!(payload, json!(expected));
        assert!(seq > last, "in order: {seq} after {last}");
        if expected < 10 {
            assert_eq!(seq, seqs[usize::try_from(expected).unwrap()]);
        }
        last = seq;
    }
    assert_eq!(b.recv_type("peer-joined").await["deviceId"], "a");
    // Nothing more is waiting: the next message a sees is a fresh one.
    send_acked(&mut b, "a", &json!("after"), "after").await;
    assert_eq!(recv_signal(&mut a).await.0, json!("after"));
}

#[tokio::test]
async fn a_device_paired_while_its_couple_is_live_gets_broadcasts_at_once() {
    let Some(env) = cluster_env() else { return };
    let c = Cluster::start(2, &env);
    let (started, a_device) = c.initiate().await;
    // a alone: the couple's state on Redis knows one device.
    let mut a = Ws::connect(&c.servers[0].addr).await;
    a.send(json!({ "type": "join-couple", "coupleId": started["coupleId"], "deviceId": "a", "token": a_device.token })).await;
    a.recv_type("joined").await;
    let couple = c.confirm(&started, a_device).await;
    // A broadcast right after the pairing reaches the new device, offline, through REST on
    // the other instance.
    a.send(json!({ "type": "webrtc-signal", "payload": "hello b", "id": "hi" }))
        .await;
    a.recv_type("accepted").await;
    let res = c.poll(1, &couple, &couple.b, "").await;
    let polled = ok_json(res, StatusCode::OK).await;
    assert_eq!(polled["signals"][0]["signalPayload"], "hello b", "{polled}");
}

#[tokio::test]
async fn a_revoked_device_is_closed_on_its_instance_and_its_token_dies_everywhere() {
    let Some((c, couple, mut a, mut b)) = Cluster::in_call(3).await else {
        return;
    };

    let res = c
        .http
        .delete(c.url(2, "/api/devices/b"))
        .bearer_auth(&couple.a.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(b.recv_close().await, Some(4003));
    assert_eq!(a.recv_type("peer-left").await["deviceId"], "b");
    for i in 0..3 {
        let res = c.poll(i, &couple, &couple.b, "").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "instance {i}");
    }
    // A signal to the revoked device is refused on every instance.
    a.send(signal(Some("b"), &json!("x"), Some("to-revoked")))
        .await;
    assert_eq!(a.recv_error("unknown_device").await["id"], "to-revoked");
}

/// A Redis of the test's own, persisting every write before it answers (the setting
/// docs/operations.md asks for), so a kill and a restart on the same directory keep
/// everything it acknowledged.
fn private_redis(bin: &str, dir: &std::path::Path) -> PrivateServer {
    let dir_arg = dir.to_string_lossy().into_owned();
    let mut redis = PrivateServer::new(bin, |port| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir_arg,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--set-proc-title",
            "no",
        ]
        .map(str::to_owned)
        .to_vec()
    });
    redis.start();
    redis
}

/// A signal `id` from a to b gets `storage_unavailable` within `limit`.
async fn refused_within(a: &mut Ws, id: &str, limit: Duration) {
    let started = Instant::now();
    a.send(signal(Some("b"), &json!("during"), Some(id))).await;
    assert_eq!(a.recv_error("storage_unavailable").await["id"], id);
    assert!(started.elapsed() < limit, "{:?}", started.elapsed());
}

/// With Redis down, every instance refuses what needs it, at once and clearly.
async fn assert_unavailable_everywhere(c: &Cluster, couple: &Couple) {
    let body = json!({ "coupleId": couple.id, "fromDeviceId": "b", "toDeviceId": "a", "signalPayload": 1 });
    let res = c
        .http
        .post(c.url(1, "/api/signal"))
        .bearer_auth(&couple.b.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
    for i in 0..c.servers.len() {
        assert_eq!(
            c.ready(i).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "instance {i}"
        );
        let health: Value = c
            .http
            .get(c.url(i, "/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            health["storage"]["cluster"],
            json!({ "backend": "redis", "ok": false })
        );
    }
}

#[tokio::test]
async fn redis_outages_fail_cleanly_lose_nothing_kept_and_never_reuse_a_seq() {
    let (Some(mut env), Some(bin)) = (cluster_env(), service_env("OM_TEST_REDIS_SERVER")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut redis = private_redis(&bin, dir.path());
    for (k, v) in &mut env {
        if k == "REDIS_URL" {
            *v = format!("redis://127.0.0.1:{}", redis.port);
        }
    }
    let (c, couple, mut a, mut b) = Cluster::in_call_with(2, &env).await;
    // Accepted before the outage, never acknowledged by b.
    send_acked(&mut a, "b", &json!("kept"), "k1").await;
    let (_, kept) = recv_signal(&mut b).await;

    redis.kill();
    // Clean errors, at once: the signal is not accepted, so resending it is safe.
    refused_within(&mut a, "d1", Duration::from_secs(3)).await;
    assert_unavailable_everywhere(&c, &couple).await;

    // Back on the same data: every instance recovers without a restart.
    redis.start();
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..2 {
        while c.ready(i).await != StatusCode::OK {
            assert!(
                Instant::now() < deadline,
                "instance {i} did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    send_acked(&mut a, "b", &json!("during"), "d1").await;
    let (payload, seq) = recv_signal(&mut b).await;
    assert_eq!(payload, json!("during"));
    assert!(
        seq > kept,
        "a restarted Redis means a new epoch: {seq} after {kept}"
    );
    // What was accepted before the outage is still there: a fresh join (no lastSeq) gets it.
    let (mut b2, _) = c.join(0, &couple, &couple.b, None).await;
    assert_eq!(b.recv_close().await, Some(4000));
    assert_eq!(recv_signal(&mut b2).await, (json!("kept"), kept));
    assert_eq!(recv_signal(&mut b2).await, (json!("during"), seq));

    // Redis comes back empty (its data lost, as without an append-only file): the sockets it
    // no longer knows are told to join again, and seq numbers still only grow (a new epoch
    // from MongoDB).
    redis.kill();
    std::fs::remove_dir_all(dir.path()).unwrap();
    std::fs::create_dir(dir.path()).unwrap();
    redis.start();
    for ws in [&mut a, &mut b2] {
        ws.recv_error("unavailable").await;
    }
    a.send(join_msg(&couple.id, &couple.a, None)).await;
    a.recv_type("joined").await;
    b2.send(join_msg(&couple.id, &couple.b, Some(seq))).await;
    assert_eq!(b2.recv_type("joined").await["peers"], json!(["a"]));
    // Redis forgot b's socket, so its join is news to a.
    assert_eq!(a.recv_type("peer-joined").await["deviceId"], "b");
    send_acked(&mut a, "b", &json!("after loss"), "l1").await;
    let (payload, fresh) = recv_signal(&mut b2).await;
    assert_eq!(payload, json!("after loss"));
    assert!(
        fresh > seq,
        "no seq is reused after Redis lost its data: {fresh} after {seq}"
    );
}

/// A Redis that hangs (accepts connections, answers nothing) fails calls as the storage's
/// fault, before the caller's own wait runs out, and the instances recover when it answers
/// again.
#[tokio::test]
async fn a_hung_redis_is_storage_unavailable_not_a_timeout() {
    let (Some(mut env), Some(bin)) = (cluster_env(), service_env("OM_TEST_REDIS_SERVER")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let redis = private_redis(&bin, dir.path());
    for (k, v) in &mut env {
        if k == "REDIS_URL" {
            *v = format!("redis://127.0.0.1:{}", redis.port);
        }
    }
    // The default storage timeout, which equals the actors' call timeout.
    env.retain(|(k, _)| k != "STORAGE_TIMEOUT_SECS");
    let (c, couple, mut a, _b) = Cluster::in_call_with(2, &env).await;
    redis.pause(true);
    refused_within(&mut a, "h1", Duration::from_secs(4)).await;
    assert_unavailable_everywhere(&c, &couple).await;
    redis.pause(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    for i in 0..2 {
        while c.ready(i).await != StatusCode::OK {
            assert!(Instant::now() < deadline, "instance {i} did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The sockets did not answer pings while the test waited (the server has closed them):
    // fresh ones relay again.
    let (mut a, _) = c.join(0, &couple, &couple.a, None).await;
    let (mut b, _) = c.join(1, &couple, &couple.b, None).await;
    // The signals that timed out were written to Redis's socket before the timeout, so they
    // may land when Redis wakes up (docs/protocol.md, `storage_unavailable`): each side may
    // see its peer's in its backlog.
    b.send(signal(Some("a"), &json!("after"), Some("h2"))).await;
    skip_until(&mut b, &json!("during"), |m| m["type"] == "accepted").await;
    skip_until(&mut a, &json!(1), |m| m["payload"] == "after").await;
}

/// Reads until `done`, allowing only presence and signals carrying `landed` on the way.
async fn skip_until(ws: &mut Ws, landed: &Value, done: impl Fn(&Value) -> bool) {
    loop {
        let m = ws.recv().await;
        if done(&m) {
            return;
        }
        let skip = m["type"] == "peer-joined" || m["payload"] == *landed;
        assert!(skip, "unexpected: {m}");
    }
}

#[test]
fn cluster_mode_refuses_the_embedded_store() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_our-memories"))
        .env_clear()
        .env("DATA_DIR", data.path())
        .env("PORT", "0")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .expect("the binary runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("MONGODB_URI") && stderr.contains("REDIS_URL"),
        "{stderr}"
    );
}

//! `GET /metrics`: what it counts after real traffic, that it never names a couple, device or
//! token, its access rules (`METRICS_TOKEN`, `METRICS_ADDR`), `promtool check metrics`, and a
//! real Prometheus server scraping it.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Couple, TestApp, WAIT, Ws, assert_error, free_port, ok_json, signal, tool};

const TOKEN: &str = "metrics-token-for-tests-0123";

/// The series of one metric: labels and value each.
type Series = Vec<(BTreeMap<String, String>, f64)>;

/// One parsed exposition: `name` → every series of it.
pub struct Exposition(BTreeMap<String, Series>);

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut families: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label pair");
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            let value: f64 = value.parse().expect("numeric value");
            families
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        Self(families)
    }

    /// Sum of the series of `name` that carry all of `labels` (0 when none does).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0.get(name).map_or(0.0, |series| {
            series
                .iter()
                .filter(|(l, _)| {
                    labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|x| x == v))
                })
                .map(|(_, v)| v)
                .sum()
        })
    }

    /// [`Exposition::sum`] of a counter or gauge, as a whole number.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.sum(name, labels).round() as u64
    }

    /// Every metric name exported (histograms by their base name too).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

async fn scrape(app: &TestApp) -> String {
    scrape_url(&app.http, &app.url("/metrics")).await
}

async fn scrape_url(http: &reqwest::Client, url: &str) -> String {
    let res = http.get(url).send().await.expect("request sent");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    res.text().await.expect("body")
}

/// Scrapes until `ready` holds: some counts are recorded just after the client saw the
/// effect (a frame's latency once written, a download once its stream ends).
pub async fn scrape_until(
    app: &TestApp,
    ready: impl Fn(&Exposition) -> bool,
) -> (String, Exposition) {
    scrape_url_until(&app.http, || app.url("/metrics"), ready).await
}

/// [`scrape_until`] for the server `url` names (it may alternate between instances).
pub async fn scrape_url_until(
    http: &reqwest::Client,
    url: impl Fn() -> String,
    ready: impl Fn(&Exposition) -> bool,
) -> (String, Exposition) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape_url(http, &url()).await;
        let parsed = Exposition::parse(&text);
        if ready(&parsed) {
            return (text, parsed);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        // Polling the server's own counters, with a deadline; not a synchronisation sleep.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Pairs, relays over WebSocket and REST, uploads and downloads a backup, fails a confirm and
/// asks for a missing route: traffic that touches every family.
/// Whether the counts [`traffic`] causes after its client saw the effect are in: a frame's
/// relay latency once written, a download once its body is dropped.
pub fn traffic_recorded(m: &Exposition) -> bool {
    let download_ok = [("direction", "download"), ("outcome", "ok")];
    m.count("our_memories_signal_relay_latency_seconds_count", &[]) >= 2
        && m.count("our_memories_backups_total", &download_ok) == 1
}

/// Returns the couple, the backup, and both sockets (still open).
pub async fn traffic(app: &TestApp) -> (Couple, Vec<u8>, [Ws; 2]) {
    let couple = app.pair().await;
    assert_error(
        app.confirm(&couple.id, "wrong-token", "c").await,
        StatusCode::UNAUTHORIZED,
        "invalid_pairing_token",
    )
    .await;
    let (mut a, _) = app.join(&couple, &couple.a, None).await;
    let (mut b, _) = app.join(&couple, &couple.b, None).await;
    a.recv_type("peer-joined").await;
    a.send(signal(Some("b"), &json!({ "sdp": "offer" }), None))
        .await;
    b.recv_type("webrtc-signal").await;
    ok_json(
        app.post_signal(&couple.id, &couple.b, "a", json!({ "ice": 1 }))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    a.recv_type("webrtc-signal").await;
    let backup = vec![7u8; 300_000];
    let uploaded = ok_json(
        app.upload(&couple.a, backup.clone(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let latest = app.url(&format!("/api/backup/{}", couple.id));
    let etag = format!("\"{}\"", uploaded["sha256"].as_str().expect("sha256"));
    let unchanged = app.http.get(&latest).bearer_auth(&couple.b.token);
    let unchanged = unchanged
        .header("if-none-match", etag)
        .send()
        .await
        .expect("sent");
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    let missing = format!("/api/backup/{}/no-such-backup", couple.id);
    assert_error(
        app.get_auth(&missing, &couple.b).await,
        StatusCode::NOT_FOUND,
        "backup_not_found",
    )
    .await;
    let got = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(got.bytes().await.expect("body").len(), backup.len());
    let missing = app
        .http
        .get(app.url("/no/such/route"))
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    (couple, backup, [a, b])
}

/// Privacy: no id or token of the couple appears anywhere, and every label is one of a
/// closed set (none is about a couple, device or token).
fn assert_names_nobody(text: &str, m: &Exposition, couple: &Couple) {
    for secret in [&couple.id, &couple.a.token, &couple.b.token] {
        assert!(
            !text.contains(secret.as_str()),
            "the exposition names {secret}"
        );
    }
    let allowed = [
        "route",
        "method",
        "code",
        "transport",
        "actor",
        "backend",
        "operation",
        "step",
        "outcome",
        "direction",
        "limit",
        "reason",
        "le",
    ];
    let labels: std::collections::BTreeSet<&str> =
        m.0.values()
            .flatten()
            .flat_map(|(labels, _)| labels.keys().map(String::as_str))
            .collect();
    let unexpected: Vec<_> = labels.iter().filter(|l| !allowed.contains(l)).collect();
    assert!(unexpected.is_empty(), "unexpected labels: {unexpected:?}");
}

/// Every request of [`traffic`], under its route template.
fn assert_http_counts(m: &Exposition) {
    let http = |route: &str, method: &str, status: &str| {
        m.count(
            "our_memories_http_requests_total",
            &[("route", route), ("method", method), ("code", status)],
        )
    };
    assert_eq!(http("/api/pair/initiate", "POST", "201"), 1);
    assert_eq!(http("/api/pair/confirm", "POST", "200"), 1);
    assert_eq!(http("/api/pair/confirm", "POST", "401"), 1);
    assert_eq!(http("/api/signal", "POST", "202"), 1);
    assert_eq!(http("/api/backup", "POST", "201"), 1);
    assert_eq!(http("/api/backup/{coupleId}", "GET", "200"), 1);
    assert_eq!(http("/api/backup/{coupleId}", "GET", "304"), 1);
    assert_eq!(http("/api/backup/{coupleId}/{backupId}", "GET", "404"), 1);
    assert_eq!(http("/ws", "GET", "101"), 2);
    assert_eq!(http("unmatched", "GET", "404"), 1);
    assert!(
        m.count(
            "our_memories_http_request_duration_seconds_count",
            &[("route", "/api/backup")]
        ) == 1
    );
}

#[tokio::test]
async fn metrics_count_real_traffic_by_route_template_and_name_no_couple_or_device() {
    crate::single_instance_only!("metrics count the traffic of one instance");
    let app = TestApp::spawn().await;
    let (couple, backup, _sockets) = traffic(&app).await;
    let (text, m) = scrape_until(&app, traffic_recorded).await;

    assert_http_counts(&m);

    assert_eq!(m.count("our_memories_websocket_connections", &[]), 2);
    assert_eq!(m.count("our_memories_rooms_active", &[]), 1);
    assert_eq!(
        m.count(
            "our_memories_signals_relayed_total",
            &[("transport", "websocket")]
        ),
        1
    );
    assert_eq!(
        m.count(
            "our_memories_signals_relayed_total",
            &[("transport", "rest")]
        ),
        1
    );
    assert_eq!(
        m.count("our_memories_signal_relay_latency_seconds_count", &[]),
        2
    );
    let pairing = |step: &str, outcome: &str| {
        m.count(
            "our_memories_pairings_total",
            &[("step", step), ("outcome", outcome)],
        )
    };
    assert_eq!(pairing("initiate", "ok"), 1);
    assert_eq!(pairing("confirm", "ok"), 1);
    assert_eq!(pairing("confirm", "invalid_pairing_token"), 1);
    let size = backup.len() as u64;
    let download = |outcome: &str| {
        m.count(
            "our_memories_backups_total",
            &[("direction", "download"), ("outcome", outcome)],
        )
    };
    assert_eq!(download("not_modified"), 1);
    assert_eq!(download("backup_not_found"), 1);
    assert_eq!(download("download_interrupted"), 0);
    for direction in ["upload", "download"] {
        assert_eq!(
            m.count(
                "our_memories_backups_total",
                &[("direction", direction), ("outcome", "ok")]
            ),
            1
        );
        assert_eq!(
            m.count(
                "our_memories_backup_bytes_total",
                &[("direction", direction)]
            ),
            size
        );
        assert_eq!(
            m.count(
                "our_memories_backup_duration_seconds_count",
                &[("direction", direction)]
            ),
            1
        );
    }
    assert!(
        m.count(
            "our_memories_storage_operation_duration_seconds_count",
            &[("operation", "put_blob")]
        ) >= 1
    );
    assert!(
        m.count(
            "our_memories_storage_operation_duration_seconds_count",
            &[("operation", "save_device_and_pairing")]
        ) >= 1
    );
    assert_eq!(
        m.count("our_memories_storage_operation_errors_total", &[]),
        0
    );
    assert_eq!(m.count("our_memories_rate_limited_total", &[]), 0);
    assert_eq!(m.count("our_memories_actor_restarts_total", &[]), 0);
    assert!(m.count("process_resident_memory_bytes", &[]) > 1_000_000);
    assert!(m.count("process_open_fds", &[]) > 0);
    assert!(m.0.contains_key("process_cpu_seconds_total"));

    assert_names_nobody(&text, &m, &couple);
    app.stop().await;
}

#[tokio::test]
async fn a_download_the_client_abandons_is_counted_as_interrupted() {
    use futures_util::StreamExt;
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    // Larger than what loopback socket buffers absorb, so the server is still writing.
    let backup = vec![3u8; 32 * 1024 * 1024];
    ok_json(
        app.upload(&couple.a, backup, &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let res = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.bytes_stream();
    body.next().await.expect("a first chunk").expect("bytes");
    drop(body);
    let interrupted = [
        ("direction", "download"),
        ("outcome", "download_interrupted"),
    ];
    let (_, m) = scrape_until(&app, |m| {
        m.count("our_memories_backups_total", &interrupted) == 1
    })
    .await;
    let ok = [("direction", "download"), ("outcome", "ok")];
    assert_eq!(m.count("our_memories_backups_total", &ok), 0);
    assert_eq!(
        m.count(
            "our_memories_backup_bytes_total",
            &[("direction", "download")]
        ),
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_and_actor_restarts_are_counted() {
    crate::single_instance_only!("rate limits and metrics are per instance");
    let app = TestApp::spawn_with(|c| c.rate.confirm_per_15min = 1).await;
    let (couple, token) = app.open_pairing().await;
    let _ = app.confirm(&couple, &token, "b").await;
    assert_error(
        app.confirm(&couple, &token, "c").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    app.pairing.inject_panic().await;
    let m = Exposition::parse(&scrape(&app).await);
    assert_eq!(
        m.count("our_memories_rate_limited_total", &[("limit", "confirm")]),
        1
    );
    assert_eq!(
        m.count("our_memories_actor_restarts_total", &[("actor", "pairing")]),
        1
    );
    assert_eq!(
        m.count(
            "our_memories_http_requests_total",
            &[("route", "/api/pair/confirm"), ("code", "429")]
        ),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_token_is_required_when_set() {
    let app = TestApp::spawn_with(|c| {
        c.metrics.token = Some(our_memories::config::Secret::new(TOKEN.to_owned()));
    })
    .await;
    let get = |token: Option<&str>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_error(
        get(None).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_metrics_token",
    )
    .await;
    let wrong = format!("{TOKEN}x");
    assert_error(
        get(Some(&wrong)).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "invalid_metrics_token",
    )
    .await;
    let ok = get(Some(TOKEN)).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    assert!(
        ok.text()
            .await
            .unwrap()
            .contains("our_memories_rooms_active")
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_addr_serves_metrics_alone_and_removes_them_from_the_main_port() {
    let app = TestApp::spawn_with(|c| c.metrics.addr = Some("127.0.0.1:0".parse().unwrap())).await;
    let metrics_addr = app.metrics_addr.expect("a metrics listener");
    assert_ne!(metrics_addr, app.addr);
    let main = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_error(main, StatusCode::NOT_FOUND, "not_found").await;
    let own = |path: &str| app.http.get(format!("http://{metrics_addr}{path}")).send();
    let scraped = own("/metrics").await.unwrap();
    assert_eq!(scraped.status(), StatusCode::OK);
    let text = scraped.text().await.unwrap();
    assert!(text.contains("our_memories_http_requests_total"));
    assert_error(
        own("/health").await.unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // Other routes keep their own errors on the main port.
    let too_big = app
        .http
        .post(app.url("/api/pair/initiate"))
        .body(vec![b' '; 8 * 1024]);
    let too_big = too_big
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_error(too_big, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large").await;
    let wrong_method = app.http.put(app.url("/api/backup")).send().await.unwrap();
    assert_error(
        wrong_method,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn promtool_check_metrics_accepts_the_exposition() {
    crate::single_instance_only!("it counts the traffic of one instance");
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let app = TestApp::spawn().await;
    let _sockets = traffic(&app).await;
    let (text, _) = scrape_until(&app, traffic_recorded).await;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("exposition written");
    let out = child.wait_with_output().expect("promtool ends");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool: {report}");
    assert!(report.trim().is_empty(), "promtool lint findings: {report}");
    app.stop().await;
}

/// Asks Prometheus's HTTP API for an instant query's result vector.
async fn query(http: &reqwest::Client, prometheus: &str, promql: &str) -> Vec<Value> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(res) = http
        .get(format!("{prometheus}/api/v1/query?query={encoded}"))
        .send()
        .await
    else {
        return Vec::new(); // not listening yet
    };
    let body: Value = res.json().await.unwrap_or_default();
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Kills the child when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_server_scrapes_the_server_with_its_token() {
    crate::single_instance_only!("it counts the traffic of one instance");
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let app = TestApp::spawn_with(|c| {
        c.metrics.token = Some(our_memories::config::Secret::new(TOKEN.to_owned()));
    })
    .await;
    app.pair().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: our-memories\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: ['{}']\n",
            app.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let _server = Reaped(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let api = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_mins(1);
    let value = |r: &[Value]| {
        r.first()
            .and_then(|s| s["value"][1].as_str().map(str::to_owned))
    };
    loop {
        let up = query(&app.http, &api, r#"up{job="our-memories"}"#).await;
        let pairings = query(
            &app.http,
            &api,
            r#"our_memories_pairings_total{job="our-memories",step="confirm",outcome="ok"}"#,
        )
        .await;
        if value(&up).as_deref() == Some("1") && value(&pairings).as_deref() == Some("1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Prometheus never scraped the server: up={up:?} pairings={pairings:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await; // polling an outside process
    }
    app.stop().await;
}

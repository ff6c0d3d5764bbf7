//! The mass-disconnect storm (issue 12), against a running server on the embedded store (run
//! it with `RATE_LIMIT=off`, `MAX_CONNECTIONS_PER_IP` above twice `--couples`, and an fd limit
//! above that too, e.g. `ulimit -n 20000`).
//!
//! ```text
//! cargo run --release --example stormbench -- --server-pid PID --data-dir DIR
//!     [--url http://127.0.0.1:3000] [--couples 500] [--signals 100] [--payload-bytes 1024]
//!     [--concurrency 32] [--probe-ms 50] [--after-secs 30]
//! ```
//!
//! 1. Load: pairs `--couples` couples (REST), joins both devices of each over `/ws`, and has
//!    each device send `--signals` `webrtc-signal`s of about `--payload-bytes` to the other,
//!    acknowledging none. Every socket keeps reading (and answering pings) until the drop.
//! 2. Drop: every socket is dropped at once (TCP closed, no close frame): each room writes
//!    what its devices did not acknowledge.
//! 3. After: for `--after-secs`, nothing but the probes.
//!
//! From the drop on, every `--probe-ms` it probes `GET /health` and a fresh couple's pair
//! (initiate + confirm), join of both devices and one relayed signal, timing each, and samples
//! the server's `Threads`, `VmRSS` and `VmHWM` (`/proc/PID/status`) and the size of
//! `--data-dir`. Prints the loaded state, the peaks, the state at the end, the probes' p99 and
//! max, then one JSON line. Traffic goes only to `--url`.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

#[path = "support/bench.rs"]
mod bench;
use bench::{Load, Target, call, field, mib, parse_flags, proc_field};

struct Args {
    target: Target,
    load: Load,
    probe_every: Duration,
    after: Duration,
}

const USAGE: &str = "usage: stormbench --server-pid PID --data-dir DIR [--url URL] [--couples N] \
[--signals N] [--payload-bytes N] [--concurrency N] [--probe-ms N] [--after-secs N]";

fn parse_args() -> Result<Args, String> {
    let mut load = Load {
        couples: 500,
        signals: 100,
        payload_bytes: 1024,
        concurrency: 32,
    };
    let (mut probe_ms, mut after_secs) = (50, 30);
    let target = parse_flags(USAGE, &mut load, |flag, n| {
        match flag {
            "--probe-ms" => probe_ms = n,
            "--after-secs" => after_secs = n,
            _ => return false,
        }
        true
    })?;
    Ok(Args {
        target,
        load,
        probe_every: Duration::from_millis(probe_ms),
        after: Duration::from_secs(after_secs),
    })
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// One reading of the server.
#[derive(Clone, Copy, Default)]
struct Sample {
    threads: u64,
    rss_kib: u64,
    hwm_kib: u64,
    data_bytes: u64,
}

impl Sample {
    fn take(args: &Args) -> Self {
        Self {
            threads: proc_field(args.target.server_pid, "Threads"),
            rss_kib: proc_field(args.target.server_pid, "VmRSS"),
            hwm_kib: proc_field(args.target.server_pid, "VmHWM"),
            data_bytes: dir_bytes(&args.target.data_dir),
        }
    }

    fn json(self) -> Value {
        json!({
            "threads": self.threads, "rssKib": self.rss_kib, "peakKib": self.hwm_kib,
            "dataBytes": self.data_bytes,
        })
    }
}

type Ws = WebSocketStream<TcpStream>;

/// A paired couple: its id and the tokens of `a` and `b`.
struct Couple {
    id: String,
    tokens: [String; 2],
}

async fn pair(http: &reqwest::Client, url: &str) -> Result<Couple, String> {
    let started = call(
        http.post(format!("{url}/api/pair/initiate"))
            .json(&json!({ "deviceId": "a" })),
    )
    .await?;
    let id = field(&started, "coupleId")?;
    let confirmed = call(http.post(format!("{url}/api/pair/confirm")).json(&json!({
        "coupleId": id, "pairingToken": field(&started, "pairingToken")?, "deviceId": "b"
    })))
    .await?;
    Ok(Couple {
        tokens: [
            field(&started, "deviceToken")?,
            field(&confirmed, "deviceToken")?,
        ],
        id,
    })
}

/// The next JSON message's `type` (pings are answered by tungstenite as it reads).
async fn next_type(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
                return field(&v, "type");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".to_owned()),
        }
    }
}

/// Connects device `dev` (0 = `a`, 1 = `b`) of `couple` over `/ws` and waits for `joined`.
async fn join(ws_url: &str, couple: &Couple, dev: usize) -> Result<Ws, String> {
    let host = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default();
    let tcp = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async(ws_url, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let device = ["a", "b"][dev];
    let join = json!({
        "type": "join-couple", "coupleId": couple.id, "deviceId": device,
        "token": couple.tokens[dev],
    });
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    match next_type(&mut ws).await?.as_str() {
        "joined" => Ok(ws),
        other => Err(format!("join answered {other}")),
    }
}

fn signal(to: &str, payload: &str) -> Message {
    Message::text(json!({ "type": "webrtc-signal", "to": to, "payload": payload }).to_string())
}

/// Reads until `n` signals have arrived.
async fn receive(ws: &mut Ws, n: usize) -> Result<(), String> {
    let mut got = 0;
    while got < n {
        if next_type(ws).await? == "webrtc-signal" {
            got += 1;
        }
    }
    Ok(())
}

/// One loaded couple: both devices joined, each sent `signals` to the other and received
/// theirs (unacknowledged). Their sockets then keep reading until the drop.
async fn load(
    http: &reqwest::Client,
    args: &Args,
    ws_url: &str,
    payload: &str,
    stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let couple = pair(http, &args.target.url).await?;
    let mut a = join(ws_url, &couple, 0).await?;
    let mut b = join(ws_url, &couple, 1).await?;
    for _ in 0..args.load.signals {
        a.feed(signal("b", payload))
            .await
            .map_err(|e| e.to_string())?;
        b.feed(signal("a", payload))
            .await
            .map_err(|e| e.to_string())?;
    }
    a.flush().await.map_err(|e| e.to_string())?;
    b.flush().await.map_err(|e| e.to_string())?;
    receive(&mut a, args.load.signals).await?;
    receive(&mut b, args.load.signals).await?;
    for mut ws in [a, b] {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    msg = ws.next() => if msg.is_none() { break },
                }
            }
        });
    }
    Ok(())
}

/// One probe of a fresh couple: pair, join both devices, relay one signal.
async fn probe_couple(http: &reqwest::Client, url: &str, ws_url: &str) -> Result<(), String> {
    let couple = pair(http, url).await?;
    let mut a = join(ws_url, &couple, 0).await?;
    let mut b = join(ws_url, &couple, 1).await?;
    a.send(signal("b", "probe"))
        .await
        .map_err(|e| e.to_string())?;
    receive(&mut b, 1).await
}

/// What the probes measured, in milliseconds.
#[derive(Default)]
struct Probes {
    health_ms: Vec<f64>,
    couple_ms: Vec<f64>,
    failures: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (p99, max) in milliseconds.
fn tail(v: &mut [f64]) -> (f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let last = v.len() - 1;
    let p99 = (v.len() * 99).div_ceil(100).saturating_sub(1).min(last);
    (v[p99], v[last])
}

/// Samples the server (peaks over `loaded`) and probes it for `--after-secs`.
async fn watch_after_drop(
    args: &Args,
    http: &reqwest::Client,
    ws_url: &str,
    loaded: Sample,
) -> (Sample, Probes) {
    let end = Instant::now() + args.after;
    let sampler = async {
        let mut peak = loaded;
        while Instant::now() < end {
            let s = Sample::take(args);
            peak.threads = peak.threads.max(s.threads);
            peak.rss_kib = peak.rss_kib.max(s.rss_kib);
            peak.hwm_kib = peak.hwm_kib.max(s.hwm_kib);
            peak.data_bytes = peak.data_bytes.max(s.data_bytes);
            tokio::time::sleep(args.probe_every).await;
        }
        peak
    };
    let probes = async {
        let mut p = Probes::default();
        while Instant::now() < end {
            let t = Instant::now();
            match call(http.get(format!("{}/health", args.target.url))).await {
                Ok(_) => p.health_ms.push(ms(t.elapsed())),
                Err(_) => p.failures += 1,
            }
            let t = Instant::now();
            match probe_couple(http, &args.target.url, ws_url).await {
                Ok(()) => p.couple_ms.push(ms(t.elapsed())),
                Err(e) => {
                    eprintln!("probe failed: {e}");
                    p.failures += 1;
                }
            }
            tokio::time::sleep(args.probe_every).await;
        }
        p
    };
    tokio::join!(sampler, probes)
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let http = reqwest::Client::new();
    let ws_url = format!("{}/ws", args.target.url.replacen("http://", "ws://", 1));
    let payload = "x".repeat(args.load.payload_bytes);
    let start = Sample::take(&args);

    let (drop_tx, drop_rx) = watch::channel(false);
    let t = Instant::now();
    let loaded: Vec<Result<(), String>> = futures_util::stream::iter(0..args.load.couples)
        .map(|_| load(&http, &args, &ws_url, &payload, drop_rx.clone()))
        .buffer_unordered(args.load.concurrency)
        .collect()
        .await;
    let load_errors: Vec<_> = loaded.into_iter().filter_map(Result::err).collect();
    if let Some(e) = load_errors.first() {
        eprintln!("{} couples failed to load, first: {e}", load_errors.len());
    }
    let load_secs = t.elapsed().as_secs_f64();
    let loaded = Sample::take(&args);
    println!(
        "loaded {} couples in {load_secs:.1} s: threads {}, rss {:.1} MiB, data {:.1} MiB",
        args.load.couples - load_errors.len(),
        loaded.threads,
        mib(loaded.rss_kib * 1024),
        mib(loaded.data_bytes)
    );

    // The drop, and from then on the sampler and the probes until the end.
    let _ = drop_tx.send(true);
    let (peak, mut p) = watch_after_drop(&args, &http, &ws_url, loaded).await;
    let after = Sample::take(&args);
    let (health_p99, health_max) = tail(&mut p.health_ms);
    let (couple_p99, couple_max) = tail(&mut p.couple_ms);
    let after_secs = args.after.as_secs();
    println!(
        "threads: loaded {} peak {} after {}",
        loaded.threads, peak.threads, after.threads
    );
    println!(
        "rss: loaded {:.1} MiB, peak {:.1} MiB (+{:.1}), after {after_secs} s {:.1} MiB",
        mib(loaded.rss_kib * 1024),
        mib(peak.rss_kib * 1024),
        mib(peak.rss_kib.saturating_sub(loaded.rss_kib) * 1024),
        mib(after.rss_kib * 1024)
    );
    println!(
        "data dir: loaded {:.1} MiB, after {:.1} MiB (+{:.1})",
        mib(loaded.data_bytes),
        mib(after.data_bytes),
        mib(after.data_bytes.saturating_sub(loaded.data_bytes))
    );
    println!(
        "probes: /health p99 {health_p99:.1} ms max {health_max:.1} ms ({}); pair+join+relay \
         p99 {couple_p99:.1} ms max {couple_max:.1} ms ({}); {} failed",
        p.health_ms.len(),
        p.couple_ms.len(),
        p.failures
    );
    println!(
        "{}",
        json!({
            "couples": args.load.couples, "signalsPerDevice": args.load.signals,
            "payloadBytes": args.load.payload_bytes, "loadErrors": load_errors.len(),
            "loadSecs": load_secs, "afterSecs": after_secs,
            "start": start.json(), "loaded": loaded.json(), "peak": peak.json(),
            "after": after.json(),
            "health": { "n": p.health_ms.len(), "p99Ms": health_p99, "maxMs": health_max },
            "pairJoinRelay": { "n": p.couple_ms.len(), "p99Ms": couple_p99, "maxMs": couple_max },
            "probeFailures": p.failures,
        })
    );
    Ok(())
}

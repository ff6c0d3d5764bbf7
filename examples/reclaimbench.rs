//! Whether the server gives memory and disk back after a burst, against a running instance on
//! the embedded store (the server must run with `RATE_LIMIT=off`).
//!
//! ```text
//! cargo run --release --example reclaimbench -- --server-pid PID --data-dir DIR
//!     [--url http://127.0.0.1:3000] [--couples 200] [--signals 16] [--payload-bytes 60000]
//!     [--idle-secs 150] [--concurrency 16]
//! ```
//!
//! 1. Burst: pairs `--couples` couples; each couple's device `a` posts `--signals` signals of
//!    `--payload-bytes` to its device `b`, which is offline, so every signal is written to the
//!    redb file and held in the room's mailbox (16 × 60 000 bytes fills a 1 MiB mailbox).
//! 2. Delivery: each `b` fetches its signals and acknowledges them (`?after=` the last seq),
//!    which deletes them from the store.
//! 3. Idle: no traffic for `--idle-secs`, sampling every 10 s. Rooms stop after `ROOM_IDLE_SECS`
//!    (60 s); the janitor purges and compacts every 60 s.
//!
//! Prints the server's `VmRSS` (and its peak, `VmHWM`) from `/proc/PID/status`, and the size of
//! `DATA_DIR/our-memories.redb`, at each step, then one JSON line. Traffic goes only to `--url`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

#[path = "support/bench.rs"]
mod bench;
use bench::{Load, Target, call, field, mib, parse_flags, proc_field};

struct Args {
    target: Target,
    load: Load,
    idle: Duration,
}

const USAGE: &str = "usage: reclaimbench --server-pid PID --data-dir DIR [--url URL] [--couples N] \
[--signals N] [--payload-bytes N] [--idle-secs N] [--concurrency N]";

fn parse_args() -> Result<Args, String> {
    let mut load = Load {
        couples: 200,
        signals: 16,
        payload_bytes: 60_000,
        concurrency: 16,
    };
    let mut idle = 150;
    let target = parse_flags(USAGE, &mut load, |flag, n| {
        match flag {
            "--idle-secs" => idle = n,
            _ => return false,
        }
        true
    })?;
    Ok(Args {
        target,
        load,
        idle: Duration::from_secs(idle),
    })
}

/// One reading: the server's memory and the store's file.
#[derive(Clone, Copy)]
struct Sample {
    rss_kib: u64,
    hwm_kib: u64,
    redb_bytes: u64,
}

impl Sample {
    fn take(args: &Args) -> Self {
        Self {
            rss_kib: proc_field(args.target.server_pid, "VmRSS"),
            hwm_kib: proc_field(args.target.server_pid, "VmHWM"),
            redb_bytes: std::fs::metadata(args.target.data_dir.join("our-memories.redb"))
                .map_or(0, |m| m.len()),
        }
    }

    fn json(self) -> Value {
        json!({ "rssKib": self.rss_kib, "peakKib": self.hwm_kib, "redbBytes": self.redb_bytes })
    }
}

fn print(step: &str, s: Sample) {
    println!(
        "{step:<22} rss {:>8.1} MiB  peak {:>8.1} MiB  redb file {:>8.1} MiB",
        mib(s.rss_kib * 1024),
        mib(s.hwm_kib * 1024),
        mib(s.redb_bytes)
    );
}

/// One couple's burst: pair, then `a` posts every signal to the offline `b`. Returns the
/// couple id and `b`'s token.
async fn burst(
    http: &reqwest::Client,
    args: &Args,
    payload: &str,
) -> Result<(String, String), String> {
    let started = call(
        http.post(format!("{}/api/pair/initiate", args.target.url))
            .json(&json!({ "deviceId": "a" })),
    )
    .await?;
    let couple = field(&started, "coupleId")?;
    let a = field(&started, "deviceToken")?;
    let confirmed = call(http.post(format!("{}/api/pair/confirm", args.target.url)).json(&json!({
        "coupleId": couple, "pairingToken": field(&started, "pairingToken")?, "deviceId": "b"
    })))
    .await?;
    let b = field(&confirmed, "deviceToken")?;
    for _ in 0..args.load.signals {
        call(
            http.post(format!("{}/api/signal", args.target.url))
                .bearer_auth(&a)
                .json(&json!({
                    "coupleId": couple, "fromDeviceId": "a", "toDeviceId": "b",
                    "signalPayload": payload
                })),
        )
        .await?;
    }
    Ok((couple, b))
}

/// `b` fetches its signals and acknowledges all of them.
async fn deliver(
    http: &reqwest::Client,
    args: &Args,
    couple: &str,
    b: &str,
) -> Result<usize, String> {
    let url = format!("{}/api/signals/{couple}/b", args.target.url);
    let got = call(http.get(&url).bearer_auth(b)).await?;
    let signals = got["signals"]
        .as_array()
        .ok_or(format!("no signals in {got}"))?;
    let Some(last) = signals.last().and_then(|s| s["seq"].as_u64()) else {
        return Ok(0);
    };
    call(http.get(format!("{url}?after={last}")).bearer_auth(b)).await?;
    Ok(signals.len())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let http = reqwest::Client::new();
    let payload = "x".repeat(args.load.payload_bytes);

    let start = Sample::take(&args);
    print("start", start);
    let t = Instant::now();
    let couples: Vec<(String, String)> = futures_util::stream::iter(0..args.load.couples)
        .map(|_| burst(&http, &args, &payload))
        .buffer_unordered(args.load.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let burst_secs = t.elapsed().as_secs_f64();
    let after_burst = Sample::take(&args);
    print("after burst", after_burst);

    let delivered: usize = futures_util::stream::iter(&couples)
        .map(|(c, b)| deliver(&http, &args, c, b))
        .buffer_unordered(args.load.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum::<Result<_, _>>()?;
    let after_delivery = Sample::take(&args);
    print("after delivery", after_delivery);

    let idle_start = Instant::now();
    let mut last = after_delivery;
    while idle_start.elapsed() < args.idle {
        let left = args.idle.saturating_sub(idle_start.elapsed());
        tokio::time::sleep(Duration::from_secs(10).min(left)).await;
        last = Sample::take(&args);
        print(
            &format!("idle {:>4} s", idle_start.elapsed().as_secs()),
            last,
        );
    }
    println!(
        "{}",
        json!({
            "couples": args.load.couples, "signalsPerCouple": args.load.signals,
            "payloadBytes": args.load.payload_bytes, "delivered": delivered,
            "burstSecs": burst_secs, "idleSecs": args.idle.as_secs(),
            "start": start.json(), "afterBurst": after_burst.json(),
            "afterDelivery": after_delivery.json(), "afterIdle": last.json(),
        })
    );
    Ok(())
}

//! Backup throughput and server memory, against any running instance.
//!
//! ```text
//! cargo run --release --example backupbench -- [--url http://127.0.0.1:3000] [--mib 100]
//!     [--rounds 3] [--server-pid PID]
//! ```
//!
//! Pairs a couple, then `--rounds` times uploads a `--mib` MiB backup (generated on the fly,
//! streamed: the client never holds it) and downloads it again, checking its SHA-256. Prints
//! MiB/s for each direction. With `--server-pid`, reads the server's `VmRSS` before the first
//! upload and its peak (`VmHWM`) after the last download from `/proc/PID/status`, so the memory
//! an upload costs the server is measured, not claimed. Traffic goes only to `--url`.

use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[path = "support/bench.rs"]
mod bench;

struct Args {
    url: String,
    mib: usize,
    rounds: usize,
    server_pid: Option<u32>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:3000".to_owned(),
        mib: 100,
        rounds: 3,
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--mib" => args.mib = value()?.parse().map_err(|e| format!("--mib: {e}"))?,
            "--rounds" => args.rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--server-pid" => {
                args.server_pid = Some(value()?.parse().map_err(|e| format!("--server-pid: {e}"))?);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A `/proc/PID/status` field in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Deterministic pseudo-random bytes, 1 MiB per chunk, never all in memory.
fn body(mib: usize) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter(0..mib).map(|i| {
        let mut chunk = vec![0u8; 1 << 20];
        let mut x = u64::try_from(i)
            .unwrap_or(0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            | 1;
        for b in &mut chunk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[0];
        }
        Ok(Bytes::from(chunk))
    })
}

fn expected_sha(mib: usize) -> String {
    let mut h = Sha256::new();
    for i in 0..mib {
        let mut x = u64::try_from(i)
            .unwrap_or(0)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            | 1;
        let mut chunk = vec![0u8; 1 << 20];
        for b in &mut chunk {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x.to_le_bytes()[0];
        }
        h.update(&chunk);
    }
    hex::encode(h.finalize())
}

async fn post(http: &reqwest::Client, url: &str, body: Value) -> Result<Value, String> {
    bench::call(http.post(url).json(&body))
        .await
        .map_err(|e| format!("{url}: {e}"))
}

#[allow(clippy::cast_precision_loss)]
fn mib_per_s(mib: usize, secs: f64) -> f64 {
    mib as f64 / secs
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "{e}\nusage: backupbench [--url URL] [--mib N] [--rounds N] [--server-pid PID]"
            );
            std::process::exit(2);
        }
    };
    let http = reqwest::Client::new();
    let started = post(
        &http,
        &format!("{}/api/pair/initiate", args.url),
        json!({ "deviceId": "a" }),
    )
    .await?;
    let couple = started["coupleId"]
        .as_str()
        .ok_or("no coupleId")?
        .to_owned();
    let token = started["deviceToken"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let sha = expected_sha(args.mib);
    let rss_before = args.server_pid.and_then(|p| proc_kib(p, "VmRSS"));
    println!(
        "backup size {} MiB, {} rounds, against {}",
        args.mib, args.rounds, args.url
    );
    for round in 1..=args.rounds {
        let t = Instant::now();
        let res = http
            .post(format!("{}/api/backup", args.url))
            .bearer_auth(&token)
            .header("x-content-sha256", &sha)
            .body(reqwest::Body::wrap_stream(body(args.mib)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!(
                "upload: {} {}",
                res.status(),
                res.text().await.unwrap_or_default()
            ));
        }
        let up = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let res = http
            .get(format!("{}/api/backup/{couple}", args.url))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = res.bytes_stream();
        let mut h = Sha256::new();
        while let Some(chunk) = stream.next().await {
            h.update(&chunk.map_err(|e| e.to_string())?);
        }
        let down = t.elapsed().as_secs_f64();
        if hex::encode(h.finalize()) != sha {
            return Err("downloaded backup does not match".to_owned());
        }
        println!(
            "round {round}: upload {:.1} MiB/s ({up:.2} s), download {:.1} MiB/s ({down:.2} s)",
            mib_per_s(args.mib, up),
            mib_per_s(args.mib, down)
        );
    }
    if let (Some(pid), Some(before)) = (args.server_pid, rss_before) {
        let peak = proc_kib(pid, "VmHWM").unwrap_or(0);
        let after = proc_kib(pid, "VmRSS").unwrap_or(0);
        println!(
            "server RSS: before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB), after {:.1} MiB",
            kib(before),
            kib(peak),
            kib(peak.saturating_sub(before)),
            kib(after)
        );
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn kib(k: u64) -> f64 {
    k as f64 / 1024.0
}

//! Backup throughput and server memory, against any running instance.
//!
//! ```text
//! cargo run --release --example backupbench -- [--url http://127.0.0.1:3000] [--mib 100]
//!     [--rounds 3] [--server-pid PID] [--tus-chunk-mib N]
//! ```
//!
//! Pairs a couple, then `--rounds` times uploads a `--mib` MiB backup (generated on the fly,
//! streamed: the client never holds it) and downloads it again, checking its SHA-256. Prints
//! MiB/s for each direction. With `--server-pid`, reads the server's `VmRSS` before the first
//! upload and its peak (`VmHWM`) after the last download from `/proc/PID/status`, so the memory
//! an upload costs the server is measured, not claimed. Traffic goes only to `--url`.
//!
//! With `--tus-chunk-mib N` each upload goes through the resumable tus endpoint instead
//! (docs/protocol.md §6.5): a creation with the whole backup's SHA-256 in `Upload-Metadata`, then
//! one `PATCH` per N MiB, the last of which publishes the backup.

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
    tus_chunk_mib: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:3000".to_owned(),
        mib: 100,
        rounds: 3,
        server_pid: None,
        tus_chunk_mib: None,
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
            "--tus-chunk-mib" => {
                let n: usize = value()?
                    .parse()
                    .map_err(|e| format!("--tus-chunk-mib: {e}"))?;
                args.tus_chunk_mib = Some(n.max(1));
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

/// MiB number `i` of the backup: deterministic pseudo-random bytes (xorshift).
fn mib_chunk(i: usize) -> Bytes {
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
    Bytes::from(chunk)
}

/// The mebibytes `range` of the backup, one at a time, never all in memory.
fn body(
    range: std::ops::Range<usize>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::iter(range).map(|i| Ok(mib_chunk(i)))
}

fn expected_sha(mib: usize) -> String {
    let mut h = Sha256::new();
    for i in 0..mib {
        h.update(mib_chunk(i));
    }
    hex::encode(h.finalize())
}

/// Fails with the answer's status and body unless it succeeded.
async fn ok(res: reqwest::Response, what: &str) -> Result<reqwest::Response, String> {
    if res.status().is_success() {
        return Ok(res);
    }
    Err(format!(
        "{what}: {} {}",
        res.status(),
        res.text().await.unwrap_or_default()
    ))
}

/// Uploads the backup through tus: a creation, then one `PATCH` per `chunk` MiB.
async fn tus_upload(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    (mib, chunk): (usize, usize),
    sha: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    let sha_b64 = base64::engine::general_purpose::STANDARD.encode(sha);
    let res = http
        .post(format!("{url}/api/backup/uploads"))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", mib << 20)
        .header("upload-metadata", format!("sha256 {sha_b64}"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let res = ok(res, "tus creation").await?;
    let at = res.headers()["location"]
        .to_str()
        .map_err(|e| e.to_string())?
        .to_owned();
    let mut took = Vec::new();
    for start in (0..mib).step_by(chunk) {
        let t = Instant::now();
        let end = (start + chunk).min(mib);
        let res = http
            .patch(format!("{url}{at}"))
            .bearer_auth(token)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", start << 20)
            .header("content-type", "application/offset+octet-stream")
            .header("content-length", (end - start) << 20)
            .body(reqwest::Body::wrap_stream(body(start..end)))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        ok(res, "tus PATCH").await?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    // The last PATCH also publishes: it assembles the parts into the backup.
    let last = took.pop().unwrap_or(0.0);
    took.sort_by(f64::total_cmp);
    let median = took.get(took.len() / 2).copied().unwrap_or(0.0);
    println!("  tus: PATCH median {median:.1} ms, last (publishes) {last:.1} ms");
    Ok(())
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
                "{e}\nusage: backupbench [--url URL] [--mib N] [--rounds N] [--server-pid PID] [--tus-chunk-mib N]"
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
    let how = args
        .tus_chunk_mib
        .map_or("POST /api/backup".to_owned(), |n| {
            format!("tus, {n} MiB chunks")
        });
    println!(
        "backup size {} MiB, {} rounds, {how}, against {}",
        args.mib, args.rounds, args.url
    );
    for round in 1..=args.rounds {
        let t = Instant::now();
        if let Some(chunk) = args.tus_chunk_mib {
            tus_upload(&http, &args.url, &token, (args.mib, chunk), &sha).await?;
        } else {
            let res = http
                .post(format!("{}/api/backup", args.url))
                .bearer_auth(&token)
                .header("x-content-sha256", &sha)
                .body(reqwest::Body::wrap_stream(body(0..args.mib)))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            ok(res, "upload").await?;
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

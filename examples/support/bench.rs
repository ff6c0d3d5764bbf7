//! What the benchmarks that watch a running server share (by `#[path]`: each example is its
//! own crate): its `/proc` readings and JSON calls to its REST API.

#![allow(
    dead_code,
    reason = "each benchmark that includes this file uses only part of it"
)]

use std::path::PathBuf;

use serde_json::Value;

/// The running server a benchmark watches: `--url` (default `http://127.0.0.1:3000`),
/// `--server-pid` and `--data-dir` (both required).
pub struct Target {
    pub url: String,
    pub server_pid: u32,
    pub data_dir: PathBuf,
}

/// The load both storm-like benchmarks generate: `--couples`, `--signals` per device or
/// couple, `--payload-bytes` each, `--concurrency` requests at a time.
pub struct Load {
    pub couples: usize,
    pub signals: usize,
    pub payload_bytes: usize,
    pub concurrency: usize,
}

impl Load {
    /// Takes one of the four flags; `false` for any other.
    pub fn flag(&mut self, flag: &str, n: u64) -> Result<bool, String> {
        let n = usize::try_from(n).map_err(|e| format!("{flag}: {e}"))?;
        match flag {
            "--couples" => self.couples = n,
            "--signals" => self.signals = n,
            "--payload-bytes" => self.payload_bytes = n,
            "--concurrency" => self.concurrency = n.max(1),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Parses the command line: the [`Target`]'s flags here, the [`Load`]'s into `load`, every
/// other `--flag N` (all numbers) by `number`, which answers `false` for a flag it does not
/// know. `Err` carries the usage text (also for `-h`).
pub fn parse_flags(
    usage: &str,
    load: &mut Load,
    mut number: impl FnMut(&str, u64) -> bool,
) -> Result<Target, String> {
    let (mut url, mut pid, mut dir) = ("http://127.0.0.1:3000".to_owned(), None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(usage.to_owned());
        }
        let value = it.next().ok_or(format!("{flag} needs a value\n{usage}"))?;
        match flag.as_str() {
            "--url" => url = value,
            "--server-pid" => pid = Some(value.parse().map_err(|e| format!("{flag}: {e}"))?),
            "--data-dir" => dir = Some(PathBuf::from(value)),
            _ => {
                let n = value.parse().map_err(|e| format!("{flag}: {e}"))?;
                if !load.flag(&flag, n)? && !number(&flag, n) {
                    return Err(format!("unknown flag {flag}\n{usage}"));
                }
            }
        }
    }
    Ok(Target {
        url,
        server_pid: pid.ok_or(usage)?,
        data_dir: dir.ok_or(usage)?,
    })
}

/// The first number of a `/proc/PID/status` field: `VmRSS` and `VmHWM` in KiB, `Threads`.
pub fn proc_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)]
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// Sends a request and returns its JSON body, or the status and body of a failure.
pub async fn call(req: reqwest::RequestBuilder) -> Result<Value, String> {
    let res = req.send().await.map_err(|e| e.to_string())?;
    let status = res.status();
    let v: Value = res.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(v)
    } else {
        Err(format!("{status} {v}"))
    }
}

/// A string field of a JSON answer.
pub fn field(v: &Value, k: &str) -> Result<String, String> {
    v[k].as_str()
        .map(str::to_owned)
        .ok_or(format!("no {k} in {v}"))
}

//! What the benchmarks that watch a running server share (by `#[path]`: each example is its
//! own crate): its `/proc` readings and JSON calls to its REST API.

use serde_json::Value;

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

//! The Grafana dashboard in `grafana/`: every panel's PromQL parses (`promtool check rules`),
//! every metric it uses is one the server exports, and the metrics operators need most each
//! have a panel.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::helpers::{TestApp, tool};
use crate::metrics::{scrape_until, traffic, traffic_recorded};

const DASHBOARD: &str = "grafana/dashboards/our-memories.json";

/// Metrics that must each appear in some panel.
const MUST_SHOW: &[&str] = &[
    "up",
    "our_memories_websocket_connections",
    "our_memories_rooms_active",
    "our_memories_signals_relayed_total",
    "our_memories_signal_relay_latency_seconds_bucket",
    "our_memories_mailbox_signals",
    "our_memories_signals_expired_total",
    "our_memories_http_requests_total",
    "our_memories_http_request_duration_seconds_bucket",
    "our_memories_rate_limited_total",
    "our_memories_pairings_total",
    "our_memories_backups_total",
    "our_memories_backup_bytes_total",
    "our_memories_backup_duration_seconds_bucket",
    "our_memories_actor_restarts_total",
    "our_memories_storage_operation_duration_seconds_bucket",
    "our_memories_storage_operation_errors_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
];

/// Every panel (rows' nested panels too) with its title and expressions.
fn panels(dashboard: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if p["type"] == "row" {
            stack.extend(p["panels"].as_array().into_iter().flatten());
            continue;
        }
        let title = p["title"]
            .as_str()
            .expect("every panel has a title")
            .to_owned();
        let exprs = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                t["expr"]
                    .as_str()
                    .expect("every target has PromQL")
                    .to_owned()
            })
            .collect();
        out.push((title, exprs));
    }
    out
}

/// Grafana's variables replaced by what they stand for, so promtool sees plain PromQL.
fn plain(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", "our-memories")
        .replace("$instance", "127.0.0.1:3000")
}

/// The metric names an expression reads: identifiers outside string literals that name one
/// of ours, a process metric, or `up`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_string = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("our_memories_") || word.starts_with("process_") || word == "up" {
            names.insert(word.clone());
        }
        word.clear();
    }
    names
}

#[tokio::test]
async fn every_panel_query_parses_and_reads_only_metrics_the_server_exports() {
    crate::single_instance_only!("it counts the traffic of one instance");
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join(DASHBOARD)).expect("dashboard"))
            .expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "our-memories");
    let variables: Vec<&Value> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(variables, ["datasource", "job", "instance"]);
    let panels = panels(&dashboard);
    assert!(panels.len() >= 10, "a dashboard, not a stub");

    // 1. promtool parses every expression (as recording rules).
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, exprs)) in panels.iter().enumerate() {
        assert!(!exprs.is_empty(), "panel {title:?} has no query");
        // Several instances (cluster mode) are told apart by the `instance` variable.
        for expr in exprs {
            assert!(
                expr.contains(r#"instance=~"$instance""#),
                "panel {title:?} ignores the instance variable: {expr}"
            );
        }
        for (j, expr) in exprs.iter().enumerate() {
            let quoted = serde_json::to_string(&plain(expr)).expect("quoted");
            let _ = writeln!(
                rules,
                "      - record: panel_{i}_{j}\n        expr: {quoted}"
            );
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, &rules).expect("rules written");
    let out = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool rejects a panel query: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. Every metric a panel reads is exported by a server that has seen traffic.
    let app = TestApp::spawn().await;
    let _sockets = traffic(&app).await;
    let (_, exported) = scrape_until(&app, traffic_recorded).await;
    let exported: BTreeSet<&str> = exported.names().chain(["up"]).collect();
    let mut shown = BTreeSet::new();
    for (title, exprs) in &panels {
        let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
        assert!(
            !used.is_empty(),
            "panel {title:?} reads none of our metrics"
        );
        for name in &used {
            assert!(
                exported.contains(name.as_str()),
                "panel {title:?} reads {name}, which the server does not export"
            );
        }
        shown.extend(used);
    }
    for name in MUST_SHOW {
        assert!(shown.contains(*name), "no panel shows {name}");
    }
    app.stop().await;
}

#[test]
fn metric_names_skip_label_values_and_functions() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(our_memories_http_request_duration_seconds_bucket{route="our_memories_x"}[1m]))) / up"#,
    );
    let want: BTreeSet<String> = ["our_memories_http_request_duration_seconds_bucket", "up"]
        .map(str::to_owned)
        .into();
    assert_eq!(names, want);
}

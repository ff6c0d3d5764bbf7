//! The docs are checked against the code they describe, so that neither drifts alone: the
//! error-code table of docs/protocol.md against `ApiError::code`, its close-code table against
//! the session's close codes, its CORS lists against the browser rules, and `env.example`
//! against the variables `config.rs` reads.

use std::collections::BTreeSet;
use std::path::Path;

use crate::layers::code_only;

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The markdown section that starts with the heading `title` (up to the next `## `).
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let start = doc
        .find(title)
        .unwrap_or_else(|| panic!("no section {title}"));
    let rest = &doc[start + title.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

/// The first cell of each table row in `text`, when it is `` `something` `` or a number.
fn first_cells(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split(" |").next())
        .map(|c| c.trim_matches('`').to_owned())
        .filter(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        })
        .collect()
}

/// Every string literal in `code` that looks like `what` accepts.
fn literals(code: &str, what: impl Fn(&str) -> bool) -> BTreeSet<String> {
    code.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| what(s))
        .map(str::to_owned)
        .collect()
}

fn same(documented: &BTreeSet<String>, defined: &BTreeSet<String>, what: &str) {
    let undocumented: Vec<_> = defined.difference(documented).collect();
    let stale: Vec<_> = documented.difference(defined).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "{what}: in the code but not the docs: {undocumented:?}; in the docs but not the code: {stale:?}"
    );
}

#[test]
fn every_error_code_is_in_the_protocol_table_and_nothing_else() {
    let source = code_only(&read("src/front/error.rs"));
    let start = source.find("pub fn code(&self)").expect("ApiError::code");
    let body = &source[start..];
    let body = &body[..body[1..].find("pub fn ").map_or(body.len(), |i| i + 1)];
    let defined = literals(body, |s| {
        s.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    });
    assert!(defined.len() > 30, "{defined:?}");
    let documented = first_cells(section(&read("docs/protocol.md"), "## 11. Error codes"));
    same(&documented, &defined, "error codes");
}

#[test]
fn every_close_code_is_in_the_protocol_table() {
    let source = code_only(&read("src/ws/session.rs"));
    let defined: BTreeSet<String> = source
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const CLOSE_"))
        .filter_map(|l| l.rsplit("= ").next())
        .map(|v| v.trim_end_matches(';').to_owned())
        .collect();
    assert!(defined.len() >= 8, "{defined:?}");
    let doc = read("docs/protocol.md");
    let documented: BTreeSet<String> = first_cells(section(&doc, "### 5.6 Presence timing"))
        .into_iter()
        .filter(|c| c.parse::<u16>().is_ok())
        .collect();
    same(&documented, &defined, "close codes");
}

#[test]
fn the_cors_lists_are_the_ones_documented() {
    let source = read("src/front/browser.rs");
    let doc = read("docs/protocol.md")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for name in ["ALLOW_HEADERS", "EXPOSE_HEADERS", "ALLOW_METHODS"] {
        let start = source.find(&format!("const {name}")).expect(name);
        let value = source[start..].split('"').nth(1).expect("a string");
        assert!(
            doc.contains(value),
            "docs/protocol.md does not list {name} = {value:?}"
        );
    }
}

#[test]
fn env_example_documents_exactly_the_variables_read() {
    let is_var = |s: &str| {
        s.len() > 2
            && s.chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    let mut read_by_code = literals(&code_only(&read("src/config.rs")), is_var);
    // The log filter is read by tracing-subscriber (src/telemetry.rs).
    read_by_code.insert("RUST_LOG".to_owned());
    let documented: BTreeSet<String> = read("env.example")
        .lines()
        .filter_map(|l| l.trim_start_matches(['#', ' ']).split_once('='))
        .map(|(var, _)| var.to_owned())
        .filter(|v| is_var(v))
        .collect();
    same(&documented, &read_by_code, "environment variables");
}

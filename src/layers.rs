//! The layer rule of `src/`, checked on the source: every `crate::` and `super::` path a
//! module names (outside comments and its inline tests) must point down the table below, or
//! stay inside its own top-level module without a cycle. A transport never names another
//! transport (they share a rank), and `config` names nothing of the front end.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules by layer: a module may name only modules of a lower rank.
const RANKS: &[(&str, u8)] = &[
    ("config", 0),
    ("healthcheck", 0),
    ("shutdown", 0),
    ("memory", 0),
    ("secret", 1),
    ("telemetry", 1),
    ("store", 1),
    ("cluster", 1),
    ("metrics", 1),
    ("front", 2),
    ("state", 3),
    ("http", 4),
    ("ws", 4),
    ("socketio", 4),
    ("routes", 5),
    ("serve", 5),
    ("app", 6),
];

/// Every module of `src/` (by path, e.g. `front::rate`) and the source it owns.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let module = if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}::{name}")
            };
            if path.is_dir() {
                walk(&path, &module, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.insert(module, code_only(&text));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut out,
    );
    out.remove("lib");
    out.remove("main");
    out.remove("layers");
    out.remove("docs");
    out
}

/// The source without comments and without its inline `mod tests`.
pub(crate) fn code_only(text: &str) -> String {
    let text = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path named after `crate::` or `super::` in `code`, absolute (`front::rate::X`).
/// Use trees (`crate::front::{auth, wire::named}`) are expanded.
fn named_paths(module: &str, code: &str) -> Vec<String> {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    let mut paths = Vec::new();
    for (anchor, base) in [("crate::", String::new()), ("super::", parent.to_owned())] {
        let mut rest = code;
        while let Some(at) = rest.find(anchor) {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + anchor.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            expand(&base, rest, &mut paths);
        }
    }
    paths
}

/// Reads one use tree at the start of `text` under `base`, pushing each full path.
fn expand(base: &str, text: &str, out: &mut Vec<String>) -> usize {
    let join = |a: &str, b: &str| {
        if a.is_empty() {
            b.to_owned()
        } else {
            format!("{a}::{b}")
        }
    };
    let ident_len = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    if ident_len > 0 {
        let path = join(base, &text[..ident_len]);
        if text[ident_len..].starts_with("::") {
            return ident_len + 2 + expand(&path, &text[ident_len + 2..], out);
        }
        out.push(path);
        return ident_len;
    }
    if !text.starts_with('{') {
        out.push(base.to_owned());
        return 0;
    }
    let mut i = 1;
    loop {
        let rest = &text[i..];
        let skip = rest.len() - rest.trim_start_matches([' ', '\n', ',']).len();
        i += skip;
        if text[i..].starts_with('}') || i >= text.len() {
            return i + 1;
        }
        let used = expand(base, &text[i..], out);
        i += used.max(1);
    }
}

/// The longest module that `path` starts with.
fn owner<'a>(path: &str, modules: &'a BTreeMap<String, String>) -> Option<&'a str> {
    let mut candidate = path;
    loop {
        if let Some((module, _)) = modules.get_key_value(candidate) {
            return Some(module);
        }
        candidate = candidate.rsplit_once("::")?.0;
    }
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Which module names which.
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules();
    let mut edges = BTreeMap::new();
    for (module, code) in &modules {
        let targets: BTreeSet<String> = named_paths(module, code)
            .iter()
            .filter_map(|p| owner(p, &modules))
            .filter(|target| target != module)
            .map(str::to_owned)
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

#[test]
fn modules_name_only_lower_layers() {
    let ranks: BTreeMap<&str, u8> = RANKS.iter().copied().collect();
    let edges = edges();
    assert!(edges.len() > 20, "found the modules: {:?}", edges.keys());
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let rank = |m: &str| {
            *ranks
                .get(top(m))
                .unwrap_or_else(|| panic!("{m} has no rank in RANKS"))
        };
        for to in targets {
            if top(from) != top(to) && rank(to) >= rank(from) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers: {wrong:#?}");
}

#[test]
fn no_module_cycle_inside_a_layer() {
    fn visit<'a>(
        m: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if let Some(at) = stack.iter().position(|s| *s == m) {
            panic!("import cycle: {:?} -> {m}", &stack[at..]);
        }
        if !done.insert(m) {
            return;
        }
        stack.push(m);
        for to in edges.get(m).into_iter().flatten() {
            visit(to, edges, stack, done);
        }
        stack.pop();
    }
    let edges = edges();
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_checker_sees_use_trees_and_relative_paths() {
    let code = "use crate::front::{auth::bearer, wire};\nuse super::PAIRING_BODY_LIMIT;\nlet x = crate::config::Limit::ALL;";
    let paths = named_paths("http::pairing", code);
    assert_eq!(
        paths,
        [
            "front::auth::bearer",
            "front::wire",
            "config::Limit::ALL",
            "http::PAIRING_BODY_LIMIT"
        ]
    );
}

//! Wire helpers every transport uses: JSON bodies (the one place client JSON becomes a typed
//! request) and the messages of the JSON it refuses, stored JSON read back, timestamps, handle
//! injection, and route naming for the HTTP metrics.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use actors::Timestamp;
use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::Value;
use serde_json::error::Category;
use serde_json::value::RawValue;
use warp::{Filter, Rejection};

use super::error::{ApiError, reject};
use crate::metrics::RouteSlot;

/// Names the route answering a request (its template, never its ids), for the HTTP metrics.
/// Put it after the path and method filters: the last route to match names the request.
pub fn named(template: &'static str) -> impl Filter<Extract = (), Error = Infallible> + Clone {
    warp::ext::optional::<RouteSlot>()
        .map(move |slot: Option<RouteSlot>| {
            if let Some(slot) = slot {
                slot.set(template);
            }
        })
        .untuple_one()
}

/// Passes when `on`, else rejects as "not found": a route switched off by configuration
/// looks like no route at all.
pub fn enabled(on: bool) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::any()
        .and_then(move || async move {
            if on {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
}

/// Injects a clone of `value` (a handle, a limit set) into a filter chain, so each filter
/// and handler takes exactly what it needs.
pub fn with<T: Clone + Send + Sync>(
    value: T,
) -> impl Filter<Extract = (T,), Error = Infallible> + Clone {
    warp::any().map(move || value.clone())
}

/// Parses a request body: the one place client JSON becomes a typed request (ids validated
/// while parsing). Public so the fuzz targets exercise exactly this.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_text("body", body)
}

/// Parses `text`, the JSON of `what`, into `T`; refused with [`json_error`]'s message.
fn parse_text<T: DeserializeOwned>(what: &str, text: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(text).map_err(|e| json_error(what, text, &e))
}

/// Parses a JSON value that arrived parsed (a Socket.IO event's data) into `T`. A value that
/// does not fit is parsed again from its text, only so that [`json_error`] can name the field.
pub fn parse_value<T: DeserializeOwned>(what: &str, value: &Value) -> Result<T, ApiError> {
    T::deserialize(value).or_else(|_| parse_text(what, value.to_string().as_bytes()))
}

/// A JSON body of at most `limit` bytes that arrives within `deadline` (408 `body_timeout`
/// otherwise, so a client trickling bytes cannot hold a connection), parsed into `T` (which
/// validates ids while parsing).
pub fn json_body<T: DeserializeOwned + Send>(
    limit: u64,
    deadline: Duration,
) -> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(limit)
        .and(warp::body::stream())
        .and_then(move |body| async move {
            let body = tokio::time::timeout(deadline, collect(body))
                .await
                .map_err(|_| reject(ApiError::BodyTimeout))?
                .map_err(|e| reject(ApiError::InvalidRequest(format!("reading the body: {e}"))))?;
            parse_json(&body).map_err(reject)
        })
}

/// Reads a whole body (its length is already bounded by `Content-Length`).
async fn collect(
    body: impl Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<BytesMut, warp::Error> {
    let mut out = BytesMut::new();
    futures_util::pin_mut!(body);
    while let Some(chunk) = body.next().await {
        out.put(chunk?);
    }
    Ok(out)
}

/// Deepest nesting of arrays and objects accepted in client JSON that the server keeps or
/// relays untouched (signal payloads, backup metadata). SDP and ICE payloads nest 3 or 4
/// levels; a limit keeps a peer's parser (and ours) safe from deeply nested input.
pub const MAX_JSON_DEPTH: usize = 32;

/// Checks that `raw` (valid JSON) nests arrays and objects at most [`MAX_JSON_DEPTH`] deep.
pub fn check_depth(raw: &RawValue, what: &str) -> Result<(), ApiError> {
    let mut depth = 0usize;
    for piece in Pieces::new(raw.get().as_bytes()) {
        match piece {
            Piece::Open(_) => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(ApiError::InvalidRequest(format!(
                        "{what} nests deeper than {MAX_JSON_DEPTH} levels"
                    )));
                }
            }
            Piece::Close => depth = depth.saturating_sub(1),
            Piece::Comma | Piece::Colon | Piece::Str(_) => {}
        }
    }
    Ok(())
}

/// One structural part of JSON text: what the depth check and the error locator need, without
/// a parse (numbers, literals and white space are skipped).
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    /// `{` or `[` (the byte says which).
    Open(u8),
    /// `}` or `]`.
    Close,
    /// `,`.
    Comma,
    /// `:`.
    Colon,
    /// A whole string: its text between the quotes, escapes left as they are.
    Str(&'a [u8]),
}

/// The [`Piece`]s of JSON text, in order. A string cut off by the end of the text ends them.
struct Pieces<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Pieces<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self { text, at: 0 }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        while let Some(&b) = self.text.get(self.at) {
            self.at += 1;
            match b {
                b'{' | b'[' => return Some(Piece::Open(b)),
                b'}' | b']' => return Some(Piece::Close),
                b',' => return Some(Piece::Comma),
                b':' => return Some(Piece::Colon),
                b'"' => {
                    let start = self.at;
                    let mut escaped = false;
                    while let Some(&c) = self.text.get(self.at) {
                        self.at += 1;
                        match (escaped, c) {
                            (true, _) => escaped = false,
                            (false, b'\\') => escaped = true,
                            (false, b'"') => {
                                return Some(Piece::Str(&self.text[start..self.at - 1]));
                            }
                            (false, _) => {}
                        }
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// The one place a `serde_json` error becomes an `invalid_request` message, in the API's
/// terms. `what` names the input (`body`, `message`, an event, a header); `text` is what was
/// parsed, which says where the error is.
///
/// - Not JSON: `body is not valid JSON: key must be a string (column 2)`. The position stays
///   (with the line if the text has several): it is what finds the typo.
/// - Empty or cut short: `body is empty`, `body is not valid JSON: it ends too early`.
/// - Nested deeper than `serde_json` goes (128): `body nests deeper than 32 levels`, the limit
///   the API documents.
/// - JSON of the wrong shape: `serde_json`'s words without its position (`at line 1 column
///   30` says nothing in a one-line body), with the field named and types said as JSON says
///   them: `` `seq`: expected a non-negative integer, got string "x" ``, ``missing field
///   `payload` ``, `message must be a JSON object` (every type a client sends is an object).
pub fn json_error(what: &str, text: &[u8], e: &serde_json::Error) -> ApiError {
    let message = without_position(e);
    ApiError::InvalidRequest(match e.classify() {
        Category::Data => wrong_shape(what, text, message, (e.line(), e.column())),
        // Valid JSON, nested deeper than serde_json parses into a type (128 levels).
        _ if message == "recursion limit exceeded" => {
            format!("{what} nests deeper than {MAX_JSON_DEPTH} levels")
        }
        // serde_json also says "expected value", a syntax error, for a valid value of the
        // wrong type where an enum is expected (a number for `type`): only text that does not
        // parse at all is called invalid. Every enum a client sends is a string, and the
        // position is on the value's first byte, not after it.
        // Other syntax errors in text that skims as JSON (a number out of range, a lone
        // `\ud800`) are serde's own words, with the column.
        _ => match serde_json::from_slice::<IgnoredAny>(text) {
            Err(invalid) => not_json(what, text, &invalid),
            Ok(IgnoredAny) if message != "expected value" => not_json(what, text, e),
            Ok(IgnoredAny) => wrong_shape(
                what,
                text,
                "expected a string".to_owned(),
                (e.line(), e.column().saturating_sub(1)),
            ),
        },
    })
}

/// The message for text that is not JSON.
fn not_json(what: &str, text: &[u8], e: &serde_json::Error) -> String {
    if e.classify() == Category::Eof {
        return if text.trim_ascii().is_empty() {
            format!("{what} is empty")
        } else {
            format!("{what} is not valid JSON: it ends too early")
        };
    }
    let message = without_position(e);
    let message = match message.as_str() {
        "expected ident" => "expected true, false or null",
        "expected value" => "expected a value",
        "trailing characters" => "unexpected text after the value",
        other => other,
    };
    let (line, column) = (e.line(), e.column());
    if text.contains(&b'\n') {
        format!("{what} is not valid JSON: {message} (line {line}, column {column})")
    } else {
        format!("{what} is not valid JSON: {message} (column {column})")
    }
}

/// The message for JSON that is not what `what` must be: serde's `message`, about the value
/// at `(line, column)`.
fn wrong_shape(what: &str, text: &[u8], message: String, (line, column): (usize, usize)) -> String {
    if text.trim_ascii_start().first() != Some(&b'{') {
        return format!("{what} must be a JSON object");
    }
    // These name their field already (and are reported at the key, or at the object's end).
    if ["missing field", "unknown field", "duplicate field"]
        .iter()
        .any(|p| message.starts_with(p))
    {
        return message;
    }
    let message = in_json_terms(&message);
    let field = field_at(text, line, column);
    let named = message
        .strip_prefix(field.as_str())
        .is_some_and(|rest| rest.starts_with(' '));
    if field.is_empty() || named {
        message
    } else {
        format!("`{field}`: {message}")
    }
}

/// `serde_json`'s message without the ` at line L column C` that its `Display` appends when
/// the error has a position (a line from 1; none for an error of a parsed `Value`).
fn without_position(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if e.line() > 0 {
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        if message.ends_with(&suffix) {
            message.truncate(message.len() - suffix.len());
        }
    }
    message
}

/// serde's `invalid type: U, expected E` (and `invalid value`) as `expected E, got U`, with
/// Rust's names of types and values replaced by JSON's.
fn in_json_terms(message: &str) -> String {
    let parts = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        // The last: a string value the client sent may hold ", expected ".
        .and_then(|m| m.rsplit_once(", expected "));
    let Some((got, expected)) = parts else {
        return message.to_owned();
    };
    let term = |t: &str| match t {
        "u64" | "u32" | "u16" | "u8" | "usize" => "a non-negative integer".to_owned(),
        "i64" | "i32" | "i16" | "i8" | "isize" => "an integer".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        "a borrowed string" => "a string".to_owned(),
        "sequence" => "an array".to_owned(),
        "map" => "an object".to_owned(),
        "unit value" | "unit" => "null".to_owned(),
        t if t.starts_with("struct ") => "an object".to_owned(),
        t => t.replacen("floating point ", "number ", 1),
    };
    format!("expected {}, got {}", term(expected), term(got))
}

/// The field whose value is at `serde_json`'s position of an error in `text` (`seq`,
/// `payload.sdp`, `list[2]`), or "" outside any value.
fn field_at(text: &[u8], line: usize, column: usize) -> String {
    enum Level<'a> {
        Object {
            key: Option<&'a [u8]>,
            in_value: bool,
        },
        Array(usize),
    }
    // Lines count from 1; columns are bytes from the line's start, up to the error.
    let line_start = match line {
        0 | 1 => 0,
        n => text
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'\n')
            .nth(n - 2)
            .map_or(text.len(), |(i, _)| i + 1),
    };
    let end = line_start.saturating_add(column).min(text.len());
    let mut levels = Vec::new();
    for piece in Pieces::new(&text[..end]) {
        match (piece, levels.last_mut()) {
            (Piece::Open(b'{'), _) => levels.push(Level::Object {
                key: None,
                in_value: false,
            }),
            (Piece::Open(_), _) => levels.push(Level::Array(0)),
            (Piece::Close, _) => {
                levels.pop();
            }
            (Piece::Comma, Some(Level::Object { key, in_value })) => {
                (*key, *in_value) = (None, false);
            }
            (Piece::Comma, Some(Level::Array(i))) => *i += 1,
            (Piece::Colon, Some(Level::Object { in_value, .. })) => *in_value = true,
            (Piece::Str(s), Some(Level::Object { key, in_value })) if !*in_value => *key = Some(s),
            _ => {}
        }
    }
    let mut path = String::new();
    for level in &levels {
        match level {
            Level::Object {
                key: Some(key),
                in_value: true,
            } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&String::from_utf8_lossy(key));
            }
            Level::Array(i) => {
                let _ = write!(path, "[{i}]");
            }
            Level::Object { .. } => break,
        }
    }
    path
}

/// RFC 3339 with milliseconds, UTC: what every timestamp on the wire looks like.
#[must_use]
pub fn rfc3339(t: Timestamp) -> String {
    humantime::format_rfc3339_millis(t.to_system_time()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    /// The `invalid_request` message for `text` parsed as `T`.
    fn refusal<T: DeserializeOwned + std::fmt::Debug>(text: &str) -> String {
        let err = parse_json::<T>(text.as_bytes()).unwrap_err();
        assert_eq!(err.code(), "invalid_request", "{text}");
        let message = err.to_string();
        assert!(!message.contains(" at line "), "{text}: {message}");
        message
    }

    /// A request of every shape the errors are about; only parsed, never read.
    #[allow(dead_code)]
    #[derive(Debug, serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct Body {
        device_id: actors::DeviceId,
        seq: Option<u64>,
        list: Option<Vec<u64>>,
        meta: Option<Value>,
    }

    /// A Socket.IO event's body.
    #[allow(dead_code)]
    #[derive(Debug, serde::Deserialize)]
    struct Ack {
        seq: u64,
        to: Option<actors::DeviceId>,
    }

    #[test]
    fn json_error_syntax_keeps_the_column() {
        // Deeper than serde_json parses into a type: the documented limit, not "recursion
        // limit exceeded".
        let deep = format!(r#"{{"meta":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        for (text, message) in [
            (
                r#"{"deviceId":"a" "seq":1}"#,
                "body is not valid JSON: expected `,` or `}` (column 17)",
            ),
            (
                "{not json",
                "body is not valid JSON: key must be a string (column 2)",
            ),
            (
                r#"{"deviceId":"a"} x"#,
                "body is not valid JSON: unexpected text after the value (column 18)",
            ),
            // A body of several lines says the line too.
            (
                "{\n  \"deviceId\": \"a\",\n  \"seq\" 1\n}",
                "body is not valid JSON: expected `:` (line 3, column 9)",
            ),
            (&deep, "body nests deeper than 32 levels"),
            // Syntax errors in text that otherwise skims as JSON keep serde's words.
            (
                r#"{"seq":1e400}"#,
                "body is not valid JSON: number out of range (column 12)",
            ),
            (
                r#"{"deviceId":"\ud800"}"#,
                "body is not valid JSON: unexpected end of hex escape (column 20)",
            ),
        ] {
            assert_eq!(refusal::<Body>(text), message, "{text}");
        }
        let raw = serde_json::from_str::<&RawValue>("[1,]").unwrap_err();
        assert_eq!(
            json_error("x-backup-meta", b"[1,]", &raw).to_string(),
            "x-backup-meta is not valid JSON: expected a value (column 4)"
        );
    }

    #[test]
    fn json_error_eof_says_the_json_ends_early() {
        for (text, message) in [
            (
                r#"{"deviceId":"a""#,
                "body is not valid JSON: it ends too early",
            ),
            ("tru", "body is not valid JSON: it ends too early"),
            ("", "body is empty"),
            (" \r\n", "body is empty"),
        ] {
            assert_eq!(refusal::<Body>(text), message, "{text:?}");
        }
    }

    #[test]
    fn json_error_data_names_the_field_and_what_was_expected() {
        for (text, message) in [
            (r#"{"seq":1}"#, "missing field `deviceId`"),
            (
                r#"{"deviceId":"a","seq":"x"}"#,
                r#"`seq`: expected a non-negative integer, got string "x""#,
            ),
            (
                r#"{"deviceId":"a","seq":-1}"#,
                "`seq`: expected a non-negative integer, got integer `-1`",
            ),
            (
                r#"{"deviceId":"a","seq":1.5}"#,
                "`seq`: expected a non-negative integer, got number `1.5`",
            ),
            (
                r#"{"deviceId":7}"#,
                "`deviceId`: expected a string, got integer `7`",
            ),
            (
                r#"{"deviceId":null}"#,
                "`deviceId`: expected a string, got null",
            ),
            (
                r#"{"deviceId":{"a":[1]}}"#,
                "`deviceId`: expected a string, got an object",
            ),
            (
                r#"{"seq":1,"list":[1,2,"x, expected u64"],"deviceId":"a"}"#,
                r#"`list[2]`: expected a non-negative integer, got string "x, expected u64""#,
            ),
            // An id's own message names it; a field that holds one is named first.
            (
                r#"{"deviceId":"a b"}"#,
                "deviceId may only contain A-Z, a-z, 0-9, '_' and '-'",
            ),
            (
                r#"{"deviceId":"a","x":1}"#,
                "unknown field `x`, expected one of `deviceId`, `seq`, `list`, `meta`",
            ),
            (
                r#"{"deviceId":"a","deviceId":"b"}"#,
                "duplicate field `deviceId`",
            ),
            ("[1,2]", "body must be a JSON object"),
            ("\"x\"", "body must be a JSON object"),
        ] {
            assert_eq!(refusal::<Body>(text), message, "{text}");
        }
        // Keys and strings with escaped quotes and brackets do not lose the field.
        assert_eq!(
            refusal::<Body>(r#"{"deviceId":"a","seq":"\"}[,:","\"\\\":1}"#),
            r#"`seq`: expected a non-negative integer, got string "\"}[,:""#
        );
        // A value that arrived parsed (Socket.IO) gets the same messages.
        let refused = |v: Value| parse_value::<Ack>("ack", &v).unwrap_err().to_string();
        assert_eq!(
            refused(serde_json::json!({ "seq": "x" })),
            r#"`seq`: expected a non-negative integer, got string "x""#
        );
        assert_eq!(
            refused(serde_json::json!({ "seq": 1, "to": "a b" })),
            "`to`: deviceId may only contain A-Z, a-z, 0-9, '_' and '-'"
        );
        assert_eq!(refused(serde_json::json!({})), "missing field `seq`");
        assert_eq!(refused(Value::Null), "ack must be a JSON object");
        assert!(parse_value::<Ack>("ack", &serde_json::json!({ "seq": 3 })).is_ok());
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        let deep = |n| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(check_depth(raw(&deep(MAX_JSON_DEPTH)), "payload").is_ok());
        let err = check_depth(raw(&deep(MAX_JSON_DEPTH + 1)), "payload").unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert!(
            err.to_string().contains("payload nests deeper than 32"),
            "{err}"
        );
        let quoted = format!(r#"{{"sdp":"{}\"{}"}}"#, "[".repeat(100), "{".repeat(100));
        assert!(check_depth(raw(&quoted), "payload").is_ok());
        let objects = format!("{}1{}", r#"{"a":"#.repeat(40), "}".repeat(40));
        assert!(check_depth(raw(&objects), "meta").is_err());
    }
}

//! Wire helpers every transport uses: JSON bodies (the one place client JSON becomes a typed
//! request), stored JSON read back, timestamps, handle injection, and route naming for the
//! HTTP metrics.

use std::convert::Infallible;
use std::time::Duration;

use actors::Timestamp;
use bytes::{Buf, BufMut, BytesMut};
use futures_util::{Stream, StreamExt};
use serde::de::DeserializeOwned;
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
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest(e.to_string()))
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

/// Borrows stored payload text as raw JSON. It was validated on the way in, so a failure here
/// means corrupt storage: an internal error (logged where it is answered).
pub fn raw_json(text: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| ApiError::Internal(format!("stored payload is not valid JSON: {e}")))
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

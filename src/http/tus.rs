//! Resumable backup uploads over tus 1.0.0 (<https://tus.io/protocols/resumable-upload>):
//! `POST /api/backup/uploads` (creation, creation-with-upload), `HEAD`, `PATCH` and `DELETE`
//! (termination) on `/api/backup/uploads/:uploadId`, and `OPTIONS` on both, with the checksum
//! (`sha1`, `sha256`) and expiration extensions. The headers and status codes are the spec's;
//! the upload itself is the domain's ([`Backups::append`]). Every response carries
//! `Tus-Resumable`; errors keep the usual JSON body.

use std::time::Instant;

use actors::token::TokenClaims;
use actors::{
    BackupError, Backups, ByteStream, ChecksumAlgorithm, ChunkChecksum, NewUpload, Progress,
    Sha256Digest, UploadId,
};
use base64::Engine as _;
use bytes::Buf;
use futures_util::{Stream, StreamExt};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::backup::check_meta;
use crate::front::error::{ApiError, handle_rejection, reject};
use crate::front::rate::{DeviceLimit, authenticated_within};
use crate::front::wire::{named, with};
use crate::metrics::{Direction, Metrics};
use crate::state::AppState;

/// The protocol version this server speaks (`Tus-Resumable`, `Tus-Version`).
pub const TUS_VERSION: &str = "1.0.0";
/// `Tus-Extension`.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The only `Content-Type` a chunk may have.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";
/// Longest `Upload-Metadata`: the backup's metadata (4 KiB of JSON) in base64, and a SHA-256.
pub const MAX_UPLOAD_METADATA_BYTES: usize = 8 * 1024;
/// Where uploads live; `Location` is this plus `/<uploadId>`.
const COLLECTION: &str = "/api/backup/uploads";

/// A tus request other than `OPTIONS`, authenticated.
struct TusRequest {
    method: Method,
    claims: TokenClaims,
    headers: HeaderMap,
    body: ByteStream,
}

type Handles = (Backups, Metrics);

/// The tus routes. A request under `/api/backup/uploads` is answered here, errors included
/// (with `Tus-Resumable`).
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let handles = with((state.backups.clone(), state.metrics.clone()));
    let max = state.backups.max_bytes();
    let collection = warp::path::end()
        .and(named("/api/backup/uploads"))
        .map(|| None)
        .and(options_or(request(state, DeviceLimit::Backup)));
    let one = warp::path::param::<String>()
        .and(warp::path::end())
        .and(named("/api/backup/uploads/{uploadId}"))
        .map(Some)
        .and(options_or(request(state, DeviceLimit::Signal)));
    let answered = collection
        .or(one)
        .unify()
        .and(handles)
        .and_then(move |id, req, handles| answer(id, req, handles, max));
    warp::path!("api" / "backup" / "uploads" / ..).and(
        answered
            .recover(|r| async move { handle_rejection(r).await })
            .unify()
            .map(|mut res: Response| {
                tus_headers(res.headers_mut());
                res
            }),
    )
}

/// `None` for `OPTIONS` (which needs neither a token nor `Tus-Resumable`), else the request.
fn options_or(
    request: impl Filter<Extract = (TusRequest,), Error = Rejection> + Clone + Send + Sync,
) -> impl Filter<Extract = (Option<TusRequest>,), Error = Rejection> + Clone {
    effective_method()
        .and_then(|m: Method| async move {
            if m == Method::OPTIONS {
                Ok::<Option<TusRequest>, Rejection>(None)
            } else {
                Err(warp::reject::not_found())
            }
        })
        .or(request.map(|r: TusRequest| Some(r)))
        .unify()
}

/// The method, or the one `X-HTTP-Method-Override` names (for clients and proxies that only
/// pass GET and POST).
fn effective_method() -> impl Filter<Extract = (Method,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::header::optional::<String>("x-http-method-override"))
        .map(|m: Method, over: Option<String>| {
            over.and_then(|o| Method::from_bytes(o.trim().to_ascii_uppercase().as_bytes()).ok())
                .unwrap_or(m)
        })
}

/// `Tus-Resumable` checked (412), then the token and the device's budget.
fn request(
    state: &AppState,
    limit: DeviceLimit,
) -> impl Filter<Extract = (TusRequest,), Error = Rejection> + Clone + use<> {
    warp::header::optional::<String>("tus-resumable")
        .and_then(|v: Option<String>| async move {
            if v.as_deref().map(str::trim) == Some(TUS_VERSION) {
                Ok(())
            } else {
                Err(reject(ApiError::TusVersion))
            }
        })
        .untuple_one()
        .and(effective_method())
        .and(authenticated_within(
            state.pairing.clone(),
            state.limits.clone(),
            limit,
        ))
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .map(|method, claims, headers, body| TusRequest {
            method,
            claims,
            headers,
            body: byte_stream(body),
        })
}

fn byte_stream(
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + 'static,
) -> ByteStream {
    Box::pin(body.map(|chunk| {
        chunk
            .map(|mut buf| buf.copy_to_bytes(buf.remaining()))
            .map_err(std::io::Error::other)
    }))
}

/// `Tus-Resumable` on every response, and `Tus-Version` too, which a 412 must carry.
fn tus_headers(h: &mut HeaderMap) {
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
}

/// `OPTIONS`: what this server supports.
fn options(max: u64) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert("tus-max-size", HeaderValue::from(max));
    let algorithms: Vec<&str> = ChecksumAlgorithm::ALL.iter().map(|(n, _)| *n).collect();
    if let Ok(v) = HeaderValue::from_str(&algorithms.join(",")) {
        h.insert("tus-checksum-algorithm", v);
    }
    res
}

/// Answers `OPTIONS`, or the request on the collection (`id` `None`) or on one upload.
async fn answer(
    id: Option<String>,
    req: Option<TusRequest>,
    (backups, metrics): Handles,
    max: u64,
) -> Result<Response, Rejection> {
    let Some(req) = req else {
        return Ok(options(max));
    };
    let Some(id) = id else {
        return match req.method {
            Method::POST => create(req, &backups, &metrics).await.map_err(reject),
            _ => Err(reject(ApiError::MethodNotAllowed)),
        };
    };
    let id = UploadId::parse(id)
        .map_err(|_| ApiError::Backup(BackupError::UploadNotFound))
        .map_err(reject)?;
    let couple = &req.claims.couple;
    let answered = match req.method {
        Method::HEAD => backups
            .upload_progress(couple, &id)
            .await
            .map_err(ApiError::from)
            .map(|p| head(&p)),
        Method::PATCH => patch(req, &id, &backups, &metrics).await,
        Method::DELETE => backups
            .terminate(couple, &id)
            .await
            .map_err(ApiError::from)
            .map(|()| StatusCode::NO_CONTENT.into_response()),
        _ => Err(ApiError::MethodNotAllowed),
    };
    answered.map_err(reject)
}

/// `POST`: a new upload, with its first bytes when the body carries some.
async fn create(
    req: TusRequest,
    backups: &Backups,
    metrics: &Metrics,
) -> Result<Response, ApiError> {
    let length = number(&req.headers, "upload-length")?
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            ApiError::InvalidRequest("Upload-Length is required, at least 1".to_owned())
        })?;
    let new = parse_metadata(&req.headers, length)?;
    let has_body = number(&req.headers, "content-length")?.is_some_and(|n| n > 0)
        || req.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !is_chunk(&req.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let (couple, device) = (req.claims.couple.clone(), req.claims.device.clone());
    let started = backups.create_upload(&couple, &device, new).await?;
    let progress = if has_body {
        match append(req, &started.id, 0, backups, metrics).await {
            Ok(p) => p,
            // The bytes were refused (a cut-off body's bytes are kept, and not an error):
            // no upload either.
            Err(
                e @ ApiError::Backup(
                    BackupError::ChunkChecksumMismatch
                    | BackupError::PastLength { .. }
                    | BackupError::Busy,
                ),
            ) => {
                if let Err(cause) = backups.terminate(&couple, &started.id).await {
                    tracing::warn!(cause = %cause, "failed to drop an upload whose first chunk was refused");
                }
                return Err(e);
            }
            // Anything else may have kept bytes (or published them): the client gets the
            // upload's URL and asks it (HEAD) where it stands.
            Err(e) => match backups.upload_progress(&couple, &started.id).await {
                Ok(p) => p,
                Err(_) => return Err(e),
            },
        }
    } else {
        started
    };
    let mut res = StatusCode::CREATED.into_response();
    let location = format!("{COLLECTION}/{}", progress.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    progress_headers(res.headers_mut(), &progress);
    Ok(res)
}

/// `PATCH`: bytes at `Upload-Offset`.
async fn patch(
    req: TusRequest,
    id: &UploadId,
    backups: &Backups,
    metrics: &Metrics,
) -> Result<Response, ApiError> {
    if !is_chunk(&req.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let offset = number(&req.headers, "upload-offset")?
        .ok_or_else(|| ApiError::InvalidRequest("Upload-Offset is required".to_owned()))?;
    let progress = append(req, id, offset, backups, metrics).await?;
    let mut res = StatusCode::NO_CONTENT.into_response();
    progress_headers(res.headers_mut(), &progress);
    Ok(res)
}

/// Appends the request's body; counts a published backup as a completed upload.
async fn append(
    req: TusRequest,
    id: &UploadId,
    offset: u64,
    backups: &Backups,
    metrics: &Metrics,
) -> Result<Progress, ApiError> {
    let started = Instant::now();
    let checksum = parse_checksum(&req.headers)?;
    let appended = backups
        .append(&req.claims.couple, id, offset, checksum, req.body)
        .await;
    match &appended {
        // This request brought the last bytes (not a retry after the publish).
        Ok(p) if p.backup.is_some() && offset < p.length => {
            metrics.backup_completed(Direction::Upload, p.length, started.elapsed());
        }
        Ok(_) => {}
        Err(e) => {
            let outcome = ApiError::Backup(e.clone()).outcome();
            metrics.backup_not_transferred(Direction::Upload, outcome);
        }
    }
    Ok(appended?)
}

/// `HEAD`: the offset, never cached.
fn head(p: &Progress) -> Response {
    let mut res = StatusCode::OK.into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("upload-length", HeaderValue::from(p.length));
    progress_headers(h, p);
    res
}

/// `Upload-Offset`, `Upload-Expires` while unfinished, and the backup's id once published.
fn progress_headers(h: &mut HeaderMap, p: &Progress) {
    h.insert("upload-offset", HeaderValue::from(p.offset));
    if let Some(at) = p.expires_at
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(at.to_system_time()))
    {
        h.insert("upload-expires", v);
    }
    if let Some(backup) = &p.backup
        && let Ok(v) = HeaderValue::from_str(backup.as_str())
    {
        h.insert("x-backup-id", v);
    }
}

/// A non-negative integer header (`Upload-Length`, `Upload-Offset`), if present.
fn number(h: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    h.get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::InvalidRequest(format!("{name} must be a non-negative integer"))
                })
        })
        .transpose()
}

/// Whether the body is a chunk: `Content-Type: application/offset+octet-stream`.
fn is_chunk(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(OFFSET_STREAM))
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs. `meta` is the backup's
/// metadata (as `X-Backup-Meta`), `sha256` the whole backup's SHA-256 in hex; other keys (such
/// as the `filename` many clients send) are ignored.
fn parse_metadata(h: &HeaderMap, length: u64) -> Result<NewUpload, ApiError> {
    let mut new = NewUpload {
        length,
        ..NewUpload::default()
    };
    let Some(raw) = h.get("upload-metadata") else {
        return Ok(new);
    };
    let bad = |why: &str| ApiError::InvalidRequest(format!("Upload-Metadata: {why}"));
    if raw.len() > MAX_UPLOAD_METADATA_BYTES {
        return Err(bad(&format!(
            "longer than {MAX_UPLOAD_METADATA_BYTES} bytes"
        )));
    }
    let raw = raw.to_str().map_err(|_| bad("not ASCII"))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .map_err(|_| bad(&format!("the value of {key} is not base64")))?;
        let text =
            || String::from_utf8(value.clone()).map_err(|_| bad(&format!("{key} is not UTF-8")));
        match key {
            "meta" => new.meta = check_meta(Some(text()?), "Upload-Metadata meta")?,
            "sha256" => {
                new.sha256 = Some(
                    Sha256Digest::parse(&text()?)
                        .map_err(|_| bad("sha256 must be 64 hex digits"))?,
                );
            }
            _ => {}
        }
    }
    Ok(new)
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
fn parse_checksum(h: &HeaderMap) -> Result<Option<ChunkChecksum>, ApiError> {
    let Some(raw) = h.get("upload-checksum") else {
        return Ok(None);
    };
    let bad = |why: &str| ApiError::InvalidRequest(format!("Upload-Checksum: {why}"));
    let (name, digest) = raw
        .to_str()
        .ok()
        .and_then(|s| s.trim().split_once(' '))
        .ok_or_else(|| bad("expected <algorithm> <base64 digest>"))?;
    let algorithm = ChecksumAlgorithm::ALL
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, a)| *a)
        .ok_or_else(|| bad("unsupported algorithm (sha1, sha256)"))?;
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .map_err(|_| bad("the digest is not base64"))?;
    let size = match algorithm {
        ChecksumAlgorithm::Sha1 => 20,
        ChecksumAlgorithm::Sha256 => 32,
    };
    if digest.len() != size {
        return Err(bad(&format!("a {name} digest has {size} bytes")));
    }
    Ok(Some(ChunkChecksum { algorithm, digest }))
}

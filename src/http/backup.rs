//! Encrypted backups: `POST /api/backup`, `GET /api/backup/:coupleId[/:backupId]`,
//! `GET /api/backups/:coupleId`. Bodies stream in and out; the server never looks inside.

use std::time::Instant;

use actors::token::TokenClaims;
use actors::{BackupId, BackupRecord, Backups, CoupleId, DeviceId, Sha256Digest, UploadInfo};
use bytes::Buf;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use serde_json::value::RawValue;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::front::auth::{authenticated, require_access};
use crate::front::error::{ApiError, reject};
use crate::front::rate::{DeviceLimit, authenticated_within};
use crate::front::wire::{check_depth, json_error, named, rfc3339, with};
use crate::metrics::{Direction, Metrics, Outcome};
use crate::state::AppState;

/// Largest `X-Backup-Meta` header value.
pub const MAX_META_BYTES: usize = 4 * 1024;
/// Header carrying the client's metadata, stored and returned as is.
pub const META_HEADER: &str = "x-backup-meta";
/// Header carrying the client's SHA-256 of the body (64 hex digits).
pub const SHA256_HEADER: &str = "x-content-sha256";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireBackup<'a> {
    backup_id: &'a BackupId,
    size: u64,
    sha256: &'a Sha256Digest,
    created_at: String,
    uploaded_by: &'a DeviceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a RawValue>,
}

impl<'a> WireBackup<'a> {
    fn new(b: &'a BackupRecord) -> Self {
        Self {
            backup_id: &b.id,
            size: b.size,
            sha256: &b.sha256,
            created_at: rfc3339(b.created_at),
            uploaded_by: &b.uploaded_by,
            // Stored metadata was validated as JSON on the way in.
            meta: b.meta.as_deref().and_then(|m| serde_json::from_str(m).ok()),
        }
    }
}

#[derive(Serialize)]
struct BackupList<'a> {
    backups: Vec<WireBackup<'a>>,
    quota: WireQuota,
    uploads: Vec<WireUpload<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireQuota {
    limit_bytes: u64,
    used_bytes: u64,
}

/// An unfinished resumable upload (docs/protocol.md §6.5).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireUpload<'a> {
    upload_id: &'a actors::UploadId,
    length: u64,
    offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<String>,
}

/// The backup routes.
pub fn routes(
    state: &AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + use<> {
    let handles = with((state.backups.clone(), state.metrics.clone()));
    let upload = warp::path!("api" / "backup")
        .and(warp::post())
        .and(named("/api/backup"))
        .and(handles.clone())
        .and(authenticated_within(
            state.pairing.clone(),
            state.limits.clone(),
            DeviceLimit::Backup,
        ))
        .and(warp::header::optional::<String>(META_HEADER))
        .and(warp::header::optional::<String>(SHA256_HEADER))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and_then(upload);
    let latest = warp::path!("api" / "backup" / String)
        .and(warp::get())
        .and(named("/api/backup/{coupleId}"))
        .map(|couple: String| (couple, None));
    let one = warp::path!("api" / "backup" / String / String)
        .and(warp::get())
        .and(named("/api/backup/{coupleId}/{backupId}"))
        .map(|couple: String, id: String| (couple, Some(id)));
    let download = latest
        .or(one)
        .unify()
        .untuple_one()
        .and(handles)
        .and(authenticated(state.pairing.clone()))
        .and(warp::header::optional::<String>("if-none-match"))
        .and_then(download);
    let list = warp::path!("api" / "backups" / String)
        .and(warp::get())
        .and(named("/api/backups/{coupleId}"))
        .and(with(state.backups.clone()))
        .and(authenticated(state.pairing.clone()))
        .and_then(list);
    upload.or(download).unify().or(list).unify()
}

/// Checks a backup's metadata, named `what` in errors (`X-Backup-Meta`, or tus
/// `Upload-Metadata`'s `meta`): at most 4 KiB of JSON.
pub(crate) fn check_meta(meta: Option<String>, what: &str) -> Result<Option<String>, ApiError> {
    let Some(meta) = meta else { return Ok(None) };
    if meta.len() > MAX_META_BYTES {
        return Err(ApiError::InvalidRequest(format!(
            "{what} is larger than {MAX_META_BYTES} bytes"
        )));
    }
    let json = serde_json::from_str::<&RawValue>(&meta)
        .map_err(|e| json_error(what, meta.as_bytes(), &e))?;
    check_depth(json, what)?;
    Ok(Some(meta))
}

/// Parses `X-Content-SHA256`: 64 hex digits, in either case.
fn parse_sha256(sha: Option<&str>) -> Result<Option<Sha256Digest>, ApiError> {
    sha.map(Sha256Digest::parse)
        .transpose()
        .map_err(|_| ApiError::InvalidRequest(format!("{SHA256_HEADER} must be 64 hex digits")))
}

async fn upload(
    (backups, metrics): (Backups, Metrics),
    claims: TokenClaims,
    meta: Option<String>,
    sha256: Option<String>,
    content_length: Option<u64>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + Sync + 'static,
) -> Result<warp::reply::Response, Rejection> {
    let started = Instant::now();
    let stored = store_upload(&backups, &claims, meta, sha256, content_length, body).await;
    match &stored {
        Ok(record) => metrics.backup_completed(Direction::Upload, record.size, started.elapsed()),
        Err(e) => metrics.backup_not_transferred(Direction::Upload, e.outcome()),
    }
    let reply = warp::reply::json(&WireBackup::new(&stored.map_err(reject)?));
    Ok(warp::reply::with_status(reply, StatusCode::CREATED).into_response())
}

/// Checks an upload's headers, then streams it into storage and publishes it.
async fn store_upload(
    backups: &Backups,
    claims: &TokenClaims,
    meta: Option<String>,
    sha256: Option<String>,
    content_length: Option<u64>,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + Sync + 'static,
) -> Result<BackupRecord, ApiError> {
    let info = UploadInfo {
        meta: check_meta(meta, META_HEADER)?,
        expected_sha256: parse_sha256(sha256.as_deref())?,
    };
    let limit = backups.max_bytes();
    if content_length.is_some_and(|len| len > limit) {
        return Err(actors::BackupError::TooLarge { limit }.into());
    }
    let body = body.map(|chunk| {
        chunk
            .map(|mut buf| buf.copy_to_bytes(buf.remaining()))
            .map_err(std::io::Error::other)
    });
    Ok(backups
        .upload(&claims.couple, &claims.device, info, Box::pin(body))
        .await?)
}

/// Whether `If-None-Match` names this `ETag` (or `*`).
fn not_modified(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

async fn download(
    couple: String,
    id: Option<String>,
    (backups, metrics): (Backups, Metrics),
    claims: TokenClaims,
    if_none_match: Option<String>,
) -> Result<warp::reply::Response, Rejection> {
    let answered = answer_download(
        &backups,
        &metrics,
        &claims,
        (couple, id),
        if_none_match.as_deref(),
    )
    .await;
    if let Err(e) = &answered {
        metrics.backup_not_transferred(Direction::Download, e.outcome());
    }
    answered.map_err(reject)
}

/// Finds the backup and answers with its bytes (metered until the last one is out) or a 304.
async fn answer_download(
    backups: &Backups,
    metrics: &Metrics,
    claims: &TokenClaims,
    (couple, id): (String, Option<String>),
    if_none_match: Option<&str>,
) -> Result<warp::reply::Response, ApiError> {
    let couple = CoupleId::parse(couple)?;
    let id = id.map(BackupId::parse).transpose()?;
    require_access(claims, &couple, None)?;
    let record = backups.find(&couple, id.as_ref()).await?;
    let etag = format!("\"{}\"", record.sha256);
    // Every header is checked before the body is opened, so no error follows a metered body.
    let text = |s: &str| {
        HeaderValue::from_str(s).map_err(|e| ApiError::Internal(format!("stored header: {e}")))
    };
    let mut headers = vec![
        (header::ETAG, text(&etag)?),
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, no-cache"),
        ),
        (
            header::HeaderName::from_static("x-backup-id"),
            text(record.id.as_str())?,
        ),
        (
            header::HeaderName::from_static("x-backup-created-at"),
            text(&rfc3339(record.created_at))?,
        ),
    ];
    if let Some(meta) = &record.meta {
        headers.push((header::HeaderName::from_static(META_HEADER), text(meta)?));
    }
    let mut response = if not_modified(if_none_match, &etag) {
        metrics.backup_not_transferred(Direction::Download, Outcome::NotModified);
        warp::reply::with_status(warp::reply::reply(), StatusCode::NOT_MODIFIED).into_response()
    } else {
        let blob = backups.open(&record).await?;
        headers.push((header::CONTENT_LENGTH, HeaderValue::from(blob.len)));
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        ));
        warp::reply::stream(DownloadBody::new(blob, metrics.clone())).into_response()
    };
    response.headers_mut().extend(headers);
    Ok(response)
}

async fn list(
    couple: String,
    backups: Backups,
    claims: TokenClaims,
) -> Result<warp::reply::Response, Rejection> {
    let couple = CoupleId::parse(couple).map_err(reject)?;
    require_access(&claims, &couple, None).map_err(reject)?;
    // One read of the backups for the list and the quota.
    let usage = backups.usage(&couple).await.map_err(reject)?;
    let body = BackupList {
        backups: usage.backups.iter().map(WireBackup::new).collect(),
        quota: WireQuota {
            limit_bytes: usage.limit,
            used_bytes: usage.used,
        },
        uploads: usage
            .uploads
            .iter()
            .map(|u| WireUpload {
                upload_id: &u.id,
                length: u.length,
                offset: u.offset,
                expires_at: u.expires_at.map(rfc3339),
            })
            .collect(),
    };
    Ok(warp::reply::json(&body).into_response())
}

/// A download's body, counted when it is dropped: complete once Content-Length bytes are out
/// (hyper stops polling there), failed if storage failed mid-stream, else interrupted.
///
/// A response body must be `Sync`; a stream polled only through `&mut` never needs a lock, so
/// wrapping it in a `Mutex` that is only ever reached with `get_mut` costs nothing.
struct DownloadBody {
    body: std::sync::Mutex<actors::ByteStream>,
    metrics: Metrics,
    started: Instant,
    len: u64,
    sent: u64,
    failed: bool,
}

impl DownloadBody {
    fn new(blob: actors::Blob, metrics: Metrics) -> Self {
        Self {
            body: std::sync::Mutex::new(blob.body),
            metrics,
            started: Instant::now(),
            len: blob.len,
            sent: 0,
            failed: false,
        }
    }
}

impl Drop for DownloadBody {
    fn drop(&mut self) {
        let d = Direction::Download;
        if self.failed {
            let failed = ApiError::Backup(actors::BackupError::StorageUnavailable);
            self.metrics.backup_not_transferred(d, failed.outcome());
        } else if self.sent == self.len {
            let took = self.started.elapsed();
            self.metrics.backup_completed(d, self.sent, took);
        } else {
            self.metrics
                .backup_not_transferred(d, Outcome::DownloadInterrupted);
        }
    }
}

impl Stream for DownloadBody {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        let polled = match this.body.get_mut() {
            Ok(stream) => stream.as_mut().poll_next(cx),
            // Never locked, so never poisoned; end the body if it somehow is.
            Err(_) => Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(chunk))) => this.sent += chunk.len() as u64,
            Poll::Ready(Some(Err(_))) => this.failed = true,
            _ => {}
        }
        polled
    }
}

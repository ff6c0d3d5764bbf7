//! Resumable backup uploads over tus 1.0.0 (docs/protocol.md §6.5), raw HTTP: the happy path
//! in chunks with checksums, creation-with-upload, every rule of the spec the server enforces
//! (412, 415, 409, 413, 460, 404, 410), the quota, expiry, access, and a PATCH cut off
//! mid-body. tests/clients/tus.test.mjs drives the same endpoint with tus-js-client.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, RequestBuilder, StatusCode};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::helpers::{Couple, Device, TestApp, assert_error, ok_json};

const COLLECTION: &str = "/api/backup/uploads";
const CHUNK: &str = "application/offset+octet-stream";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect()
}

/// A tus request of `device`: `Tus-Resumable` and the Bearer token.
fn tus(app: &TestApp, method: Method, path: &str, device: &Device) -> RequestBuilder {
    app.http
        .request(method, app.url(path))
        .header("tus-resumable", "1.0.0")
        .bearer_auth(&device.token)
}

/// Creates an upload of `length` bytes; returns its path (`Location`).
async fn create(app: &TestApp, device: &Device, length: usize, metadata: Option<&str>) -> String {
    let mut req = tus(app, Method::POST, COLLECTION, device).header("upload-length", length);
    if let Some(m) = metadata {
        req = req.header("upload-metadata", m);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");
    assert!(res.headers().contains_key("upload-expires"));
    res.headers()["location"].to_str().unwrap().to_owned()
}

async fn patch(
    app: &TestApp,
    device: &Device,
    at: &str,
    offset: usize,
    body: &[u8],
) -> reqwest::Response {
    patch_with(app, device, at, offset, body, &[]).await
}

/// A `PATCH` with more headers (`Upload-Checksum`, another `Content-Type`).
async fn patch_with(
    app: &TestApp,
    device: &Device,
    at: &str,
    offset: usize,
    body: &[u8],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut req = tus(app, Method::PATCH, at, device).header("upload-offset", offset);
    if !headers.iter().any(|(k, _)| *k == "content-type") {
        req = req.header("content-type", CHUNK);
    }
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.body(body.to_vec()).send().await.unwrap()
}

/// A couple with an upload of 1 000 bytes that has its first `bytes`.
async fn started(first: usize) -> (TestApp, Couple, String) {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let at = create(&app, &couple.a, 1_000, None).await;
    let res = patch(&app, &couple.a, &at, 0, &bytes(first)).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    (app, couple, at)
}

/// `GET /api/backups/:coupleId`.
async fn listed(app: &TestApp, couple: &Couple) -> serde_json::Value {
    let path = format!("/api/backups/{}", couple.id);
    ok_json(app.get_auth(&path, &couple.a).await, StatusCode::OK).await
}

/// An `Upload-Checksum` header.
fn checksum(algorithm: &str, digest: &[u8]) -> [(&'static str, String); 1] {
    [("upload-checksum", format!("{algorithm} {}", b64(digest)))]
}

/// The couple's latest backup, downloaded by device b, is `data`.
async fn assert_latest_is(app: &TestApp, couple: &Couple, data: &[u8]) {
    let res = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.bytes().await.unwrap().as_ref(), data);
}

/// `Upload-Offset` from a `HEAD`.
async fn offset(app: &TestApp, device: &Device, at: &str) -> u64 {
    let res = tus(app, Method::HEAD, at, device).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "HEAD {at}");
    assert_eq!(res.headers()["cache-control"], "no-store");
    res.headers()["upload-offset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_backup_uploaded_in_chunks_with_checksums_is_published_and_downloads_whole() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let res = app
        .http
        .request(Method::OPTIONS, app.url(COLLECTION))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(
        h["tus-extension"],
        "creation,creation-with-upload,termination,checksum,expiration"
    );
    assert_eq!(h["tus-max-size"], "104857600");
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256");

    let data = bytes(700_000);
    let meta = b64(br#"{"v":2}"#);
    let at = create(
        &app,
        &couple.a,
        data.len(),
        Some(&format!("meta {meta},filename {}", b64(b"x.bin"))),
    )
    .await;
    assert_eq!(offset(&app, &couple.a, &at).await, 0);
    let (first, rest) = data.split_at(300_000);
    let (second, third) = rest.split_at(300_000);
    let res = patch_with(
        &app,
        &couple.a,
        &at,
        0,
        first,
        &checksum("sha1", &Sha1::digest(first)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["upload-offset"], "300000");
    assert!(res.headers().contains_key("upload-expires"));
    // The other device of the couple continues it.
    let res = patch_with(
        &app,
        &couple.b,
        &at,
        300_000,
        second,
        &checksum("sha256", &Sha256::digest(second)),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&app, &couple.b, &at).await, 600_000);
    let res = patch(&app, &couple.a, &at, 600_000, third).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["upload-offset"], "700000");
    assert!(!res.headers().contains_key("upload-expires"));
    let backup_id = res.headers()["x-backup-id"].to_str().unwrap().to_owned();

    let res = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-backup-id"], backup_id.as_str());
    assert_eq!(res.headers()["x-backup-meta"], r#"{"v":2}"#);
    assert_eq!(res.bytes().await.unwrap().as_ref(), data.as_slice());
    let list = listed(&app, &couple).await;
    assert_eq!(list["backups"][0]["uploadedBy"], "a");
    assert_eq!(list["uploads"], serde_json::json!([]));
    assert_eq!(list["quota"]["usedBytes"], 700_000);
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    // Published: asked again (a lost answer, a retry), the upload says so, and nothing is
    // published twice.
    let res = tus(&app, Method::HEAD, &at, &couple.a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["upload-offset"], "700000");
    assert_eq!(res.headers()["x-backup-id"], backup_id.as_str());
    assert!(!res.headers().contains_key("upload-expires"));
    let res = patch(&app, &couple.b, &at, 700_000, &[]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(res.headers()["x-backup-id"], backup_id.as_str());
    assert_eq!(
        listed(&app, &couple).await["backups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    app.stop().await;
}

#[tokio::test]
async fn creation_with_upload_checks_the_whole_backups_sha256() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let data = bytes(50_000);
    let good = b64(hex::encode(Sha256::digest(&data)).as_bytes());
    let bad = b64(hex::encode(Sha256::digest(b"other")).as_bytes());
    for (sha, published) in [(bad, false), (good, true)] {
        let res = tus(&app, Method::POST, COLLECTION, &couple.a)
            .header("upload-length", data.len())
            .header("upload-metadata", format!("sha256 {sha}"))
            .header("content-type", CHUNK)
            .body(data.clone())
            .send()
            .await
            .unwrap();
        if published {
            assert_eq!(res.status(), StatusCode::CREATED);
            assert_eq!(res.headers()["upload-offset"], "50000");
            assert!(res.headers().contains_key("x-backup-id"));
        } else {
            assert_error(res, StatusCode::UNPROCESSABLE_ENTITY, "checksum_mismatch").await;
            let list = listed(&app, &couple).await;
            assert_eq!(list["backups"], serde_json::json!([]), "nothing published");
            assert_eq!(list["uploads"], serde_json::json!([]), "nothing kept");
        }
    }
    assert_latest_is(&app, &couple, &data).await;
    app.stop().await;
}

#[tokio::test]
async fn every_tus_rule_answers_its_status_and_writes_nothing() {
    let (app, couple, at) = started(100).await;

    // 412 without Tus-Resumable (or another version), with the version the server speaks.
    for version in [None, Some("0.2.2")] {
        let mut req = app.http.head(app.url(&at)).bearer_auth(&couple.a.token);
        if let Some(v) = version {
            req = req.header("tus-resumable", v);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
        assert_eq!(res.headers()["tus-version"], "1.0.0");
    }
    // 415: a chunk must say what it is.
    let res = patch_with(
        &app,
        &couple.a,
        &at,
        100,
        &bytes(10),
        &[("content-type", "application/octet-stream".to_owned())],
    )
    .await;
    assert_error(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    // 409: not the upload's offset.
    let res = patch(&app, &couple.a, &at, 50, &bytes(10)).await;
    assert_eq!(res.headers()["tus-resumable"], "1.0.0");
    assert_error(res, StatusCode::CONFLICT, "offset_mismatch").await;
    // 413: past Upload-Length.
    let res = patch(&app, &couple.a, &at, 100, &bytes(901)).await;
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "upload_length_exceeded").await;
    // 460: the chunk does not match its checksum.
    let res = patch_with(
        &app,
        &couple.a,
        &at,
        100,
        &bytes(10),
        &checksum("sha1", &Sha1::digest(b"else")),
    )
    .await;
    assert_eq!(res.status().as_u16(), 460);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "chunk_checksum_mismatch");
    // 400: an algorithm the server does not offer.
    let res = patch_with(
        &app,
        &couple.a,
        &at,
        100,
        &bytes(10),
        &checksum("md5", b"0123456789abcdef"),
    )
    .await;
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    assert_eq!(
        offset(&app, &couple.a, &at).await,
        100,
        "none of them wrote anything"
    );

    // Another couple's token: 404, as if it did not exist.
    let other = app.pair().await;
    let res = tus(&app, Method::HEAD, &at, &other.a).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = patch(&app, &other.a, &at, 100, &bytes(10)).await;
    assert_error(res, StatusCode::NOT_FOUND, "upload_not_found").await;

    // Termination, here through X-HTTP-Method-Override; then 404.
    let res = tus(&app, Method::POST, &at, &couple.b)
        .header("x-http-method-override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = patch(&app, &couple.a, &at, 100, &bytes(10)).await;
    assert_error(res, StatusCode::NOT_FOUND, "upload_not_found").await;
    app.stop().await;
}

#[tokio::test]
async fn creation_refuses_a_length_over_the_limit_or_missing_and_bad_metadata() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let res = tus(&app, Method::POST, COLLECTION, &couple.a)
        .header("upload-length", 104_857_601)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "backup_too_large").await;
    for length in [None, Some(0)] {
        let mut req = tus(&app, Method::POST, COLLECTION, &couple.a);
        if let Some(n) = length {
            req = req.header("upload-length", n);
        }
        let res = req.send().await.unwrap();
        assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    let res = tus(&app, Method::POST, COLLECTION, &couple.a)
        .header("upload-length", 10)
        .header("upload-metadata", format!("meta {}", b64(b"not json")))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::BAD_REQUEST, "invalid_request").await;

    app.stop().await;
}

#[tokio::test]
async fn an_unfinished_upload_expires_and_its_bytes_go() {
    let (app, couple, at) = started(400).await;
    let blobs_before = app.blobs.list().await.unwrap().len();
    app.clock.advance(Duration::from_hours(24));
    let res = patch(&app, &couple.a, &at, 400, &bytes(10)).await;
    assert_error(res, StatusCode::GONE, "upload_expired").await;
    assert_eq!(app.backups.expire_uploads().await.unwrap(), 1);
    let res = tus(&app, Method::HEAD, &at, &couple.a)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        app.blobs.list().await.unwrap().len(),
        blobs_before - 1,
        "its part is deleted"
    );
    app.stop().await;
}

#[tokio::test]
async fn the_quota_counts_kept_backups_and_unfinished_uploads() {
    let app = TestApp::spawn_with(|c| {
        c.settings.backup_max_bytes = 1_000;
        c.settings.backup_quota = 2_500;
    })
    .await;
    let couple = app.pair().await;
    create(&app, &couple.a, 1_000, None).await;
    create(&app, &couple.b, 1_000, None).await;
    let res = tus(&app, Method::POST, COLLECTION, &couple.a)
        .header("upload-length", 1_000)
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded").await;
    // A plain upload is held to it too, once its size is known.
    let res = app.upload(&couple.a, bytes(600), &[]).await;
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded").await;
    let list = listed(&app, &couple).await;
    assert_eq!(
        list["quota"],
        serde_json::json!({ "limitBytes": 2_500, "usedBytes": 2_000 })
    );
    assert_eq!(list["uploads"].as_array().unwrap().len(), 2);
    assert_eq!(list["uploads"][0]["offset"], 0);
    assert_eq!(list["backups"], serde_json::json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_patch_cut_off_mid_body_keeps_what_arrived_and_the_upload_resumes_there() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let data = bytes(200_000);
    let at = create(&app, &couple.a, data.len(), None).await;
    {
        let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "PATCH {at} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntus-resumable: 1.0.0\r\nupload-offset: 0\r\ncontent-type: {CHUNK}\r\ncontent-length: {}\r\n\r\n",
            couple.a.token,
            data.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&data[..70_000]).await.unwrap();
        // The connection drops: the server sees the body end early.
    }
    // The server keeps the 70 000 bytes once it has read them (bounded wait).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let kept = loop {
        let now = offset(&app, &couple.a, &at).await;
        if now > 0 || tokio::time::Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kept, 70_000);
    let res = patch(&app, &couple.a, &at, 70_000, &data[70_000..]).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_latest_is(&app, &couple, &data).await;
    app.stop().await;
}

#[tokio::test]
async fn of_two_patches_at_one_offset_exactly_one_is_kept() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let at = create(&app, &couple.a, 1_000, None).await;
    let chunk = bytes(100);
    let (one, two) = tokio::join!(
        patch(&app, &couple.a, &at, 0, &chunk),
        patch(&app, &couple.b, &at, 0, &chunk),
    );
    let mut statuses = [one.status(), two.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::NO_CONTENT, StatusCode::CONFLICT]);
    assert_eq!(offset(&app, &couple.a, &at).await, 100);
    app.stop().await;
}

#[tokio::test]
async fn browsers_may_send_and_read_the_tus_headers() {
    const APP: &str = "https://app.example";
    let app = TestApp::spawn_with(|c| {
        c.allowed_origins = our_memories::config::AllowedOrigins::parse(APP);
    })
    .await;
    let couple = app.pair().await;
    let res = app
        .http
        .request(Method::OPTIONS, app.url(COLLECTION))
        .header("origin", APP)
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "tus-resumable, upload-offset, upload-checksum",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let h = res.headers();
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("PATCH")
    );
    for name in [
        "tus-resumable",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-checksum",
    ] {
        assert!(
            h["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains(name),
            "{name}"
        );
    }
    let res = tus(&app, Method::POST, COLLECTION, &couple.a)
        .header("origin", APP)
        .header("upload-length", 10)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    for name in [
        "location",
        "tus-resumable",
        "upload-offset",
        "upload-expires",
    ] {
        assert!(exposed.contains(name), "{name} in {exposed}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_upload_takes_a_bounded_number_of_parts() {
    let app = TestApp::spawn_with(|c| c.settings.upload_max_parts = 2).await;
    let couple = app.pair().await;
    let at = create(&app, &couple.a, 1_000, None).await;
    for n in 0..2 {
        let res = patch(&app, &couple.a, &at, n * 10, &bytes(10)).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
    let res = patch(&app, &couple.a, &at, 20, &bytes(10)).await;
    assert_error(res, StatusCode::BAD_REQUEST, "too_many_parts").await;
    assert_eq!(offset(&app, &couple.a, &at).await, 20);
    app.stop().await;
}

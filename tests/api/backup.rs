//! Encrypted backups over HTTP: round trip, conditional GET, listing, retention, limits,
//! checksums, interrupted uploads and access control.

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{TestApp, assert_error, ok_json, partial_upload, wait_for_partial_upload};

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[tokio::test]
async fn upload_then_download_the_latest_with_etag_and_metadata() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let sha = sha256_hex(&body);
    let meta = r#"{"v":1,"device":"a"}"#;
    let res = app
        .upload(
            &couple.a,
            body.clone(),
            &[("x-backup-meta", meta), ("x-content-sha256", &sha)],
        )
        .await;
    let created = ok_json(res, StatusCode::CREATED).await;
    assert_eq!(
        (created["size"].clone(), created["sha256"].clone()),
        (json!(300_000), json!(sha))
    );
    assert!(created["backupId"].as_str().is_some());
    assert!(created["createdAt"].as_str().unwrap().ends_with('Z'));

    // The other device of the couple downloads it.
    let res = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, format!("\"{sha}\""));
    assert_eq!(res.headers()["content-length"], "300000");
    assert_eq!(res.headers()["x-backup-meta"], meta);
    assert_eq!(
        res.headers()["x-backup-id"],
        created["backupId"].as_str().unwrap()
    );
    assert_eq!(res.bytes().await.unwrap().as_ref(), body.as_slice());

    let res = app
        .http
        .get(app.url(&format!("/api/backup/{}", couple.id)))
        .bearer_auth(&couple.b.token)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(res.headers()["etag"].to_str().unwrap(), etag);
    assert!(res.bytes().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test]
async fn retention_keeps_the_newest_versions_and_each_can_be_fetched() {
    let app = TestApp::spawn_with(|c| c.settings.backup_retention = 2).await;
    let couple = app.pair().await;
    let mut ids = Vec::new();
    for i in 0..3u8 {
        app.clock.advance(std::time::Duration::from_secs(1));
        let created = ok_json(
            app.upload(&couple.a, vec![i; 10], &[]).await,
            StatusCode::CREATED,
        )
        .await;
        ids.push(created["backupId"].as_str().unwrap().to_owned());
    }
    let list = ok_json(
        app.get_auth(&format!("/api/backups/{}", couple.id), &couple.b)
            .await,
        StatusCode::OK,
    )
    .await;
    let listed: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backupId"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [ids[2].as_str(), ids[1].as_str()],
        "newest first, oldest deleted"
    );
    let res = app
        .get_auth(&format!("/api/backup/{}/{}", couple.id, ids[1]), &couple.a)
        .await;
    assert_eq!(res.bytes().await.unwrap().as_ref(), &[1u8; 10]);
    let res = app
        .get_auth(&format!("/api/backup/{}/{}", couple.id, ids[0]), &couple.a)
        .await;
    assert_error(res, StatusCode::NOT_FOUND, "backup_not_found").await;
    let latest = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.a)
        .await;
    assert_eq!(latest.bytes().await.unwrap().as_ref(), &[2u8; 10]);
    assert_eq!(
        app.stop_and_count_blobs().await,
        (2, 0),
        "the deleted version's blob is gone too"
    );
}

#[tokio::test]
async fn over_the_limit_is_413_and_nothing_is_kept() {
    let app = TestApp::spawn_with(|c| c.settings.backup_max_bytes = 64 * 1024).await;
    let couple = app.pair().await;
    // Announced too large: refused before reading.
    assert_error(
        app.upload(&couple.a, vec![0; 64 * 1024 + 1], &[]).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "backup_too_large",
    )
    .await;
    // Chunked (no Content-Length): cut off while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![7u8; 8 * 1024])).collect();
    let res = app
        .http
        .post(app.url("/api/backup"))
        .bearer_auth(&couple.a.token)
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::PAYLOAD_TOO_LARGE, "backup_too_large").await;
    assert_error(
        app.get_auth(&format!("/api/backup/{}", couple.id), &couple.a)
            .await,
        StatusCode::NOT_FOUND,
        "backup_not_found",
    )
    .await;
    assert_eq!(
        app.stop_and_count_blobs().await,
        (0, 0),
        "nothing kept, nothing half-written"
    );
}

#[tokio::test]
async fn a_checksum_mismatch_is_422_and_nothing_is_kept() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let wrong = sha256_hex(b"something else");
    assert_error(
        app.upload(
            &couple.a,
            b"ciphertext".to_vec(),
            &[("x-content-sha256", &wrong)],
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "checksum_mismatch",
    )
    .await;
    assert_error(
        app.upload(&couple.a, b"x".to_vec(), &[("x-content-sha256", "nothex")])
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    assert_error(
        app.upload(&couple.a, b"x".to_vec(), &[("x-backup-meta", "{not json")])
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let big_meta = format!("\"{}\"", "m".repeat(4 * 1024));
    assert_error(
        app.upload(&couple.a, b"x".to_vec(), &[("x-backup-meta", &big_meta)])
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    )
    .await;
    let list = ok_json(
        app.get_auth(&format!("/api/backups/{}", couple.id), &couple.a)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["backups"], json!([]));
    assert_eq!(
        app.stop_and_count_blobs().await,
        (0, 0),
        "nothing kept, nothing half-written"
    );
}

#[tokio::test]
async fn an_interrupted_upload_never_replaces_the_latest() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let first = ok_json(
        app.upload(&couple.a, b"version one".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    // A raw client announces 1 MiB, sends half, and vanishes.
    let tcp = partial_upload(app.addr, &couple.b.token, 1 << 20, 512 * 1024).await;
    drop(tcp);
    let latest = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    assert_eq!(
        latest.headers()["x-backup-id"],
        first["backupId"].as_str().unwrap()
    );
    assert_eq!(latest.bytes().await.unwrap().as_ref(), b"version one");
    // Graceful stop waited for the aborted request: its partial write is gone too.
    assert_eq!(app.stop_and_count_blobs().await, (1, 0));
}

#[tokio::test]
async fn backups_are_only_for_the_couples_own_devices() {
    let app = TestApp::spawn().await;
    let one = app.pair().await;
    let two = app.pair().await;
    ok_json(
        app.upload(&one.a, b"secret".to_vec(), &[]).await,
        StatusCode::CREATED,
    )
    .await;
    for path in [
        format!("/api/backup/{}", one.id),
        format!("/api/backups/{}", one.id),
    ] {
        assert_error(
            app.get_auth(&path, &two.a).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        )
        .await;
        let res = app.http.get(app.url(&path)).send().await.unwrap();
        assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    }
    let res = app
        .http
        .post(app.url("/api/backup"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_error(res, StatusCode::UNAUTHORIZED, "missing_token").await;
    // Couple two has no backup of its own.
    assert_error(
        app.get_auth(&format!("/api/backup/{}", two.id), &two.a)
            .await,
        StatusCode::NOT_FOUND,
        "backup_not_found",
    )
    .await;
    let body: Value = app
        .get_auth(&format!("/api/backups/{}", two.id), &two.b)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["backups"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_100_mib_backup_round_trips() {
    let app = TestApp::spawn().await;
    let couple = app.pair().await;
    let body: Vec<u8> = (0..100 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let sha = sha256_hex(&body);
    let res = app
        .upload(&couple.a, body, &[("x-content-sha256", &sha)])
        .await;
    let created = ok_json(res, StatusCode::CREATED).await;
    assert_eq!(created["size"], 100 * 1024 * 1024);
    let res = app
        .get_auth(&format!("/api/backup/{}", couple.id), &couple.b)
        .await;
    let mut hasher = Sha256::new();
    let mut stream = res.bytes_stream();
    let mut total = 0usize;
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(total, 100 * 1024 * 1024);
    assert_eq!(hex::encode(hasher.finalize()), sha);
    app.stop().await;
}

#[tokio::test]
async fn a_stalled_upload_is_dropped_with_408_and_nothing_is_kept() {
    let app = TestApp::spawn_with(|c| {
        c.settings.backup_idle_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let couple = app.pair().await;
    let mut tcp = partial_upload(app.addr, &couple.a.token, 1 << 20, 1000).await;
    let mut response = Vec::new();
    tokio::time::timeout(
        crate::helpers::WAIT,
        tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut response),
    )
    .await
    .expect("the server answers and closes")
    .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("upload_too_slow"), "{text}");
    assert_eq!(app.stop_and_count_blobs().await, (0, 0));
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_cap_get_503() {
    if crate::helpers::Backend::from_env() != crate::helpers::Backend::Embedded {
        return; // the wait below watches the embedded store's partial files
    }
    let app = TestApp::spawn_with(|c| c.settings.backup_max_concurrent = 1).await;
    let couple = app.pair().await;
    let first = partial_upload(app.addr, &couple.a.token, 1 << 20, 1 << 19).await;
    // Wait until the first upload holds the only slot: its bytes reach the disk.
    wait_for_partial_upload(app.data_dir(), 1).await;
    assert_error(
        app.upload(&couple.b, b"second".to_vec(), &[]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "uploads_busy",
    )
    .await;
    drop(first); // the client gives up; the slot and the partial file are released
    assert_eq!(app.stop_and_count_blobs().await, (0, 0));
}

#[tokio::test]
async fn shutdown_is_bounded_even_with_an_upload_in_flight() {
    let app = TestApp::spawn_with(|c| c.shutdown_timeout = std::time::Duration::from_secs(1)).await;
    let couple = app.pair().await;
    let _stalled = partial_upload(app.addr, &couple.a.token, 1 << 20, 1000).await;
    if crate::helpers::Backend::from_env() == crate::helpers::Backend::Embedded {
        // Wait until the upload is really in flight: its partial file exists.
        wait_for_partial_upload(app.data_dir(), 0).await;
    }
    let started = std::time::Instant::now();
    app.stop().await; // would wait the 60 s idle timeout if shutdown were unbounded
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

//! `DATA_DIR` on a filesystem that fills up: writes answer 503 and `/ready` says so, nothing
//! acknowledged is lost, no partial upload is left behind, and once space is freed the
//! server writes again by itself, without a restart. Uses a real, small tmpfs (needs root).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, Couple, TestApp, assert_error, ok_json};

/// The filesystem's size: room for the store and a few small backups, little enough to fill
/// in a moment.
const TMPFS_SIZE: &str = "16m";

/// A tmpfs mounted over a fresh temporary directory, unmounted when dropped (also when the
/// test fails; lazily, since a server that is still stopping may hold its files open).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why it cannot: a loud skip on a developer machine without the
    /// right to mount, a failure under CI (which runs as root).
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    !std::env::var("CI").is_ok_and(|v| v == "true"),
                    "cannot mount a tmpfs ({why}): CI runs as root and never skips this test"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs ({why}); run as root to test a full disk");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem with one file until the kernel says it is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler file");
    let chunk = vec![0u8; 64 * 1024];
    // Large writes first, then single bytes, so not even a page is left.
    for size in [chunk.len(), 1] {
        loop {
            match file.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
    path
}

fn partial_uploads(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("blobs/.partial"))
        .expect("partial upload directory")
        .count()
}

/// Repeats a write until it is refused with 503 `storage_unavailable` (bounded); any other
/// answer than success or that fails the test.
async fn refused(mut write: impl AsyncFnMut() -> reqwest::Response) {
    for _ in 0..2000 {
        let res = write().await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            assert_error(res, StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable").await;
            return;
        }
        assert!(res.status().is_success(), "{}", res.status());
    }
    panic!("a full disk never refused the write");
}

async fn ready(app: &TestApp) -> StatusCode {
    app.http
        .get(app.url("/ready"))
        .send()
        .await
        .expect("request sent")
        .status()
}

/// On the full disk: every kind of write is refused with 503, an upload leaves nothing
/// behind, and `/ready` and `/health` say so.
async fn refuse_every_write(app: &TestApp, couple: &Couple, data_dir: &Path) {
    // Every kind of write is refused with 503. The store may still have free pages inside its
    // file, and after a refusal it reopens and finds the failed write's pages free, so a few
    // small writes can still fit: each kind is tried until refused.
    refused(async || app.initiate("a", None).await).await;
    assert_eq!(ready(app).await, StatusCode::SERVICE_UNAVAILABLE);
    refused(async || {
        app.post_signal(&couple.id, &couple.a, "b", json!("during"))
            .await
    })
    .await;
    refused(async || app.upload(&couple.a, vec![1u8; 256 * 1024], &[]).await).await;
    assert_eq!(
        partial_uploads(data_dir),
        0,
        "a failed upload left a partial file"
    );
    // Still not ready, however often asked: the probe behind /ready needs free space.
    assert_eq!(ready(app).await, StatusCode::SERVICE_UNAVAILABLE);
    let health: Value = app
        .http
        .get(app.url("/health"))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON body");
    assert_eq!(health["status"], "degraded", "{health}");
}

#[tokio::test]
async fn a_full_disk_means_503_and_not_ready_and_writes_resume_by_themselves_once_space_is_freed() {
    // The embedded store is the one on DATA_DIR; one backend pass is enough.
    if Backend::from_env() != Backend::Embedded {
        return;
    }
    let Some(disk) = Tmpfs::mount() else {
        return;
    };
    let mut secret = None;
    let app = TestApp::spawn_with(|c| {
        disk.path().clone_into(&mut c.data_dir);
        c.rate.enabled = false;
        secret = Some(c.secret.clone());
    })
    .await;
    let couple = app.pair().await;
    // Acknowledged before the disk fills: a stored signal for offline `b`, and a backup.
    let stored = ok_json(
        app.post_signal(&couple.id, &couple.a, "b", json!("before"))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    ok_json(
        app.upload(&couple.a, vec![7u8; 100 * 1024], &[]).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(ready(&app).await, StatusCode::OK);

    let filler = fill(disk.path());
    refuse_every_write(&app, &couple, disk.path()).await;

    std::fs::remove_file(&filler).expect("free the space");
    // No restart: the store recovers by itself, within seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready(&app).await != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "/ready stayed 503 after space was freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok_json(app.initiate("a", None).await, StatusCode::CREATED).await;
    ok_json(
        app.post_signal(&couple.id, &couple.a, "b", json!("after"))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let after = ok_json(
        app.upload(&couple.a, vec![2u8; 64 * 1024], &[]).await,
        StatusCode::CREATED,
    )
    .await;
    let after = after["backupId"].as_str().expect("backupId").to_owned();
    app.stop().await;

    // What was acknowledged is on disk: a new server on the same directory and secret sees
    // the devices (their tokens work), the signals and the backups.
    let app = TestApp::spawn_with(|c| {
        disk.path().clone_into(&mut c.data_dir);
        c.secret = secret.expect("the first server's secret");
    })
    .await;
    let body = ok_json(
        app.get_signals(&couple.id, "b", Some(&couple.b.token), None)
            .await,
        StatusCode::OK,
    )
    .await;
    let payloads: Vec<&Value> = body["signals"]
        .as_array()
        .expect("signals")
        .iter()
        .map(|s| &s["signalPayload"])
        .collect();
    // The first and the last, and in between those "during" ones that were accepted.
    assert_eq!(payloads.first(), Some(&&json!("before")), "{body}");
    assert_eq!(payloads.last(), Some(&&json!("after")), "{body}");
    assert!(
        payloads[1..payloads.len() - 1]
            .iter()
            .all(|p| **p == json!("during"))
    );
    assert_eq!(body["signals"][0]["seq"], stored["seq"]);
    // The backup uploaded once the disk had room again is complete.
    let got = app
        .get_auth(&format!("/api/backup/{}/{after}", couple.id), &couple.b)
        .await;
    assert_eq!(got.status(), StatusCode::OK);
    let got = got.bytes().await.expect("body");
    assert!(
        got.len() == 64 * 1024 && got.iter().all(|b| *b == 2),
        "{} bytes",
        got.len()
    );
    app.stop().await;
}

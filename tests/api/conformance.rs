//! The storage conformance suite against the real MongoDB-protocol server (metadata, GridFS)
//! and the real S3 server that `.ci/test` starts. The embedded backends run the same suite in
//! `actors/tests/conformance.rs`.

use std::time::Duration;

use actors::store::conformance::{blob_suite, store_suite};
use our_memories::store::mongo::{GridFsBlobs, MongoStore};
use our_memories::store::s3::S3Blobs;

use crate::helpers::{create_bucket, s3_settings, service_env, unique_name};

const TIMEOUT: Duration = Duration::from_secs(10);

async fn mongo() -> Option<MongoStore> {
    let uri = service_env("OM_TEST_MONGODB_URI")?;
    let db = unique_name("om_test_");
    Some(
        MongoStore::connect(&uri, Some(&db), TIMEOUT)
            .await
            .expect("MongoDB reachable"),
    )
}

#[tokio::test]
async fn mongodb_store_conforms() {
    let Some(store) = mongo().await else { return };
    store_suite(&store).await;
}

#[tokio::test]
async fn gridfs_blobs_conform() {
    let Some(store) = mongo().await else { return };
    blob_suite(&GridFsBlobs::new(&store).await.expect("indexes")).await;
}

#[tokio::test]
async fn s3_blobs_conform() {
    let Some(settings) = s3_settings(&unique_name("om-test-")) else {
        return;
    };
    create_bucket(&settings).await;
    blob_suite(
        &S3Blobs::connect(&settings, TIMEOUT)
            .await
            .expect("S3 reachable"),
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_mongodb_fails_fast_with_a_clear_message() {
    // Nothing listens on port 9 (discard) on loopback in the test environment.
    let started = std::time::Instant::now();
    let err = MongoStore::connect("mongodb://127.0.0.1:9", Some("x"), Duration::from_secs(1))
        .await
        .err()
        .expect("connect fails");
    assert!(err.to_string().contains("cannot reach MongoDB"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded wait");
}

#[tokio::test]
async fn a_missing_bucket_is_reported_at_start() {
    let Some(settings) = s3_settings(&unique_name("om-missing-")) else {
        return;
    };
    let err = S3Blobs::connect(&settings, TIMEOUT)
        .await
        .err()
        .expect("bucket check fails");
    assert!(err.to_string().contains("is not reachable"), "{err}");
}

//! S3 backend for backup blobs (any S3-compatible server with `S3_ENDPOINT` and path-style
//! addressing). Uploads stream through a multipart upload in 5 MiB parts (S3's minimum), so a
//! 100 MiB backup never sits in memory; the object becomes visible only when the upload is
//! completed, and any failure aborts it.

use std::time::Duration;

use actors::store::{Blob, BlobEntry, BlobError, BlobKey, BlobStore, ByteStream, StoreError, fill};
use actors::{BackupId, CoupleId, Timestamp};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls;
use bytes::BytesMut;

use crate::config::S3Settings;

/// Size of each multipart part: S3's minimum, so memory per upload stays near 5 MiB.
pub const PART_SIZE: usize = 5 * 1024 * 1024;
/// Every backup object lives under this prefix: `backups/<couple>/<backup>`.
const PREFIX: &str = "backups/";

fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("s3 {what}: {e}"))
}

/// Backup blobs in an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct S3Blobs {
    client: Client,
    bucket: String,
}

/// An S3 client for `settings`: rustls with ring, static credentials, no AWS config files,
/// every connection and read bounded by `timeout`.
#[must_use]
pub fn client(settings: &S3Settings, timeout: Duration) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(settings.region.clone()))
        .credentials_provider(Credentials::new(
            &settings.access_key,
            &settings.secret_key,
            settings.session_token.clone(),
            None,
            "environment",
        ))
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(timeout)
                .read_timeout(timeout)
                .build(),
        );
    if let Some(endpoint) = &settings.endpoint {
        conf = conf.endpoint_url(endpoint).force_path_style(true);
    }
    Client::from_conf(conf.build())
}

impl S3Blobs {
    /// Connects and checks that the bucket is there (the server never creates it).
    pub async fn connect(settings: &S3Settings, timeout: Duration) -> Result<Self, StoreError> {
        let blobs = Self {
            client: client(settings, timeout),
            bucket: settings.bucket.clone(),
        };
        blobs.ping().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "S3 bucket {:?} is not reachable: {e}",
                settings.bucket
            ))
        })?;
        Ok(blobs)
    }

    fn object(key: &BlobKey) -> String {
        format!("{PREFIX}{}/{}", key.couple, key.backup)
    }

    /// Streams `body` as a multipart upload whose first part is `first`.
    async fn multipart(
        &self,
        object: &str,
        first: BytesMut,
        body: &mut ByteStream,
    ) -> Result<(), BlobError> {
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| {
                unavailable(
                    "create multipart upload",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        let upload_id = upload
            .upload_id()
            .ok_or_else(|| unavailable("create multipart upload", "no upload id"))?
            .to_owned();
        let result = self.upload_parts(object, &upload_id, first, body).await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        object: &str,
        upload_id: &str,
        first: BytesMut,
        body: &mut ByteStream,
    ) -> Result<(), BlobError> {
        let mut parts = Vec::new();
        let mut buf = first;
        let mut done = false;
        while !done {
            done = fill(body, &mut buf, PART_SIZE).await?;
            if buf.is_empty() && !parts.is_empty() {
                break;
            }
            let number = i32::try_from(parts.len() + 1).unwrap_or(i32::MAX);
            let part = buf.split().freeze();
            let sent = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .part_number(number)
                .body(S3Body::from(part))
                .send()
                .await
                .map_err(|e| {
                    unavailable("upload part", aws_sdk_s3::error::DisplayErrorContext(e))
                })?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(sent.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                unavailable(
                    "complete multipart upload",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                )
            })?;
        Ok(())
    }

    /// Aborts multipart uploads started before `older_than` (all when `None`): leftovers of
    /// uploads cut off by a crash, which S3 would otherwise keep (and bill) forever.
    async fn abort_stale_uploads(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        // Page through every unfinished upload (1,000 per page) before aborting any.
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(PREFIX)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| {
                    unavailable(
                        "list multipart uploads",
                        aws_sdk_s3::error::DisplayErrorContext(e),
                    )
                })?;
            uploads.extend(page.uploads().iter().cloned());
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() && id_marker.is_none() {
                break;
            }
        }
        let mut aborted = 0;
        for u in &uploads {
            let started = u
                .initiated()
                .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
                .map_or(Timestamp(0), Timestamp);
            if older_than.is_some_and(|cutoff| started >= cutoff) {
                continue;
            }
            if let (Some(key), Some(id)) = (u.key(), u.upload_id()) {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(id)
                    .send()
                    .await
                    .map_err(|e| {
                        unavailable(
                            "abort multipart upload",
                            aws_sdk_s3::error::DisplayErrorContext(e),
                        )
                    })?;
                aborted += 1;
            }
        }
        Ok(aborted)
    }
}

#[async_trait]
impl BlobStore for S3Blobs {
    fn backend(&self) -> &'static str {
        "s3"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("head bucket", aws_sdk_s3::error::DisplayErrorContext(e)))
    }

    async fn put(&self, key: &BlobKey, mut body: ByteStream) -> Result<(), BlobError> {
        let object = Self::object(key);
        // Small blobs (under one part) are one PUT; larger ones a multipart upload.
        let mut buf = BytesMut::new();
        if fill(&mut body, &mut buf, PART_SIZE).await? {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(S3Body::from(buf.freeze()))
                .send()
                .await
                .map_err(|e| {
                    unavailable("put object", aws_sdk_s3::error::DisplayErrorContext(e))
                })?;
            return Ok(());
        }
        self.multipart(&object, buf, &mut body).await
    }

    async fn get(&self, key: &BlobKey) -> Result<Option<Blob>, StoreError> {
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(Self::object(key))
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e)
                if e.as_service_error().is_some_and(
                    aws_sdk_s3::operation::get_object::GetObjectError::is_no_such_key,
                ) =>
            {
                return Ok(None);
            }
            Err(e) => {
                return Err(unavailable(
                    "get object",
                    aws_sdk_s3::error::DisplayErrorContext(e),
                ));
            }
        };
        let len = out
            .content_length()
            .and_then(|l| u64::try_from(l).ok())
            .ok_or_else(|| unavailable("get object", "no content length"))?;
        let body = futures_util::stream::unfold(Some(out.body), |body| async move {
            let mut body = body?;
            match body.try_next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), Some(body))),
                Ok(None) => None,
                Err(e) => Some((Err(std::io::Error::other(e)), None)),
            }
        });
        Ok(Some(Blob {
            len,
            body: Box::pin(body),
        }))
    }

    async fn delete(&self, key: &BlobKey) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(Self::object(key))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| unavailable("delete object", aws_sdk_s3::error::DisplayErrorContext(e)))
    }

    async fn clean_partial_writes(
        &self,
        older_than: Option<Timestamp>,
    ) -> Result<usize, StoreError> {
        self.abort_stale_uploads(older_than).await
    }

    async fn list(&self) -> Result<Vec<BlobEntry>, StoreError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(PREFIX)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                unavailable("list objects", aws_sdk_s3::error::DisplayErrorContext(e))
            })?;
            for obj in page.contents() {
                let Some((couple, backup)) = obj
                    .key()
                    .and_then(|k| k.strip_prefix(PREFIX))
                    .and_then(|k| k.split_once('/'))
                else {
                    continue;
                };
                let (Ok(couple), Ok(backup)) = (CoupleId::parse(couple), BackupId::parse(backup))
                else {
                    continue;
                };
                let modified = obj
                    .last_modified()
                    .and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
                    .map_or(Timestamp(0), Timestamp);
                out.push(BlobEntry {
                    key: BlobKey { couple, backup },
                    modified,
                });
            }
        }
        Ok(out)
    }
}

//! S3 adapter of the object storage port (aws-sdk-s3).

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use geonex_shared::config::S3UsageSettings;

use super::{ListPage, ObjectStore, StorageError, StorageErrorKind};

/// S3's largest page; also asked for explicitly because some S3-compatible
/// servers default to smaller pages.
const PAGE_SIZE: i32 = 1000;

#[derive(Clone)]
pub struct S3ObjectStore {
    client: Client,
    endpoint: Option<String>,
}

impl S3ObjectStore {
    /// Builds the client from an SDK configuration, with the settings' endpoint
    /// and path-style addressing applied.
    pub fn with_config(config: &aws_config::SdkConfig, settings: &S3UsageSettings) -> Self {
        let mut builder = aws_sdk_s3::config::Builder::from(config).force_path_style(settings.force_path_style);
        if let Some(url) = &settings.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        let endpoint = settings.endpoint_url.clone().or_else(|| config.endpoint_url().map(str::to_owned));
        Self { client: Client::from_conf(builder.build()), endpoint }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Which S3 errors a scan records as what. Any 5xx and throttling is transient.
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> StorageErrorKind {
    match code {
        Some("NoSuchBucket") => StorageErrorKind::NoSuchBucket,
        Some("AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId" | "SignatureDoesNotMatch") => {
            StorageErrorKind::AccessDenied
        }
        Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
            StorageErrorKind::Transient
        }
        _ if http_status.is_some_and(|s| s >= 500) => StorageErrorKind::Transient,
        _ if http_status == Some(403) => StorageErrorKind::AccessDenied,
        _ if http_status == Some(404) => StorageErrorKind::NoSuchBucket,
        _ => StorageErrorKind::Other,
    }
}

pub(crate) fn storage_error<E>(op: &str, err: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code();
            let status = se.raw().status().as_u16();
            let message = se.err().message().unwrap_or("");
            StorageError {
                kind: classify(code, Some(status)),
                message: format!("{op}: {} (HTTP {status}){}", code.unwrap_or("error"), if message.is_empty() { String::new() } else { format!(": {message}") }),
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => StorageError {
            kind: StorageErrorKind::Transient,
            message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
        },
        _ => StorageError {
            kind: StorageErrorKind::Other,
            message: format!("{op}: {}", aws_sdk_s3::error::DisplayErrorContext(&err)),
        },
    }
}

#[async_trait]
impl ObjectStore for S3ObjectStore {
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage, StorageError> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .set_delimiter(delimiter.map(str::to_owned))
            .set_continuation_token(token)
            .max_keys(PAGE_SIZE)
            .send()
            .await
            .map_err(|e| storage_error("ListObjectsV2", e))?;
        let mut page = ListPage::default();
        for o in out.contents() {
            page.objects += 1;
            page.bytes += o.size().unwrap_or(0);
        }
        page.common_prefixes = out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)).collect();
        page.next = match (out.is_truncated(), out.next_continuation_token()) {
            (Some(true), Some(t)) if !t.is_empty() => Some(t.to_owned()),
            _ => None,
        };
        Ok(page)
    }

    fn label(&self) -> String {
        match &self.endpoint {
            Some(url) => format!("aws s3 (endpoint {url})"),
            None => "aws s3".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_buckets_denials_and_throttling_are_told_apart() {
        assert_eq!(classify(Some("NoSuchBucket"), Some(404)), StorageErrorKind::NoSuchBucket);
        assert_eq!(classify(Some("AccessDenied"), Some(403)), StorageErrorKind::AccessDenied);
        assert_eq!(classify(None, Some(403)), StorageErrorKind::AccessDenied);
        assert_eq!(classify(Some("SlowDown"), Some(503)), StorageErrorKind::Transient);
        assert_eq!(classify(Some("Whatever"), Some(500)), StorageErrorKind::Transient);
        assert_eq!(classify(Some("InvalidArgument"), Some(400)), StorageErrorKind::Other);
    }
}

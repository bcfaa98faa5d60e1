//! The object storage port: the listing operations a usage scan needs, and the
//! queue of object events that keeps usage current between scans. `s3.rs` and
//! `sqs.rs` are the AWS SDK adapters (their endpoint can point at an emulator);
//! `folder.rs` lists directories as buckets, for deployments without AWS.

pub mod folder;
pub mod s3;
pub mod sqs;

use async_trait::async_trait;

use crate::retry::ErrorClass;

/// One page of a listing, already summed: a scan needs totals, not keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub objects: i64,
    pub bytes: i64,
    /// Sub-folders (with their trailing delimiter) when listed with a delimiter.
    pub common_prefixes: Vec<String>,
    /// Pass back to get the next page; `None` on the last one.
    pub next: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    NoSuchBucket,
    AccessDenied,
    /// Throttling, 5xx, timeouts: trying again can help.
    Transient,
    Other,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub message: String,
}

impl StorageError {
    pub fn class(&self) -> ErrorClass {
        match self.kind {
            StorageErrorKind::Transient => ErrorClass::Retryable,
            _ => ErrorClass::Permanent,
        }
    }
}

#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// One page of the keys under `prefix`. With a delimiter, keys below the next
    /// delimiter are rolled up into `common_prefixes` instead of being counted.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<String>,
    ) -> Result<ListPage, StorageError>;
    /// What the adapter is, for logs.
    fn label(&self) -> String;
}

/// A message received from the event queue.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub body: String,
    /// Deletes this message once its events are recorded.
    pub receipt: String,
}

#[async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Waits (long polling) for up to a batch of messages; an empty batch is normal.
    async fn receive(&self) -> Result<Vec<EventMessage>, StorageError>;
    async fn delete(&self, receipts: &[String]) -> Result<(), StorageError>;
    fn label(&self) -> String;
}

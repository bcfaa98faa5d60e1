//! SQS adapter of the event queue port (aws-sdk-sqs), with long polling. It
//! carries S3 event notifications to the usage counters and EC2 state-change
//! events to the runners' observed state.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use geonex_shared::config::S3UsageSettings;

use super::s3::storage_error;
use super::{EventMessage, EventQueue, StorageError, StorageErrorKind};

/// SQS's largest receive and delete batch.
const BATCH: i32 = 10;

pub struct SqsEventQueue {
    client: Client,
    queue_url: String,
    wait_secs: i32,
}

impl SqsEventQueue {
    /// The S3 event queue, with the usage settings' endpoint and long-poll wait.
    pub fn with_config(config: &aws_config::SdkConfig, settings: &S3UsageSettings, queue_url: &str) -> Self {
        Self::new(config, settings.endpoint_url.as_deref(), queue_url, settings.sqs_wait_secs)
    }

    /// A queue at `queue_url`; `endpoint_url` overrides the SDK configuration's
    /// endpoint (an emulator); `wait_secs` is the long-poll wait (at most 20).
    pub fn new(config: &aws_config::SdkConfig, endpoint_url: Option<&str>, queue_url: &str, wait_secs: u32) -> Self {
        let mut builder = aws_sdk_sqs::config::Builder::from(config);
        if let Some(url) = endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Self {
            client: Client::from_conf(builder.build()),
            queue_url: queue_url.to_owned(),
            wait_secs: wait_secs.min(20) as i32,
        }
    }
}

#[async_trait]
impl EventQueue for SqsEventQueue {
    async fn receive(&self) -> Result<Vec<EventMessage>, StorageError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(BATCH)
            .wait_time_seconds(self.wait_secs)
            .send()
            .await
            .map_err(|e| storage_error("ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .filter_map(|m| {
                Some(EventMessage { body: m.body()?.to_owned(), receipt: m.receipt_handle()?.to_owned() })
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), StorageError> {
        for chunk in receipts.chunks(BATCH as usize) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| DeleteMessageBatchRequestEntry::builder().id(i.to_string()).receipt_handle(r).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError { kind: StorageErrorKind::Other, message: e.to_string() })?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| storage_error("DeleteMessageBatch", e))?;
            if let Some(f) = out.failed().first() {
                // The message comes back after its visibility timeout; applying it
                // again is harmless (duplicates are ignored).
                return Err(StorageError {
                    kind: StorageErrorKind::Transient,
                    message: format!("DeleteMessageBatch: {} of {} failed: {}", out.failed().len(), chunk.len(), f.code()),
                });
            }
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("sqs {}", self.queue_url)
    }
}

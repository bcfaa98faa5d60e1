//! SQS adapter of the agent's [`NotificationSource`] port: what `geonex agent`
//! listens to on a real instance. It long-polls the runner's queue one message
//! at a time (S3 event JSON, bare or in an SNS envelope) and deletes a message
//! once the agent acknowledges it; until then the message stays invisible for
//! the container timeout plus a minute, and comes back if the agent dies.

use async_trait::async_trait;
use aws_sdk_sqs::Client as SqsClient;
use aws_sdk_sqs::error::DisplayErrorContext;
use geonex_shared::config::AgentSettings;

use super::notification;
use super::{Notification, NotificationSource, required};

pub struct SqsSource {
    sqs: SqsClient,
    queue_url: String,
    wait_secs: i32,
    visibility: i32,
}

impl SqsSource {
    /// The queue of `GEONEX_AGENT__QUEUE_URL`, with the AWS configuration of the
    /// standard chain (the instance profile on a runner).
    pub async fn from_settings(s: &AgentSettings) -> anyhow::Result<Self> {
        let queue_url = required(&s.queue_url, "GEONEX_AGENT__QUEUE_URL")?;
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        // A message must stay hidden while its container may still run.
        let visibility = i32::try_from(s.timeout_secs.max(1) + 60).unwrap_or(i32::MAX);
        Ok(Self { sqs: SqsClient::new(&config), queue_url, wait_secs: s.wait_secs.clamp(0, 20), visibility })
    }
}

#[async_trait]
impl NotificationSource for SqsSource {
    async fn receive(&self) -> anyhow::Result<Option<Notification>> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(1)
            .wait_time_seconds(self.wait_secs)
            .visibility_timeout(self.visibility)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("receiving from SQS: {}", DisplayErrorContext(&e)))?;
        let Some(message) = out.messages.unwrap_or_default().into_iter().next() else {
            return Ok(None);
        };
        let objects = match notification::parse(message.body().unwrap_or_default()) {
            Ok(o) => o,
            Err(e) => {
                // Not ours to understand: keeping it would only bring it back forever.
                tracing::warn!(error = %e, "ignoring a message that is not an S3 notification");
                Vec::new()
            }
        };
        Ok(Some(Notification { objects, receipt: message.receipt_handle().map(str::to_owned) }))
    }

    async fn ack(&self, notification: &Notification) -> anyhow::Result<()> {
        let Some(handle) = &notification.receipt else { return Ok(()) };
        self.sqs
            .delete_message()
            .queue_url(&self.queue_url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("deleting the message: {}", DisplayErrorContext(&e)))?;
        Ok(())
    }

    fn label(&self) -> String {
        format!("SQS queue {}", self.queue_url)
    }
}

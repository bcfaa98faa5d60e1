//! Publishing accepted commands: the outbox's "after commit" half.
//!
//! A command row is written with `published_at = null`. The dispatcher publishes
//! its message and, once the broker confirms, records `published_at` in batches
//! (one UPDATE for many confirms, off the request path). Anything that is never
//! confirmed — broker down, process killed — is found by the relay and
//! published again, so an accepted command is never lost; a duplicate message is
//! harmless because workers claim commands in the store.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::message::CommandMessage;
use crate::queue::{Queue, QueueError};
use crate::store::Store;

const MARK_BATCH: usize = 512;

#[derive(Clone)]
pub struct Dispatcher {
    queue: Arc<dyn Queue>,
    confirmed: mpsc::UnboundedSender<Uuid>,
}

impl Dispatcher {
    /// Starts the background task that records confirms; it drains and stops
    /// when `shutdown` is cancelled and every sender is gone.
    pub fn start(store: Arc<dyn Store>, queue: Arc<dyn Queue>, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(record_confirms(store, rx, shutdown));
        Self { queue, confirmed: tx }
    }

    pub fn queue(&self) -> &Arc<dyn Queue> {
        &self.queue
    }

    /// Publishes now (or after `delay`) and waits for the confirm.
    pub async fn publish(&self, message: &CommandMessage, delay: Option<Duration>) -> Result<(), QueueError> {
        self.queue.publish(message, delay).await?;
        let _ = self.confirmed.send(message.command_id);
        Ok(())
    }

    /// Publishes in the background: the caller (an HTTP handler) does not wait for
    /// the broker. Failures are left to the relay.
    pub fn publish_in_background(&self, message: CommandMessage) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.publish(&message, None).await {
                tracing::warn!(command_id = %message.command_id, error = %e, "publish failed; the relay will retry");
            }
        });
    }
}

async fn record_confirms(store: Arc<dyn Store>, mut rx: mpsc::UnboundedReceiver<Uuid>, shutdown: CancellationToken) {
    let mut batch = Vec::with_capacity(MARK_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MARK_BATCH) => n,
            _ = shutdown.cancelled() => {
                // Take what is already confirmed, then stop.
                while let Ok(id) = rx.try_recv() { batch.push(id); }
                0
            }
        };
        if !batch.is_empty() {
            if let Err(e) = store.mark_published(&batch).await {
                // Not fatal: the relay re-publishes these, and workers ignore duplicates.
                tracing::warn!(error = %e, count = batch.len(), "could not record published commands");
            }
            batch.clear();
        }
        if n == 0 {
            return;
        }
    }
}

//! In-process adapter of the queue port, for a single `geonex serve` without a
//! broker. Same semantics as RabbitMQ mode where it matters: delayed publishing,
//! explicit acknowledgement, requeue, competing consumers.
//!
//! Messages live in memory only. That is safe because the store is the source of
//! truth: at start the embedded server marks every unfinished command as
//! unpublished, and the relay publishes them again (see
//! `Store::recover_unfinished`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::domain::WorkQueue;
use crate::message::CommandMessage;
use crate::queue::{Acker, Delivery, Queue, QueueError, Subscription, SubscriptionCloser};

type Channel = (mpsc::UnboundedSender<CommandMessage>, Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<CommandMessage>>>);

pub struct LocalQueue {
    channels: HashMap<WorkQueue, Channel>,
    /// The last dead messages, newest last, for inspection.
    dead: Mutex<Vec<(CommandMessage, String)>>,
}

const DEAD_KEPT: usize = 1_000;

impl Default for LocalQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalQueue {
    pub fn new() -> Self {
        let channels = WorkQueue::ALL
            .into_iter()
            .map(|q| {
                let (tx, rx) = mpsc::unbounded_channel();
                (q, (tx, Arc::new(tokio::sync::Mutex::new(rx))))
            })
            .collect();
        Self { channels, dead: Mutex::new(Vec::new()) }
    }

    fn sender(&self, q: WorkQueue) -> Result<mpsc::UnboundedSender<CommandMessage>, QueueError> {
        self.channels.get(&q).map(|c| c.0.clone()).ok_or_else(|| QueueError::Unavailable("no such queue".into()))
    }

    pub fn dead_messages(&self) -> Vec<(CommandMessage, String)> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Queue for LocalQueue {
    async fn publish(&self, message: &CommandMessage, delay: Option<Duration>) -> Result<(), QueueError> {
        let tx = self.sender(message.action.queue())?;
        let message = message.clone();
        match delay.filter(|d| !d.is_zero()) {
            None => tx.send(message).map_err(|_| QueueError::Unavailable("queue closed".into())),
            Some(d) => {
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    let _ = tx.send(message);
                });
                Ok(())
            }
        }
    }

    async fn publish_dead(&self, message: &CommandMessage, error: &str) -> Result<(), QueueError> {
        let mut dead = self.dead.lock().unwrap_or_else(|e| e.into_inner());
        dead.push((message.clone(), error.to_owned()));
        if dead.len() > DEAD_KEPT {
            let excess = dead.len() - DEAD_KEPT;
            dead.drain(..excess);
        }
        Ok(())
    }

    async fn subscribe(&self, queue: WorkQueue, _prefetch: u16) -> Result<Subscription, QueueError> {
        let (tx, rx) = self.channels.get(&queue).cloned().ok_or_else(|| QueueError::Unavailable("no such queue".into()))?;
        let deliveries = futures::stream::unfold((rx, tx), |(rx, tx)| async move {
            let message = rx.lock().await.recv().await?;
            let acker = Box::new(LocalAcker { message: message.clone(), requeue_to: tx.clone() }) as Box<dyn Acker>;
            Some((Ok(Delivery { message: Ok(message), redelivered: false, acker }), (rx, tx)))
        })
        .boxed();
        Ok(Subscription { deliveries, closer: Box::new(NoClose) })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }

    fn label(&self) -> String {
        "in-process queue".into()
    }
}

struct LocalAcker {
    message: CommandMessage,
    requeue_to: mpsc::UnboundedSender<CommandMessage>,
}

#[async_trait]
impl Acker for LocalAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        Ok(())
    }

    async fn requeue(&self) -> Result<(), QueueError> {
        self.requeue_to.send(self.message.clone()).map_err(|_| QueueError::Unavailable("queue closed".into()))
    }
}

struct NoClose;

#[async_trait]
impl SubscriptionCloser for NoClose {
    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Action;

    fn msg(action: Action) -> CommandMessage {
        CommandMessage {
            command_id: uuid::Uuid::new_v4(),
            action,
            runner_id: None,
            attempt: 0,
            enqueued_at: chrono::Utc::now(),
            trace_id: "t".into(),
        }
    }

    #[tokio::test]
    async fn messages_reach_their_queue_now_or_after_their_delay_and_requeue_redelivers() {
        let q = LocalQueue::new();
        let mut sub = q.subscribe(WorkQueue::Runner, 1).await.unwrap();
        let later = msg(Action::StopRunner);
        q.publish(&later, Some(Duration::from_millis(50))).await.unwrap();
        let now = msg(Action::StartRunner);
        q.publish(&now, None).await.unwrap();
        let first = sub.deliveries.next().await.unwrap().unwrap();
        assert_eq!(first.message.as_ref().unwrap().command_id, now.command_id);
        first.acker.requeue().await.unwrap();
        let again = sub.deliveries.next().await.unwrap().unwrap();
        assert_eq!(again.message.as_ref().unwrap().command_id, now.command_id);
        let delayed = sub.deliveries.next().await.unwrap().unwrap();
        assert_eq!(delayed.message.unwrap().command_id, later.command_id);
        q.publish_dead(&msg(Action::SendEmail), "boom").await.unwrap();
        assert_eq!(q.dead_messages().len(), 1);
    }
}

//! The queue port: publishing command messages (now, after a delay, or to the dead
//! queue) and consuming them with explicit acknowledgement. RabbitMQ is the
//! production adapter (`rabbitmq.rs`), an in-process queue the embedded one
//! (`local.rs`).

pub mod local;
pub mod rabbitmq;

use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::domain::WorkQueue;
use crate::message::CommandMessage;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    #[error("broker refused the message: {0}")]
    Rejected(String),
}

/// Settles one delivery. Dropping it unsettled leaves the message to be
/// redelivered when the consumer's channel closes.
#[async_trait]
pub trait Acker: Send + Sync {
    async fn ack(&self) -> Result<(), QueueError>;
    /// Returns the message to the queue for immediate redelivery.
    async fn requeue(&self) -> Result<(), QueueError>;
}

pub struct Delivery {
    /// The decoded message, or why the payload could not be decoded.
    pub message: Result<CommandMessage, String>,
    pub redelivered: bool,
    pub acker: Box<dyn Acker>,
}

/// An open consumer on one work queue. The stream ends (or yields an error) when
/// the connection is lost; the caller subscribes again.
pub struct Subscription {
    pub deliveries: BoxStream<'static, Result<Delivery, QueueError>>,
    pub closer: Box<dyn SubscriptionCloser>,
}

#[async_trait]
pub trait SubscriptionCloser: Send + Sync {
    /// Stops delivery; unsettled messages go back to the queue.
    async fn close(&self);
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Publishes a message durably and waits for the broker's confirm. With a delay,
    /// the message reaches its work queue once the delay has passed.
    async fn publish(&self, message: &CommandMessage, delay: Option<Duration>) -> Result<(), QueueError>;
    /// Parks a copy of a dead command's message, with its last error, on the dead queue.
    async fn publish_dead(&self, message: &CommandMessage, error: &str) -> Result<(), QueueError>;
    async fn subscribe(&self, queue: WorkQueue, prefetch: u16) -> Result<Subscription, QueueError>;
    async fn ping(&self) -> Result<(), QueueError>;
    /// What the adapter is, for logs and `/readyz`.
    fn label(&self) -> String;
}

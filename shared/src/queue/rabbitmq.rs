//! RabbitMQ adapter of the queue port (lapin).
//!
//! Topology, declared idempotently by every connection:
//! * durable direct exchange `P`; quorum queues `P.runner`, `P.email`, `P.s3usage`
//!   bound by their suffix, and `P.dead` bound by `dead`;
//! * headers exchange `P.delay` and classic queues `P.delay.<N>s` (N = 1, 2, 4 … 1024)
//!   that dead-letter back to `P` with the message's original routing key. A
//!   delayed message carries its exact (jittered) delay as a per-message TTL and goes
//!   to the tier holding delays in [N, 2N) seconds, so a message waits behind
//!   others of its own tier only, at most one tier width. `queue_expires_ms`
//!   applies to the work and dead queues only: a delay queue has no consumer,
//!   and would expire with the messages waiting in it.
//!
//! Publishing uses one confirm-mode channel shared by all callers (confirms are
//! pipelined); a failed connection is dropped and re-opened on the next publish,
//! with at most one connection attempt per second while the broker is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::domain::WorkQueue;
use crate::message::CommandMessage;
use crate::queue::{Acker, Delivery, Queue, QueueError, Subscription, SubscriptionCloser};

const DELAY_TIERS: u32 = 11;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
    pub queue_expires_ms: Option<u64>,
}

impl Topology {
    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    pub fn work_queue(&self, q: WorkQueue) -> String {
        format!("{}.{}", self.prefix, q.routing_key())
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    fn delay_exchange(&self) -> String {
        format!("{}.delay", self.prefix)
    }

    fn delay_queue(&self, tier: u32) -> String {
        format!("{}.delay.{}s", self.prefix, 1u64 << tier)
    }

    /// Every queue name, for operators' tooling and test cleanup.
    pub fn all_queues(&self) -> Vec<String> {
        let mut v: Vec<String> = WorkQueue::ALL.iter().map(|q| self.work_queue(*q)).collect();
        v.push(self.dead_queue());
        v.extend((0..DELAY_TIERS).map(|t| self.delay_queue(t)));
        v
    }

    fn base_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if let Some(ms) = self.queue_expires_ms {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms as i64));
        }
        args
    }

    async fn declare(&self, ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare(self.exchange().into(), ExchangeKind::Direct, durable, FieldTable::default()).await?;
        ch.exchange_declare(self.delay_exchange().into(), ExchangeKind::Headers, durable, FieldTable::default())
            .await?;
        let qopts = QueueDeclareOptions { durable: true, ..Default::default() };
        let mut quorum = self.base_args();
        quorum.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
        for q in WorkQueue::ALL {
            let name = self.work_queue(q);
            ch.queue_declare(name.clone().into(), qopts, quorum.clone()).await?;
            ch.queue_bind(name.into(), self.exchange().into(), q.routing_key().into(), QueueBindOptions::default(), FieldTable::default())
                .await?;
        }
        ch.queue_declare(self.dead_queue().into(), qopts, quorum.clone()).await?;
        ch.queue_bind(self.dead_queue().into(), self.exchange().into(), "dead".into(), QueueBindOptions::default(), FieldTable::default())
            .await?;
        for tier in 0..DELAY_TIERS {
            // No `x-expires` here: a delay queue never has a consumer, so the
            // broker counts it unused however many messages wait in it, and
            // expiring it would delete the delayed messages with it.
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(self.exchange().into()));
            let name = self.delay_queue(tier);
            ch.queue_declare(name.clone().into(), qopts, args).await?;
            let mut bind = FieldTable::default();
            bind.insert("x-match".into(), AMQPValue::LongString("all".into()));
            bind.insert("delay-tier".into(), AMQPValue::LongString(tier_label(tier).into()));
            ch.queue_bind(name.into(), self.delay_exchange().into(), "".into(), QueueBindOptions::default(), bind)
                .await?;
        }
        Ok(())
    }
}

fn tier_label(tier: u32) -> String {
    format!("{}s", 1u64 << tier)
}

/// The tier whose range [2^t, 2^(t+1)) seconds holds this delay.
fn tier_for(delay: Duration) -> u32 {
    let secs = delay.as_secs().max(1);
    (63 - secs.leading_zeros()).min(DELAY_TIERS - 1)
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

struct PublisherState {
    channel: Option<(Connection, Channel)>,
    last_attempt: Option<Instant>,
}

pub struct RabbitQueue {
    url: String,
    topology: Topology,
    publish_timeout: Duration,
    publisher: Mutex<PublisherState>,
}

impl RabbitQueue {
    /// Creates the adapter; nothing is connected until first use, so the API can
    /// start (and accept commands) while the broker is down.
    pub fn new(url: &str, topology: Topology, publish_timeout: Duration) -> Self {
        Self {
            url: url.to_owned(),
            topology,
            publish_timeout,
            publisher: Mutex::new(PublisherState { channel: None, last_attempt: None }),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    async fn connect(&self, name: &str) -> Result<(Connection, Channel), QueueError> {
        let props = ConnectionProperties::default().with_connection_name(name.to_owned().into());
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&self.url, props))
            .await
            .map_err(|_| QueueError::Unavailable("connection timed out".into()))?
            .map_err(unavailable)?;
        let ch = conn.create_channel().await.map_err(unavailable)?;
        self.topology.declare(&ch).await.map_err(unavailable)?;
        Ok((conn, ch))
    }

    async fn publish_channel(&self) -> Result<Channel, QueueError> {
        let mut state = self.publisher.lock().await;
        if let Some((conn, ch)) = &state.channel {
            if conn.status().connected() && ch.status().connected() {
                return Ok(ch.clone());
            }
            state.channel = None;
        }
        if let Some(t) = state.last_attempt
            && t.elapsed() < RECONNECT_INTERVAL
        {
            return Err(QueueError::Unavailable("broker unreachable (reconnect pending)".into()));
        }
        state.last_attempt = Some(Instant::now());
        let (conn, ch) = self.connect("geonex-publisher").await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await.map_err(unavailable)?;
        state.channel = Some((conn, ch.clone()));
        Ok(ch)
    }

    async fn drop_publisher(&self) {
        self.publisher.lock().await.channel = None;
    }

    async fn send(
        &self,
        exchange: String,
        routing_key: &str,
        message: &CommandMessage,
        headers: FieldTable,
        expiration: Option<Duration>,
    ) -> Result<(), QueueError> {
        let payload = serde_json::to_vec(message).map_err(|e| QueueError::Rejected(e.to_string()))?;
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message.command_id.to_string().into())
            .with_headers(headers);
        if let Some(d) = expiration {
            props = props.with_expiration(d.as_millis().max(1).to_string().into());
        }
        let attempt = async {
            let ch = self.publish_channel().await?;
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions { mandatory: true, ..Default::default() },
                    &payload,
                    props,
                )
                .await
                .map_err(unavailable)?
                .await
                .map_err(unavailable)?;
            match confirm {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(_)) => Err(QueueError::Rejected("message was unroutable".into())),
                Confirmation::Nack(_) => Err(QueueError::Rejected("broker nacked the message".into())),
                Confirmation::NotRequested => Ok(()),
            }
        };
        let outcome = tokio::time::timeout(self.publish_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(QueueError::Unavailable("publish confirm timed out".into())));
        if matches!(outcome, Err(QueueError::Unavailable(_))) {
            self.drop_publisher().await;
        }
        outcome
    }
}

fn attempt_header(message: &CommandMessage) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert("x-attempt".into(), AMQPValue::LongInt(message.attempt));
    headers.insert("x-trace-id".into(), AMQPValue::LongString(message.trace_id.as_str().into()));
    headers
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn publish(&self, message: &CommandMessage, delay: Option<Duration>) -> Result<(), QueueError> {
        let key = message.action.queue().routing_key();
        match delay.filter(|d| !d.is_zero()) {
            None => self.send(self.topology.exchange(), key, message, attempt_header(message), None).await,
            Some(d) => {
                let mut headers = attempt_header(message);
                headers.insert("delay-tier".into(), AMQPValue::LongString(tier_label(tier_for(d)).into()));
                self.send(self.topology.delay_exchange(), key, message, headers, Some(d)).await
            }
        }
    }

    async fn publish_dead(&self, message: &CommandMessage, error: &str) -> Result<(), QueueError> {
        let mut headers = attempt_header(message);
        let error: String = error.chars().take(1000).collect();
        headers.insert("x-last-error".into(), AMQPValue::LongString(LongString::from(error)));
        self.send(self.topology.exchange(), "dead", message, headers, None).await
    }

    async fn subscribe(&self, queue: WorkQueue, prefetch: u16) -> Result<Subscription, QueueError> {
        let (conn, ch) = self.connect(&format!("geonex-worker-{}", queue.routing_key())).await?;
        ch.basic_qos(prefetch, BasicQosOptions::default()).await.map_err(unavailable)?;
        let tag = format!("geonex-{}-{}", queue.routing_key(), uuid::Uuid::new_v4());
        let consumer = ch
            .basic_consume(
                self.topology.work_queue(queue).into(),
                tag.clone().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        let deliveries = consumer
            .map(|d| {
                let d = d.map_err(unavailable)?;
                let message = serde_json::from_slice::<CommandMessage>(&d.data).map_err(|e| e.to_string());
                Ok(Delivery {
                    message,
                    redelivered: d.redelivered,
                    acker: Box::new(RabbitAcker(d.acker)) as Box<dyn Acker>,
                })
            })
            .boxed();
        Ok(Subscription { deliveries, closer: Box::new(RabbitCloser { conn: Arc::new(conn), ch, tag }) })
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.publish_channel().await.map(|_| ())
    }

    fn label(&self) -> String {
        format!("rabbitmq (exchange {})", self.topology.exchange())
    }
}

struct RabbitAcker(lapin::Acker);

#[async_trait]
impl Acker for RabbitAcker {
    async fn ack(&self) -> Result<(), QueueError> {
        self.0.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(unavailable)
    }

    async fn requeue(&self) -> Result<(), QueueError> {
        self.0.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.map(|_| ()).map_err(unavailable)
    }
}

struct RabbitCloser {
    conn: Arc<Connection>,
    ch: Channel,
    tag: String,
}

#[async_trait]
impl SubscriptionCloser for RabbitCloser {
    async fn close(&self) {
        let _ = self.ch.basic_cancel(ShortString::from(self.tag.clone()), BasicCancelOptions::default()).await;
        let _ = self.ch.close(200, "worker stopping".into()).await;
        let _ = self.conn.close(200, "worker stopping".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_map_to_power_of_two_tiers() {
        assert_eq!(tier_for(Duration::from_millis(300)), 0);
        assert_eq!(tier_for(Duration::from_secs(1)), 0);
        assert_eq!(tier_for(Duration::from_secs(3)), 1);
        assert_eq!(tier_for(Duration::from_secs(4)), 2);
        assert_eq!(tier_for(Duration::from_secs(100)), 6);
        assert_eq!(tier_for(Duration::from_secs(100_000)), DELAY_TIERS - 1);
    }
}

//! The worker: competing consumers on the work queues.
//!
//! For each delivery: claim the command in the store (which also enforces one
//! command at a time, in order, per runner), run its handler while renewing the
//! lease, record the outcome in the store, and only then acknowledge. A crash at
//! any point leaves either an unacknowledged message (redelivered) or an expired
//! lease (rescued by the relay): nothing is lost, and the store decides whether
//! a delivery is a duplicate.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use geonex_shared::config::WorkerSettings;
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::WorkQueue;
use geonex_shared::message::CommandMessage;
use geonex_shared::metrics;
use geonex_shared::queue::{Delivery, Queue};
use geonex_shared::store::{Claim, CommandRecord, Hold, Lease, LeaseTerms, RunnerRecord, Store, StoreError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::fence::Fence;
use crate::handler::{Handler, Step};
use crate::presence::Presence;
use crate::retry::{Backoff, ErrorClass, HandlerError};

pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    dispatcher: Dispatcher,
    handlers: Vec<Arc<dyn Handler>>,
    settings: WorkerSettings,
    prefetch: u16,
    backoff: Backoff,
    presence: Presence,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        dispatcher: Dispatcher,
        handlers: Vec<Arc<dyn Handler>>,
        settings: WorkerSettings,
        prefetch: u16,
    ) -> Self {
        let backoff = Backoff {
            base: Duration::from_millis(settings.retry_base_ms),
            cap: Duration::from_millis(settings.retry_cap_ms),
        };
        let presence = Presence::new(store.clone(), settings.heartbeat(), settings.holder_timeout());
        Self { inner: Arc::new(Inner { store, dispatcher, handlers, settings, prefetch, backoff, presence }) }
    }

    /// The id under which this process holds its leases (its worker registry row).
    pub fn worker_id(&self) -> uuid::Uuid {
        self.inner.presence.worker_id()
    }

    /// The queues this worker consumes: those it has handlers for, narrowed to
    /// the `queues` setting when that names any.
    pub fn queues(&self) -> Vec<WorkQueue> {
        let mut queues: Vec<WorkQueue> =
            self.inner.handlers.iter().flat_map(|h| h.actions().iter().map(|a| a.queue())).collect();
        queues.dedup();
        let chosen = &self.inner.settings.queues;
        WorkQueue::ALL.into_iter().filter(|q| queues.contains(q) && (chosen.is_empty() || chosen.contains(q))).collect()
    }

    /// Consumes until `shutdown` is cancelled, then lets in-flight commands finish
    /// within the grace period. Unfinished ones stay unacknowledged and are
    /// redelivered to another worker.
    pub async fn run(self, shutdown: CancellationToken) {
        // Registered before the first claim, so every lease names a live process.
        if !self.inner.presence.register(&shutdown).await {
            return;
        }
        let beating = CancellationToken::new();
        let heartbeat = tokio::spawn({
            let (presence, beating) = (self.inner.presence.clone(), beating.clone());
            async move { presence.beat(beating).await }
        });
        let tracker = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.inner.settings.concurrency.max(1)));
        let loops: Vec<_> = self
            .queues()
            .into_iter()
            .map(|q| {
                let inner = self.inner.clone();
                let (tracker, limit, shutdown) = (tracker.clone(), limit.clone(), shutdown.clone());
                tokio::spawn(async move { inner.consume(q, tracker, limit, shutdown).await })
            })
            .collect();
        futures::future::join_all(loops).await;
        // Every consumer has stopped and waited for its in-flight commands: what
        // this process still holds can be taken over at once.
        beating.cancel();
        let _ = heartbeat.await;
        self.inner.presence.retire().await;
    }
}

impl Inner {
    async fn consume(
        self: Arc<Self>,
        queue: WorkQueue,
        tracker: TaskTracker,
        limit: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let broker: &Arc<dyn Queue> = self.dispatcher.queue();
        let mut reconnect_delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let mut sub = match broker.subscribe(queue, self.prefetch).await {
                Ok(s) => {
                    tracing::info!(queue = queue.routing_key(), "consuming");
                    reconnect_delay = Duration::from_millis(200);
                    s
                }
                Err(e) => {
                    tracing::warn!(queue = queue.routing_key(), error = %e, "cannot consume; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(reconnect_delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                    reconnect_delay = (reconnect_delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            loop {
                // A delivery first, then a slot: an idle queue holds no slot
                // that a busy one could use.
                let next = tokio::select! {
                    d = sub.deliveries.next() => d,
                    _ = shutdown.cancelled() => break,
                };
                match next {
                    Some(Ok(delivery)) => {
                        let permit = tokio::select! {
                            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                            // Unsettled, the delivery goes back to the queue.
                            _ = shutdown.cancelled() => break,
                        };
                        let this = self.clone();
                        tracker.spawn(async move {
                            this.handle(delivery).await;
                            drop(permit);
                        });
                    }
                    Some(Err(e)) => {
                        tracing::warn!(queue = queue.routing_key(), error = %e, "consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!(queue = queue.routing_key(), "consumer closed; reconnecting");
                        break;
                    }
                }
            }
            if shutdown.is_cancelled() {
                tracker.close();
                let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
                if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                    tracing::warn!("in-flight commands did not finish within the grace period; they will be redelivered");
                }
            }
            sub.closer.close().await;
        }
    }

    async fn handle(&self, delivery: Delivery) {
        let message = match delivery.message {
            Ok(m) => m,
            Err(e) => {
                // Not a message this system wrote: nothing in the store points at it.
                tracing::error!(error = %e, "dropping undecodable message");
                let _ = delivery.acker.ack().await;
                return;
            }
        };
        let span = tracing::info_span!("command", command_id = %message.command_id, action = %message.action,
            runner_id = message.runner_id.as_deref().unwrap_or(""), trace_id = %message.trace_id);
        async {
            let settled = self.process(&message).await;
            let result = match settled {
                Settle::Ack => delivery.acker.ack().await,
                Settle::Requeue => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    delivery.acker.requeue().await
                }
            };
            if let Err(e) = result {
                tracing::warn!(error = %e, "could not settle the delivery; it will be redelivered");
            }
        }
        .instrument(span)
        .await
    }

    fn terms(&self) -> LeaseTerms {
        self.presence.terms(self.settings.lease(), self.settings.holder_timeout())
    }

    async fn process(&self, message: &CommandMessage) -> Settle {
        let claim = match self.store.claim(message.command_id, &self.terms()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the command; requeueing");
                return Settle::Requeue;
            }
        };
        match claim {
            Claim::Claimed { command, runner } => self.execute(command, runner).await,
            Claim::Finished(status) => {
                tracing::info!(status = status.as_str(), "duplicate delivery of a finished command");
                Settle::Ack
            }
            Claim::Busy => {
                // Its holder is alive; if it dies, the rescuer re-publishes the command.
                tracing::info!("command is running elsewhere; duplicate delivery dropped");
                Settle::Ack
            }
            Claim::NotFound => {
                tracing::warn!("message for an unknown command dropped");
                Settle::Ack
            }
            Claim::Blocked => {
                let delay = Duration::from_millis(self.settings.blocked_delay_ms);
                match self.dispatcher.publish(message, Some(delay)).await {
                    Ok(()) => Settle::Ack,
                    Err(_) => Settle::Requeue,
                }
            }
        }
    }

    async fn execute(&self, command: CommandRecord, runner: Option<RunnerRecord>) -> Settle {
        tracing::info!(attempt = command.attempts, "command started");
        metrics::command(metrics::COMMANDS_STARTED, command.action);
        let started = std::time::Instant::now();
        let lease = Lease { command_id: command.command_id, holder: self.presence.worker_id() };
        let duration = self.settings.lease();
        let done = CancellationToken::new();
        let lost = CancellationToken::new();
        let renewer = {
            let (store, done, lost) = (self.store.clone(), done.clone(), lost.clone());
            // After a failed renewal (the database away) it tries again every
            // heartbeat, so the lease is back in order soon after the database.
            let (every, after_failure) = (duration / 3, self.settings.heartbeat());
            tokio::spawn(async move {
                let mut wait = every;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = done.cancelled() => return,
                    }
                    match store.renew_lease(&lease, duration).await {
                        Ok(true) => wait = every,
                        Ok(false) => {
                            lost.cancel();
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "could not renew the lease");
                            wait = after_failure;
                        }
                    }
                }
            })
        };
        let handler = self.handlers.iter().find(|h| h.actions().contains(&command.action));
        let fence = Fence::new(self.store.clone(), lease, duration, lost.clone());
        let run = fence.scope(async {
            match handler {
                Some(h) => h.handle(&command, runner.as_ref()).await,
                None => Err(HandlerError::permanent(format!("no handler for {}", command.action))),
            }
        });
        let outcome = tokio::select! {
            outcome = run => Some(outcome),
            _ = lost.cancelled() => None,
        };
        done.cancel();
        let _ = renewer.await;
        ::metrics::histogram!(metrics::COMMAND_DURATION, "action" => command.action.as_str())
            .record(started.elapsed().as_secs_f64());
        let Some(outcome) = outcome else {
            // This process was presumed dead (its heartbeat could not be written)
            // and another worker took the command over: it is theirs to finish.
            tracing::warn!("lease lost to another worker; abandoning this attempt");
            return Settle::Ack;
        };

        match outcome {
            Ok(Step::Wait(wait)) => {
                let next = Utc::now() + chrono::Duration::from_std(wait.after).unwrap_or_default();
                let progress = match (&command.runner_id, &wait.runner) {
                    (Some(id), Some(obs)) => Some((id.as_str(), obs)),
                    _ => None,
                };
                tracing::info!(waiting_for = %wait.waiting_for, retry_in_ms = wait.after.as_millis() as u64, "command waiting");
                let reservation = wait.reservation.map(|r| Hold { op: r.op.as_str(), at: r.at, ticket: r.ticket });
                let record = || self.store.wait_command(&lease, &wait.waiting_for, next, progress, reservation);
                if persist(record).await.is_err() {
                    return Settle::Requeue;
                }
                metrics::command(metrics::COMMANDS_WAITING, command.action);
                if let Err(pe) = self.dispatcher.publish(&command.message(), Some(wait.after)).await {
                    // The row says waiting and unpublished: the relay publishes it once due.
                    tracing::warn!(error = %pe, "could not schedule the next look; the relay will");
                }
                Settle::Ack
            }
            Ok(Step::Done(done)) => {
                let runner_update = match (&command.runner_id, &done.runner) {
                    (Some(id), Some(obs)) => Some((id.as_str(), obs)),
                    _ => None,
                };
                let result = with_previous_error(done.result.clone(), &command);
                let record = || self.store.succeed_command(&lease, runner_update, result.clone());
                match persist(record).await {
                    Ok(()) => {
                        metrics::command(metrics::COMMANDS_SUCCEEDED, command.action);
                        tracing::info!(observed = done.runner.as_ref().map(|o| o.observed.as_str()), "command succeeded");
                        Settle::Ack
                    }
                    Err(_) => Settle::Requeue,
                }
            }
            Err(e) if e.class == ErrorClass::Retryable && command.attempts < command.max_attempts => {
                let delay = self.backoff.delay(command.attempts);
                let next = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                tracing::warn!(error = %e.message, retry_in_ms = delay.as_millis() as u64, "command failed; will retry");
                if persist(|| self.store.retry_command(&lease, &e.message, next)).await.is_err() {
                    return Settle::Requeue;
                }
                metrics::command(metrics::COMMANDS_RETRIED, command.action);
                let mut message = command.message();
                message.attempt = command.attempts;
                if let Err(pe) = self.dispatcher.publish(&message, Some(delay)).await {
                    // The row says retrying and unpublished: the relay publishes it.
                    tracing::warn!(error = %pe, "could not schedule the retry; the relay will");
                }
                Settle::Ack
            }
            Err(e) => {
                let why = if e.class == ErrorClass::Permanent { "permanent error" } else { "attempts exhausted" };
                tracing::error!(error = %e.message, attempts = command.attempts, "command dead: {why}");
                let runner_state = handler.and_then(|h| h.observed_when_dead(&command, runner.as_ref()));
                if persist(|| self.store.kill_command(&lease, &e.message, runner_state)).await.is_err() {
                    return Settle::Requeue;
                }
                metrics::command(metrics::COMMANDS_DEAD, command.action);
                if let Err(pe) = self.dispatcher.queue().publish_dead(&command.message(), &e.message).await {
                    tracing::warn!(error = %pe, "could not park the message on the dead queue");
                }
                Settle::Ack
            }
        }
    }
}

/// A success clears `last_error`; what the earlier attempts failed on (EC2
/// throttling, a capacity shortage, a lost worker) stays visible in the result.
fn with_previous_error(mut result: serde_json::Value, command: &CommandRecord) -> serde_json::Value {
    if let (Some(error), serde_json::Value::Object(map)) = (&command.last_error, &mut result) {
        map.entry("previous_error").or_insert_with(|| serde_json::Value::String(error.clone()));
    }
    result
}

enum Settle {
    Ack,
    Requeue,
}

/// Writes an outcome, retrying briefly through a database hiccup. If the store
/// stays down the delivery is requeued; the command's lease then expires and
/// the relay's rescuer returns it to the queue.
async fn persist<F, Fut>(write: F) -> Result<(), StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    use backon::{ExponentialBuilder, Retryable};
    write
        .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_times(6).with_jitter())
        .notify(|e, d| tracing::warn!(error = %e, retry_in = ?d, "store write failed; retrying"))
        .await
}

//! `geonex agent`: what runs on a runner's instance. For every new-data
//! notification it runs the image once per new object (bounded concurrency),
//! and reports each container's start and finish, plus heartbeats, to
//! `POST /runner-events` with the runner's agent token.
//!
//! This module is the agent's core, the same wherever the agent runs. Two ports
//! feed it, each with its adapters beside it:
//! - [`NotificationSource`], where new-data notifications come from:
//!   [`sqs::SqsSource`] long-polls the runner's SQS queue (`geonex agent` on a
//!   real instance); [`sim::SimFeed`] announces a simulated GOES file at a fixed
//!   interval (the agents of simulated instances).
//! - [`Executor`], what runs one container: [`process::ProcessExecutor`] runs
//!   the command template (`docker run …`); [`sim::SimExecutor`] takes a while
//!   and writes plausible outputs into the folder store.
//!
//! Events go through an on-disk spool ([`spool`]) so none is lost while the API
//! is unreachable; they are delivered in order when it returns. A notification
//! is acknowledged (an SQS message deleted) only once its containers have
//! finished and their finish events are safely in the spool. Container ids
//! derive from the object (bucket, key, S3 sequencer), so a notification
//! delivered twice names the same container: it runs once, and the API would
//! ignore a repeat anyway.

pub mod notification;
pub mod process;
pub mod sim;
pub mod spool;
pub mod sqs;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_trait::async_trait;
use chrono::Utc;
use geonex_shared::config::AgentSettings;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use notification::NewObject;
use spool::Spool;

/// The longest log tail the API takes in an event.
pub(crate) const MAX_LOG_TAIL_BYTES: usize = 16 * 1024;

/// One notification: the new objects it announces, and what its source needs to
/// acknowledge it.
pub struct Notification {
    /// Empty for a notification that announces nothing (S3's test event, a
    /// message that is not an S3 notification): it is acknowledged at once.
    pub objects: Vec<NewObject>,
    /// Handed back to [`NotificationSource::ack`] (an SQS receipt handle).
    pub receipt: Option<String>,
}

/// Port: where new-data notifications come from.
#[async_trait]
pub trait NotificationSource: Send + Sync + 'static {
    /// Waits for the next notification; `None` when none came within the
    /// source's wait. The agent drops this future on shutdown, so a notification
    /// must not be lost by dropping it (SQS hands it out again; a feed simply
    /// announces it later).
    async fn receive(&self) -> anyhow::Result<Option<Notification>>;
    /// Every container of the notification finished and its finish event is in
    /// the spool: the notification need not come back.
    async fn ack(&self, notification: &Notification) -> anyhow::Result<()>;
    /// What the source is, for the log.
    fn label(&self) -> String;
}

/// One container to run: the object and the runner it runs for.
pub struct Job<'a> {
    pub container_id: Uuid,
    pub object: &'a NewObject,
    pub runner_id: &'a str,
    pub image_name: &'a str,
    pub s3_output: &'a str,
}

/// How a container ended.
pub struct Outcome {
    /// `None` when it could not start, was killed or ran past its timeout (the
    /// API then shows it `failed`).
    pub exit_code: Option<i32>,
    /// The last bytes of its output.
    pub log_tail: String,
}

/// Port: what runs one container.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    /// Runs the container to its end (or its timeout).
    async fn run(&self, job: &Job<'_>) -> Outcome;
    /// What the executor is, for the log.
    fn label(&self) -> String;
}

/// The agent's identity and limits, checked once at start.
pub struct Agent {
    events_url: String,
    token: SecretString,
    runner_id: String,
    image_name: String,
    s3_output: String,
    instance_id: Option<String>,
    concurrency: usize,
    heartbeat: Duration,
}

pub(crate) fn required(v: &Option<String>, var: &str) -> anyhow::Result<String> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => bail!("{var} is not set"),
    }
}

impl Agent {
    pub fn from_settings(s: &AgentSettings) -> anyhow::Result<Self> {
        let token = s.token.as_ref().map(|t| t.expose_secret().to_owned());
        Ok(Self {
            events_url: format!("{}/runner-events", required(&s.api_url, "GEONEX_AGENT__API_URL")?.trim_end_matches('/')),
            token: required(&token, "GEONEX_AGENT__TOKEN")?.into(),
            runner_id: required(&s.runner_id, "GEONEX_AGENT__RUNNER_ID")?,
            image_name: s.image_name.clone().unwrap_or_default(),
            s3_output: s.s3_output.clone().unwrap_or_default(),
            instance_id: s.instance_id.clone().filter(|i| !i.trim().is_empty()),
            concurrency: s.concurrency.max(1),
            heartbeat: Duration::from_secs(s.heartbeat_secs.max(1)),
        })
    }

    /// The container id of one new object on this runner.
    fn container_id(&self, o: &NewObject) -> Uuid {
        let name = format!("{}\n{}\n{}\n{}", self.runner_id, o.bucket, o.key, o.sequencer);
        use sha2::Digest;
        let digest = sha2::Sha256::digest(name.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    fn job<'a>(&'a self, object: &'a NewObject, container_id: Uuid) -> Job<'a> {
        Job { container_id, object, runner_id: &self.runner_id, image_name: &self.image_name, s3_output: &self.s3_output }
    }

    fn event(&self, kind: &str, container_id: Option<Uuid>, extra: Value) -> Value {
        let mut e = json!({
            "event_id": Uuid::new_v4(),
            "runner_id": self.runner_id,
            "kind": kind,
            "container_id": container_id,
            "instance_id": self.instance_id,
            "image_name": (!self.image_name.is_empty()).then_some(&self.image_name),
            "at": Utc::now().to_rfc3339(),
        });
        if let (Some(m), Value::Object(extra)) = (e.as_object_mut(), extra) {
            m.extend(extra);
        }
        e
    }
}

/// `geonex agent`: the runner's SQS queue, the command template; runs until
/// `shutdown` is cancelled.
pub async fn run(settings: AgentSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Agent::from_settings(&settings)?;
    let executor = process::ProcessExecutor::from_settings(&settings)?;
    let source = sqs::SqsSource::from_settings(&settings).await?;
    run_with(agent, &settings.spool_dir, Arc::new(source), Arc::new(executor), shutdown).await
}

/// Runs an agent with the given source and executor until `shutdown` is
/// cancelled; then lets running containers finish and their events reach the
/// spool, and delivers what it can.
pub async fn run_with(
    agent: Agent,
    spool_dir: &Path,
    source: Arc<dyn NotificationSource>,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let agent = Arc::new(agent);
    let spool = Arc::new(Spool::open(spool_dir).context("opening the event spool")?);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("building the HTTP client")?;
    tracing::info!(runner_id = %agent.runner_id, source = %source.label(), executor = %executor.label(), "agent starting");

    // Spawned work logs in the caller's span (the instance of a simulated agent).
    let deliverer = tokio::spawn(deliver(agent.clone(), spool.clone(), http, shutdown.clone()).in_current_span());
    let heart = tokio::spawn(heartbeat(agent.clone(), spool.clone(), shutdown.clone()).in_current_span());
    let result = poll(agent, spool, source, executor, shutdown.clone()).await;
    shutdown.cancel();
    let _ = heart.await;
    let _ = deliverer.await;
    result
}

async fn heartbeat(agent: Arc<Agent>, spool: Arc<Spool>, shutdown: CancellationToken) {
    loop {
        // A backlog already tells the API the agent is alive once it is delivered;
        // queueing stale heartbeats behind it would only add noise.
        if !spool.pending().await.unwrap_or(true)
            && let Err(e) = spool.append(&agent.event("heartbeat", None, json!({}))).await
        {
            tracing::warn!(error = %e, "could not spool a heartbeat");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(agent.heartbeat) => {}
        }
    }
}

/// Sends spooled events in order; waits and retries while the API is unreachable.
async fn deliver(agent: Arc<Agent>, spool: Arc<Spool>, http: reqwest::Client, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let next = match spool.next().await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "reading the event spool");
                None
            }
        };
        let Some((event, end)) = next else {
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = spool.appended.notified() => {}
                // Also look again now and then, in case a wake-up was missed.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let sent = http.post(&agent.events_url).bearer_auth(agent.token.expose_secret()).json(&event).send().await;
        let done = match sent {
            Ok(r) if r.status().is_success() => true,
            Ok(r) if r.status().as_u16() == 400 => {
                // The API will never take it; holding it would block every later event.
                tracing::error!(status = %r.status(), event_id = %event["event_id"], "the API refused an event; dropped");
                true
            }
            Ok(r) => {
                tracing::warn!(status = %r.status(), "the API did not take an event; will retry");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "the API is unreachable; events wait in the spool");
                false
            }
        };
        if done {
            backoff = Duration::from_millis(200);
            if let Err(e) = spool.delivered(end).await {
                tracing::error!(error = %e, "recording a delivery in the spool");
            }
            continue;
        }
        if shutdown.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Containers started and not yet finished, so a duplicate arriving meanwhile
/// waits its turn.
type Running = Mutex<HashSet<Uuid>>;

async fn poll(
    agent: Arc<Agent>,
    spool: Arc<Spool>,
    source: Arc<dyn NotificationSource>,
    executor: Arc<dyn Executor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(agent.concurrency));
    let running: Arc<Running> = Arc::default();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.context("the concurrency limit closed")?,
        };
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = source.receive() => r,
        };
        let notification = match received {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "no notification received");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let (agent, spool, source, executor, running) =
            (agent.clone(), spool.clone(), source.clone(), executor.clone(), running.clone());
        tokio::spawn(
            async move {
                let _permit = permit;
                if let Err(e) = handle(&agent, &spool, &running, &*source, &*executor, notification).await {
                    tracing::warn!(error = %format!("{e:#}"), "a notification was not finished; it will be delivered again");
                }
            }
            .in_current_span(),
        );
    }
    // Let running containers finish and their events reach the spool.
    let _ = permits.acquire_many(u32::try_from(agent.concurrency).unwrap_or(u32::MAX)).await;
    Ok(())
}

async fn handle(
    agent: &Agent,
    spool: &Spool,
    running: &Running,
    source: &dyn NotificationSource,
    executor: &dyn Executor,
    notification: Notification,
) -> anyhow::Result<()> {
    for o in &notification.objects {
        let container_id = agent.container_id(o);
        if spool.is_done(container_id).await || !running.lock().await.insert(container_id) {
            tracing::info!(%container_id, "notification already handled");
            continue;
        }
        let outcome = run_container(agent, spool, executor, o, container_id).await;
        running.lock().await.remove(&container_id);
        outcome?;
    }
    source.ack(&notification).await
}

/// Runs one container to its end and spools its start and finish.
async fn run_container(
    agent: &Agent,
    spool: &Spool,
    executor: &dyn Executor,
    o: &NewObject,
    container_id: Uuid,
) -> anyhow::Result<()> {
    let input_url = o.url();
    spool.append(&agent.event("container_started", Some(container_id), json!({"input_url": input_url}))).await?;
    let started = Instant::now();
    let Outcome { exit_code, log_tail } = executor.run(&agent.job(o, container_id)).await;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    tracing::info!(runner_id = %agent.runner_id, %container_id, input_url, ?exit_code, duration_ms, "container finished");
    spool
        .append(&agent.event(
            "container_finished",
            Some(container_id),
            json!({"input_url": input_url, "exit_code": exit_code, "duration_ms": duration_ms, "log_tail": log_tail}),
        ))
        .await?;
    spool.mark_done(container_id).await?;
    Ok(())
}

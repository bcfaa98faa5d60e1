//! `geonex agent`: what runs on a runner's instance. It long-polls the runner's
//! SQS queue for new-data notifications, runs the image once per new object
//! through a command template (bounded concurrency, with a timeout), and reports
//! each container's start and finish, plus heartbeats, to `POST /runner-events`
//! with the runner's agent token.
//!
//! Events go through an on-disk spool ([`spool`]) so none is lost while the API
//! is unreachable; they are delivered in order when it returns. A message is
//! deleted from SQS only once its containers have finished and their finish
//! events are safely in the spool. Container ids derive from the object
//! (bucket, key, S3 sequencer), so a notification delivered twice names the same
//! container: it runs once, and the API would ignore a repeat anyway.

pub mod notification;
pub mod spool;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_sqs::Client as SqsClient;
use chrono::Utc;
use geonex_shared::config::AgentSettings;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use notification::NewObject;
use spool::Spool;

/// The agent's configuration, checked once at start.
#[derive(Clone)]
pub struct Agent {
    queue_url: String,
    events_url: String,
    token: String,
    runner_id: String,
    image_name: String,
    s3_output: String,
    instance_id: Option<String>,
    command: Vec<String>,
    /// Run after a timeout to stop what the command started (empty: nothing).
    stop_command: Vec<String>,
    concurrency: usize,
    timeout: Duration,
    stop_timeout: Duration,
    heartbeat: Duration,
    wait_secs: i32,
    log_tail_bytes: usize,
}

fn required(v: &Option<String>, var: &str) -> anyhow::Result<String> {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => bail!("{var} is not set"),
    }
}

impl Agent {
    pub fn from_settings(s: &AgentSettings) -> anyhow::Result<Self> {
        let token = s.token.as_ref().map(|t| t.expose_secret().to_owned());
        let command: Vec<String> = s.command.split_whitespace().map(str::to_owned).collect();
        if command.is_empty() {
            bail!("GEONEX_AGENT__COMMAND is empty");
        }
        Ok(Self {
            queue_url: required(&s.queue_url, "GEONEX_AGENT__QUEUE_URL")?,
            events_url: format!("{}/runner-events", required(&s.api_url, "GEONEX_AGENT__API_URL")?.trim_end_matches('/')),
            token: required(&token, "GEONEX_AGENT__TOKEN")?,
            runner_id: required(&s.runner_id, "GEONEX_AGENT__RUNNER_ID")?,
            image_name: s.image_name.clone().unwrap_or_default(),
            s3_output: s.s3_output.clone().unwrap_or_default(),
            instance_id: s.instance_id.clone().filter(|i| !i.trim().is_empty()),
            command,
            stop_command: s.stop_command.split_whitespace().map(str::to_owned).collect(),
            concurrency: s.concurrency.max(1),
            timeout: Duration::from_secs(s.timeout_secs.max(1)),
            stop_timeout: Duration::from_secs(s.stop_timeout_secs.max(1)),
            heartbeat: Duration::from_secs(s.heartbeat_secs.max(1)),
            wait_secs: s.wait_secs.clamp(0, 20),
            log_tail_bytes: s.log_tail_bytes.clamp(0, 16 * 1024),
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

    fn argv(&self, o: &NewObject, container_id: Uuid) -> Vec<String> {
        self.render(&self.command, o, container_id)
    }

    fn stop_argv(&self, o: &NewObject, container_id: Uuid) -> Vec<String> {
        self.render(&self.stop_command, o, container_id)
    }

    /// Fills the placeholders of a command template.
    fn render(&self, template: &[String], o: &NewObject, container_id: Uuid) -> Vec<String> {
        let input = o.url();
        let cid = container_id.to_string();
        template
            .iter()
            .map(|w| {
                w.replace("{input_url}", &input)
                    .replace("{s3_output}", &self.s3_output)
                    .replace("{runner_id}", &self.runner_id)
                    .replace("{image_name}", &self.image_name)
                    .replace("{container_id}", &cid)
            })
            .collect()
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

/// Runs the agent until `shutdown` is cancelled.
pub async fn run(settings: AgentSettings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let agent = Arc::new(Agent::from_settings(&settings)?);
    let spool = Arc::new(Spool::open(&settings.spool_dir).context("opening the event spool")?);
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let sqs = SqsClient::new(&config);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().context("building the HTTP client")?;
    tracing::info!(runner_id = %agent.runner_id, queue = %agent.queue_url, "agent starting");

    let deliverer = tokio::spawn(deliver(agent.clone(), spool.clone(), http.clone(), shutdown.clone()));
    let heart = tokio::spawn(heartbeat(agent.clone(), spool.clone(), shutdown.clone()));
    let result = poll(agent, spool, sqs, shutdown.clone()).await;
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
        let sent = http.post(&agent.events_url).bearer_auth(&agent.token).json(&event).send().await;
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

async fn poll(agent: Arc<Agent>, spool: Arc<Spool>, sqs: SqsClient, shutdown: CancellationToken) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(agent.concurrency));
    // Containers started and not yet finished, so a duplicate arriving meanwhile waits its turn.
    let running: Arc<Mutex<std::collections::HashSet<Uuid>>> = Arc::default();
    let visibility = i32::try_from(agent.timeout.as_secs() + 60).unwrap_or(i32::MAX);
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.context("the concurrency limit closed")?,
        };
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sqs.receive_message()
                .queue_url(&agent.queue_url)
                .max_number_of_messages(1)
                .wait_time_seconds(agent.wait_secs)
                .visibility_timeout(visibility)
                .send() => r,
        };
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "receiving from SQS");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(message) = messages.into_iter().next() else { continue };
        let (agent, spool, sqs, running) = (agent.clone(), spool.clone(), sqs.clone(), running.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(&agent, &spool, &running, &sqs, message).await {
                tracing::warn!(error = %e, "a notification was not finished; SQS will deliver it again");
            }
        });
    }
    // Let running containers finish and their events reach the spool.
    let _ = permits.acquire_many(u32::try_from(agent.concurrency).unwrap_or(u32::MAX)).await;
    Ok(())
}

async fn handle(
    agent: &Agent,
    spool: &Spool,
    running: &Mutex<std::collections::HashSet<Uuid>>,
    sqs: &SqsClient,
    message: aws_sdk_sqs::types::Message,
) -> anyhow::Result<()> {
    let body = message.body().unwrap_or_default();
    let objects = match notification::parse(body) {
        Ok(o) => o,
        Err(e) => {
            // Not ours to understand: keeping it would only bring it back forever.
            tracing::warn!(error = %e, "ignoring a message that is not an S3 notification");
            Vec::new()
        }
    };
    for o in &objects {
        let container_id = agent.container_id(o);
        if spool.is_done(container_id).await || !running.lock().await.insert(container_id) {
            tracing::info!(%container_id, "notification already handled");
            continue;
        }
        let outcome = run_container(agent, spool, o, container_id).await;
        running.lock().await.remove(&container_id);
        outcome?;
    }
    if let Some(handle) = message.receipt_handle() {
        sqs.delete_message()
            .queue_url(&agent.queue_url)
            .receipt_handle(handle)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("deleting the message: {}", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
    }
    Ok(())
}

/// Runs one container to its end and spools its start and finish.
async fn run_container(agent: &Agent, spool: &Spool, o: &NewObject, container_id: Uuid) -> anyhow::Result<()> {
    let input_url = o.url();
    spool.append(&agent.event("container_started", Some(container_id), json!({"input_url": input_url}))).await?;
    let argv = agent.argv(o, container_id);
    let stop = Stop { argv: agent.stop_argv(o, container_id), timeout: agent.stop_timeout };
    let started = Instant::now();
    let (exit_code, log_tail) = execute(&argv, agent.timeout, &stop, agent.log_tail_bytes).await;
    let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
    tracing::info!(%container_id, input_url, ?exit_code, duration_ms, "container finished");
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

/// What ends a container that ran past its timeout, besides killing its process
/// group: with `docker run` that group is only the client, and the container
/// goes on running in the docker daemon until it is stopped by name.
struct Stop {
    /// The stop command, rendered; empty runs nothing.
    argv: Vec<String>,
    timeout: Duration,
}

/// Starts a program in its own process group, so a timeout ends everything it
/// started (a shell script's children too), not just the first process.
fn spawn_in_group(program: &str, args: &[String], output: bool) -> std::io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(program);
    #[cfg(unix)]
    command.process_group(0);
    let pipe = || if output { Stdio::piped() } else { Stdio::null() };
    command.args(args).stdin(Stdio::null()).stdout(pipe()).stderr(pipe()).kill_on_drop(true).spawn()
}

/// Kills a child's whole process group, then the child.
async fn kill_group(child: &mut tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    let _ = child.kill().await;
}

/// Runs the stop command within its own timeout; says how it went, for the log tail.
async fn run_stop(stop: &Stop) -> String {
    let Some((program, args)) = stop.argv.split_first() else {
        return String::new();
    };
    let mut child = match spawn_in_group(program, args, false) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(program, error = %e, "could not start the stop command");
            return format!("; could not start the stop command {program}: {e}");
        }
    };
    match tokio::time::timeout(stop.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => "; stopped".to_owned(),
        Ok(Ok(status)) => {
            tracing::warn!(program, code = ?status.code(), "the stop command failed");
            format!("; the stop command failed ({status})")
        }
        Ok(Err(e)) => format!("; the stop command failed: {e}"),
        Err(_) => {
            kill_group(&mut child).await;
            tracing::warn!(program, timeout_secs = stop.timeout.as_secs(), "the stop command timed out");
            format!("; the stop command timed out after {}s", stop.timeout.as_secs())
        }
    }
}

/// Runs a program; `None` as exit code when it could not start, was killed by a
/// signal or ran past the timeout. Past the timeout its process group is killed
/// and then the stop command runs. The tail keeps the last bytes of its output.
async fn execute(argv: &[String], timeout: Duration, stop: &Stop, tail_bytes: usize) -> (Option<i32>, String) {
    let Some((program, args)) = argv.split_first() else {
        return (None, "empty command".into());
    };
    let child = spawn_in_group(program, args, true);
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (None, format!("could not start {program}: {e}")),
    };
    let tail = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut readers = Vec::new();
    let streams: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    for mut stream in streams {
        let tail = tail.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().await;
                t.extend_from_slice(&buf[..n]);
                let excess = t.len().saturating_sub(tail_bytes);
                t.drain(..excess);
            }
        }));
    }
    let code = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status.code(),
        Ok(Err(_)) => None,
        Err(_) => {
            kill_group(&mut child).await;
            let stopped = run_stop(stop).await;
            let mut t = tail.lock().await;
            t.extend_from_slice(format!("\n[killed after {}s{stopped}]", timeout.as_secs()).as_bytes());
            let excess = t.len().saturating_sub(tail_bytes);
            t.drain(..excess);
            None
        }
    };
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let bytes = tail.lock().await.clone();
    (code, String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_program_reports_its_exit_code_and_a_bounded_tail_and_a_slow_one_is_killed() {
        let argv = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let none = Stop { argv: Vec::new(), timeout: Duration::from_secs(1) };
        let (code, tail) = execute(&argv("printf 0123456789; echo err >&2; exit 7"), Duration::from_secs(10), &none, 8).await;
        assert_eq!(code, Some(7));
        assert_eq!(tail.len(), 8, "{tail}");
        let begun = Instant::now();
        let (code, tail) = execute(&argv("sleep 30; echo never"), Duration::from_millis(200), &none, 100).await;
        assert_eq!(code, None);
        // The whole group went: nothing held the output open until the readers gave up.
        assert!(begun.elapsed() < Duration::from_secs(2), "{:?}", begun.elapsed());
        assert!(tail.contains("killed"), "{tail}");
        let (code, _) = execute(&["/no/such/program".to_owned()], Duration::from_secs(1), &none, 100).await;
        assert_eq!(code, None);
    }

    #[tokio::test]
    async fn the_stop_command_runs_only_after_a_timeout_and_is_bounded_by_its_own() {
        let dir = std::env::temp_dir().join(format!("geonex-stop-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("stopped");
        let sh = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
        let stop = Stop { argv: sh(&format!("echo geonex-c1 >> {}", marker.display())), timeout: Duration::from_secs(5) };

        let (code, _) = execute(&sh("exit 0"), Duration::from_secs(10), &stop, 100).await;
        assert_eq!(code, Some(0));
        assert!(!marker.exists(), "no stop command for a container that ended by itself");

        let (code, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &stop, 100).await;
        assert_eq!(code, None);
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "geonex-c1\n");
        assert!(tail.contains("killed") && tail.contains("stopped"), "{tail}");

        let hanging = Stop { argv: sh("sleep 30"), timeout: Duration::from_millis(300) };
        let begun = Instant::now();
        let (code, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &hanging, 200).await;
        assert_eq!(code, None);
        assert!(begun.elapsed() < Duration::from_secs(3), "{:?}", begun.elapsed());
        assert!(tail.contains("stop command timed out"), "{tail}");

        let missing = Stop { argv: vec!["/no/such/docker".to_owned()], timeout: Duration::from_secs(1) };
        let (_, tail) = execute(&sh("sleep 30"), Duration::from_millis(200), &missing, 200).await;
        assert!(tail.contains("could not start the stop command"), "{tail}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `GET /events`: committed changes as server-sent events, in both modes
//! (PostgreSQL's LISTEN/NOTIFY; SQLite's event log).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use geonex_shared::domain::Role;
use serde_json::Value;

use crate::helpers::{Mode, TestApp, service_token, spawn_app_in, unique};

/// One server-sent event.
#[derive(Debug)]
pub struct SseEvent {
    pub name: String,
    pub data: Value,
    pub received_at: DateTime<Utc>,
}

/// Reads a `text/event-stream` response event by event.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<Vec<u8>>> + Send>>,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        let body = resp.bytes_stream().map(|r| r.map(|b| b.to_vec()));
        Self { body: Box::pin(body), buf: String::new() }
    }

    /// The next event (comments and keep-alives skipped), or `None` at the deadline.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut name = "message".to_owned();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data).unwrap_or_else(|e| panic!("event data is JSON ({e}): {data}"));
                return Some(SseEvent { name, data, received_at: Utc::now() });
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??.expect("stream chunk");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Skips events until one matches, failing after `within`.
    pub async fn until(&mut self, within: Duration, what: &str, pred: impl Fn(&SseEvent) -> bool) -> SseEvent {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next(left).await.unwrap_or_else(|| panic!("no event {what} within {within:?}"));
            if pred(&e) {
                return e;
            }
        }
    }
}

/// Connects to `/events` with `token` and waits for `ready`.
pub async fn subscribe(app: &TestApp, token: &str, query: &str) -> (SseReader, SseEvent) {
    let resp = app.http.get(format!("{}/events{query}", app.address)).bearer_auth(token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let mut reader = SseReader::new(resp);
    let ready = reader.next(Duration::from_secs(10)).await.expect("a ready event");
    assert_eq!(ready.name, "ready", "{ready:?}");
    (reader, ready)
}

fn at(e: &SseEvent) -> DateTime<Utc> {
    let t = e.data["at"].as_str().unwrap_or_else(|| panic!("event has a time: {:?}", e.data));
    DateTime::parse_from_rfc3339(t).unwrap_or_else(|err| panic!("{t}: {err}")).with_timezone(&Utc)
}

in_both_modes!(an_sse_client_sees_a_runner_turn_running_within_a_second_of_the_commit);

async fn an_sse_client_sees_a_runner_turn_running_within_a_second_of_the_commit(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let (mut events, ready) = subscribe(&app, &app.token, "").await;
    assert_eq!(ready.data["role"], "admin");
    assert_eq!(ready.data["commands"], true);

    let runner_id = unique("sse");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    let mine = |e: &SseEvent| e.data["runner_id"] == runner_id.as_str();

    // Accepted: a queued command and the new runner.
    let queued = events.until(Duration::from_secs(10), "queued", |e| e.name == "command" && mine(e)).await;
    assert_eq!(queued.data["command_id"], command_id.as_str());
    assert_eq!(queued.data["status"], "queued");
    assert_eq!(queued.data["action"], "start_runner");
    assert!(queued.data["previous_status"].is_null());

    let running = events
        .until(Duration::from_secs(30), "running", |e| {
            e.name == "runner" && mine(e) && e.data["observed_state"] == "running"
        })
        .await;
    let lag = running.received_at - at(&running);
    assert!(lag < chrono::Duration::milliseconds(1000), "the event came {lag} after the commit");
    assert!(running.data["instance_id"].as_str().is_some_and(|i| i.starts_with("i-")), "{:?}", running.data);
    assert_eq!(running.data["desired_state"], "running");
    assert_eq!(running.data["s3_output"], "s3://geonex/GO16_ABI15");
    assert_eq!(running.data["instance_type"], "m5d.large");
    assert_eq!(app.runner(&runner_id).await["observed_state"], "running", "the event followed the commit");

    // The stop that follows streams the same way.
    let instance_id = running.data["instance_id"].as_str().unwrap().to_owned();
    let r = app.get(&format!("/stop-runner?instance_id={instance_id}&runner_id={runner_id}")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let stop_id = r.body["command_id"].as_str().unwrap().to_owned();
    let done = events
        .until(Duration::from_secs(30), "the stop succeeded", |e| {
            e.name == "command" && e.data["command_id"] == stop_id.as_str() && e.data["status"] == "succeeded"
        })
        .await;
    assert_eq!(done.data["previous_status"], "running");
    events
        .until(Duration::from_secs(30), "stopped", |e| {
            e.name == "runner" && mine(e) && e.data["observed_state"] == "stopped"
        })
        .await;

    // An open stream does not hold up a graceful shutdown: it ends.
    let mut app = app;
    let stopping = Instant::now();
    app.stop_app().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "shutdown took {:?}", stopping.elapsed());
    assert!(events.next(Duration::from_secs(5)).await.is_none(), "the stream ended");
}

#[tokio::test]
async fn an_api_process_streams_what_a_worker_in_another_process_commits() {
    let app = crate::helpers::spawn_app_with(crate::helpers::TestConfig {
        role: geonex::startup::Role::Api,
        ..crate::helpers::TestConfig::default()
    })
    .await;
    let (mut events, _) = subscribe(&app, &app.token, "").await;
    let worker = crate::helpers::Process::start(app.deployment.command(&["worker"]), false).await;
    let runner_id = unique("sse-cross");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    let done = events
        .until(Duration::from_secs(30), "the start succeeded", |e| {
            e.name == "command" && e.data["command_id"] == command_id.as_str() && e.data["status"] == "succeeded"
        })
        .await;
    assert_eq!(done.data["attempts"], 1);
    let running = events
        .until(Duration::from_secs(30), "running", |e| {
            e.name == "runner" && e.data["runner_id"] == runner_id.as_str() && e.data["observed_state"] == "running"
        })
        .await;
    assert!(running.received_at - at(&running) < chrono::Duration::milliseconds(1000));
    drop(worker);
}

#[tokio::test]
async fn events_need_a_token_and_a_user_sees_runners_but_not_commands() {
    let app = spawn_app_in(Mode::Production).await;
    let url = format!("{}/events", app.address);
    let anonymous = app.http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let bad = app.http.get(format!("{url}?types=images")).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["field"], "types");

    let user = service_token(&app.store, "sse-user", Role::User, None).await;
    let (mut events, ready) = subscribe(&app, &user, "").await;
    assert_eq!(ready.data["role"], "user");
    assert_eq!(ready.data["commands"], false);
    let runner_id = unique("sse-user");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 202);
    let e = events.until(Duration::from_secs(30), "running", |e| e.data["observed_state"] == "running").await;
    assert_eq!(e.name, "runner");
    // Everything before it was a runner event too: no command reached a user.
    let mut rest = Vec::new();
    while let Some(e) = events.next(Duration::from_millis(500)).await {
        rest.push(e);
    }
    assert!(rest.iter().all(|e| e.name == "runner"), "{rest:?}");

    // Following one runner shows only that runner.
    let (mut one, _) = subscribe(&app, &app.token, &format!("?runner_id={runner_id}")).await;
    let other = unique("sse-other");
    app.start_runner(&other, "geonex/fire:1.5").await;
    let r = app
        .get(&format!(
            "/stop-runner?instance_id={}&runner_id={runner_id}",
            app.runner(&runner_id).await["instance_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r.status, 202);
    let e = one.until(Duration::from_secs(30), "the stop", |e| e.name == "command").await;
    assert_eq!(e.data["runner_id"], runner_id.as_str());
    assert_eq!(e.data["action"], "stop_runner");
}

//! The load a fault scenario runs under, and the accounting after it.
//!
//! The load is every kind of command at once: runners started, restarted,
//! stopped and deleted (each runner follows a script that ends it running,
//! stopped or deleted), e-mails, and S3 usage scans. Clients behave as the
//! dashboard should: every command request carries an `Idempotency-Key`, and a
//! request that got no answer (the API was down) or a 503 (a dependency was)
//! is sent again with the same key, so a retry can never make a second command.
//!
//! Afterwards the outcome is counted with clients independent of the system:
//! SQL on the deployment's database, the AWS SDK straight at moto, and the SMTP
//! server's Maildir.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

/// How long one request is retried through an outage before the load gives up on it.
const REQUEST_PATIENCE: Duration = Duration::from_secs(180);

/// What the API answered, over the whole run.
#[derive(Default)]
pub struct Stats {
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// Answers no outage excuses: a 5xx other than 503, or a 503 without the
    /// project's error body.
    pub violations: Mutex<Vec<String>>,
    pub unanswered: AtomicU64,
    /// The first few requests answered 503, for the report.
    pub unavailable: Mutex<Vec<String>>,
}

/// The API as the load's clients see it: one address that a restarted API
/// process listens on again.
pub struct Api {
    pub base: String,
    token: String,
    http: reqwest::Client,
    pub stats: Stats,
}

/// Whether a body is the project's error JSON for an unavailable dependency.
pub fn is_unavailable_body(body: &Value) -> bool {
    body["error"]["code"] == "unavailable" && body["error"]["message"].is_string()
}

impl Api {
    pub fn new(base: String, token: String) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(40)).build().expect("HTTP client");
        Self { base, token, http, stats: Stats::default() }
    }

    /// One request, answered or not.
    pub async fn once(&self, path: &str, key: Option<&str>) -> Result<(u16, Value), String> {
        let mut req = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        *self.stats.statuses.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
        // `/readyz` answers 503 with its own body by design: it is the outage report.
        let excused = status == 503 && (is_unavailable_body(&body) || path == "/readyz");
        if status == 503 {
            let mut seen = self.stats.unavailable.lock().unwrap_or_else(|e| e.into_inner());
            if seen.len() < 5 {
                seen.push(path.to_owned());
            }
        }
        if status >= 500 && !excused {
            self.stats.violations.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{status} on {path}: {body}"));
        }
        Ok((status, body))
    }

    /// Sends until the API answers something other than 503, retrying through
    /// outages with the same idempotency key.
    pub async fn call(&self, path: &str, key: Option<&str>) -> Result<(u16, Value), String> {
        let deadline = Instant::now() + REQUEST_PATIENCE;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.once(path, key).await {
                Ok((status, body)) if status < 500 => return Ok((status, body)),
                Ok(_) => {}
                Err(_) => {
                    self.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("{path}: no answer but 5xx or silence for {REQUEST_PATIENCE:?}"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }
}

/// How a runner's script ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// start, restart
    Running,
    /// start, restart, stop
    Stopped,
    /// start, stop, delete
    Deleted,
}

impl Fate {
    fn of(i: usize) -> Self {
        [Fate::Running, Fate::Stopped, Fate::Deleted][i % 3]
    }

    /// The runner's observed state once everything settled.
    pub fn observed(self) -> &'static str {
        match self {
            Fate::Running => "running",
            Fate::Stopped => "stopped",
            Fate::Deleted => "terminated",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Accepted {
    pub command_id: Uuid,
    pub kind: &'static str,
}

/// Everything the load was told was accepted.
#[derive(Default)]
pub struct Ledger {
    pub accepted: Mutex<Vec<Accepted>>,
    pub runners: Mutex<Vec<(String, Fate)>>,
    pub emails: Mutex<Vec<Uuid>>,
    /// Requests the API refused for a reason the load did not expect.
    pub refused: Mutex<Vec<String>>,
}

impl Ledger {
    fn accept(&self, body: &Value, kind: &'static str) -> Option<Uuid> {
        let id = body["command_id"].as_str().or(body["scan_command_id"].as_str())?.parse().ok()?;
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        // Scan requests while a scan is queued join it: one command, counted once.
        if !accepted.iter().any(|a| a.command_id == id) {
            accepted.push(Accepted { command_id: id, kind });
        }
        Some(id)
    }

    fn refuse(&self, what: String) {
        self.refused.lock().unwrap_or_else(|e| e.into_inner()).push(what);
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn runners(&self) -> Vec<(String, Fate)> {
        self.runners.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn emails(&self) -> Vec<Uuid> {
        self.emails.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How much load, spread over how long.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub runners: usize,
    pub emails: usize,
    pub scans: usize,
    pub spread: Duration,
}

impl Default for Plan {
    /// 60 runners (160 runner commands), 80 e-mails and up to 8 scans: about 250 commands.
    fn default() -> Self {
        Self { runners: 60, emails: 80, scans: 8, spread: Duration::from_secs(12) }
    }
}

pub const BUCKET: &str = "geonex-faults";
const IMAGE: &str = "geonex/fire:1";

pub struct Load {
    pub ledger: Arc<Ledger>,
    tasks: tokio::task::JoinSet<()>,
}

impl Load {
    /// Starts the load; runner ids and idempotency keys begin with `tag`.
    pub fn start(api: Arc<Api>, plan: Plan, tag: &str) -> Self {
        let ledger = Arc::new(Ledger::default());
        let mut tasks = tokio::task::JoinSet::new();
        let at = |i: usize, n: usize| plan.spread.mul_f64(i as f64 / n.max(1) as f64);
        for i in 0..plan.runners {
            let (api, ledger) = (api.clone(), ledger.clone());
            let runner = format!("{tag}-r{i}");
            let after = at(i, plan.runners);
            tasks.spawn(async move {
                tokio::time::sleep(after).await;
                runner_script(&api, &ledger, runner, Fate::of(i), i).await;
            });
        }
        for i in 0..plan.emails {
            let (api, ledger) = (api.clone(), ledger.clone());
            let (after, key) = (at(i, plan.emails), format!("{tag}-mail-{i}"));
            tasks.spawn(async move {
                tokio::time::sleep(after).await;
                let path = format!("/send-email?image_name={IMAGE}&user_name=fault{i}&email=fault{i}@example.org");
                match api.call(&path, Some(&key)).await {
                    Ok((202, body)) => {
                        if let Some(id) = ledger.accept(&body, "send_email") {
                            ledger.emails.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                        }
                    }
                    other => ledger.refuse(format!("{path}: {other:?}")),
                }
            });
        }
        for i in 0..plan.scans {
            let (api, ledger) = (api.clone(), ledger.clone());
            let after = at(i, plan.scans);
            tasks.spawn(async move {
                tokio::time::sleep(after).await;
                match api.call("/get-s3-usage?refresh=true", None).await {
                    Ok((200, body)) => {
                        ledger.accept(&body, "s3_usage_scan");
                    }
                    other => ledger.refuse(format!("scan request: {other:?}")),
                }
            });
        }
        Self { ledger, tasks }
    }

    /// Waits for every script to have sent its last command.
    pub async fn finish(mut self, within: Duration) -> Arc<Ledger> {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        assert!(tokio::time::timeout(within, all).await.is_ok(), "the load did not finish sending within {within:?}");
        self.ledger
    }
}

/// One runner's commands, each sent once the API can take it: a restart or a
/// stop names the instance, so it waits until the start recorded one.
async fn runner_script(api: &Api, ledger: &Ledger, runner: String, fate: Fate, i: usize) {
    let output = format!("s3://{BUCKET}/out{}", i % 6);
    let start = format!(
        "/start-runner?instance_type=m5d.large&image_name={IMAGE}&s3_output={output}&runner_id={runner}&runner_name=Fault"
    );
    if !command(api, ledger, &start, &format!("{runner}-start"), "start_runner").await {
        return;
    }
    ledger.runners.lock().unwrap_or_else(|e| e.into_inner()).push((runner.clone(), fate));
    let Some(instance) = instance_of(api, &runner).await else {
        ledger.refuse(format!("{runner}: no instance was ever recorded"));
        return;
    };
    let restart = format!(
        "/restart-runner?instance_id={instance}&image_name={IMAGE}&s3_output={output}&runner_id={runner}&runner_name=Fault"
    );
    let stop = format!("/stop-runner?instance_id={instance}&runner_id={runner}");
    let delete = format!("/delete-runner?instance_id={instance}&runner_id={runner}");
    let steps: Vec<(&str, &str, &'static str)> = match fate {
        Fate::Running => vec![(&restart, "restart", "restart_runner")],
        Fate::Stopped => vec![(&restart, "restart", "restart_runner"), (&stop, "stop", "stop_runner")],
        Fate::Deleted => vec![(&stop, "stop", "stop_runner"), (&delete, "delete", "delete_runner")],
    };
    for (path, step, kind) in steps {
        if !command(api, ledger, path, &format!("{runner}-{step}"), kind).await {
            return;
        }
    }
}

async fn command(api: &Api, ledger: &Ledger, path: &str, key: &str, kind: &'static str) -> bool {
    match api.call(path, Some(key)).await {
        Ok((202, body)) => ledger.accept(&body, kind).is_some(),
        other => {
            ledger.refuse(format!("{path}: {other:?}"));
            false
        }
    }
}

/// The runner's recorded instance, once its start launched one.
async fn instance_of(api: &Api, runner: &str) -> Option<String> {
    let deadline = Instant::now() + REQUEST_PATIENCE;
    while Instant::now() < deadline {
        if let Ok((200, body)) = api.call(&format!("/describe-runners?runner_id={runner}"), None).await
            && let Some(id) = body["runners"][0]["instance_id"].as_str()
        {
            return Some(id.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

/// One row of the fault report.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub accepted: usize,
    pub finished: usize,
    pub lost: usize,
    pub duplicate_instances: usize,
    pub duplicate_emails: usize,
    /// From the end of the fault to every accepted command finished.
    pub recovery: Duration,
}

pub const HEADER: &str = "| scenario | commands accepted | finished | lost | duplicate instances | duplicate e-mails | recovery s |\n|---|---:|---:|---:|---:|---:|---:|";

impl Row {
    pub fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            self.scenario,
            self.accepted,
            self.finished,
            self.lost,
            self.duplicate_instances,
            self.duplicate_emails,
            self.recovery.as_secs_f64()
        )
    }

    /// Prints the row as a table and keeps it in `target/fault-report/`, where
    /// the rows of one run of the suite add up to the whole report.
    pub fn publish(&self) {
        eprintln!("\n{HEADER}\n{}\n", self.line());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fault-report");
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join(format!("{}.md", self.scenario.replace(' ', "-"))), format!("{}\n", self.line()));
        }
    }
}

/// What the independent clients found.
#[derive(Debug, Default)]
pub struct Findings {
    pub finished: usize,
    pub unfinished: Vec<String>,
    pub dead: Vec<String>,
    /// Commands of the deployment not finished, whoever submitted them.
    pub stray_unfinished: Vec<String>,
    pub duplicate_instances: Vec<String>,
    pub wrong_state: Vec<String>,
    pub orphans: Vec<String>,
    pub duplicate_emails: Vec<String>,
    pub missing_emails: Vec<String>,
    pub recovery: Duration,
}

/// A command's id, status, last error and action.
type CommandRow = (Uuid, String, Option<String>, String);

/// Polls the database until every accepted command is finished (or `limit`
/// passes); returns how long after `since` that was.
pub async fn settle(pool: &sqlx::PgPool, ledger: &Ledger, since: Instant, limit: Duration) -> Findings {
    let accepted = ledger.accepted();
    let ids: Vec<Uuid> = accepted.iter().map(|a| a.command_id).collect();
    let kinds: BTreeMap<Uuid, &str> = accepted.iter().map(|a| (a.command_id, a.kind)).collect();
    let deadline = Instant::now() + limit;
    let mut findings = Findings::default();
    loop {
        let rows: Result<Vec<CommandRow>, _> =
            sqlx::query_as("select command_id, status, last_error, action from command where command_id = any($1)")
                .bind(&ids)
                .fetch_all(pool)
                .await;
        if let Ok(rows) = rows {
            let terminal: BTreeSet<Uuid> =
                rows.iter().filter(|r| r.1 == "succeeded" || r.1 == "dead").map(|r| r.0).collect();
            if terminal.len() == ids.len() || Instant::now() > deadline {
                findings.recovery = since.elapsed();
                findings.finished = terminal.len();
                let status: BTreeMap<Uuid, &str> = rows.iter().map(|r| (r.0, r.1.as_str())).collect();
                findings.unfinished = ids
                    .iter()
                    .filter(|id| !terminal.contains(id))
                    .map(|id| {
                        let kind = kinds.get(id).copied().unwrap_or("?");
                        format!("{kind} {id}: {}", status.get(id).copied().unwrap_or("not in the database"))
                    })
                    .collect();
                findings.dead = rows
                    .iter()
                    .filter(|r| r.1 == "dead")
                    .map(|r| format!("{} {}: {}", r.3, r.0, r.2.as_deref().unwrap_or("")))
                    .collect();
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Accepted commands the load never heard of (an answer lost with the API)
    // must finish too.
    let stray: Vec<(Uuid, String, String)> =
        sqlx::query_as("select command_id, action, status from command where status not in ('succeeded', 'dead')")
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    findings.stray_unfinished = stray.iter().map(|(id, a, s)| format!("{a} {id}: {s}")).collect();
    findings
}

/// The fleet's instances in moto: (instance id, runner tag, state), terminated ones included.
async fn fleet_instances(ec2: &aws_sdk_ec2::Client, fleet: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = ec2
            .describe_instances()
            .filters(aws_sdk_ec2::types::Filter::builder().name("tag:geonex:fleet").values(fleet).build())
            .set_next_token(next.clone())
            .send()
            .await
            .expect("describe the fleet in moto");
        for i in page.reservations().iter().flat_map(|r| r.instances()) {
            let runner = i
                .tags()
                .iter()
                .find(|t| t.key() == Some("geonex:runner-id"))
                .and_then(|t| t.value())
                .unwrap_or("(untagged)")
                .to_owned();
            let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();
            out.push((i.instance_id().unwrap_or_default().to_owned(), runner, state));
        }
        next = page.next_token().map(str::to_owned).filter(|t| !t.is_empty());
        if next.is_none() {
            return out;
        }
    }
}

/// Counts the cloud and the database against the runners' scripts: one
/// instance ever launched per runner, in the state its script left it (none
/// live for a deleted runner), recorded as the runner's, and no live instance
/// that no live runner owns. The instance observer may still be following the
/// last transitions, so the check is repeated for up to `limit`.
pub async fn check_instances(
    findings: &mut Findings,
    pool: &sqlx::PgPool,
    ec2: &aws_sdk_ec2::Client,
    fleet: &str,
    runners: &[(String, Fate)],
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    loop {
        let instances = fleet_instances(ec2, fleet).await;
        let mut by_runner: BTreeMap<&str, Vec<(&str, &str)>> = BTreeMap::new();
        for (id, runner, state) in &instances {
            by_runner.entry(runner.as_str()).or_default().push((id.as_str(), state.as_str()));
        }
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("select runner_id, observed_state, instance_id from runner").fetch_all(pool).await.unwrap_or_default();
        let recorded: BTreeMap<&str, (&str, Option<&str>)> =
            rows.iter().map(|(r, s, i)| (r.as_str(), (s.as_str(), i.as_deref()))).collect();
        let (mut duplicates, mut wrong) = (Vec::new(), Vec::new());
        for (runner, fate) in runners {
            let launched = by_runner.remove(runner.as_str()).unwrap_or_default();
            if launched.len() > 1 {
                duplicates.push(format!("{runner}: {launched:?}"));
            }
            let live: Vec<&(&str, &str)> = launched.iter().filter(|(_, s)| *s != "terminated").collect();
            let row = recorded.get(runner.as_str()).copied();
            let fine = match fate {
                Fate::Deleted => live.is_empty() && row.is_some_and(|r| r.0 == "terminated"),
                _ => {
                    live.len() == 1
                        && live[0].1 == fate.observed()
                        && row.is_some_and(|r| r.0 == fate.observed() && r.1 == Some(live[0].0))
                }
            };
            if !fine {
                wrong.push(format!("{runner} ({fate:?}): cloud {launched:?}, database {row:?}"));
            }
        }
        // What is left belongs to no runner of the load.
        let orphans: Vec<String> = by_runner
            .iter()
            .flat_map(|(r, list)| list.iter().filter(|(_, s)| *s != "terminated").map(move |(id, s)| format!("{id} ({r}, {s})")))
            .collect();
        if (wrong.is_empty() && orphans.is_empty()) || Instant::now() > deadline {
            findings.duplicate_instances = duplicates;
            findings.wrong_state = wrong;
            findings.orphans = orphans;
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Exactly one message per e-mail command, found by its Message-ID
/// (`<command id@domain>`) in the SMTP server's Maildir.
pub async fn check_emails(findings: &mut Findings, smtp: &crate::smtp::SmtpServer, emails: &[Uuid]) {
    // Every command finished; give the last messages a moment to be written.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for m in smtp.messages() {
            if let Some(id) = m["message_id"].as_str() {
                *counts.entry(id.to_owned()).or_default() += 1;
            }
        }
        if counts.len() >= emails.len() || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for id in emails {
        let key = format!("<{id}@geonex.test>");
        match counts.get(&key).copied().unwrap_or(0) {
            0 => findings.missing_emails.push(key),
            1 => {}
            n => findings.duplicate_emails.push(format!("{key} x{n}")),
        }
    }
}

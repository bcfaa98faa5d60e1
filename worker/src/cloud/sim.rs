//! A simulated cloud standing in for EC2 when no AWS configuration is given: for
//! trying the system on a laptop, and for load and fault tests.
//!
//! It behaves like EC2 where the control plane can tell: EC2-shaped instance
//! ids, `pending → running` after a boot delay, stop/start/terminate with their
//! intermediate states, tags, user data, and `ClientToken` deduplication. It can
//! inject latency, throttling, capacity and internal errors. Its state survives a
//! crash of the process: every change is appended to a journal beside the JSON
//! snapshot (one line, one write), and the journal is folded into the snapshot
//! once it has grown as long as the fleet, so a change costs the same with ten
//! instances as with ten thousand. It counts the calls it answers, for tests
//! and benchmarks. While an instance is `running` its agent runs in this
//! process, as cloud-init would start it on a real instance ([`super::sim_agents`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use geonex_shared::config::SimSettings;
use geonex_shared::domain::ObservedState;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Cloud, CloudError, DESCRIBE_BATCH, InstanceInfo, LaunchSpec, TAG_COMMAND_ID, TAG_RUNNER_ID, TAG_RUNNER_NAME};
use crate::retry::ErrorClass;

/// An instance's phase is the EC2 state it shows (never `requested` or `failed`).
type Phase = ObservedState;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimInstance {
    instance_id: String,
    instance_type: String,
    phase: Phase,
    since: DateTime<Utc>,
    tags: HashMap<String, String>,
    user_data: String,
    #[serde(default)]
    launched_at: Option<DateTime<Utc>>,
    #[serde(default)]
    spot: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SimState {
    instances: BTreeMap<String, SimInstance>,
    /// Client token → the instance it launched.
    tokens: HashMap<String, String>,
    /// Runner id → its instances (rebuilt on load).
    #[serde(skip)]
    by_runner: HashMap<String, Vec<String>>,
    /// Changes appended since the snapshot was written.
    #[serde(skip)]
    journaled: usize,
}

/// One line of the journal: an instance as a change left it, and the client
/// token of its launch.
#[derive(Serialize, Deserialize)]
struct Change {
    instance: SimInstance,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

impl SimState {
    fn index(&mut self, inst: &SimInstance) {
        if let Some(runner) = inst.tags.get(TAG_RUNNER_ID) {
            let ids = self.by_runner.entry(runner.clone()).or_default();
            if !ids.contains(&inst.instance_id) {
                ids.push(inst.instance_id.clone());
            }
        }
    }

    fn apply(&mut self, change: Change) {
        self.index(&change.instance);
        if let Some(token) = change.token {
            self.tokens.insert(token, change.instance.instance_id.clone());
        }
        self.instances.insert(change.instance.instance_id.clone(), change.instance);
    }

    /// The snapshot and the journal after it.
    fn load(file: &Path) -> Result<Self, String> {
        let mut state: SimState = if file.exists() {
            let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?
        } else {
            SimState::default()
        };
        let all: Vec<SimInstance> = state.instances.values().cloned().collect();
        for inst in &all {
            state.index(inst);
        }
        if let Ok(text) = std::fs::read_to_string(journal_of(file)) {
            // A torn last line (the process died mid-write) is skipped.
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if let Ok(change) = serde_json::from_str::<Change>(line) {
                    state.apply(change);
                    state.journaled += 1;
                }
            }
        }
        Ok(state)
    }
}

fn journal_of(file: &Path) -> PathBuf {
    file.with_extension("journal")
}

/// Calls the simulated cloud answered, by operation.
#[derive(Debug, Default)]
pub struct SimCalls {
    /// Calls answered `RequestLimitExceeded`.
    pub throttled: AtomicU64,
    pub describe: AtomicU64,
    pub run: AtomicU64,
    pub start: AtomicU64,
    pub stop: AtomicU64,
    pub terminate: AtomicU64,
}

impl SimCalls {
    /// The counts as a JSON object, for whoever reads them over HTTP.
    pub fn to_json(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "throttled": n(&self.throttled),
            "describe": n(&self.describe),
            "run": n(&self.run),
            "start": n(&self.start),
            "stop": n(&self.stop),
            "terminate": n(&self.terminate),
        })
    }
}

/// Which of EC2's request buckets meters a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SimCall {
    Run,
    Start,
    Terminate,
    Mutating,
    Describe,
    /// A DescribeInstances with neither filters, ids nor pagination.
    DescribeUnfiltered,
}

impl SimCall {
    /// EC2's documented bucket sizes: burst and refill per second.
    fn bucket(self) -> (f64, f64) {
        match self {
            SimCall::Run | SimCall::Start => (5.0, 2.0),
            SimCall::Terminate => (100.0, 5.0),
            SimCall::Mutating => (50.0, 5.0),
            SimCall::Describe => (100.0, 20.0),
            SimCall::DescribeUnfiltered => (50.0, 10.0),
        }
    }
}

/// EC2's token buckets for one account and region, as the simulated cloud meters them.
#[derive(Debug, Default)]
struct Meter {
    buckets: HashMap<SimCall, (f64, std::time::Instant)>,
}

impl Meter {
    /// Takes a token if there is one. As on EC2, a refused call does not count.
    fn take(&mut self, call: SimCall) -> bool {
        let (burst, rate) = call.bucket();
        let now = std::time::Instant::now();
        let (tokens, at) = self.buckets.entry(call).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct SimCloud {
    meter: Mutex<Meter>,
    state: Mutex<SimState>,
    file: Option<PathBuf>,
    settings: SimSettings,
    /// Woken when an instance is launched, started, stopped or terminated, so
    /// its agent starts or stops without waiting for the next look.
    pub(super) changed: tokio::sync::Notify,
    /// The agents of running instances; in memory only: they are processes of
    /// the instances, started again when this process is.
    pub(super) agents: super::sim_agents::Registry,
    calls: SimCalls,
}

impl SimInstance {
    /// Moves through timed transitions (boot, stop, shutdown) up to `now`.
    fn settle(&mut self, now: DateTime<Utc>, s: &SimSettings) {
        let elapsed = (now - self.since).to_std().unwrap_or_default();
        let next = match self.phase {
            Phase::Pending if elapsed >= Duration::from_millis(s.boot_delay_ms) => Phase::Running,
            Phase::Stopping if elapsed >= Duration::from_millis(s.stop_delay_ms) => Phase::Stopped,
            Phase::ShuttingDown if elapsed >= Duration::from_millis(s.stop_delay_ms) => Phase::Terminated,
            p => p,
        };
        if next != self.phase {
            self.phase = next;
            self.since = now;
        }
    }

    fn info(&self) -> InstanceInfo {
        InstanceInfo {
            instance_id: self.instance_id.clone(),
            state: self.phase,
            tags: self.tags.clone(),
            launched_at: self.launched_at,
        }
    }
}

fn error(class: ErrorClass, code: &str, message: &str) -> CloudError {
    CloudError::new(class, Some(code), format!("{code}: {message}"))
}

impl SimCloud {
    /// A simulated cloud keeping its state in `file` (created if missing), or in
    /// memory only when `file` is `None`.
    pub fn open(file: Option<PathBuf>, settings: SimSettings) -> Result<Self, String> {
        let mut state = match &file {
            Some(f) => SimState::load(f)?,
            None => SimState::default(),
        };
        let cloud = Self {
            meter: Mutex::new(Meter::default()),
            state: Mutex::new(SimState::default()),
            file,
            settings,
            changed: tokio::sync::Notify::new(),
            agents: super::sim_agents::Registry::default(),
            calls: SimCalls::default(),
        };
        cloud.compact(&mut state).map_err(|e| e.message)?;
        *cloud.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        Ok(cloud)
    }

    /// The instances saved in `file` by a simulated cloud (possibly running in
    /// another process), read without changing anything.
    pub fn saved_instances(file: &Path, settings: &SimSettings) -> Result<Vec<InstanceInfo>, String> {
        let mut state = SimState::load(file)?;
        let now = Utc::now();
        Ok(state.instances.values_mut().map(|i| {
            i.settle(now, settings);
            i.info()
        }).collect())
    }

    /// The user data of an instance saved in `file`, read without changing anything.
    pub fn saved_user_data(file: &Path, instance_id: &str) -> Result<Option<String>, String> {
        Ok(SimState::load(file)?.instances.get(instance_id).map(|i| i.user_data.clone()))
    }

    /// The calls answered so far.
    pub fn calls(&self) -> &SimCalls {
        &self.calls
    }

    /// Writes the whole state as the snapshot and empties the journal.
    fn compact(&self, state: &mut SimState) -> Result<(), CloudError> {
        let Some(file) = &self.file else { return Ok(()) };
        let fail = |e: String| error(ErrorClass::Retryable, "InternalError", &format!("saving simulated cloud: {e}"));
        let text = serde_json::to_string(state).map_err(|e| fail(e.to_string()))?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, file)).map_err(|e| fail(e.to_string()))?;
        std::fs::write(journal_of(file), "").map_err(|e| fail(e.to_string()))?;
        state.journaled = 0;
        Ok(())
    }

    /// Records one instance's change: a journal line, and now and then a new snapshot.
    fn save(&self, state: &mut SimState, instance_id: &str, token: Option<&str>) -> Result<(), CloudError> {
        let Some(file) = &self.file else { return Ok(()) };
        let Some(instance) = state.instances.get(instance_id).cloned() else { return Ok(()) };
        let fail = |e: String| error(ErrorClass::Retryable, "InternalError", &format!("saving simulated cloud: {e}"));
        let mut line = serde_json::to_string(&Change { instance, token: token.map(str::to_owned) })
            .map_err(|e| fail(e.to_string()))?;
        line.push('\n');
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(journal_of(file))
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| fail(e.to_string()))?;
        state.journaled += 1;
        if state.journaled > state.instances.len().max(1000) {
            self.compact(state)?;
        }
        Ok(())
    }

    /// Latency and injected faults, before any call; the call is counted as
    /// the EC2 adapter counts its requests, by operation and outcome.
    async fn weather(&self, call: SimCall, op: &'static str) -> Result<(), CloudError> {
        let result = self.conditions(call).await;
        super::count_request(op, result.as_ref().err().and_then(|e| e.code.as_deref()).unwrap_or("ok"));
        result
    }

    async fn conditions(&self, call: SimCall) -> Result<(), CloudError> {
        let s = &self.settings;
        let launching = call == SimCall::Run;
        if s.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.latency_ms)).await;
        }
        if s.aws_rate_limits && !self.meter.lock().unwrap_or_else(|e| e.into_inner()).take(call) {
            self.calls.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(error(ErrorClass::Retryable, "RequestLimitExceeded", "Request limit exceeded."));
        }
        let mut rng = rand::rng();
        if rng.random_bool(s.throttle_rate.clamp(0.0, 1.0)) {
            self.calls.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(error(ErrorClass::Retryable, "RequestLimitExceeded", "simulated throttling"));
        }
        if launching && rng.random_bool(s.capacity_error_rate.clamp(0.0, 1.0)) {
            return Err(error(ErrorClass::Retryable, "InsufficientInstanceCapacity", "simulated capacity shortage"));
        }
        if rng.random_bool(s.error_rate.clamp(0.0, 1.0)) {
            return Err(error(ErrorClass::Retryable, "InternalError", "simulated internal error"));
        }
        Ok(())
    }

    /// Applies `f` to one instance under the lock and saves the result.
    fn with_instance<T>(
        &self,
        instance_id: &str,
        f: impl FnOnce(&mut SimInstance, DateTime<Utc>) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let inst = state
            .instances
            .get_mut(instance_id)
            .ok_or_else(|| error(ErrorClass::Permanent, "InvalidInstanceID.NotFound", instance_id))?;
        inst.settle(now, &self.settings);
        let out = f(inst, now)?;
        self.save(&mut state, instance_id, None)?;
        Ok(out)
    }

    /// [`Self::with_instance`] for a call that may move the instance to another
    /// state: its agent may have to start or stop.
    fn change_instance<T>(
        &self,
        instance_id: &str,
        f: impl FnOnce(&mut SimInstance, DateTime<Utc>) -> Result<T, CloudError>,
    ) -> Result<T, CloudError> {
        let out = self.with_instance(instance_id, f);
        self.changed.notify_waiters();
        out
    }

    /// EC2 takes a spot instance back: it shuts down and terminates. False if
    /// it is not a live spot instance.
    pub fn interrupt(&self, instance_id: &str) -> bool {
        let out = self.with_instance(instance_id, |i, now| {
            if !i.spot || i.phase.is_gone() {
                return Ok(false);
            }
            i.phase = Phase::ShuttingDown;
            i.since = now;
            Ok(true)
        });
        self.changed.notify_waiters();
        out.unwrap_or(false)
    }

    /// The instance's type and whether it is a spot instance.
    pub fn billing(&self, instance_id: &str) -> Option<(String, bool)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.instances.get(instance_id).map(|i| (i.instance_type.clone(), i.spot))
    }

    /// Every instance, for tests and operators' inspection.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        state.instances.values_mut().map(|i| {
            i.settle(now, &self.settings);
            i.info()
        }).collect()
    }

    /// DescribeInstances as EC2 answers it: unknown ids fail the whole call
    /// naming them, and a call with neither filters, ids nor pagination draws
    /// from the smaller bucket.
    pub async fn describe_query(&self, q: &DescribeQuery) -> Result<Vec<InstanceInfo>, CloudError> {
        let unfiltered = q.instance_ids.is_empty() && q.filters.is_empty() && !q.paginated;
        let call = if unfiltered { SimCall::DescribeUnfiltered } else { SimCall::Describe };
        self.weather(call, "DescribeInstances").await?;
        self.calls.describe.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let unknown: Vec<&str> =
            q.instance_ids.iter().filter(|id| !state.instances.contains_key(*id)).map(String::as_str).collect();
        if !unknown.is_empty() {
            let message = format!("The instance IDs '{}' do not exist", unknown.join(", "));
            return Err(error(ErrorClass::Permanent, "InvalidInstanceID.NotFound", &message));
        }
        let now = Utc::now();
        let mut out = Vec::new();
        let settings = &self.settings;
        let mut look = |i: &mut SimInstance| -> Result<(), CloudError> {
            i.settle(now, settings);
            if q.matches(i)? {
                out.push(i.info());
            }
            Ok(())
        };
        // The instances that can match: those named, or a runner's (indexed),
        // or else every one.
        let runners = q.filters.iter().find(|(name, _)| name.strip_prefix("tag:") == Some(TAG_RUNNER_ID));
        let candidates: Option<std::collections::BTreeSet<String>> = match (q.instance_ids.is_empty(), runners) {
            (false, _) => Some(q.instance_ids.iter().cloned().collect()),
            (true, Some((_, values))) => {
                Some(values.iter().flat_map(|r| state.by_runner.get(r).cloned().unwrap_or_default()).collect())
            }
            (true, None) => None,
        };
        let state = &mut *state;
        match candidates {
            None => state.instances.values_mut().try_for_each(&mut look)?,
            Some(ids) => {
                for id in &ids {
                    if let Some(i) = state.instances.get_mut(id) {
                        look(i)?;
                    }
                }
            }
        }
        Ok(out)
    }

    /// RunInstances with these tags on the instance (a [`Cloud::launch`]
    /// tags it as this deployment's runner).
    pub async fn run_instance(&self, spec: &LaunchSpec, tags: HashMap<String, String>) -> Result<InstanceInfo, CloudError> {
        self.weather(SimCall::Run, "RunInstances").await?;
        let s = &self.settings;
        if s.short_instance_types.iter().any(|t| t == &spec.instance_type) {
            let message = format!("no {} capacity in the simulated zone", spec.instance_type);
            return Err(error(ErrorClass::Retryable, "InsufficientInstanceCapacity", &message));
        }
        if spec.spot && rand::rng().random_bool(s.spot_capacity_error_rate.clamp(0.0, 1.0)) {
            return Err(error(ErrorClass::Retryable, "InsufficientInstanceCapacity", "no spot capacity in the simulated zone"));
        }
        self.calls.run.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        if let Some(id) = state.tokens.get(&spec.client_token).cloned()
            && let Some(inst) = state.instances.get_mut(&id)
        {
            // Same token, same instance: EC2's idempotent RunInstances.
            inst.settle(now, &self.settings);
            return Ok(inst.info());
        }
        let inst = SimInstance {
            instance_id: new_instance_id(),
            instance_type: spec.instance_type.clone(),
            phase: Phase::Pending,
            since: now,
            tags,
            user_data: spec.user_data.clone(),
            launched_at: Some(now),
            spot: spec.spot,
        };
        let info = inst.info();
        let id = inst.instance_id.clone();
        state.apply(Change { instance: inst, token: Some(spec.client_token.clone()) });
        self.save(&mut state, &id, Some(&spec.client_token))?;
        self.changed.notify_waiters();
        Ok(info)
    }

    /// The user data an instance was launched with (or last given).
    pub fn user_data(&self, instance_id: &str) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.instances.get(instance_id).map(|i| i.user_data.clone())
    }
}

/// One DescribeInstances as EC2's API takes it: instance ids, filters
/// (`tag:KEY`, `instance-state-name`, `instance-id`; each matches any of its
/// values, and an instance must match them all), and whether it is paginated.
#[derive(Debug, Default, Clone)]
pub struct DescribeQuery {
    pub instance_ids: Vec<String>,
    pub filters: Vec<(String, Vec<String>)>,
    pub paginated: bool,
}

impl DescribeQuery {
    fn matches(&self, i: &SimInstance) -> Result<bool, CloudError> {
        for (name, values) in &self.filters {
            let value = match name.as_str() {
                "instance-state-name" => Some(i.phase.as_str()),
                "instance-id" => Some(i.instance_id.as_str()),
                n => match n.strip_prefix("tag:") {
                    Some(key) => i.tags.get(key).map(String::as_str),
                    None => {
                        let message = format!("The filter '{n}' is invalid");
                        return Err(error(ErrorClass::Permanent, "InvalidParameterValue", &message));
                    }
                },
            };
            if !value.is_some_and(|v| values.iter().any(|w| w == v)) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn new_instance_id() -> String {
    let mut rng = rand::rng();
    let hex: String = (0..17).map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0')).collect();
    format!("i-{hex}")
}

#[async_trait]
impl Cloud for SimCloud {
    async fn find_runner_instances(&self, runner_id: &str) -> Result<Vec<InstanceInfo>, CloudError> {
        self.weather(SimCall::Describe, "DescribeInstances").await?;
        self.calls.describe.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        let ids = state.by_runner.get(runner_id).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for id in ids {
            if let Some(i) = state.instances.get_mut(&id) {
                i.settle(now, &self.settings);
                if !i.phase.is_gone() {
                    out.push(i.info());
                }
            }
        }
        Ok(out)
    }

    async fn list_fleet_instances(&self) -> Result<Vec<InstanceInfo>, CloudError> {
        self.weather(SimCall::Describe, "DescribeInstances").await?;
        self.calls.describe.fetch_add(1, Ordering::Relaxed);
        // One simulated cloud serves one deployment: its whole fleet.
        Ok(self.instances().into_iter().filter(|i| i.state != ObservedState::Terminated).collect())
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, CloudError> {
        self.weather(SimCall::Describe, "DescribeInstances").await?;
        self.calls.describe.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        Ok(state.instances.get_mut(instance_id).map(|i| {
            i.settle(now, &self.settings);
            i.info()
        }))
    }

    async fn describe_many(&self, instance_ids: &[String]) -> Result<Vec<InstanceInfo>, CloudError> {
        let mut out = Vec::with_capacity(instance_ids.len());
        for chunk in instance_ids.chunks(DESCRIBE_BATCH) {
            self.weather(SimCall::Describe, "DescribeInstances").await?;
            self.calls.describe.fetch_add(1, Ordering::Relaxed);
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Utc::now();
            for id in chunk {
                if let Some(i) = state.instances.get_mut(id) {
                    i.settle(now, &self.settings);
                    out.push(i.info());
                }
            }
        }
        Ok(out)
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<InstanceInfo, CloudError> {
        let tags = HashMap::from([
            (TAG_RUNNER_ID.to_owned(), spec.runner_id.clone()),
            (TAG_RUNNER_NAME.to_owned(), spec.runner_name.clone()),
            (TAG_COMMAND_ID.to_owned(), spec.command_id.clone()),
            ("Name".to_owned(), format!("geonex-runner {}", spec.runner_name)),
        ]);
        self.run_instance(spec, tags).await
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        self.weather(SimCall::Start, "StartInstances").await?;
        self.calls.start.fetch_add(1, Ordering::Relaxed);
        self.change_instance(instance_id, |i, now| match i.phase {
            Phase::Stopped => {
                i.phase = Phase::Pending;
                i.since = now;
                Ok(())
            }
            Phase::Pending | Phase::Running => Ok(()),
            Phase::Stopping => Err(error(ErrorClass::Retryable, "IncorrectInstanceState", "instance is stopping")),
            Phase::ShuttingDown | Phase::Terminated | Phase::Requested | Phase::Failed => {
                Err(error(ErrorClass::Permanent, "IncorrectInstanceState", "instance is terminated"))
            }
        })
    }

    async fn stop(&self, instance_id: &str) -> Result<(), CloudError> {
        self.weather(SimCall::Mutating, "StopInstances").await?;
        self.calls.stop.fetch_add(1, Ordering::Relaxed);
        self.change_instance(instance_id, |i, now| match i.phase {
            Phase::Running => {
                i.phase = Phase::Stopping;
                i.since = now;
                Ok(())
            }
            Phase::Stopping | Phase::Stopped => Ok(()),
            Phase::Pending => Err(error(ErrorClass::Retryable, "IncorrectInstanceState", "instance is pending")),
            Phase::ShuttingDown | Phase::Terminated | Phase::Requested | Phase::Failed => {
                Err(error(ErrorClass::Permanent, "IncorrectInstanceState", "instance is terminated"))
            }
        })
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        self.weather(SimCall::Terminate, "TerminateInstances").await?;
        self.calls.terminate.fetch_add(1, Ordering::Relaxed);
        self.change_instance(instance_id, |i, now| {
            if !matches!(i.phase, Phase::ShuttingDown | Phase::Terminated) {
                i.phase = Phase::ShuttingDown;
                i.since = now;
            }
            Ok(())
        })
    }

    async fn set_user_data(&self, instance_id: &str, user_data: &str) -> Result<(), CloudError> {
        self.weather(SimCall::Mutating, "ModifyInstanceAttribute").await?;
        self.change_instance(instance_id, |i, _| {
            if i.phase != Phase::Stopped {
                return Err(error(ErrorClass::Retryable, "IncorrectInstanceState", "user data changes need a stopped instance"));
            }
            i.user_data = user_data.to_owned();
            Ok(())
        })
    }

    fn label(&self) -> String {
        "SIMULATED cloud (not AWS)".into()
    }

    fn simulated(self: Arc<Self>) -> Option<Arc<SimCloud>> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> SimSettings {
        SimSettings { boot_delay_ms: 30, stop_delay_ms: 30, ..SimSettings::default() }
    }

    fn spec(token: &str) -> LaunchSpec {
        LaunchSpec {
            runner_id: "r1".into(),
            runner_name: "Prod".into(),
            command_id: "c1".into(),
            instance_type: "m5d.large".into(),
            user_data: "#!/bin/sh".into(),
            client_token: token.into(),
            spot: false,
        }
    }

    async fn state_of(c: &SimCloud, id: &str) -> ObservedState {
        c.describe(id).await.unwrap().unwrap().state
    }

    #[tokio::test]
    async fn instances_boot_stop_start_and_terminate_like_ec2() {
        let c = SimCloud::open(None, fast()).unwrap();
        let i = c.launch(&spec("t1")).await.unwrap();
        assert!(i.instance_id.starts_with("i-") && i.instance_id.len() == 19);
        assert_eq!(i.state, ObservedState::Pending);
        assert!(c.stop(&i.instance_id).await.is_err(), "a pending instance cannot stop yet");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(state_of(&c, &i.instance_id).await, ObservedState::Running);
        assert!(c.set_user_data(&i.instance_id, "x").await.is_err());
        c.stop(&i.instance_id).await.unwrap();
        assert_eq!(state_of(&c, &i.instance_id).await, ObservedState::Stopping);
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(state_of(&c, &i.instance_id).await, ObservedState::Stopped);
        c.set_user_data(&i.instance_id, "new").await.unwrap();
        c.start(&i.instance_id).await.unwrap();
        assert_eq!(state_of(&c, &i.instance_id).await, ObservedState::Pending);
        c.terminate(&i.instance_id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(state_of(&c, &i.instance_id).await, ObservedState::Terminated);
        let e = c.start(&i.instance_id).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert!(c.describe("i-00000000000000000").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_client_token_launches_once_and_state_survives_reopening() {
        let dir = std::env::temp_dir().join(format!("geonex-sim-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("cloud.json");
        let c = SimCloud::open(Some(file.clone()), fast()).unwrap();
        let a = c.launch(&spec("same")).await.unwrap();
        let b = c.launch(&spec("same")).await.unwrap();
        assert_eq!(a.instance_id, b.instance_id);
        assert_eq!(c.find_runner_instances("r1").await.unwrap().len(), 1);
        let again = SimCloud::open(Some(file), fast()).unwrap();
        let found = again.find_runner_instances("r1").await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].tags.get(TAG_COMMAND_ID).map(String::as_str), Some("c1"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn injected_faults_are_retryable_errors() {
        let c = SimCloud::open(None, SimSettings { capacity_error_rate: 1.0, ..fast() }).unwrap();
        let e = c.launch(&spec("t")).await.unwrap_err();
        assert_eq!(e.class, ErrorClass::Retryable);
        assert!(e.message.contains("InsufficientInstanceCapacity"));
        let c = SimCloud::open(None, SimSettings { throttle_rate: 1.0, ..fast() }).unwrap();
        assert!(c.describe("i-1").await.unwrap_err().message.contains("RequestLimitExceeded"));
    }
}

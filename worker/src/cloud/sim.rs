//! A simulated cloud standing in for EC2 when no AWS configuration is given: for
//! trying the system on a laptop, and for load and fault tests.
//!
//! It behaves like EC2 where the control plane can tell: EC2-shaped instance
//! ids, `pending → running` after a boot delay, stop/start/terminate with their
//! intermediate states, tags, user data, and `ClientToken` deduplication. It can
//! inject latency, throttling, capacity and internal errors. Its state is saved to
//! a JSON file after every change, so instances survive a crash of the process.
//! While an instance is `running` its agent runs in this process, as cloud-init
//! would start it on a real instance ([`super::sim_agents`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use geonex_shared::config::SimSettings;
use geonex_shared::domain::ObservedState;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{Cloud, CloudError, InstanceInfo, LaunchSpec, TAG_COMMAND_ID, TAG_RUNNER_ID, TAG_RUNNER_NAME};
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
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct SimState {
    instances: BTreeMap<String, SimInstance>,
    /// Client token → the instance it launched.
    tokens: HashMap<String, String>,
}

pub struct SimCloud {
    state: Mutex<SimState>,
    file: Option<PathBuf>,
    settings: SimSettings,
    /// Woken when an instance is launched, started, stopped or terminated, so
    /// its agent starts or stops without waiting for the next look.
    pub(super) changed: tokio::sync::Notify,
    /// The agents of running instances; in memory only: they are processes of
    /// the instances, started again when this process is.
    pub(super) agents: super::sim_agents::Registry,
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
    CloudError { class, not_found: code == "InvalidInstanceID.NotFound", message: format!("{code}: {message}") }
}

impl SimCloud {
    /// A simulated cloud keeping its state in `file` (created if missing), or in
    /// memory only when `file` is `None`.
    pub fn open(file: Option<PathBuf>, settings: SimSettings) -> Result<Self, String> {
        let state = match &file {
            Some(f) if f.exists() => {
                let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?
            }
            _ => SimState::default(),
        };
        Ok(Self {
            state: Mutex::new(state),
            file,
            settings,
            changed: tokio::sync::Notify::new(),
            agents: super::sim_agents::Registry::default(),
        })
    }

    fn save(&self, state: &SimState) -> Result<(), CloudError> {
        let Some(file) = &self.file else { return Ok(()) };
        let text = serde_json::to_string(state).map_err(|e| error(ErrorClass::Retryable, "InternalError", &e.to_string()))?;
        let tmp = file.with_extension("json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| error(ErrorClass::Retryable, "InternalError", &format!("saving simulated cloud: {e}")))
    }

    /// Latency and injected faults, before any call.
    async fn weather(&self, launching: bool) -> Result<(), CloudError> {
        let s = &self.settings;
        if s.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(s.latency_ms)).await;
        }
        let mut rng = rand::rng();
        if rng.random_bool(s.throttle_rate.clamp(0.0, 1.0)) {
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
        self.save(&state)?;
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

    /// Every instance, for tests and operators' inspection.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        state.instances.values_mut().map(|i| {
            i.settle(now, &self.settings);
            i.info()
        }).collect()
    }

    /// The user data an instance was launched with (or last given).
    pub fn user_data(&self, instance_id: &str) -> Option<String> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.instances.get(instance_id).map(|i| i.user_data.clone())
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
        self.weather(false).await?;
        Ok(self
            .instances()
            .into_iter()
            .filter(|i| i.tags.get(TAG_RUNNER_ID).is_some_and(|r| r == runner_id) && !i.state.is_gone())
            .collect())
    }

    async fn list_fleet_instances(&self) -> Result<Vec<InstanceInfo>, CloudError> {
        self.weather(false).await?;
        // One simulated cloud serves one deployment: its whole fleet.
        Ok(self.instances().into_iter().filter(|i| i.state != ObservedState::Terminated).collect())
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, CloudError> {
        self.weather(false).await?;
        match self.with_instance(instance_id, |i, _| Ok(i.info())) {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.not_found => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<InstanceInfo, CloudError> {
        self.weather(true).await?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Utc::now();
        if let Some(id) = state.tokens.get(&spec.client_token).cloned()
            && let Some(inst) = state.instances.get_mut(&id)
        {
            // Same token, same instance: EC2's idempotent RunInstances.
            inst.settle(now, &self.settings);
            return Ok(inst.info());
        }
        let tags = HashMap::from([
            (TAG_RUNNER_ID.to_owned(), spec.runner_id.clone()),
            (TAG_RUNNER_NAME.to_owned(), spec.runner_name.clone()),
            (TAG_COMMAND_ID.to_owned(), spec.command_id.clone()),
            ("Name".to_owned(), format!("geonex-runner {}", spec.runner_name)),
        ]);
        let inst = SimInstance {
            instance_id: new_instance_id(),
            instance_type: spec.instance_type.clone(),
            phase: Phase::Pending,
            since: now,
            tags,
            user_data: spec.user_data.clone(),
            launched_at: Some(now),
        };
        let info = inst.info();
        state.tokens.insert(spec.client_token.clone(), inst.instance_id.clone());
        state.instances.insert(inst.instance_id.clone(), inst);
        self.save(&state)?;
        self.changed.notify_waiters();
        Ok(info)
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        self.weather(false).await?;
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
        self.weather(false).await?;
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
        self.weather(false).await?;
        self.change_instance(instance_id, |i, now| {
            if !matches!(i.phase, Phase::ShuttingDown | Phase::Terminated) {
                i.phase = Phase::ShuttingDown;
                i.since = now;
            }
            Ok(())
        })
    }

    async fn set_user_data(&self, instance_id: &str, user_data: &str) -> Result<(), CloudError> {
        self.weather(false).await?;
        self.change_instance(instance_id, |i, _| {
            if i.phase != Phase::Stopped {
                return Err(error(ErrorClass::Retryable, "IncorrectInstanceState", "user data changes need a stopped instance"));
            }
            i.user_data = user_data.to_owned();
            Ok(())
        })
    }

    fn describe_self(&self) -> String {
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

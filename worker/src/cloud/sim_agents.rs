//! The agents of simulated instances. On a real instance cloud-init runs the
//! user data, whose script starts `geonex agent`; here [`SimAgents`] does that
//! for every `running` instance of a [`SimCloud`]: it reads the agent's settings
//! out of the instance's user data (API URL, agent token, runner, image, S3
//! output) and runs the agent's own core in this process
//! ([`crate::agent::run_with`]) with the simulated feed and containers of
//! [`crate::agent::sim`]. Its events reach the API over HTTP with the token, as
//! a real agent's do.
//!
//! When an instance leaves `running` its agent is stopped (it lets a running
//! container finish, as on a shutdown). Agents stop with this process too, and
//! when it starts again the agents of instances still running start again; each
//! instance's spool (`<spool root>/<instance id>`) keeps what was not delivered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use geonex_shared::config::{AgentSettings, SimSettings};
use geonex_shared::domain::ObservedState;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::InstanceInfo;
use super::sim::SimCloud;
use crate::agent::sim::{SimExecutor, SimExecutorSettings, SimFeed};
use crate::agent::{self, Agent};
use crate::user_data::agent_environment;

/// How often instances are looked at besides the wake-ups of state changes
/// (boots end by time, not by a call).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// An agent that ended by itself starts again after this, as systemd's
/// `Restart=always` with `RestartSec=5` in the user data would have it.
const RESTART_AFTER: Duration = Duration::from_secs(5);

/// The agents a simulated cloud's instances run, by instance id.
#[derive(Default)]
pub struct Registry {
    slots: Mutex<HashMap<String, Slot>>,
}

enum Slot {
    Running {
        /// The [`SimAgents`] that started it: it stops it when its process ends.
        owner: u64,
        stop: CancellationToken,
        task: JoinHandle<()>,
    },
    /// The user data starts no agent (a template without the agent's settings, or
    /// no API URL to report to); looked at again after the instance's next boot.
    Refused,
    /// The agent ended by itself.
    Exited { at: Instant },
}

/// What one look decides for one instance.
enum Step {
    Start,
    Forget,
    Exited,
    Nothing,
}

/// Runs the agents of a simulated cloud's running instances.
pub struct SimAgents {
    cloud: Arc<SimCloud>,
    /// This process's `GEONEX_AGENT__*` settings: the agents' limits (their
    /// identity comes from each instance's user data).
    agent: AgentSettings,
    sim: SimSettings,
    /// Where each instance's event spool lives, `<spool root>/<instance id>`.
    spool_root: PathBuf,
    /// The folder store's root, where simulated containers write their outputs;
    /// `None` when S3 outputs are on S3.
    outputs: Option<PathBuf>,
    id: u64,
}

impl SimAgents {
    pub fn new(
        cloud: Arc<SimCloud>,
        agent: AgentSettings,
        sim: SimSettings,
        spool_root: PathBuf,
        outputs: Option<PathBuf>,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self { cloud, agent, sim, spool_root, outputs, id: NEXT_ID.fetch_add(1, Ordering::Relaxed) }
    }

    /// What the agents do, for the startup summary.
    pub fn label(&self) -> String {
        match self.sim.data_interval_secs {
            0 => "agents on simulated instances, no simulated data".to_owned(),
            n => format!("agents on simulated instances, a simulated GOES file every {n}s"),
        }
    }

    /// Starts and stops agents as instances come and go, until `shutdown`; then
    /// stops the agents this one started and waits for them to finish.
    pub async fn run(self, shutdown: CancellationToken) {
        self.forget_terminated_spools();
        loop {
            // Registered before looking, so a change during the look wakes the next one.
            let changed = self.cloud.changed.notified();
            self.look();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
            }
        }
        let mine: Vec<(CancellationToken, JoinHandle<()>)> = {
            let mut slots = self.cloud.agents.slots.lock().unwrap_or_else(|e| e.into_inner());
            let ids: Vec<String> = slots
                .iter()
                .filter(|(_, s)| matches!(s, Slot::Running { owner, .. } if *owner == self.id))
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| match slots.remove(id) {
                    Some(Slot::Running { stop, task, .. }) => Some((stop, task)),
                    _ => None,
                })
                .collect()
        };
        // A running container is let finish; its events wait in the spool if
        // the API is already gone.
        let grace = Duration::from_millis(self.sim.container_ms).mul_f64(1.25) + Duration::from_secs(5);
        for (stop, _) in &mine {
            stop.cancel();
        }
        for (_, task) in mine {
            let _ = tokio::time::timeout(grace, task).await;
        }
    }

    /// Starts the agents of running instances that have none, stops those of
    /// instances no longer running.
    fn look(&self) {
        let instances = self.cloud.instances();
        let mut slots = self.cloud.agents.slots.lock().unwrap_or_else(|e| e.into_inner());
        for inst in &instances {
            let id = &inst.instance_id;
            let running = inst.state == ObservedState::Running;
            let step = match slots.get(id) {
                None if running => Step::Start,
                None => Step::Nothing,
                Some(Slot::Running { stop, task, .. }) => {
                    if !running && !stop.is_cancelled() {
                        tracing::info!(instance_id = %id, state = inst.state.as_str(), "the simulated instance is no longer running: stopping its agent");
                        stop.cancel();
                    }
                    match (task.is_finished(), stop.is_cancelled()) {
                        // Stopped with its instance. One of a restarted instance
                        // is let finish first: two agents would share one spool.
                        (true, true) if running => Step::Start,
                        (true, true) => Step::Forget,
                        (true, false) => Step::Exited,
                        (false, _) => Step::Nothing,
                    }
                }
                Some(Slot::Refused) if running => Step::Nothing,
                Some(Slot::Exited { at }) if running => {
                    if at.elapsed() >= RESTART_AFTER { Step::Start } else { Step::Nothing }
                }
                Some(Slot::Refused | Slot::Exited { .. }) => Step::Forget,
            };
            match step {
                Step::Start => {
                    let slot = self.start(inst);
                    slots.insert(id.clone(), slot);
                }
                Step::Forget => {
                    slots.remove(id);
                    if inst.state == ObservedState::Terminated {
                        // Its disk is gone with it.
                        let _ = std::fs::remove_dir_all(self.spool_root.join(id));
                    }
                }
                Step::Exited => {
                    tracing::warn!(instance_id = %id, "the agent of a simulated instance ended; it starts again in {}s", RESTART_AFTER.as_secs());
                    slots.insert(id.clone(), Slot::Exited { at: Instant::now() });
                }
                Step::Nothing => {}
            }
        }
    }

    /// The spools of instances terminated while this process was not running.
    fn forget_terminated_spools(&self) {
        let Ok(dirs) = std::fs::read_dir(&self.spool_root) else { return };
        let live: Vec<String> = self
            .cloud
            .instances()
            .into_iter()
            .filter(|i| i.state != ObservedState::Terminated)
            .map(|i| i.instance_id)
            .collect();
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if name.starts_with("i-") && !live.contains(&name) {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }

    /// The agent's settings as the instance would read them from its user data.
    fn settings_for(&self, instance_id: &str, user_data: &str) -> AgentSettings {
        let env: HashMap<String, String> = agent_environment(user_data).into_iter().collect();
        let get = |name: &str| env.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        AgentSettings {
            queue_url: get("GEONEX_AGENT__QUEUE_URL"),
            api_url: get("GEONEX_AGENT__API_URL"),
            token: get("GEONEX_AGENT__TOKEN").map(SecretString::from),
            runner_id: get("GEONEX_AGENT__RUNNER_ID"),
            image_name: get("GEONEX_AGENT__IMAGE_NAME"),
            s3_output: get("GEONEX_AGENT__S3_OUTPUT"),
            // On an instance the script appends it from the instance's metadata.
            instance_id: get("GEONEX_AGENT__INSTANCE_ID").or_else(|| Some(instance_id.to_owned())),
            spool_dir: self.spool_root.join(instance_id),
            ..self.agent.clone()
        }
    }

    fn start(&self, inst: &InstanceInfo) -> Slot {
        let id = &inst.instance_id;
        let user_data = self.cloud.user_data(id).unwrap_or_default();
        let settings = self.settings_for(id, &user_data);
        let agent = match Agent::from_settings(&settings) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(instance_id = %id, error = %e, "the user data of a simulated instance starts no agent");
                return Slot::Refused;
            }
        };
        let feed = SimFeed::new(
            Some(Duration::from_secs(self.sim.data_interval_secs)),
            Some(settings.spool_dir.join("feed-unacked.json")),
        );
        let executor = SimExecutor::new(SimExecutorSettings {
            container_time: Duration::from_millis(self.sim.container_ms),
            failure_rate: self.sim.container_failure_rate,
            timeout: Duration::from_secs(settings.timeout_secs.max(1)),
            log_tail_bytes: settings.log_tail_bytes.min(agent::MAX_LOG_TAIL_BYTES),
            outputs: self.outputs.clone(),
        });
        // The agent's own lines name the runner; the span names the instance.
        let span = tracing::info_span!("sim_agent", instance_id = %id);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(
            async move {
                if let Err(e) = agent::run_with(agent, &settings.spool_dir, Arc::new(feed), Arc::new(executor), token).await {
                    tracing::warn!(error = %format!("{e:#}"), "the agent of a simulated instance failed");
                }
            }
            .instrument(span),
        );
        Slot::Running { owner: self.id, stop, task }
    }
}

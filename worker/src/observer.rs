//! The instance observer: follows every runner whose instance is on its way
//! somewhere (pending, stopping, shutting down) until it gets there, with one
//! DescribeInstances per up to 1,000 instances, instead of a poll loop per
//! command.
//!
//! One worker of the cluster runs each pass (the store hands the pass to the
//! first that asks in each interval). Passes come quickly while runners are
//! changing and back off while nothing moves: a thousand instances booting for a
//! minute cost about ten calls, and a quiet fleet none. Throttling (and any other
//! cloud error) backs the observer off too. A runner transitional for longer
//! than `stuck_after` is flagged: its `last_error`, and the result of its latest
//! command, say so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use geonex_shared::config::ReconcileSettings;
use geonex_shared::domain::ObservedState;
use geonex_shared::store::fleet::FleetStore;
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Op};
use crate::cloud::Cloud;
use crate::spot::Relauncher;

const TASK: &str = "instance-observer";

pub struct Observer {
    cloud: Arc<dyn Cloud>,
    fleet: Arc<dyn FleetStore>,
    budget: Budget,
    relauncher: Relauncher,
    min: Duration,
    max: Duration,
    stuck_after: chrono::Duration,
}

/// What one pass saw, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub watched: usize,
    pub changed: usize,
    pub describe_calls: usize,
}

impl Observer {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        fleet: Arc<dyn FleetStore>,
        budget: Budget,
        relauncher: Relauncher,
        settings: &ReconcileSettings,
    ) -> Self {
        let min = Duration::from_millis(settings.observe_min_ms.max(50));
        Self {
            cloud,
            fleet,
            budget,
            relauncher,
            min,
            max: Duration::from_millis(settings.observe_max_ms).max(min),
            stuck_after: chrono::Duration::seconds(i64::try_from(settings.stuck_after_secs).unwrap_or(i64::MAX)),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut interval = self.min;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            // Another worker ran this interval's pass: look again at the fastest pace.
            match self.fleet.claim_periodic(TASK, self.min.mul_f32(0.9)).await {
                Ok(true) => {}
                Ok(false) => {
                    interval = self.min;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "instance observer: cannot reach the store");
                    interval = self.max;
                    continue;
                }
            }
            interval = match self.pass().await {
                Ok(p) if p.changed > 0 => {
                    tracing::info!(watched = p.watched, changed = p.changed, "instance observer pass");
                    self.min
                }
                // Nothing moved: the instances are still on their way; look less often.
                Ok(p) if p.watched > 0 => (interval * 2).min(self.max),
                Ok(_) => self.min,
                Err(e) => {
                    tracing::warn!(error = %e, "instance observer pass failed; backing off");
                    (interval * 2).clamp(self.max, self.max * 4)
                }
            };
        }
    }

    /// One look at every transitional runner's instance.
    pub async fn pass(&self) -> Result<Pass, String> {
        let runners = self.fleet.transitional_runners().await.map_err(|e| e.to_string())?;
        let mut pass = Pass { watched: runners.len(), ..Pass::default() };
        if runners.is_empty() {
            return Ok(pass);
        }
        let ids: Vec<String> = runners.iter().filter_map(|r| r.instance_id.clone()).collect();
        pass.describe_calls = ids.len().div_ceil(crate::cloud::DESCRIBE_BATCH);
        // Background work: it waits for its share of the Describe budget.
        self.budget.wait_for(Op::DescribeInstances, pass.describe_calls as f64).await?;
        let described = match self.cloud.describe_many(&ids).await {
            Ok(d) => d,
            Err(e) => {
                if e.is_throttled() {
                    self.budget.throttled(Op::DescribeInstances).await;
                }
                return Err(e.message);
            }
        };
        let seen: HashMap<String, ObservedState> = described.into_iter().map(|i| (i.instance_id, i.state)).collect();
        let now = Utc::now();
        for r in &runners {
            let Some(id) = &r.instance_id else { continue };
            // An instance the cloud no longer knows is gone.
            let state = seen.get(id).copied().unwrap_or(ObservedState::Terminated);
            if state != r.observed_state {
                match self.fleet.observe_instance(&r.runner_id, id, state).await {
                    Ok(true) => {
                        pass.changed += 1;
                        self.relauncher.after(r, id, state).await;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(e.to_string()),
                }
                continue;
            }
            let since = r.observed_at.unwrap_or(r.updated_at);
            if now - since > self.stuck_after && r.last_error.is_none() {
                let message = format!(
                    "instance {id} has been {} since {} (longer than {} s)",
                    state.as_str(),
                    since.to_rfc3339(),
                    self.stuck_after.num_seconds()
                );
                tracing::warn!(runner_id = %r.runner_id, instance_id = %id, "{message}");
                self.fleet.flag_stuck(&r.runner_id, &message).await.map_err(|e| e.to_string())?;
            }
        }
        Ok(pass)
    }
}

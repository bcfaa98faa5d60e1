//! Reconciliation: keeps each runner's observed state true to the cloud, and finds
//! orphans — instances of this fleet that belong to no live runner.
//!
//! The sweep lists the fleet first and reads runners second, so an instance
//! launched meanwhile is either not listed or belongs to a runner whose launch is
//! in progress (no recorded instance yet), which is never an orphan. A runner's
//! recorded instance is never an orphan either, however late its heartbeats: the
//! reaper only terminates instances no runner claims, and only after they have been
//! seen as orphans for the grace period, and only when reaping is enabled.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use geonex_shared::config::ReconcileSettings;
use geonex_shared::domain::{DesiredState, ObservedState};
use geonex_shared::store::fleet::FleetStore;
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Op};
use crate::cloud::{Cloud, DESCRIBE_BATCH, TAG_RUNNER_ID};
use crate::spot::Relauncher;

pub struct Reconciler {
    cloud: Arc<dyn Cloud>,
    fleet: Arc<dyn FleetStore>,
    budget: Budget,
    relauncher: Relauncher,
    settings: ReconcileSettings,
}

const TASK: &str = "reconcile-sweep";

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    pub changed: usize,
    pub orphans: usize,
    pub reaped: usize,
}

impl Reconciler {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        fleet: Arc<dyn FleetStore>,
        budget: Budget,
        relauncher: Relauncher,
        settings: ReconcileSettings,
    ) -> Self {
        Self { cloud, fleet, budget, relauncher, settings }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        if self.settings.interval_secs == 0 {
            return;
        }
        let interval = Duration::from_secs(self.settings.interval_secs);
        // Every worker runs this loop; one sweep per interval runs in the cluster.
        let every = interval.mul_f32(0.9);
        let mut check = interval.min(Duration::from_secs(5));
        let mut deferred_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(check) => {}
                _ = shutdown.cancelled() => return,
            }
            check = interval.min(Duration::from_secs(5));
            match self.fleet.claim_periodic(TASK, every).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reconciliation: cannot reach the store");
                    continue;
                }
            }
            // While instances are on their way the observer looks at exactly
            // those, batched: a listing of the whole fleet then would only add a
            // Describe call in the busiest minute. The sweep waits for them, for
            // one interval at most.
            let in_transit = self.fleet.transitional_runners().await.map(|r| !r.is_empty()).unwrap_or(false);
            match deferred_since {
                _ if !in_transit => deferred_since = None,
                None => {
                    deferred_since = Some(std::time::Instant::now());
                    continue;
                }
                Some(since) if since.elapsed() < interval => continue,
                Some(_) => deferred_since = None,
            }
            match self.sweep().await {
                Ok(s) if s != Sweep::default() => {
                    tracing::info!(changed = s.changed, orphans = s.orphans, reaped = s.reaped, "reconciliation sweep");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reconciliation sweep failed"),
            }
        }
    }

    pub async fn sweep(&self) -> Result<Sweep, String> {
        let mut sweep = Sweep::default();
        // Background work: it waits for its share of the Describe budget.
        self.budget.wait_for(Op::DescribeInstances, 1.0).await?;
        let instances = self.cloud.list_fleet_instances().await.map_err(|e| e.to_string())?;
        let runners = self.fleet.runners_to_reconcile().await.map_err(|e| e.to_string())?;
        let by_id: HashMap<&str, _> = instances.iter().map(|i| (i.instance_id.as_str(), i)).collect();
        // Not among live instances: terminated, or gone from the cloud's memory.
        // One batched look at all of them.
        let missing: Vec<String> = runners
            .iter()
            .filter_map(|r| r.instance_id.clone())
            .filter(|id| !by_id.contains_key(id.as_str()))
            .collect();
        let mut gone: HashMap<String, ObservedState> = HashMap::new();
        if !missing.is_empty() {
            self.budget.wait_for(Op::DescribeInstances, missing.len().div_ceil(DESCRIBE_BATCH) as f64).await?;
            match self.cloud.describe_many(&missing).await {
                Ok(found) => gone.extend(found.into_iter().map(|i| (i.instance_id, i.state))),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot describe runners' instances");
                    return Err(e.to_string());
                }
            }
        }

        for r in &runners {
            let Some(instance_id) = r.instance_id.as_deref() else { continue };
            let state = match by_id.get(instance_id) {
                Some(i) => i.state,
                None => gone.get(instance_id).copied().unwrap_or(ObservedState::Terminated),
            };
            if self.fleet.observe_instance(&r.runner_id, instance_id, state).await.map_err(|e| e.to_string())? {
                tracing::info!(runner_id = %r.runner_id, instance_id, state = state.as_str(), "runner state changed outside the control plane");
                sweep.changed += 1;
                self.relauncher.after(r, instance_id, state).await;
            }
        }

        let claimed: HashSet<&str> = runners.iter().filter_map(|r| r.instance_id.as_deref()).collect();
        let candidates: Vec<_> = instances.iter().filter(|i| !claimed.contains(i.instance_id.as_str())).collect();
        let tagged: Vec<String> = candidates.iter().filter_map(|i| i.tags.get(TAG_RUNNER_ID).cloned()).collect();
        let owners = self.fleet.runners_by_ids(&tagged).await.map_err(|e| e.to_string())?;
        let owners: HashMap<&str, _> = owners.iter().map(|r| (r.runner_id.as_str(), r)).collect();
        let mut orphans = Vec::new();
        for i in candidates {
            let runner_id = i.tags.get(TAG_RUNNER_ID);
            let orphan = match runner_id.and_then(|id| owners.get(id.as_str())) {
                None => true,
                Some(r) if r.desired_state == DesiredState::Deleted => true,
                // The runner's launch is in progress: the instance is about to be recorded.
                Some(r) if r.instance_id.is_none() => false,
                Some(r) => r.instance_id.as_deref() != Some(i.instance_id.as_str()) && !i.state.is_gone(),
            };
            if orphan && i.state != ObservedState::Terminated {
                orphans.push((i.instance_id.clone(), runner_id.cloned(), i.state));
            }
        }
        sweep.orphans = orphans.len();
        self.fleet.record_orphans(&orphans).await.map_err(|e| e.to_string())?;

        if self.settings.reap_orphans {
            let grace = chrono::Duration::seconds(self.settings.orphan_grace_secs as i64);
            let now = Utc::now();
            let seen: HashSet<&str> = orphans.iter().map(|(i, _, _)| i.as_str()).collect();
            for o in self.fleet.list_orphans().await.map_err(|e| e.to_string())? {
                if o.reaped_at.is_none() && o.first_seen_at + grace <= now && seen.contains(o.instance_id.as_str()) {
                    tracing::warn!(instance_id = %o.instance_id, runner_id = ?o.runner_id, "terminating an orphaned instance");
                    self.budget.wait_for(Op::TerminateInstances, 1.0).await?;
                    self.cloud.terminate(&o.instance_id).await.map_err(|e| e.to_string())?;
                    self.fleet.mark_reaped(&o.instance_id).await.map_err(|e| e.to_string())?;
                    sweep.reaped += 1;
                }
            }
        }
        Ok(sweep)
    }
}

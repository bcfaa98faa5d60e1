//! The instance observer: follows every runner whose instance is on its way
//! somewhere (pending, stopping, shutting down) until it gets there, with one
//! DescribeInstances per up to 1,000 instances, instead of a poll loop per
//! command.
//!
//! One worker of the cluster runs each pass (the store hands the pass to the
//! first that asks in each interval). Passes back off while nothing moves (a
//! thousand instances booting for a minute cost about ten calls, a quiet fleet
//! none) and, once instances arrive, come when the rest of their wave is
//! expected: the instances that just arrived tell how long the transition
//! takes, and those still on their way left their state later by as much as
//! they will arrive later. So launches trickling out at EC2's pace are looked
//! at a wave at a time, not once a second each. Throttling (and any other
//! cloud error) backs the observer off too. A runner transitional for longer
//! than `stuck_after` is flagged: its `last_error`, and the result of its latest
//! command, say so.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
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
    /// When the instances still on their way are expected, judged by those
    /// that arrived in this pass: `None` when none arrived, or none is left.
    pub rest_expected_in: Option<Duration>,
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
                    p.rest_expected_in.map_or(self.min, |d| d.clamp(self.min, self.max))
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
        ::metrics::counter!(geonex_shared::metrics::OBSERVER_PASSES).increment(1);
        let seen: HashMap<String, ObservedState> = described.into_iter().map(|i| (i.instance_id, i.state)).collect();
        let now = Utc::now();
        let mut wave = Wave::default();
        for r in &runners {
            let Some(id) = &r.instance_id else { continue };
            // An instance the cloud no longer knows is gone.
            let state = seen.get(id).copied().unwrap_or(ObservedState::Terminated);
            let since = r.observed_at.unwrap_or(r.updated_at);
            if state != r.observed_state {
                match self.fleet.observe_instance(&r.runner_id, id, state).await {
                    Ok(true) => {
                        pass.changed += 1;
                        ::metrics::counter!(geonex_shared::metrics::OBSERVER_TRANSITIONS).increment(1);
                        wave.arrived(r.observed_state, since);
                        self.relauncher.after(r, id, state).await;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(e.to_string()),
                }
                continue;
            }
            wave.waiting(r.observed_state, since);
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
        pass.rest_expected_in = wave.rest_expected_in(now);
        Ok(pass)
    }
}

/// The runners of one pass by the state they were in: when the latest of
/// those that arrived had left it, and when the latest of those still on
/// their way did.
#[derive(Debug, Default)]
struct Wave {
    by_state: HashMap<&'static str, Latest>,
}

#[derive(Debug, Default)]
struct Latest {
    arrived: Option<DateTime<Utc>>,
    waiting: Option<DateTime<Utc>>,
}

impl Wave {
    fn arrived(&mut self, from: ObservedState, since: DateTime<Utc>) {
        let latest = self.by_state.entry(from.as_str()).or_default();
        latest.arrived = latest.arrived.max(Some(since));
    }

    fn waiting(&mut self, state: ObservedState, since: DateTime<Utc>) {
        let latest = self.by_state.entry(state.as_str()).or_default();
        latest.waiting = latest.waiting.max(Some(since));
    }

    /// The transition takes at most `now − since` of the latest that arrived:
    /// the last of the rest is expected that long after it left its state. A
    /// state with none arrived says nothing; the rest are those of the states
    /// that do.
    fn rest_expected_in(&self, now: DateTime<Utc>) -> Option<Duration> {
        self.by_state
            .values()
            .filter_map(|l| Some(l.waiting? + (now - l.arrived?)))
            .max()
            .map(|at| (at - now).to_std().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rest_of_a_wave_is_expected_as_much_later_as_it_left() {
        let now = Utc::now();
        let ago = |s: i64| now - chrono::Duration::seconds(s);
        let mut w = Wave::default();
        assert_eq!(w.rest_expected_in(now), None, "nothing arrived, nothing to judge by");
        // Booted in at most 60 s: the one that went pending 56 s ago is due in 4 s.
        w.arrived(ObservedState::Pending, ago(60));
        w.arrived(ObservedState::Pending, ago(62));
        w.waiting(ObservedState::Pending, ago(56));
        w.waiting(ObservedState::Pending, ago(58));
        assert_eq!(w.rest_expected_in(now), Some(Duration::from_secs(4)));
        // Stopping says nothing until one stopped; one older than the arrivals is overdue.
        w.waiting(ObservedState::Stopping, ago(1));
        assert_eq!(w.rest_expected_in(now), Some(Duration::from_secs(4)));
        let mut late = Wave::default();
        late.arrived(ObservedState::Pending, ago(30));
        late.waiting(ObservedState::Pending, ago(40));
        assert_eq!(late.rest_expected_in(now), Some(Duration::ZERO));
    }
}

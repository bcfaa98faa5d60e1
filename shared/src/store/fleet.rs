//! The fleet store port: what the reconciliation sweep reads and records about
//! runners' instances, the orphans it finds, and EC2 state-change events.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ObservedState;
use crate::store::commands::RunnerRecord;
use crate::store::error::StoreError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OrphanRecord {
    pub instance_id: String,
    /// The runner id its tags name, if any.
    pub runner_id: Option<String>,
    pub state: String,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub reaped_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait FleetStore: Send + Sync + 'static {
    /// Runners whose instance the sweep should check: those with an instance that
    /// is not known to be terminated.
    async fn runners_to_reconcile(&self) -> Result<Vec<RunnerRecord>, StoreError>;
    /// Runners by id (those that exist).
    async fn runners_by_ids(&self, runner_ids: &[String]) -> Result<Vec<RunnerRecord>, StoreError>;
    /// Records what the cloud shows for a runner's instance, if it is still the
    /// runner's instance. An instance that stopped or went away ends its running
    /// containers as `killed`. Returns whether anything changed.
    async fn observe_instance(&self, runner_id: &str, instance_id: &str, state: ObservedState) -> Result<bool, StoreError>;
    /// Replaces the orphan list with what this sweep saw (instance, runner tag, state).
    async fn record_orphans(&self, seen: &[(String, Option<String>, ObservedState)]) -> Result<(), StoreError>;
    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError>;
    async fn mark_reaped(&self, instance_id: &str) -> Result<(), StoreError>;
    /// Applies an EC2 state-change event to the runner whose recorded instance it
    /// names, in one transaction: the runner's row is locked, [`judge_event`]
    /// decides against its current state and `observed_at`, an applied event sets
    /// both, and a stopped or gone instance ends the runner's running containers
    /// as `killed` (as [`FleetStore::observe_instance`] does) unless the event is
    /// stale.
    async fn apply_instance_event(&self, event: &InstanceEvent) -> Result<EventOutcome, StoreError>;

    /// Runners whose instance is on its way somewhere (pending, stopping,
    /// shutting down): what the instance observer watches.
    async fn transitional_runners(&self) -> Result<Vec<RunnerRecord>, StoreError>;
    /// Whether this caller runs the periodic task `name` now: true for one caller
    /// per `every` across every process sharing the database.
    async fn claim_periodic(&self, name: &str, every: Duration) -> Result<bool, StoreError>;
    /// Marks a runner whose instance has been in a transitional state too long:
    /// the runner's `last_error` and the result of its latest command say so.
    async fn flag_stuck(&self, runner_id: &str, message: &str) -> Result<(), StoreError>;
}

/// The observed states an instance passes through on its way somewhere.
pub const TRANSITIONAL: [ObservedState; 3] = [ObservedState::Pending, ObservedState::Stopping, ObservedState::ShuttingDown];

/// One EC2 instance state-change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceEvent {
    pub instance_id: String,
    /// One of the EC2 instance states (never `requested` or `failed`).
    pub state: ObservedState,
    /// The event's time; EventBridge gives it in whole seconds.
    pub at: DateTime<Utc>,
}

/// What applying an instance event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    /// No runner has this instance: an orphan, another deployment's instance, a
    /// runner's earlier instance, or one whose launch is not recorded yet.
    UnknownInstance,
    /// The runner's observed state changed.
    Applied { runner_id: String, from: ObservedState },
    /// The runner already shows this state.
    Unchanged { runner_id: String },
    /// Older than what the runner's state already reflects; nothing changed.
    Stale { runner_id: String, current: ObservedState },
}

/// The verdict of [`judge_event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Set the observed state and store this as its `observed_at`.
    Apply { observed_at: DateTime<Utc> },
    Unchanged,
    Stale,
}

/// How far an event's time may lie behind the moment it describes: EventBridge
/// gives whole seconds.
pub const EVENT_TIME_RESOLUTION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// Where a state lies in an instance's life, for events too close in time to order
/// by their times: `pending` < `running` < `stopping` < `stopped` <
/// `shutting-down` < `terminated`; `requested` and `failed` come before all.
fn lifecycle_rank(s: ObservedState) -> u8 {
    match s {
        ObservedState::Requested | ObservedState::Failed => 0,
        ObservedState::Pending => 1,
        ObservedState::Running => 2,
        ObservedState::Stopping => 3,
        ObservedState::Stopped => 4,
        ObservedState::ShuttingDown => 5,
        ObservedState::Terminated => 6,
    }
}

/// Decides whether an event moves a runner whose state is `current`, observed at
/// `observed_at` (the time of the last applied event, or when a command or the
/// sweep last changed the state; `None` when nothing was observed yet).
///
/// * `terminated` is final: no event moves a runner's instance out of it.
/// * An event whose time is at least [`EVENT_TIME_RESOLUTION`] before
///   `observed_at` is stale.
/// * An event within that resolution of `observed_at` (its time not after it) may
///   only move the state forward in the instance's life (`running` → `stopped`,
///   not back), since the times cannot tell which came first.
/// * A later event applies.
///
/// An applied event's `observed_at` is its time, or just after the previous one
/// if that is later, so it always advances.
pub fn judge_event(
    current: ObservedState,
    observed_at: Option<DateTime<Utc>>,
    state: ObservedState,
    at: DateTime<Utc>,
) -> Verdict {
    if current == ObservedState::Terminated && state != current {
        return Verdict::Stale;
    }
    if let Some(o) = observed_at {
        if at + EVENT_TIME_RESOLUTION <= o {
            return Verdict::Stale;
        }
        if state == current {
            return Verdict::Unchanged;
        }
        if at <= o && lifecycle_rank(state) <= lifecycle_rank(current) {
            return Verdict::Stale;
        }
        let nudged = o + chrono::TimeDelta::milliseconds(1);
        return Verdict::Apply { observed_at: at.max(nudged) };
    }
    if state == current { Verdict::Unchanged } else { Verdict::Apply { observed_at: at } }
}

/// Whether an instance in this state no longer runs containers.
pub fn ends_containers(state: ObservedState) -> bool {
    matches!(state, ObservedState::Stopped | ObservedState::ShuttingDown | ObservedState::Terminated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ObservedState::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn later_events_apply_and_earlier_ones_are_stale() {
        let o = Some(t("2026-11-28T10:00:05Z"));
        assert_eq!(judge_event(Running, o, Stopped, t("2026-11-28T10:00:06Z")), Verdict::Apply {
            observed_at: t("2026-11-28T10:00:06Z")
        });
        // A running event older than the applied stopped one does not win.
        assert_eq!(judge_event(Stopped, o, Running, t("2026-11-28T10:00:01Z")), Verdict::Stale);
        assert_eq!(judge_event(Stopped, o, Running, t("2026-11-28T10:00:04Z")), Verdict::Stale);
        assert_eq!(judge_event(Running, None, Stopped, t("2026-11-28T10:00:01Z")), Verdict::Apply {
            observed_at: t("2026-11-28T10:00:01Z")
        });
    }

    #[test]
    fn duplicates_are_unchanged_unless_stale() {
        let o = Some(t("2026-11-28T10:00:05Z"));
        assert_eq!(judge_event(Stopped, o, Stopped, t("2026-11-28T10:00:05Z")), Verdict::Unchanged);
        assert_eq!(judge_event(Stopped, o, Stopped, t("2026-11-28T10:00:09Z")), Verdict::Unchanged);
        assert_eq!(judge_event(Stopped, o, Stopped, t("2026-11-28T10:00:01Z")), Verdict::Stale);
        assert_eq!(judge_event(Running, None, Running, t("2026-11-28T10:00:01Z")), Verdict::Unchanged);
    }

    #[test]
    fn within_the_time_resolution_only_forward_moves_apply() {
        // observed_at from a command, with milliseconds; events have whole seconds.
        let o = Some(t("2026-11-28T10:00:05.400Z"));
        let same_second = t("2026-11-28T10:00:05Z");
        assert_eq!(judge_event(Running, o, Stopped, same_second), Verdict::Apply {
            observed_at: t("2026-11-28T10:00:05.401Z")
        });
        assert_eq!(judge_event(Running, o, Pending, same_second), Verdict::Stale);
        assert_eq!(judge_event(Stopped, o, Stopping, same_second), Verdict::Stale);
        // Two events of the same second: shutting-down then terminated, in either order.
        let o = Some(same_second);
        assert_eq!(judge_event(ShuttingDown, o, Terminated, same_second), Verdict::Apply {
            observed_at: t("2026-11-28T10:00:05.001Z")
        });
        assert_eq!(judge_event(Terminated, o, ShuttingDown, same_second), Verdict::Stale);
    }

    #[test]
    fn terminated_is_final_and_a_failed_launch_takes_any_event() {
        let o = Some(t("2026-11-28T10:00:05Z"));
        assert_eq!(judge_event(Terminated, o, Running, t("2026-11-28T11:00:00Z")), Verdict::Stale);
        assert_eq!(judge_event(Terminated, o, Terminated, t("2026-11-28T11:00:00Z")), Verdict::Unchanged);
        assert_eq!(judge_event(Failed, o, Running, t("2026-11-28T10:00:05Z")), Verdict::Apply {
            observed_at: t("2026-11-28T10:00:05.001Z")
        });
    }
}

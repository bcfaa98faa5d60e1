//! The fleet store port: what the reconciliation sweep reads and records about
//! runners' instances, and the orphans it finds.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::ObservedState;
use crate::store::{RunnerRecord, StoreError};

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
}

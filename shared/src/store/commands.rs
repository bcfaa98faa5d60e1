//! The core port: runner commands and the runners they change, from
//! submission through claims under a lease to their end, and the worker
//! registry that holds those leases.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::{
    Action, CommandStatus, DesiredState, ImageRef, InstanceId, InstanceType, ObservedState, RunnerId,
    RunnerName, S3Uri,
};
use crate::cost::PurchaseOption;
use crate::error::FieldError;
use crate::message::CommandMessage;

use crate::store::error::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    pub command_id: Uuid,
    #[serde(skip)]
    pub seq: i64,
    pub action: Action,
    pub runner_id: Option<String>,
    pub status: CommandStatus,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub requested_by: String,
    pub trace_id: String,
    pub params: serde_json::Value,
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The worker process that claimed the current (or last) attempt.
    pub lease_holder: Option<Uuid>,
    /// When the current (or last) attempt was claimed.
    pub claimed_at: Option<DateTime<Utc>>,
    /// While running: when the lease runs out unless its holder renews it.
    pub lease_until: Option<DateTime<Utc>>,
    /// While waiting: what for.
    pub waiting_for: Option<String>,
    /// An EC2 call the command has paid for in the request budget, and from
    /// when it may be made.
    pub budget_op: Option<String>,
    pub budget_at: Option<DateTime<Utc>>,
    /// The reservation's place in its bucket's queue: the call is due once
    /// the bucket's refill has brought this many tokens in all.
    pub budget_ticket: Option<f64>,
}

impl CommandRecord {
    /// The broker message that points at this command.
    pub fn message(&self) -> CommandMessage {
        CommandMessage {
            command_id: self.command_id,
            action: self.action,
            runner_id: self.runner_id.clone(),
            attempt: self.attempts,
            enqueued_at: Utc::now(),
            trace_id: self.trace_id.clone(),
        }
    }
}

/// An EC2 call a waiting command has paid for in the request budget: which
/// call, when it is expected to fall due, and its place in the bucket's queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hold<'a> {
    pub op: &'a str,
    pub at: DateTime<Utc>,
    pub ticket: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunnerRecord {
    pub runner_id: String,
    pub runner_name: String,
    pub instance_type: String,
    pub image_name: String,
    pub s3_output: String,
    pub instance_id: Option<String>,
    pub desired_state: DesiredState,
    pub observed_state: ObservedState,
    pub last_error: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// When the observation behind `observed_state` was made: how long a
    /// runner has been pending, stopping or shutting down.
    pub observed_at: Option<DateTime<Utc>>,
    /// Who started it (the requester of its first start): whose budget it draws on.
    pub owner: Option<String>,
    pub purchase_option: PurchaseOption,
    pub fallback_instance_types: Vec<String>,
    pub idle_stop_after_secs: Option<i64>,
    /// What its current instance really is, when not what was asked (a
    /// fallback type; on-demand after a spot shortage).
    pub launched_instance_type: Option<String>,
    pub launched_purchase_option: Option<PurchaseOption>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a new runner is bought and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunnerOptions {
    pub purchase_option: PurchaseOption,
    /// Tried in order when EC2 has no capacity for the runner's type.
    pub fallback_instance_types: Vec<InstanceType>,
    /// Stopped when no container has started for this long (never while one runs).
    pub idle_stop_after_secs: Option<i64>,
}

/// A validated runner action as the API accepted it.
#[derive(Debug, Clone)]
pub enum RunnerRequest {
    Start {
        instance_type: InstanceType,
        image_name: ImageRef,
        s3_output: S3Uri,
        runner_name: RunnerName,
        options: RunnerOptions,
    },
    Restart { instance_id: InstanceId, image_name: ImageRef, s3_output: S3Uri, runner_name: RunnerName },
    /// `reason`: why the control plane stops it on its own (`idle`, `budget`).
    Stop { instance_id: InstanceId, runner_name: Option<RunnerName>, reason: Option<String> },
    Delete { instance_id: InstanceId, runner_name: Option<RunnerName> },
}

impl RunnerRequest {
    pub fn action(&self) -> Action {
        match self {
            RunnerRequest::Start { .. } => Action::StartRunner,
            RunnerRequest::Restart { .. } => Action::RestartRunner,
            RunnerRequest::Stop { .. } => Action::StopRunner,
            RunnerRequest::Delete { .. } => Action::DeleteRunner,
        }
    }

    /// The parameters stored with the command (what the worker will apply).
    pub fn params(&self, runner_id: &RunnerId) -> RunnerParams {
        let mut p = RunnerParams { runner_id: runner_id.to_string(), ..RunnerParams::default() };
        match self {
            RunnerRequest::Start { instance_type, image_name, s3_output, runner_name, options } => {
                p.instance_type = Some(instance_type.to_string());
                p.image_name = Some(image_name.to_string());
                p.s3_output = Some(s3_output.to_string());
                p.runner_name = Some(runner_name.to_string());
                if *options != RunnerOptions::default() {
                    p.purchase_option = Some(options.purchase_option);
                    p.fallback_instance_types = options.fallback_instance_types.iter().map(|t| t.to_string()).collect();
                    p.idle_stop_after_secs = options.idle_stop_after_secs;
                }
            }
            RunnerRequest::Restart { instance_id, image_name, s3_output, runner_name } => {
                p.instance_id = Some(instance_id.to_string());
                p.image_name = Some(image_name.to_string());
                p.s3_output = Some(s3_output.to_string());
                p.runner_name = Some(runner_name.to_string());
            }
            RunnerRequest::Stop { instance_id, runner_name, reason } => {
                p.instance_id = Some(instance_id.to_string());
                p.runner_name = runner_name.as_ref().map(|n| n.to_string());
                p.reason = reason.clone();
            }
            RunnerRequest::Delete { instance_id, runner_name } => {
                p.instance_id = Some(instance_id.to_string());
                p.runner_name = runner_name.as_ref().map(|n| n.to_string());
            }
        }
        p
    }
}

/// What a runner command applies, as stored with it. Absent fields keep the
/// runner's current values.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunnerParams {
    pub runner_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_name: Option<String>,
    /// The instance the request named (restart, stop, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase_option: Option<PurchaseOption>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_instance_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_stop_after_secs: Option<i64>,
    /// Why the control plane stops a runner on its own (`idle`, `budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl RunnerParams {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// A runner command's parameters.
    pub fn of(command: &CommandRecord) -> Result<Self, StoreError> {
        serde_json::from_value(command.params.clone()).map_err(|e| StoreError::corrupt("runner command params", e))
    }
}

#[derive(Debug, Clone)]
pub struct NewRunnerCommand {
    pub command_id: Uuid,
    pub runner_id: RunnerId,
    pub request: RunnerRequest,
    pub requested_by: String,
    pub idempotency_key: Option<String>,
    pub trace_id: String,
    pub max_attempts: i32,
}

/// Outcome of submitting a command.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub command: CommandRecord,
    /// False when an earlier request with the same idempotency key already created it.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    Invalid(FieldError),
    #[error("runner {0} not found")]
    RunnerNotFound(String),
    #[error("{message}")]
    Conflict { code: &'static str, message: String, field: Option<&'static str> },
    /// The idempotency key was already used for a different request.
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The earlier command under a reused idempotency key, if it asked for the same
/// thing; otherwise the key's reuse is a conflict. A field stored as null and a
/// field left out mean the same.
pub(crate) fn same_request(
    existing: CommandRecord,
    action: Action,
    params: &serde_json::Value,
) -> Result<Submitted, SubmitError> {
    fn without_nulls(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                serde_json::Value::Object(m.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())).collect())
            }
            other => other.clone(),
        }
    }
    if existing.action != action || without_nulls(&existing.params) != without_nulls(params) {
        return Err(SubmitError::KeyReused);
    }
    Ok(Submitted { command: existing, created: false })
}

/// The terms on which a worker process claims commands.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTerms {
    /// The claiming worker process (its row in the worker registry).
    pub holder: Uuid,
    /// How long the lease lasts unless renewed.
    pub lease: Duration,
    /// A holder whose heartbeat is older than this is presumed dead: its running
    /// commands are taken over without waiting for their leases to run out.
    pub holder_timeout: Duration,
    /// Whether a running command may be taken over at all (its lease expired or
    /// its holder presumed dead). False while the claimer cannot tell a dead
    /// holder from one that, like itself, just lost the database for a while.
    pub take_over: bool,
}

/// A lease held on a running command: only its holder may renew it or settle
/// the command. A takeover changes the holder, so a worker presumed dead that
/// comes back can no longer write over the new holder's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub command_id: Uuid,
    pub holder: Uuid,
}

/// A worker process in the registry: it claims commands under `worker_id` and
/// proves it is alive by refreshing `heartbeat_at`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerProcess {
    pub worker_id: Uuid,
    pub hostname: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// What happened when a worker tried to claim a command.
// `Claimed` is the common case and the value lives for one delivery: boxing it
// would only add an allocation per claim.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Claim {
    /// The caller now holds the command's lease.
    Claimed { command: CommandRecord, runner: Option<RunnerRecord> },
    /// The command already finished: a duplicate delivery.
    Finished(CommandStatus),
    /// Another worker holds a live lease on it.
    Busy,
    /// An earlier command on the same runner has not finished yet.
    Blocked,
    NotFound,
}

/// The cloud's view of a runner's instance after a successful runner command.
#[derive(Debug, Clone)]
pub struct RunnerObservation {
    pub instance_id: Option<String>,
    pub observed: ObservedState,
}

#[derive(Debug, Clone, Default)]
pub struct CommandQuery {
    pub runner_id: Option<String>,
    pub status: Option<CommandStatus>,
    pub action: Option<Action>,
    /// Only commands with `seq` below this (newest first paging).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Default)]
pub struct RunnerQuery {
    pub runner_id: Option<String>,
    pub observed: Option<ObservedState>,
    pub desired: Option<DesiredState>,
    /// Only runners whose id sorts after this.
    pub after_runner_id: Option<String>,
    pub limit: i64,
}

#[derive(Debug, Clone)]
pub enum ReplaySelector {
    All,
    Action(Action),
    Command(Uuid),
}

#[derive(Debug, Clone)]
pub struct Replayed {
    pub replayed: Vec<CommandRecord>,
    /// Dead commands left alone, with the reason.
    pub skipped: Vec<(Uuid, String)>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    /// Validates the command against the runner's state and writes the command and
    /// the runner's desired state in one transaction.
    async fn submit_runner_command(&self, cmd: NewRunnerCommand) -> Result<Submitted, SubmitError>;

    async fn get_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError>;
    async fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError>;
    async fn get_runner(&self, runner_id: &str) -> Result<Option<RunnerRecord>, StoreError>;
    async fn list_runners(&self, q: &RunnerQuery) -> Result<Vec<RunnerRecord>, StoreError>;
    /// A number that changes whenever any runner row changes (for ETags).
    async fn runners_revision(&self) -> Result<i64, StoreError>;
    /// A number that changes whenever any command row changes (for ETags).
    async fn commands_revision(&self) -> Result<i64, StoreError>;

    /// Records that the broker confirmed these commands' messages.
    async fn mark_published(&self, command_ids: &[Uuid]) -> Result<(), StoreError>;
    /// Commands whose message must be (re-)published: accepted but never confirmed,
    /// retrying and long overdue, or queued with a confirmed publish long ago and
    /// still unclaimed (the broker lost the message).
    async fn due_for_publish(&self, grace: Duration, overdue: Duration, limit: i64)
    -> Result<Vec<CommandRecord>, StoreError>;
    /// Returns running commands whose worker died — their lease expired, or their
    /// holder's heartbeat is older than `holder_timeout` — to `retrying`, or to
    /// `dead` when their attempts are spent. Returns how many were rescued.
    async fn rescue_expired_leases(&self, holder_timeout: Duration) -> Result<u64, StoreError>;

    /// Claims a command for `terms.holder`: a queued or retrying one, or a running
    /// one whose lease expired or whose holder is presumed dead (a takeover).
    async fn claim(&self, command_id: Uuid, terms: &LeaseTerms) -> Result<Claim, StoreError>;
    /// Extends a held lease; false if the command is no longer ours to run (it
    /// finished, or another worker took it over).
    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<bool, StoreError>;

    /// Adds (or refreshes) a worker process in the registry, heartbeat now.
    async fn register_worker(&self, worker: &WorkerProcess) -> Result<(), StoreError>;
    /// Refreshes a worker's heartbeat; false if its row is gone (re-register).
    async fn heartbeat_worker(&self, worker_id: Uuid) -> Result<bool, StoreError>;
    /// Removes a worker that stopped; its running commands can be taken over at once.
    /// Also forgets workers silent for longer than `forget_after`.
    async fn retire_worker(&self, worker_id: Uuid, forget_after: Duration) -> Result<(), StoreError>;
    async fn get_worker(&self, worker_id: Uuid) -> Result<Option<WorkerProcess>, StoreError>;
    /// Every registered worker, most recently started first.
    async fn list_workers(&self) -> Result<Vec<WorkerProcess>, StoreError>;
    /// Progress recorded mid-command (an instance was launched), so a crash after it
    /// loses nothing.
    async fn record_instance(&self, runner_id: &str, obs: &RunnerObservation) -> Result<(), StoreError>;
    /// As `record_instance`, for a launch: also what the instance is billed as.
    async fn record_launch(
        &self,
        runner_id: &str,
        obs: &RunnerObservation,
        instance_type: &str,
        purchase_option: PurchaseOption,
    ) -> Result<(), StoreError>;
    /// Completes a command and, for runner commands, records the runner's new state,
    /// in one transaction.
    async fn succeed_command(
        &self,
        lease: &Lease,
        runner: Option<(&str, &RunnerObservation)>,
        result: serde_json::Value,
    ) -> Result<(), StoreError>;
    /// Sets a running command to `retrying`; its next message must be published.
    async fn retry_command(&self, lease: &Lease, error: &str, next_attempt_at: DateTime<Utc>)
    -> Result<(), StoreError>;
    /// Sets a running command to `waiting` until `next_attempt_at` (no attempt is
    /// spent) and records the progress it made on its runner, in one transaction.
    /// `reservation`: the EC2 call the command paid for, kept for when it is back.
    async fn wait_command(
        &self,
        lease: &Lease,
        waiting_for: &str,
        next_attempt_at: DateTime<Utc>,
        runner: Option<(&str, &RunnerObservation)>,
        reservation: Option<Hold<'_>>,
    ) -> Result<(), StoreError>;
    /// Sets a running command to `dead`, and for runner commands records the error
    /// (and, if given, the observed state) on the runner.
    async fn kill_command(
        &self,
        lease: &Lease,
        error: &str,
        runner_state: Option<ObservedState>,
    ) -> Result<(), StoreError>;

    /// At the start of a single-process deployment with an in-memory queue: every
    /// unfinished command is marked unpublished (so the relay publishes it again),
    /// and commands left `running` by the previous process are rescued at once.
    /// Returns how many commands will be resumed.
    async fn recover_unfinished(&self) -> Result<u64, StoreError>;

    /// Moves dead commands back to `queued` (attempts reset) for re-publishing.
    async fn replay(&self, selector: ReplaySelector) -> Result<Replayed, StoreError>;
}


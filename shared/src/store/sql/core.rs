//! The core port: runner commands from submission to their end — idempotent
//! submission with its race retry, claims under a lease held by a live worker,
//! completion, publishing, rescue, recovery and replay — and the worker registry.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::cost::PurchaseOption;
use crate::domain::{CommandStatus, ObservedState};
use crate::store::sql::rows::{self, command_columns, runner_columns};
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::commands::{Claim, CommandQuery, CommandRecord, Hold, Lease, LeaseTerms, NewRunnerCommand, ReplaySelector, Replayed, RunnerObservation, RunnerQuery, RunnerRecord, Store, SubmitError, Submitted, WorkerProcess, same_request};
use crate::store::plan::{RunnerChange, plan_runner_command};
use crate::store::error::StoreError;

static COMMAND_BY_ID: Sql = Sql::new(concat!("select ", command_columns!(), " from command where command_id = $1"));
static COMMAND_BY_KEY: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where requested_by = $1 and idempotency_key = $2"
));
static RUNNER_BY_ID: Sql = Sql::new(concat!("select ", runner_columns!(), " from runner where runner_id = $1"));
static RUNNER_FOR_UPDATE: Sql =
    Sql::new(concat!("select ", runner_columns!(), " from runner where runner_id = $1 {for_update}"));

/// A concurrent first start of the same runner wins; this one re-plans
/// against the row it created.
static INSERT_RUNNER: Sql = Sql::new(
    "insert into runner (runner_id, runner_name, instance_type, image_name, s3_output, desired_state, observed_state, \
     owner, purchase_option, fallback_instance_types, idle_stop_after_secs) \
     values ($1, $2, $3, $4, $5, 'running', 'requested', $6, $7, $8, $9) on conflict (runner_id) do nothing",
);
static UPDATE_RUNNER_DESIRED: Sql = Sql::new(
    "update runner set desired_state = $2, runner_name = coalesce($3, runner_name), \
     image_name = coalesce($4, image_name), s3_output = coalesce($5, s3_output), last_error = null \
     where runner_id = $1",
);
static INSERT_RUNNER_COMMAND: Sql = Sql::new(concat!(
    "insert into command (command_id, action, runner_id, params, status, max_attempts, requested_by, \
     idempotency_key, trace_id) values ($1, $2, $3, $4, 'queued', $5, $6, $7, $8) \
     on conflict (requested_by, idempotency_key) where idempotency_key is not null do nothing returning ",
    command_columns!()
));

static LIST_COMMANDS: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where ($1 is null or runner_id = $1) and ($2 is null or status = $2) \
     and ($6 is null or (waiting_for is not null) = $6) \
     and ($3 is null or action = $3) and ($4 is null or seq < $4) order by seq desc limit $5"
));
static LIST_RUNNERS: Sql = Sql::new(concat!(
    "select ",
    runner_columns!(),
    " from runner where ($1 is null or runner_id = $1) and ($2 is null or observed_state = $2) \
     and ($3 is null or desired_state = $3) and ($4 is null or runner_id > $4) order by runner_id limit $5"
));
static RUNNERS_REVISION: Sql = Sql::new("select coalesce(max(revision), 0) as revision from runner");
static COMMANDS_REVISION: Sql = Sql::new("select coalesce(max(revision), 0) as revision from command");

/// An overdue retry's due time moves to now, so it is not re-published again
/// until it is overdue once more.
static MARK_PUBLISHED: Sql = Sql::new(
    "update command set published_at = {now}, \
     next_attempt_at = case when status = 'retrying' then {greatest}(next_attempt_at, {now}) end \
     where command_id in (select value from {each $1}) and status in ('queued', 'retrying')",
);
static DUE_FOR_PUBLISH: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where status in ('queued', 'retrying') and ( \
       (published_at is null and updated_at < {now-$1}) \
       or (status = 'retrying' and next_attempt_at < {now-$2}) \
       or (status = 'queued' and published_at < {now-$2})) \
     order by seq limit $3"
));

/// A running command whose holder stopped heartbeating ($1: the holder timeout).
macro_rules! holder_dead {
    ($holder:literal, $n:literal) => {
        concat!(
            "(",
            $holder,
            " is not null and not exists (select 1 from worker_process w where w.worker_id = ",
            $holder,
            " and w.heartbeat_at > {now-$",
            $n,
            "}))"
        )
    };
}

static RESCUE: Sql = Sql::new(concat!(
    "update command set \
       status = case when attempts >= max_attempts then 'dead' else 'retrying' end, \
       finished_at = case when attempts >= max_attempts then {now} end, \
       next_attempt_at = case when attempts >= max_attempts then null else {now} end, \
       last_error = case when lease_until < {now} then 'worker lost while running (lease expired)' \
         else 'worker lost while running (its process stopped heartbeating)' end \
         || coalesce('; previous: ' || last_error, ''), \
       lease_until = null, published_at = null \
     where status = 'running' and (lease_until < {now} or ",
    holder_dead!("lease_holder", "1"),
    ")"
));

/// One statement, so it is atomic in either database. `RETURNING` shows the row
/// before SQLite's touch trigger runs: the statement sets `updated_at` itself.
static CLAIM: Sql = Sql::new(concat!(
    "update command as c set status = 'running', \
       attempts = c.attempts + case when c.waiting_for is null then 1 else 0 end, lease_until = {now+$2}, \
       lease_holder = $3, claimed_at = {now}, started_at = coalesce(c.started_at, {now}), \
       next_attempt_at = null, waiting_for = null, updated_at = {now} \
     where c.command_id = $1 \
       and (c.status in ('queued', 'retrying') \
            or ($5 and c.status = 'running' and (c.lease_until < {now} or ",
    holder_dead!("c.lease_holder", "4"),
    "))) \
       and not exists (select 1 from command e where e.runner_id = c.runner_id and e.seq < c.seq \
                       and e.status not in ('succeeded', 'dead')) \
     returning ",
    command_columns!()
));
static RENEW: Sql = Sql::new(
    "update command set lease_until = {now+$2} where command_id = $1 and status = 'running' and lease_holder = $3",
);

static REGISTER_WORKER: Sql = Sql::new(
    "insert into worker_process (worker_id, hostname, pid, version, started_at, heartbeat_at) \
     values ($1, $2, $3, $4, $5, {now}) on conflict (worker_id) do update set heartbeat_at = {now}",
);
static HEARTBEAT_WORKER: Sql = Sql::new("update worker_process set heartbeat_at = {now} where worker_id = $1");
static RETIRE_WORKER: Sql =
    Sql::new("delete from worker_process where worker_id = $1 or heartbeat_at < {now-$2}");
macro_rules! worker_columns {
    () => {
        "worker_id, hostname, pid, version, started_at, heartbeat_at"
    };
}
static WORKER_BY_ID: Sql =
    Sql::new(concat!("select ", worker_columns!(), " from worker_process where worker_id = $1"));
static LIST_WORKERS: Sql =
    Sql::new(concat!("select ", worker_columns!(), " from worker_process order by started_at desc, worker_id"));

static RECORD_INSTANCE: Sql = Sql::new(
    "update runner set instance_id = coalesce($2, instance_id), observed_state = $3 where runner_id = $1",
);
static RECORD_LAUNCH: Sql = Sql::new(
    "update runner set instance_id = coalesce($2, instance_id), observed_state = $3, \
     launched_instance_type = $4, launched_purchase_option = $5 where runner_id = $1",
);
static SUCCEED_RUNNER: Sql = Sql::new(
    "update runner set instance_id = coalesce($2, instance_id), observed_state = $3, last_error = null \
     where runner_id = $1",
);
static SUCCEED: Sql = Sql::new(
    "update command set status = 'succeeded', result = $2, finished_at = {now}, lease_until = null, \
     last_error = null where command_id = $1 and status = 'running' and lease_holder = $3",
);
static RETRY: Sql = Sql::new(
    "update command set status = 'retrying', last_error = $2, next_attempt_at = $3, lease_until = null, \
     published_at = null, budget_op = null, budget_at = null, budget_ticket = null \
     where command_id = $1 and status = 'running' and lease_holder = $4",
);
static KILL: Sql = Sql::new(
    "update command set status = 'dead', last_error = $2, finished_at = {now}, lease_until = null, \
     next_attempt_at = null where command_id = $1 and status = 'running' and lease_holder = $3 \
     returning runner_id",
);
static WAIT: Sql = Sql::new(
    "update command set status = 'retrying', waiting_for = $2, next_attempt_at = $3, lease_until = null, \
     published_at = null, budget_op = $5, budget_at = $6, budget_ticket = $7 \
     where command_id = $1 and status = 'running' and lease_holder = $4",
);
static KILL_RUNNER: Sql =
    Sql::new("update runner set last_error = $2, observed_state = coalesce($3, observed_state) where runner_id = $1");

static RECOVER_RUNNING: Sql = Sql::new(
    "update command set \
       status = case when attempts >= max_attempts then 'dead' else 'retrying' end, \
       finished_at = case when attempts >= max_attempts then {now} end, \
       next_attempt_at = case when attempts >= max_attempts then null else {now} end, \
       last_error = 'interrupted by a restart' || coalesce('; previous: ' || last_error, ''), \
       lease_until = null \
     where status = 'running'",
);
static RECOVER_UNPUBLISH: Sql =
    Sql::new("update command set published_at = null where status in ('queued', 'retrying')");

static REPLAY_CANDIDATES: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where status = 'dead' and ($1 is null or action = $1) and ($2 is null or command_id = $2) \
     order by seq {for_update}"
));
static NEWER_ON_RUNNER: Sql = Sql::new(
    "select command_id from command where runner_id = $1 and seq > $2 and status <> 'dead' limit 1",
);
static REQUEUE: Sql = Sql::new(concat!(
    "update command set status = 'queued', attempts = 0, finished_at = null, next_attempt_at = null, \
     published_at = null, updated_at = {now} where command_id = $1 returning ",
    command_columns!()
));

/// How one submission attempt ended. Lives for one call: not worth boxing.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Done(Result<Submitted, SubmitError>),
    /// Another submission committed the same runner or key first: plan again.
    Raced,
}

impl<D: Driver> SqlStore<D> {
    async fn try_submit(&self, cmd: &NewRunnerCommand) -> Result<Attempt, StoreError> {
        // The runner's row lock (SQLite: the write lock) keeps other submissions
        // for the runner out until this one commits.
        let mut tx = self.driver.begin().await?;
        let action = cmd.request.action();
        let params = cmd.request.params(&cmd.runner_id).to_json();
        if let Some(key) = &cmd.idempotency_key
            && let Some(row) = tx.fetch_optional(&COMMAND_BY_KEY, args![&cmd.requested_by, key]).await?
        {
            return Ok(Attempt::Done(same_request(rows::command(&row)?, action, &params)));
        }
        let runner_id = cmd.runner_id.as_str();
        let existing = tx.fetch_optional(&RUNNER_FOR_UPDATE, args![runner_id]).await?;
        let existing = existing.map(|r| rows::runner(&r)).transpose()?;
        let change = match plan_runner_command(runner_id, existing.as_ref(), &cmd.request) {
            Ok(c) => c,
            Err(e) => return Ok(Attempt::Done(Err(e))),
        };
        match change {
            RunnerChange::Create { runner_name, instance_type, image_name, s3_output, options } => {
                let fallbacks: Vec<String> = options.fallback_instance_types.iter().map(|t| t.to_string()).collect();
                let args = args![
                    runner_id,
                    runner_name,
                    instance_type,
                    image_name,
                    s3_output,
                    &cmd.requested_by,
                    options.purchase_option.as_str(),
                    fallbacks.join(","),
                    options.idle_stop_after_secs,
                ];
                if tx.execute(&INSERT_RUNNER, args).await? == 0 {
                    return Ok(Attempt::Raced);
                }
            }
            RunnerChange::Update { desired, runner_name, image_name, s3_output } => {
                let args = args![runner_id, desired.as_str(), runner_name, image_name, s3_output];
                tx.execute(&UPDATE_RUNNER_DESIRED, args).await?;
            }
        }
        let args = args![
            cmd.command_id,
            action.as_str(),
            runner_id,
            params,
            cmd.max_attempts,
            &cmd.requested_by,
            &cmd.idempotency_key,
            &cmd.trace_id,
        ];
        // The same idempotency key committed meanwhile: answer with that command.
        let Some(row) = tx.fetch_optional(&INSERT_RUNNER_COMMAND, args).await? else {
            return Ok(Attempt::Raced);
        };
        let command = rows::command(&row)?;
        tx.commit().await?;
        Ok(Attempt::Done(Ok(Submitted { command, created: true })))
    }

    async fn runner_by_id(&self, runner_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&RUNNER_BY_ID, args![runner_id]).await?;
        row.map(|r| rows::runner(&r)).transpose()
    }
}

fn worker(r: &impl Row) -> Result<WorkerProcess, StoreError> {
    Ok(WorkerProcess {
        worker_id: r.uuid("worker_id")?,
        hostname: r.text("hostname")?,
        pid: r.i32("pid")?,
        version: r.text("version")?,
        started_at: r.time("started_at")?,
        heartbeat_at: r.time("heartbeat_at")?,
    })
}

#[async_trait]
impl<D: Driver> Store for SqlStore<D> {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.driver.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        static PING: Sql = Sql::new("select 1");
        self.driver.conn().await?.execute(&PING, vec![]).await?;
        Ok(())
    }

    async fn submit_runner_command(&self, cmd: NewRunnerCommand) -> Result<Submitted, SubmitError> {
        // Two first requests for one runner (or one idempotency key) can race; the
        // loser re-runs against the winner's committed row.
        for _ in 0..4 {
            if let Attempt::Done(result) = self.try_submit(&cmd).await? {
                return result;
            }
        }
        Err(SubmitError::Store(StoreError::Setup("a submission kept racing with concurrent ones".into())))
    }

    async fn get_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&COMMAND_BY_ID, args![command_id]).await?;
        row.map(|r| rows::command(&r)).transpose()
    }

    async fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let (status, waiting) = match q.status.map(rows::stored_status) {
            Some((s, w)) => (Some(s), w),
            None => (None, None),
        };
        let args = args![&q.runner_id, status, q.action.map(|a| a.as_str()), q.before_seq, q.limit, waiting];
        rows::commands(&self.driver.conn().await?.fetch_all(&LIST_COMMANDS, args).await?)
    }

    async fn get_runner(&self, runner_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        self.runner_by_id(runner_id).await
    }

    async fn list_runners(&self, q: &RunnerQuery) -> Result<Vec<RunnerRecord>, StoreError> {
        let args = args![
            &q.runner_id,
            q.observed.map(|s| s.as_str()),
            q.desired.map(|s| s.as_str()),
            &q.after_runner_id,
            q.limit
        ];
        rows::runners(&self.driver.conn().await?.fetch_all(&LIST_RUNNERS, args).await?)
    }

    async fn runners_revision(&self) -> Result<i64, StoreError> {
        self.driver.conn().await?.fetch_one(&RUNNERS_REVISION, vec![]).await?.int("revision")
    }

    async fn commands_revision(&self) -> Result<i64, StoreError> {
        self.driver.conn().await?.fetch_one(&COMMANDS_REVISION, vec![]).await?.int("revision")
    }

    async fn mark_published(&self, command_ids: &[Uuid]) -> Result<(), StoreError> {
        if command_ids.is_empty() {
            return Ok(());
        }
        self.driver.conn().await?.execute(&MARK_PUBLISHED, args![command_ids]).await?;
        Ok(())
    }

    async fn due_for_publish(
        &self,
        grace: Duration,
        overdue: Duration,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        rows::commands(&self.driver.conn().await?.fetch_all(&DUE_FOR_PUBLISH, args![grace, overdue, limit]).await?)
    }

    async fn rescue_expired_leases(&self, holder_timeout: Duration) -> Result<u64, StoreError> {
        self.driver.conn().await?.execute(&RESCUE, args![holder_timeout]).await
    }

    async fn claim(&self, command_id: Uuid, terms: &LeaseTerms) -> Result<Claim, StoreError> {
        let args = args![command_id, terms.lease, terms.holder, terms.holder_timeout, terms.take_over];
        let mut conn = self.driver.conn().await?;
        if let Some(row) = conn.fetch_optional(&CLAIM, args).await? {
            let command = rows::command(&row)?;
            let runner = match &command.runner_id {
                Some(id) => conn.fetch_optional(&RUNNER_BY_ID, args![id]).await?.map(|r| rows::runner(&r)).transpose()?,
                None => None,
            };
            return Ok(Claim::Claimed { command, runner });
        }
        let Some(current) = conn.fetch_optional(&COMMAND_BY_ID, args![command_id]).await? else {
            return Ok(Claim::NotFound);
        };
        Ok(match rows::command(&current)?.status {
            s if s.is_terminal() => Claim::Finished(s),
            CommandStatus::Running => Claim::Busy,
            _ => Claim::Blocked,
        })
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<bool, StoreError> {
        let args = args![lease.command_id, duration, lease.holder];
        Ok(self.driver.conn().await?.execute(&RENEW, args).await? == 1)
    }

    async fn register_worker(&self, w: &WorkerProcess) -> Result<(), StoreError> {
        let args = args![w.worker_id, &w.hostname, w.pid, &w.version, w.started_at];
        self.driver.conn().await?.execute(&REGISTER_WORKER, args).await?;
        Ok(())
    }

    async fn heartbeat_worker(&self, worker_id: Uuid) -> Result<bool, StoreError> {
        Ok(self.driver.conn().await?.execute(&HEARTBEAT_WORKER, args![worker_id]).await? == 1)
    }

    async fn retire_worker(&self, worker_id: Uuid, forget_after: Duration) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&RETIRE_WORKER, args![worker_id, forget_after]).await?;
        Ok(())
    }

    async fn get_worker(&self, worker_id: Uuid) -> Result<Option<WorkerProcess>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&WORKER_BY_ID, args![worker_id]).await?;
        row.map(|r| worker(&r)).transpose()
    }

    async fn list_workers(&self) -> Result<Vec<WorkerProcess>, StoreError> {
        self.driver.conn().await?.fetch_all(&LIST_WORKERS, vec![]).await?.iter().map(worker).collect()
    }

    async fn record_instance(&self, runner_id: &str, obs: &RunnerObservation) -> Result<(), StoreError> {
        let args = args![runner_id, &obs.instance_id, obs.observed.as_str()];
        self.driver.conn().await?.execute(&RECORD_INSTANCE, args).await?;
        Ok(())
    }

    async fn record_launch(
        &self,
        runner_id: &str,
        obs: &RunnerObservation,
        instance_type: &str,
        purchase_option: PurchaseOption,
    ) -> Result<(), StoreError> {
        let args = args![runner_id, &obs.instance_id, obs.observed.as_str(), instance_type, purchase_option.as_str()];
        self.driver.conn().await?.execute(&RECORD_LAUNCH, args).await?;
        Ok(())
    }

    async fn succeed_command(
        &self,
        lease: &Lease,
        runner: Option<(&str, &RunnerObservation)>,
        result: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.driver.begin().await?;
        // Not ours any more (taken over, or finished): leave the runner to its holder.
        if tx.execute(&SUCCEED, args![lease.command_id, result, lease.holder]).await? == 0 {
            return Ok(());
        }
        if let Some((runner_id, obs)) = runner {
            tx.execute(&SUCCEED_RUNNER, args![runner_id, &obs.instance_id, obs.observed.as_str()]).await?;
        }
        tx.commit().await
    }

    async fn retry_command(
        &self,
        lease: &Lease,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let args = args![lease.command_id, error, next_attempt_at, lease.holder];
        self.driver.conn().await?.execute(&RETRY, args).await?;
        Ok(())
    }

    async fn wait_command(
        &self,
        lease: &Lease,
        waiting_for: &str,
        next_attempt_at: DateTime<Utc>,
        runner: Option<(&str, &RunnerObservation)>,
        reservation: Option<Hold<'_>>,
    ) -> Result<(), StoreError> {
        let mut tx = self.driver.begin().await?;
        let (op, at, ticket) = (reservation.map(|h| h.op), reservation.map(|h| h.at), reservation.and_then(|h| h.ticket));
        let args = args![lease.command_id, waiting_for, next_attempt_at, lease.holder, op, at, ticket];
        if tx.execute(&WAIT, args).await? == 0 {
            return Ok(());
        }
        if let Some((runner_id, obs)) = runner {
            tx.execute(&RECORD_INSTANCE, args![runner_id, &obs.instance_id, obs.observed.as_str()]).await?;
        }
        tx.commit().await
    }

    async fn kill_command(
        &self,
        lease: &Lease,
        error: &str,
        runner_state: Option<ObservedState>,
    ) -> Result<(), StoreError> {
        let mut tx = self.driver.begin().await?;
        let killed = tx.fetch_optional(&KILL, args![lease.command_id, error, lease.holder]).await?;
        if let Some(runner_id) = killed.map(|r| r.opt_text("runner_id")).transpose()?.flatten() {
            tx.execute(&KILL_RUNNER, args![runner_id, error, runner_state.map(|s| s.as_str())]).await?;
        }
        tx.commit().await
    }

    async fn recover_unfinished(&self) -> Result<u64, StoreError> {
        let mut tx = self.driver.begin().await?;
        tx.execute(&RECOVER_RUNNING, vec![]).await?;
        let resumed = tx.execute(&RECOVER_UNPUBLISH, vec![]).await?;
        tx.commit().await?;
        Ok(resumed)
    }

    async fn replay(&self, selector: ReplaySelector) -> Result<Replayed, StoreError> {
        let mut tx = self.driver.begin().await?;
        let (action, id) = match &selector {
            ReplaySelector::All => (None, None),
            ReplaySelector::Action(a) => (Some(a.as_str()), None),
            ReplaySelector::Command(id) => (None, Some(*id)),
        };
        let candidates = rows::commands(&tx.fetch_all(&REPLAY_CANDIDATES, args![action, id]).await?)?;
        let mut replayed = Vec::new();
        let mut skipped = Vec::new();
        for cmd in candidates {
            // Replaying an old runner command after a newer one was applied would
            // undo the newer one: refuse, the operator should issue a fresh command.
            if let Some(runner_id) = &cmd.runner_id
                && let Some(newer) = tx.fetch_optional(&NEWER_ON_RUNNER, args![runner_id, cmd.seq]).await?
            {
                let newer = newer.uuid("command_id")?;
                skipped.push((cmd.command_id, format!("superseded by later command {newer} on runner {runner_id}")));
                continue;
            }
            replayed.push(rows::command(&tx.fetch_one(&REQUEUE, args![cmd.command_id]).await?)?);
        }
        tx.commit().await?;
        Ok(Replayed { replayed, skipped })
    }
}

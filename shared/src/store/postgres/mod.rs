//! Postgres adapter of the store port (sqlx). Queries are checked at run time:
//! the same statements are exercised by the integration tests against a real server.

mod containers;
mod fleet;
mod email;
mod images;
mod users;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool, Postgres, Row, Transaction};
use std::str::FromStr;
use uuid::Uuid;

use crate::domain::{Action, CommandStatus, DesiredState, ObservedState};
use crate::store::{
    Claim, CommandQuery, CommandRecord, Lease, LeaseTerms, NewRunnerCommand, ReplaySelector, Replayed, RunnerChange, WorkerProcess,
    RunnerObservation, RunnerQuery, RunnerRecord, Store, StoreError, SubmitError, Submitted, plan_runner_command,
    same_request,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

pub(crate) const COMMAND_COLUMNS: &str = "command_id, seq, action, runner_id, params, status, attempts, max_attempts, \
     last_error, result, requested_by, trace_id, created_at, updated_at, started_at, finished_at, next_attempt_at, \
     lease_holder, claimed_at, lease_until";

pub(crate) const RUNNER_COLUMNS: &str = "runner_id, runner_name, instance_type, image_name, s3_output, instance_id, \
     desired_state, observed_state, last_error, last_heartbeat_at, created_at, updated_at";

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Other(format!("bad database URL: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn runner_for_update(
        tx: &mut Transaction<'_, Postgres>,
        runner_id: &str,
    ) -> Result<Option<RunnerRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {RUNNER_COLUMNS} from runner where runner_id = $1 for update")))
            .bind(runner_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| runner_from_row(&r)).transpose()
    }

    async fn command_by_key(
        tx: &mut Transaction<'_, Postgres>,
        requested_by: &str,
        key: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command where requested_by = $1 and idempotency_key = $2"
        )))
        .bind(requested_by)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| command_from_row(&r)).transpose()
    }

    async fn try_submit(&self, cmd: &NewRunnerCommand) -> Result<Submitted, SubmitError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let action = cmd.request.action();
        let params = cmd.request.params(&cmd.runner_id);
        if let Some(key) = &cmd.idempotency_key
            && let Some(existing) = Self::command_by_key(&mut tx, &cmd.requested_by, key).await?
        {
            return same_request(existing, action, &params);
        }
        let existing = Self::runner_for_update(&mut tx, cmd.runner_id.as_str()).await?;
        let change = plan_runner_command(cmd.runner_id.as_str(), existing.as_ref(), &cmd.request)?;
        match change {
            RunnerChange::Create { runner_name, instance_type, image_name, s3_output } => {
                // `on conflict do nothing`: a concurrent first start of the same runner
                // wins; this one then re-plans against the row it created.
                let inserted = sqlx::query(
                    "insert into runner (runner_id, runner_name, instance_type, image_name, s3_output, \
                     desired_state, observed_state) values ($1, $2, $3, $4, $5, 'running', 'requested') \
                     on conflict (runner_id) do nothing",
                )
                .bind(cmd.runner_id.as_str())
                .bind(&runner_name)
                .bind(&instance_type)
                .bind(&image_name)
                .bind(&s3_output)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
                if inserted.rows_affected() == 0 {
                    tx.rollback().await.map_err(StoreError::from)?;
                    return Err(SubmitError::Store(StoreError::Other(RACE.into())));
                }
            }
            RunnerChange::Update { desired, runner_name, image_name, s3_output } => {
                sqlx::query(
                    "update runner set desired_state = $2, runner_name = coalesce($3, runner_name), \
                     image_name = coalesce($4, image_name), s3_output = coalesce($5, s3_output), \
                     last_error = null where runner_id = $1",
                )
                .bind(cmd.runner_id.as_str())
                .bind(desired.as_str())
                .bind(runner_name)
                .bind(image_name)
                .bind(s3_output)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
            }
        }
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "insert into command (command_id, action, runner_id, params, status, max_attempts, requested_by, \
             idempotency_key, trace_id) values ($1, $2, $3, $4, 'queued', $5, $6, $7, $8) \
             on conflict (requested_by, idempotency_key) where idempotency_key is not null do nothing \
             returning {COMMAND_COLUMNS}"
        )))
        .bind(cmd.command_id)
        .bind(action.as_str())
        .bind(cmd.runner_id.as_str())
        .bind(&params)
        .bind(cmd.max_attempts)
        .bind(&cmd.requested_by)
        .bind(&cmd.idempotency_key)
        .bind(&cmd.trace_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = inserted else {
            // The same idempotency key committed meanwhile: answer with that command.
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(SubmitError::Store(StoreError::Other(RACE.into())));
        };
        let command = command_from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Submitted { command, created: true })
    }
}

const RACE: &str = "concurrent submission; retry";


fn decode<T>(value: Option<T>, what: &str, raw: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Other(format!("unexpected {what} {raw:?} in database")))
}

pub(crate) fn command_from_row(r: &sqlx::postgres::PgRow) -> Result<CommandRecord, StoreError> {
    let action: String = r.try_get("action")?;
    let status: String = r.try_get("status")?;
    Ok(CommandRecord {
        command_id: r.try_get("command_id")?,
        seq: r.try_get("seq")?,
        action: decode(Action::parse(&action), "action", &action)?,
        runner_id: r.try_get("runner_id")?,
        status: decode(CommandStatus::parse(&status), "status", &status)?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        last_error: r.try_get("last_error")?,
        requested_by: r.try_get("requested_by")?,
        trace_id: r.try_get("trace_id")?,
        params: r.try_get("params")?,
        result: r.try_get("result")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        lease_holder: r.try_get("lease_holder")?,
        claimed_at: r.try_get("claimed_at")?,
        lease_until: r.try_get("lease_until")?,
    })
}

const WORKER_COLUMNS: &str = "worker_id, hostname, pid, version, started_at, heartbeat_at";

fn worker_from_row(r: &sqlx::postgres::PgRow) -> Result<WorkerProcess, StoreError> {
    Ok(WorkerProcess {
        worker_id: r.try_get("worker_id")?,
        hostname: r.try_get("hostname")?,
        pid: r.try_get("pid")?,
        version: r.try_get("version")?,
        started_at: r.try_get("started_at")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
    })
}

/// A running command whose holder stopped heartbeating ($N: the holder timeout in ms).
fn holder_dead(n: u8) -> String {
    format!(
        "(lease_holder is not null and not exists (select 1 from worker_process w \
          where w.worker_id = lease_holder and w.heartbeat_at > now() - make_interval(secs => ${n} / 1000.0)))"
    )
}

pub(crate) fn runner_from_row(r: &sqlx::postgres::PgRow) -> Result<RunnerRecord, StoreError> {
    let desired: String = r.try_get("desired_state")?;
    let observed: String = r.try_get("observed_state")?;
    Ok(RunnerRecord {
        runner_id: r.try_get("runner_id")?,
        runner_name: r.try_get("runner_name")?,
        instance_type: r.try_get("instance_type")?,
        image_name: r.try_get("image_name")?,
        s3_output: r.try_get("s3_output")?,
        instance_id: r.try_get("instance_id")?,
        desired_state: decode(DesiredState::parse(&desired), "desired_state", &desired)?,
        observed_state: decode(ObservedState::parse(&observed), "observed_state", &observed)?,
        last_error: r.try_get("last_error")?,
        last_heartbeat_at: r.try_get("last_heartbeat_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Other(format!("migration failed: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn submit_runner_command(&self, cmd: NewRunnerCommand) -> Result<Submitted, SubmitError> {
        // Two first requests for one runner (or one idempotency key) can race; the
        // loser re-runs against the winner's committed row.
        for _ in 0..3 {
            match self.try_submit(&cmd).await {
                Err(SubmitError::Store(StoreError::Other(m))) if m == RACE => continue,
                other => return other,
            }
        }
        self.try_submit(&cmd).await
    }

    async fn get_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {COMMAND_COLUMNS} from command where command_id = $1")))
            .bind(command_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| command_from_row(&r)).transpose()
    }

    async fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command \
             where ($1::text is null or runner_id = $1) and ($2::text is null or status = $2) \
             and ($3::text is null or action = $3) and ($4::bigint is null or seq < $4) \
             order by seq desc limit $5"
        )))
        .bind(&q.runner_id)
        .bind(q.status.map(|s| s.as_str()))
        .bind(q.action.map(|a| a.as_str()))
        .bind(q.before_seq)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn get_runner(&self, runner_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {RUNNER_COLUMNS} from runner where runner_id = $1")))
            .bind(runner_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| runner_from_row(&r)).transpose()
    }

    async fn list_runners(&self, q: &RunnerQuery) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {RUNNER_COLUMNS} from runner \
             where ($1::text is null or runner_id = $1) and ($2::text is null or observed_state = $2) \
             and ($3::text is null or desired_state = $3) and ($4::text is null or runner_id > $4) \
             order by runner_id limit $5"
        )))
        .bind(&q.runner_id)
        .bind(q.observed.map(|s| s.as_str()))
        .bind(q.desired.map(|s| s.as_str()))
        .bind(&q.after_runner_id)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(runner_from_row).collect()
    }

    async fn runners_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select coalesce(max(revision), 0) from runner").fetch_one(&self.pool).await?)
    }

    async fn commands_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select coalesce(max(revision), 0) from command").fetch_one(&self.pool).await?)
    }

    async fn mark_published(&self, command_ids: &[Uuid]) -> Result<(), StoreError> {
        if command_ids.is_empty() {
            return Ok(());
        }
        // An overdue retry's due time moves to now, so it is not re-published again
        // until it is overdue once more.
        sqlx::query(
            "update command set published_at = now(), \
             next_attempt_at = case when status = 'retrying' then greatest(next_attempt_at, now()) end \
             where command_id = any($1) and status in ('queued', 'retrying')",
        )
        .bind(command_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn due_for_publish(
        &self,
        grace: Duration,
        overdue: Duration,
        limit: i64,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command \
             where status in ('queued', 'retrying') and ( \
               (published_at is null and updated_at < now() - make_interval(secs => $1 / 1000.0)) \
               or (status = 'retrying' and next_attempt_at < now() - make_interval(secs => $2 / 1000.0))) \
             order by seq limit $3"
        )))
        .bind(millis(grace))
        .bind(millis(overdue))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(command_from_row).collect()
    }

    async fn rescue_expired_leases(&self, holder_timeout: Duration) -> Result<u64, StoreError> {
        let dead = holder_dead(1);
        let done = sqlx::query(AssertSqlSafe(format!(
            "update command set \
               status = case when attempts >= max_attempts then 'dead' else 'retrying' end, \
               finished_at = case when attempts >= max_attempts then now() end, \
               next_attempt_at = case when attempts >= max_attempts then null else now() end, \
               last_error = case when lease_until < now() then 'worker lost while running (lease expired)' \
                 else 'worker lost while running (its process stopped heartbeating)' end \
                 || coalesce('; previous: ' || last_error, ''), \
               lease_until = null, published_at = null \
             where status = 'running' and (lease_until < now() or {dead})"
        )))
        .bind(millis(holder_timeout))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn claim(&self, command_id: Uuid, terms: &LeaseTerms) -> Result<Claim, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "update command c set status = 'running', attempts = c.attempts + 1, \
               lease_until = now() + make_interval(secs => $2 / 1000.0), lease_holder = $3, claimed_at = now(), \
               started_at = coalesce(c.started_at, now()), next_attempt_at = null \
             where c.command_id = $1 \
               and (c.status in ('queued', 'retrying') \
                    or (c.status = 'running' and (c.lease_until < now() or {}))) \
               and not exists (select 1 from command e where e.runner_id = c.runner_id and e.seq < c.seq \
                               and e.status not in ('succeeded', 'dead')) \
             returning {}",
            holder_dead(4).replace("lease_holder", "c.lease_holder"),
            COMMAND_COLUMNS.split(", ").map(|c| format!("c.{}", c.trim())).collect::<Vec<_>>().join(", ")
        )))
        .bind(command_id)
        .bind(millis(terms.lease))
        .bind(terms.holder)
        .bind(millis(terms.holder_timeout))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = row {
            let command = command_from_row(&row)?;
            let runner = match &command.runner_id {
                Some(id) => self.get_runner(id).await?,
                None => None,
            };
            return Ok(Claim::Claimed { command, runner });
        }
        let Some(current) = self.get_command(command_id).await? else {
            return Ok(Claim::NotFound);
        };
        Ok(match current.status {
            s if s.is_terminal() => Claim::Finished(s),
            CommandStatus::Running => Claim::Busy,
            _ => Claim::Blocked,
        })
    }

    async fn renew_lease(&self, lease: &Lease, duration: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "update command set lease_until = now() + make_interval(secs => $2 / 1000.0) \
             where command_id = $1 and status = 'running' and lease_holder = $3",
        )
        .bind(lease.command_id)
        .bind(millis(duration))
        .bind(lease.holder)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn register_worker(&self, w: &WorkerProcess) -> Result<(), StoreError> {
        sqlx::query(
            "insert into worker_process (worker_id, hostname, pid, version, started_at, heartbeat_at) \
             values ($1, $2, $3, $4, $5, now()) \
             on conflict (worker_id) do update set heartbeat_at = now()",
        )
        .bind(w.worker_id)
        .bind(&w.hostname)
        .bind(w.pid)
        .bind(&w.version)
        .bind(w.started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat_worker(&self, worker_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query("update worker_process set heartbeat_at = now() where worker_id = $1")
            .bind(worker_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retire_worker(&self, worker_id: Uuid, forget_after: Duration) -> Result<(), StoreError> {
        sqlx::query(
            "delete from worker_process where worker_id = $1 \
             or heartbeat_at < now() - make_interval(secs => $2 / 1000.0)",
        )
        .bind(worker_id)
        .bind(millis(forget_after))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn get_worker(&self, worker_id: Uuid) -> Result<Option<WorkerProcess>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {WORKER_COLUMNS} from worker_process where worker_id = $1")))
            .bind(worker_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| worker_from_row(&r)).transpose()
    }

    async fn list_workers(&self) -> Result<Vec<WorkerProcess>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {WORKER_COLUMNS} from worker_process order by started_at desc, worker_id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from_row).collect()
    }

    async fn record_instance(&self, runner_id: &str, obs: &RunnerObservation) -> Result<(), StoreError> {
        sqlx::query(
            "update runner set instance_id = coalesce($2, instance_id), observed_state = $3 where runner_id = $1",
        )
        .bind(runner_id)
        .bind(&obs.instance_id)
        .bind(obs.observed.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn succeed_command(
        &self,
        lease: &Lease,
        runner: Option<(&str, &RunnerObservation)>,
        result: serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some((runner_id, obs)) = runner {
            sqlx::query(
                "update runner set instance_id = coalesce($2, instance_id), observed_state = $3, last_error = null \
                 where runner_id = $1",
            )
            .bind(runner_id)
            .bind(&obs.instance_id)
            .bind(obs.observed.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(
            "update command set status = 'succeeded', result = $2, finished_at = now(), lease_until = null, \
             last_error = null where command_id = $1 and status = 'running' and lease_holder = $3",
        )
        .bind(lease.command_id)
        .bind(result)
        .bind(lease.holder)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            // Not ours any more (taken over, or finished): leave the runner to its holder.
            tx.rollback().await?;
            return Ok(());
        }
        tx.commit().await?;
        Ok(())
    }

    async fn retry_command(
        &self,
        lease: &Lease,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "update command set status = 'retrying', last_error = $2, next_attempt_at = $3, lease_until = null, \
             published_at = null where command_id = $1 and status = 'running' and lease_holder = $4",
        )
        .bind(lease.command_id)
        .bind(error)
        .bind(next_attempt_at)
        .bind(lease.holder)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn kill_command(
        &self,
        lease: &Lease,
        error: &str,
        runner_state: Option<ObservedState>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let runner_id: Option<Option<String>> = sqlx::query_scalar(
            "update command set status = 'dead', last_error = $2, finished_at = now(), lease_until = null, \
             next_attempt_at = null where command_id = $1 and status = 'running' and lease_holder = $3 \
             returning runner_id",
        )
        .bind(lease.command_id)
        .bind(error)
        .bind(lease.holder)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(runner_id)) = runner_id {
            sqlx::query(
                "update runner set last_error = $2, observed_state = coalesce($3, observed_state) where runner_id = $1",
            )
            .bind(runner_id)
            .bind(error)
            .bind(runner_state.map(|s| s.as_str()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn recover_unfinished(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "update command set \
               status = case when attempts >= max_attempts then 'dead' else 'retrying' end, \
               finished_at = case when attempts >= max_attempts then now() end, \
               next_attempt_at = case when attempts >= max_attempts then null else now() end, \
               last_error = 'interrupted by a restart' || coalesce('; previous: ' || last_error, ''), \
               lease_until = null \
             where status = 'running'",
        )
        .execute(&mut *tx)
        .await?;
        let resumed = sqlx::query("update command set published_at = null where status in ('queued', 'retrying')")
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(resumed)
    }

    async fn replay(&self, selector: ReplaySelector) -> Result<Replayed, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (action, id) = match &selector {
            ReplaySelector::All => (None, None),
            ReplaySelector::Action(a) => (Some(a.as_str()), None),
            ReplaySelector::Command(id) => (None, Some(*id)),
        };
        let candidates = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command where status = 'dead' \
             and ($1::text is null or action = $1) and ($2::uuid is null or command_id = $2) \
             order by seq for update"
        )))
        .bind(action)
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        let mut replayed = Vec::new();
        let mut skipped = Vec::new();
        for row in &candidates {
            let cmd = command_from_row(row)?;
            // Replaying an old runner command after a newer one was applied would
            // undo the newer one: refuse, the operator should issue a fresh command.
            if let Some(runner_id) = &cmd.runner_id {
                let newer: Option<Uuid> = sqlx::query_scalar(
                    "select command_id from command where runner_id = $1 and seq > $2 and status <> 'dead' limit 1",
                )
                .bind(runner_id)
                .bind(cmd.seq)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(newer) = newer {
                    skipped.push((cmd.command_id, format!("superseded by later command {newer} on runner {runner_id}")));
                    continue;
                }
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "update command set status = 'queued', attempts = 0, finished_at = null, next_attempt_at = null, \
                 published_at = null where command_id = $1 returning {COMMAND_COLUMNS}"
            )))
            .bind(cmd.command_id)
            .fetch_one(&mut *tx)
            .await?;
            replayed.push(command_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(Replayed { replayed, skipped })
    }
}

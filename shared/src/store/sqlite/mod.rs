//! SQLite adapter of the store ports, for embedded mode: one file in the data
//! directory, its own migrations (`migrations/sqlite`) kept in step with the
//! Postgres ones, the same behaviour behind every trait method.
//!
//! Conventions, so every statement in this adapter agrees with every other:
//! - timestamps are TEXT in one fixed UTC format (`ts`, `NOW`), so comparing them
//!   as strings compares them as times; deadlines are computed in Rust and bound;
//! - UUIDs are TEXT in hyphenated form (`uuid_text`, `uuid_from`);
//! - JSON is TEXT;
//! - a transaction that writes starts with `BEGIN IMMEDIATE` (`write_tx`), so two
//!   writers wait on the busy timeout instead of failing to upgrade their lock.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{Datelike, DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::domain::{Action, CommandStatus, DesiredState, ObservedState};
use crate::store::same_request;
use crate::store::{
    Claim, CommandQuery, CommandRecord, Lease, LeaseTerms, NewRunnerCommand, ReplaySelector, Replayed, RunnerChange,
    WorkerProcess,
    RunnerObservation, RunnerQuery, RunnerRecord, Store, StoreError, SubmitError, Submitted, plan_runner_command,
};

mod containers;
mod email;
mod fleet;
mod images;
mod usage;
mod users;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The current time in the stored format, as an SQL expression.
pub(crate) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// A time in the stored format: `2026-01-02T03:04:05.678Z`. Only four-digit
/// years sort as strings, so times outside years 0000–9999 are clamped to them.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    match t.year() {
        y if y < 0 => "0000-01-01T00:00:00.000Z".to_owned(),
        y if y > 9999 => "9999-12-31T23:59:59.999Z".to_owned(),
        _ => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    }
}

/// Now plus `d`, in the stored format.
pub(crate) fn ts_in(d: Duration) -> String {
    let now = Utc::now();
    ts(chrono::Duration::from_std(d).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC))
}

/// Now minus `d`, in the stored format.
pub(crate) fn ts_ago(d: Duration) -> String {
    let now = Utc::now();
    ts(chrono::Duration::from_std(d).ok().and_then(|d| now.checked_sub_signed(d)).unwrap_or(DateTime::<Utc>::MIN_UTC))
}

pub(crate) fn uuid_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

pub(crate) fn uuid_from(s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|e| StoreError::Other(format!("bad uuid {s:?} in database: {e}")))
}

/// JSON stored as TEXT.
pub(crate) fn json_from(s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Other(format!("bad JSON in database: {e}")))
}

fn decode<T>(value: Option<T>, what: &str, raw: &str) -> Result<T, StoreError> {
    value.ok_or_else(|| StoreError::Other(format!("unexpected {what} {raw:?} in database")))
}

pub(crate) const COMMAND_COLUMNS: &str = "command_id, seq, action, runner_id, params, status, attempts, max_attempts, \
     last_error, result, requested_by, trace_id, created_at, updated_at, started_at, finished_at, next_attempt_at, \
     lease_holder, claimed_at, lease_until";

pub(crate) const RUNNER_COLUMNS: &str = "runner_id, runner_name, instance_type, image_name, s3_output, instance_id, \
     desired_state, observed_state, last_error, last_heartbeat_at, created_at, updated_at";

pub(crate) fn command_from_row(r: &SqliteRow) -> Result<CommandRecord, StoreError> {
    let command_id: String = r.try_get("command_id")?;
    let action: String = r.try_get("action")?;
    let status: String = r.try_get("status")?;
    let params: String = r.try_get("params")?;
    let result: Option<String> = r.try_get("result")?;
    Ok(CommandRecord {
        command_id: uuid_from(&command_id)?,
        seq: r.try_get("seq")?,
        action: decode(Action::parse(&action), "action", &action)?,
        runner_id: r.try_get("runner_id")?,
        status: decode(CommandStatus::parse(&status), "status", &status)?,
        attempts: r.try_get("attempts")?,
        max_attempts: r.try_get("max_attempts")?,
        last_error: r.try_get("last_error")?,
        requested_by: r.try_get("requested_by")?,
        trace_id: r.try_get("trace_id")?,
        params: json_from(&params)?,
        result: result.as_deref().map(json_from).transpose()?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        lease_holder: r.try_get::<Option<String>, _>("lease_holder")?.as_deref().map(uuid_from).transpose()?,
        claimed_at: r.try_get("claimed_at")?,
        lease_until: r.try_get("lease_until")?,
    })
}

const WORKER_COLUMNS: &str = "worker_id, hostname, pid, version, started_at, heartbeat_at";

fn worker_from_row(r: &SqliteRow) -> Result<WorkerProcess, StoreError> {
    let worker_id: String = r.try_get("worker_id")?;
    Ok(WorkerProcess {
        worker_id: uuid_from(&worker_id)?,
        hostname: r.try_get("hostname")?,
        pid: r.try_get("pid")?,
        version: r.try_get("version")?,
        started_at: r.try_get("started_at")?,
        heartbeat_at: r.try_get("heartbeat_at")?,
    })
}

/// A running command whose holder stopped heartbeating (?N: the oldest live heartbeat).
fn holder_dead(n: u8) -> String {
    format!(
        "(lease_holder is not null and not exists (select 1 from worker_process w \
          where w.worker_id = lease_holder and w.heartbeat_at > ?{n}))"
    )
}

pub(crate) fn runner_from_row(r: &SqliteRow) -> Result<RunnerRecord, StoreError> {
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

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("bad database URL: {e}")))?;
        Self::open(options, max_connections, busy_timeout).await
    }

    /// Opens (creating if missing) `geonex.db` in `dir`.
    pub async fn open_in(dir: &Path, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("creating the data directory {}: {e}", dir.display())))?;
        Self::open(SqliteConnectOptions::new().filename(dir.join("geonex.db")), max_connections, busy_timeout).await
    }

    async fn open(options: SqliteConnectOptions, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL loses no committed transaction on a process crash;
            // only a power loss can lose the last ones.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(busy_timeout)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A transaction holding the write lock from its first statement.
    pub(crate) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub async fn run_migrations(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Other(format!("migration failed: {e}")))
    }
}

/// A list bound as one JSON array, for `in (select value from json_each(?))`.
pub(crate) fn json_list<I, T>(items: I) -> String
where
    I: IntoIterator<Item = T>,
    T: Into<serde_json::Value>,
{
    serde_json::Value::Array(items.into_iter().map(Into::into).collect()).to_string()
}

/// `RETURNING` shows a row as the statement wrote it, before the touch trigger
/// ran; an update that returns rows therefore sets `updated_at` itself.
const TOUCHED: &str = "updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

const RACE: &str = "concurrent submission; retry";

impl SqliteStore {
    async fn runner_in(tx: &mut Transaction<'_, Sqlite>, runner_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {RUNNER_COLUMNS} from runner where runner_id = ?1")))
            .bind(runner_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.map(|r| runner_from_row(&r)).transpose()
    }

    async fn command_by_key(
        tx: &mut Transaction<'_, Sqlite>,
        requested_by: &str,
        key: &str,
    ) -> Result<Option<CommandRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command where requested_by = ?1 and idempotency_key = ?2"
        )))
        .bind(requested_by)
        .bind(key)
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| command_from_row(&r)).transpose()
    }

    async fn try_submit(&self, cmd: &NewRunnerCommand) -> Result<Submitted, SubmitError> {
        // The write lock, taken up front, stands in for Postgres's row lock on the
        // runner: no other submission reads the runner until this one commits.
        let mut tx = self.write_tx().await?;
        let action = cmd.request.action();
        let params = cmd.request.params(&cmd.runner_id);
        if let Some(key) = &cmd.idempotency_key
            && let Some(existing) = Self::command_by_key(&mut tx, &cmd.requested_by, key).await?
        {
            return same_request(existing, action, &params);
        }
        let existing = Self::runner_in(&mut tx, cmd.runner_id.as_str()).await?;
        let change = plan_runner_command(cmd.runner_id.as_str(), existing.as_ref(), &cmd.request)?;
        match change {
            RunnerChange::Create { runner_name, instance_type, image_name, s3_output } => {
                let inserted = sqlx::query(
                    "insert into runner (runner_id, runner_name, instance_type, image_name, s3_output, \
                     desired_state, observed_state) values (?1, ?2, ?3, ?4, ?5, 'running', 'requested') \
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
                    "update runner set desired_state = ?2, runner_name = coalesce(?3, runner_name), \
                     image_name = coalesce(?4, image_name), s3_output = coalesce(?5, s3_output), \
                     last_error = null where runner_id = ?1",
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
             idempotency_key, trace_id) values (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8) \
             on conflict (requested_by, idempotency_key) where idempotency_key is not null do nothing \
             returning {COMMAND_COLUMNS}"
        )))
        .bind(uuid_text(cmd.command_id))
        .bind(action.as_str())
        .bind(cmd.runner_id.as_str())
        .bind(params.to_string())
        .bind(cmd.max_attempts)
        .bind(&cmd.requested_by)
        .bind(&cmd.idempotency_key)
        .bind(&cmd.trace_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        let Some(row) = inserted else {
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(SubmitError::Store(StoreError::Other(RACE.into())));
        };
        let command = command_from_row(&row)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(Submitted { command, created: true })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        self.run_migrations().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn submit_runner_command(&self, cmd: NewRunnerCommand) -> Result<Submitted, SubmitError> {
        // Submissions are serialised by the write lock, so the race the Postgres
        // adapter retries cannot happen here; the loop keeps the two alike.
        for _ in 0..3 {
            match self.try_submit(&cmd).await {
                Err(SubmitError::Store(StoreError::Other(m))) if m == RACE => continue,
                other => return other,
            }
        }
        self.try_submit(&cmd).await
    }

    async fn get_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {COMMAND_COLUMNS} from command where command_id = ?1")))
            .bind(uuid_text(command_id))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| command_from_row(&r)).transpose()
    }

    async fn list_commands(&self, q: &CommandQuery) -> Result<Vec<CommandRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command \
             where (?1 is null or runner_id = ?1) and (?2 is null or status = ?2) \
             and (?3 is null or action = ?3) and (?4 is null or seq < ?4) \
             order by seq desc limit ?5"
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
        let row = sqlx::query(AssertSqlSafe(format!("select {RUNNER_COLUMNS} from runner where runner_id = ?1")))
            .bind(runner_id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| runner_from_row(&r)).transpose()
    }

    async fn list_runners(&self, q: &RunnerQuery) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {RUNNER_COLUMNS} from runner \
             where (?1 is null or runner_id = ?1) and (?2 is null or observed_state = ?2) \
             and (?3 is null or desired_state = ?3) and (?4 is null or runner_id > ?4) \
             order by runner_id limit ?5"
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
        // until it is overdue once more. (`max` of a null is null where Postgres's
        // `greatest` skips it, hence the `coalesce`.)
        sqlx::query(AssertSqlSafe(format!(
            "update command set published_at = {NOW}, \
             next_attempt_at = case when status = 'retrying' then coalesce(max(next_attempt_at, {NOW}), {NOW}) end \
             where command_id in (select value from json_each(?1)) and status in ('queued', 'retrying')"
        )))
        .bind(json_list(command_ids.iter().map(|id| uuid_text(*id))))
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
               (published_at is null and updated_at < ?1) \
               or (status = 'retrying' and next_attempt_at < ?2)) \
             order by seq limit ?3"
        )))
        .bind(ts_ago(grace))
        .bind(ts_ago(overdue))
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
               finished_at = case when attempts >= max_attempts then {NOW} end, \
               next_attempt_at = case when attempts >= max_attempts then null else {NOW} end, \
               last_error = case when lease_until < {NOW} then 'worker lost while running (lease expired)' \
                 else 'worker lost while running (its process stopped heartbeating)' end \
                 || coalesce('; previous: ' || last_error, ''), \
               lease_until = null, published_at = null \
             where status = 'running' and (lease_until < {NOW} or {dead})"
        )))
        .bind(ts_ago(holder_timeout))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn claim(&self, command_id: Uuid, terms: &LeaseTerms) -> Result<Claim, StoreError> {
        // One statement, so SQLite runs it under the write lock from start to end.
        let dead = holder_dead(4).replace("lease_holder", "c.lease_holder");
        let row = sqlx::query(AssertSqlSafe(format!(
            "update command as c set status = 'running', attempts = c.attempts + 1, lease_until = ?2, \
               lease_holder = ?3, claimed_at = {NOW}, \
               started_at = coalesce(c.started_at, {NOW}), next_attempt_at = null, {TOUCHED} \
             where c.command_id = ?1 \
               and (c.status in ('queued', 'retrying') \
                    or (c.status = 'running' and (c.lease_until < {NOW} or {dead}))) \
               and not exists (select 1 from command e where e.runner_id = c.runner_id and e.seq < c.seq \
                               and e.status not in ('succeeded', 'dead')) \
             returning {COMMAND_COLUMNS}"
        )))
        .bind(uuid_text(command_id))
        .bind(ts_in(terms.lease))
        .bind(uuid_text(terms.holder))
        .bind(ts_ago(terms.holder_timeout))
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
            "update command set lease_until = ?2 where command_id = ?1 and status = 'running' and lease_holder = ?3",
        )
        .bind(uuid_text(lease.command_id))
        .bind(ts_in(duration))
        .bind(uuid_text(lease.holder))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn register_worker(&self, w: &WorkerProcess) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(format!(
            "insert into worker_process (worker_id, hostname, pid, version, started_at, heartbeat_at) \
             values (?1, ?2, ?3, ?4, ?5, {NOW}) \
             on conflict (worker_id) do update set heartbeat_at = {NOW}"
        )))
        .bind(uuid_text(w.worker_id))
        .bind(&w.hostname)
        .bind(w.pid)
        .bind(&w.version)
        .bind(ts(w.started_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn heartbeat_worker(&self, worker_id: Uuid) -> Result<bool, StoreError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "update worker_process set heartbeat_at = {NOW} where worker_id = ?1"
        )))
        .bind(uuid_text(worker_id))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn retire_worker(&self, worker_id: Uuid, forget_after: Duration) -> Result<(), StoreError> {
        sqlx::query("delete from worker_process where worker_id = ?1 or heartbeat_at < ?2")
            .bind(uuid_text(worker_id))
            .bind(ts_ago(forget_after))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn get_worker(&self, worker_id: Uuid) -> Result<Option<WorkerProcess>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("select {WORKER_COLUMNS} from worker_process where worker_id = ?1")))
            .bind(uuid_text(worker_id))
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
            "update runner set instance_id = coalesce(?2, instance_id), observed_state = ?3 where runner_id = ?1",
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
        let mut tx = self.write_tx().await?;
        if let Some((runner_id, obs)) = runner {
            sqlx::query(
                "update runner set instance_id = coalesce(?2, instance_id), observed_state = ?3, last_error = null \
                 where runner_id = ?1",
            )
            .bind(runner_id)
            .bind(&obs.instance_id)
            .bind(obs.observed.as_str())
            .execute(&mut *tx)
            .await?;
        }
        let done = sqlx::query(AssertSqlSafe(format!(
            "update command set status = 'succeeded', result = ?2, finished_at = {NOW}, lease_until = null, \
             last_error = null where command_id = ?1 and status = 'running' and lease_holder = ?3"
        )))
        .bind(uuid_text(lease.command_id))
        .bind(result.to_string())
        .bind(uuid_text(lease.holder))
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
            "update command set status = 'retrying', last_error = ?2, next_attempt_at = ?3, lease_until = null, \
             published_at = null where command_id = ?1 and status = 'running' and lease_holder = ?4",
        )
        .bind(uuid_text(lease.command_id))
        .bind(error)
        .bind(ts(next_attempt_at))
        .bind(uuid_text(lease.holder))
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
        let mut tx = self.write_tx().await?;
        let runner_id: Option<Option<String>> = sqlx::query_scalar(AssertSqlSafe(format!(
            "update command set status = 'dead', last_error = ?2, finished_at = {NOW}, lease_until = null, \
             next_attempt_at = null where command_id = ?1 and status = 'running' and lease_holder = ?3 \
             returning runner_id"
        )))
        .bind(uuid_text(lease.command_id))
        .bind(error)
        .bind(uuid_text(lease.holder))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(Some(runner_id)) = runner_id {
            sqlx::query(
                "update runner set last_error = ?2, observed_state = coalesce(?3, observed_state) where runner_id = ?1",
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
        let mut tx = self.write_tx().await?;
        sqlx::query(AssertSqlSafe(format!(
            "update command set \
               status = case when attempts >= max_attempts then 'dead' else 'retrying' end, \
               finished_at = case when attempts >= max_attempts then {NOW} end, \
               next_attempt_at = case when attempts >= max_attempts then null else {NOW} end, \
               last_error = 'interrupted by a restart' || coalesce('; previous: ' || last_error, ''), \
               lease_until = null \
             where status = 'running'"
        )))
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
        let mut tx = self.write_tx().await?;
        let (action, id) = match &selector {
            ReplaySelector::All => (None, None),
            ReplaySelector::Action(a) => (Some(a.as_str()), None),
            ReplaySelector::Command(id) => (None, Some(uuid_text(*id))),
        };
        let candidates = sqlx::query(AssertSqlSafe(format!(
            "select {COMMAND_COLUMNS} from command where status = 'dead' \
             and (?1 is null or action = ?1) and (?2 is null or command_id = ?2) \
             order by seq"
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
                let newer: Option<String> = sqlx::query_scalar(
                    "select command_id from command where runner_id = ?1 and seq > ?2 and status <> 'dead' limit 1",
                )
                .bind(runner_id)
                .bind(cmd.seq)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(newer) = newer {
                    let newer = uuid_from(&newer)?;
                    skipped.push((cmd.command_id, format!("superseded by later command {newer} on runner {runner_id}")));
                    continue;
                }
            }
            let row = sqlx::query(AssertSqlSafe(format!(
                "update command set status = 'queued', attempts = 0, finished_at = null, next_attempt_at = null, \
                 published_at = null, {TOUCHED} where command_id = ?1 returning {COMMAND_COLUMNS}"
            )))
            .bind(uuid_text(cmd.command_id))
            .fetch_one(&mut *tx)
            .await?;
            replayed.push(command_from_row(&row)?);
        }
        tx.commit().await?;
        Ok(Replayed { replayed, skipped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_times() {
        let a = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.9Z").unwrap().with_timezone(&Utc);
        let b = DateTime::parse_from_rfc3339("2026-01-02T03:04:06Z").unwrap().with_timezone(&Utc);
        assert_eq!(ts(a), "2026-01-02T03:04:05.900Z");
        assert!(ts(a) < ts(b));
    }

    #[test]
    fn extreme_times_clamp_and_still_sort() {
        let now = ts(Utc::now());
        assert_eq!(ts(DateTime::<Utc>::MAX_UTC), "9999-12-31T23:59:59.999Z");
        assert_eq!(ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000Z");
        assert!(ts_in(Duration::MAX) > now);
        assert!(ts_in(Duration::from_secs(u64::MAX / 4)) > now);
        assert!(ts_ago(Duration::MAX) < now);
        assert!(ts_ago(Duration::from_secs(1)) < ts_in(Duration::from_secs(1)));
    }
}

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

use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};
use uuid::Uuid;

use crate::domain::{Action, CommandStatus, DesiredState, ObservedState};
use crate::store::{CommandRecord, RunnerRecord, StoreError};

mod containers;
mod email;
mod fleet;
mod images;
mod usage;
mod users;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// The current time in the stored format, as an SQL expression.
pub(crate) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// A time in the stored format: `2026-01-02T03:04:05.678Z`.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Now plus `d`, in the stored format.
pub(crate) fn ts_in(d: Duration) -> String {
    ts(Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

/// Now minus `d`, in the stored format.
pub(crate) fn ts_ago(d: Duration) -> String {
    ts(Utc::now() - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero()))
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
     last_error, result, requested_by, trace_id, created_at, updated_at, started_at, finished_at, next_attempt_at";

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
    })
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
}

//! The SQLite driver, for embedded mode: one file in the data directory, WAL
//! journal, and the types SQLite has.
//!
//! Conventions, so every statement agrees with every other:
//! - timestamps are TEXT in one fixed UTC format (`ts`), so comparing them as
//!   strings compares them as times;
//! - UUIDs are TEXT in hyphenated form, JSON is TEXT, lists are JSON arrays
//!   read with `json_each`;
//! - a transaction that writes starts with `BEGIN IMMEDIATE`, so two writers
//!   wait on the busy timeout instead of failing to upgrade their lock; that
//!   lock is also what row locks and advisory locks are elsewhere.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Datelike, Utc};
use sqlx::pool::PoolConnection;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row as _, Sqlite, SqliteConnection, SqlitePool, Transaction};
use uuid::Uuid;

use crate::store::error::StoreError;
use crate::store::sql::{Arg, Conn, Dialect, Driver, Row, Sql};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A time in the stored format: `2026-01-02T03:04:05.678Z`. Only four-digit
/// years sort as strings, so times outside years 0000–9999 are clamped to them.
pub(crate) fn ts(t: DateTime<Utc>) -> String {
    match t.year() {
        y if y < 0 => "0000-01-01T00:00:00.000Z".to_owned(),
        y if y > 9999 => "9999-12-31T23:59:59.999Z".to_owned(),
        _ => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
    }
}

#[derive(Clone)]
pub struct SqliteDriver {
    pool: SqlitePool,
}

impl SqliteDriver {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Setup(format!("bad database URL: {e}")))?;
        Self::open(options, max_connections, busy_timeout).await
    }

    /// Opens (creating if missing) `geonex.db` in `dir`.
    pub async fn open_in(dir: &Path, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Setup(format!("creating the data directory {}: {e}", dir.display())))?;
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
}

/// A pooled connection, or one inside a write transaction.
pub enum SqliteConn {
    Single(PoolConnection<Sqlite>),
    Tx(Transaction<'static, Sqlite>),
}

impl SqliteConn {
    fn raw(&mut self) -> &mut SqliteConnection {
        match self {
            SqliteConn::Single(c) => c,
            SqliteConn::Tx(t) => t,
        }
    }
}

/// A list bound as one JSON array, for `json_each`.
fn json_list<T: serde::Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn bind(mut q: Query<'_, Sqlite, SqliteArguments>, args: Vec<Arg>) -> Query<'_, Sqlite, SqliteArguments> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v.map(|u| u.hyphenated().to_string())),
            Arg::Time(v) => q.bind(v.map(ts)),
            Arg::Json(v) => q.bind(v.to_string()),
            Arg::Bytes(v) => q.bind(v),
            Arg::Millis(v) => q.bind(v),
            Arg::Texts(v) => q.bind(json_list(&v)),
            Arg::Ints(v) => q.bind(json_list(&v)),
            Arg::Uuids(v) => q.bind(json_list(&v.iter().map(|u| u.hyphenated().to_string()).collect::<Vec<_>>())),
        };
    }
    q
}

#[async_trait]
impl Conn for SqliteConn {
    type Row = SqliteRow;

    async fn execute(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<u64, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Sqlite))), args);
        Ok(q.execute(self.raw()).await?.rows_affected())
    }

    async fn fetch_optional(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Option<SqliteRow>, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Sqlite))), args);
        Ok(q.fetch_optional(self.raw()).await?)
    }

    async fn fetch_all(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<SqliteRow>, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Sqlite))), args);
        Ok(q.fetch_all(self.raw()).await?)
    }

    /// The write transaction already excludes every other writer.
    async fn lock(&mut self, _key: &'static str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn try_lock(&mut self, _key: &'static str) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn commit(self) -> Result<(), StoreError> {
        if let SqliteConn::Tx(t) = self {
            t.commit().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for SqliteDriver {
    type Conn = SqliteConn;

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn conn(&self) -> Result<SqliteConn, StoreError> {
        Ok(SqliteConn::Single(self.pool.acquire().await?))
    }

    async fn begin(&self) -> Result<SqliteConn, StoreError> {
        Ok(SqliteConn::Tx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Setup(format!("migration failed: {e}")))
    }

    /// SQLite reports no constraint name, only a message; for an index on an
    /// expression it reads `UNIQUE constraint failed: index 'app_user_user_name_key'`.
    fn unique_violation(err: &StoreError) -> Option<&str> {
        let StoreError::Database(sqlx::Error::Database(db)) = err else { return None };
        if !db.is_unique_violation() {
            return None;
        }
        let (_, rest) = db.message().split_once("index '")?;
        rest.split_once('\'').map(|(name, _)| name)
    }
}

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    Ok(row.try_get(col)?)
}

fn parse_uuid(col: &str, s: &str) -> Result<Uuid, StoreError> {
    Uuid::parse_str(s).map_err(|_| StoreError::corrupt(col, s))
}

fn parse_json(col: &str, s: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::corrupt(col, s))
}

impl Row for SqliteRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        get(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        get(self, col)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        get(self, col)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        get(self, col)
    }
    fn float(&self, col: &str) -> Result<f64, StoreError> {
        get(self, col)
    }
    fn opt_float(&self, col: &str) -> Result<Option<f64>, StoreError> {
        get(self, col)
    }
    fn bool(&self, col: &str) -> Result<bool, StoreError> {
        get(self, col)
    }
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError> {
        parse_uuid(col, &self.text(col)?)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError> {
        self.opt_text(col)?.map(|s| parse_uuid(col, &s)).transpose()
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        get(self, col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        get(self, col)
    }
    fn json(&self, col: &str) -> Result<serde_json::Value, StoreError> {
        parse_json(col, &self.text(col)?)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
        self.opt_text(col)?.map(|s| parse_json(col, &s)).transpose()
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        get(self, col)
    }
    fn texts(&self, col: &str) -> Result<Vec<String>, StoreError> {
        let raw = self.text(col)?;
        serde_json::from_str(&raw).map_err(|_| StoreError::corrupt(col, raw))
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
        assert_eq!(ts(DateTime::<Utc>::MAX_UTC), "9999-12-31T23:59:59.999Z");
        assert_eq!(ts(DateTime::<Utc>::MIN_UTC), "0000-01-01T00:00:00.000Z");
        assert!(ts(DateTime::<Utc>::MIN_UTC) < ts(Utc::now()));
    }
}

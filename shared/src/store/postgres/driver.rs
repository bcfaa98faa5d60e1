//! The PostgreSQL driver: pooled connections, `BEGIN` transactions, advisory
//! locks, and native types (uuid, timestamptz, jsonb, arrays).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Postgres, Row as _, Transaction};
use uuid::Uuid;

use crate::store::error::StoreError;
use crate::store::sql::{Arg, Conn, Dialect, Driver, Row, Sql};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Clone)]
pub struct PgDriver {
    pool: PgPool,
}

impl PgDriver {
    pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Setup(format!("bad database URL: {e}")))?;
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
}

/// A pooled connection, or one inside a transaction.
pub enum PgConn {
    Single(PoolConnection<Postgres>),
    Tx(Transaction<'static, Postgres>),
}

impl PgConn {
    fn raw(&mut self) -> &mut PgConnection {
        match self {
            PgConn::Single(c) => c,
            PgConn::Tx(t) => t,
        }
    }
}

fn bind(mut q: Query<'_, Postgres, PgArguments>, args: Vec<Arg>) -> Query<'_, Postgres, PgArguments> {
    for arg in args {
        q = match arg {
            Arg::Text(v) => q.bind(v),
            Arg::Int(v) => q.bind(v),
            Arg::Float(v) => q.bind(v),
            Arg::Bool(v) => q.bind(v),
            Arg::Uuid(v) => q.bind(v),
            Arg::Time(v) => q.bind(v),
            Arg::Json(v) => q.bind(v),
            Arg::Bytes(v) => q.bind(v),
            Arg::Millis(v) => q.bind(v),
            Arg::Texts(v) => q.bind(v),
            Arg::Ints(v) => q.bind(v),
            Arg::Uuids(v) => q.bind(v),
        };
    }
    q
}

#[async_trait]
impl Conn for PgConn {
    type Row = PgRow;

    async fn execute(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<u64, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Postgres))), args);
        Ok(q.execute(self.raw()).await?.rows_affected())
    }

    async fn fetch_optional(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Option<PgRow>, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Postgres))), args);
        Ok(q.fetch_optional(self.raw()).await?)
    }

    async fn fetch_all(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<PgRow>, StoreError> {
        let q = bind(sqlx::query(AssertSqlSafe(sql.text(Dialect::Postgres))), args);
        Ok(q.fetch_all(self.raw()).await?)
    }

    async fn lock(&mut self, key: &'static str) -> Result<(), StoreError> {
        sqlx::query("select pg_advisory_xact_lock(hashtext($1))").bind(key).execute(self.raw()).await?;
        Ok(())
    }

    async fn try_lock(&mut self, key: &'static str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("select pg_try_advisory_xact_lock(hashtext($1))").bind(key).fetch_one(self.raw()).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        if let PgConn::Tx(t) = self {
            t.commit().await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for PgDriver {
    type Conn = PgConn;

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn conn(&self) -> Result<PgConn, StoreError> {
        Ok(PgConn::Single(self.pool.acquire().await?))
    }

    async fn begin(&self) -> Result<PgConn, StoreError> {
        Ok(PgConn::Tx(self.pool.begin().await?))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(|e| StoreError::Setup(format!("migration failed: {e}")))
    }

    fn unique_violation(err: &StoreError) -> Option<&str> {
        match err {
            StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation() => db.constraint(),
            _ => None,
        }
    }
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    Ok(row.try_get(col)?)
}

impl Row for PgRow {
    fn text(&self, col: &str) -> Result<String, StoreError> {
        get(self, col)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        get(self, col)
    }
    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.opt_int(col)?.ok_or_else(|| StoreError::corrupt(col, "NULL"))
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        use sqlx::{Column, TypeInfo};
        // Integer columns are int4 (attempts, pids) or int8 (sequences, counts).
        match self.try_column(col)?.type_info().name() {
            "INT4" => Ok(get::<Option<i32>>(self, col)?.map(i64::from)),
            "INT2" => Ok(get::<Option<i16>>(self, col)?.map(i64::from)),
            _ => get(self, col),
        }
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
        get(self, col)
    }
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError> {
        get(self, col)
    }
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError> {
        get(self, col)
    }
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
        get(self, col)
    }
    fn json(&self, col: &str) -> Result<serde_json::Value, StoreError> {
        get(self, col)
    }
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError> {
        get(self, col)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
        get(self, col)
    }
    fn texts(&self, col: &str) -> Result<Vec<String>, StoreError> {
        get(self, col)
    }
}

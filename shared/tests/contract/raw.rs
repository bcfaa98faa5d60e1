//! Rows the ports under test do not create themselves (runners, user accounts),
//! written and read with plain SQL through each store's pool. Statements use
//! `$N` placeholders, which both backends accept, and text arguments only.

use geonex_shared::store::postgres::PgStore;
use geonex_shared::store::sqlite::SqliteStore;
use sqlx::AssertSqlSafe;
use uuid::Uuid;

pub trait Raw: Clone + Send + Sync + 'static {
    const POSTGRES: bool;

    /// Runs a statement; returns the rows it changed.
    fn exec(&self, sql: &str, args: &[&str]) -> impl Future<Output = u64> + Send;
    /// The first column of the one row a query returns, as an integer.
    fn int(&self, sql: &str, args: &[&str]) -> impl Future<Output = i64> + Send;

    /// A runner row, `running`, with this image and output.
    fn add_runner(&self, runner_id: &str, image_name: &str, s3_output: &str) -> impl Future<Output = ()> + Send {
        async move {
            self.exec(
                "insert into runner (runner_id, runner_name, instance_type, image_name, s3_output, desired_state, \
                 observed_state) values ($1, $1, 't3.micro', $2, $3, 'running', 'running')",
                &[runner_id, image_name, s3_output],
            )
            .await;
        }
    }

    /// A user account; returns its id.
    fn add_user(&self, user_name: &str, email: &str, role: &str) -> impl Future<Output = Uuid> + Send {
        async move {
            let id = Uuid::now_v7();
            let sql = if Self::POSTGRES {
                "insert into app_user (user_id, user_name, display_name, email, role) values ($1::uuid, $2, $2, $3, $4)"
            } else {
                "insert into app_user (user_id, user_name, display_name, email, role) values ($1, $2, $2, $3, $4)"
            };
            self.exec(sql, &[&id.to_string(), user_name, email, role]).await;
            id
        }
    }
}

impl Raw for PgStore {
    const POSTGRES: bool = true;

    async fn exec(&self, sql: &str, args: &[&str]) -> u64 {
        let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = q.bind(a.to_string());
        }
        q.execute(self.pool()).await.expect("statement").rows_affected()
    }

    async fn int(&self, sql: &str, args: &[&str]) -> i64 {
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = q.bind(a.to_string());
        }
        q.fetch_one(self.pool()).await.expect("query")
    }
}

impl Raw for SqliteStore {
    const POSTGRES: bool = false;

    async fn exec(&self, sql: &str, args: &[&str]) -> u64 {
        let mut q = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = q.bind(a.to_string());
        }
        q.execute(self.pool()).await.expect("statement").rows_affected()
    }

    async fn int(&self, sql: &str, args: &[&str]) -> i64 {
        let mut q = sqlx::query_scalar(AssertSqlSafe(sql.to_owned()));
        for a in args {
            q = q.bind(a.to_string());
        }
        q.fetch_one(self.pool()).await.expect("query")
    }
}

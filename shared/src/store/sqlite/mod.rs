//! SQLite: the embedded database, one file in the data directory. The store's
//! logic is `store/sql/`; this module is its driver (`driver.rs`) and the
//! constructors. Migrations (`migrations/sqlite`) are numbered in step with the
//! Postgres ones.

mod driver;

use std::path::Path;
use std::time::Duration;

pub use driver::{MIGRATOR, SqliteConn, SqliteDriver};

use crate::store::error::StoreError;
use crate::store::sql::{Driver, SqlStore};

/// Every store port on SQLite.
pub type SqliteStore = SqlStore<SqliteDriver>;

impl SqlStore<SqliteDriver> {
    /// Opens (creating if missing) the database at `url` (`sqlite://path`).
    pub async fn connect(url: &str, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self::new(SqliteDriver::connect(url, max_connections, busy_timeout).await?))
    }

    /// Opens (creating if missing) `geonex.db` in `dir`.
    pub async fn open_in(dir: &Path, max_connections: u32, busy_timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self::new(SqliteDriver::open_in(dir, max_connections, busy_timeout).await?))
    }

    pub fn pool(&self) -> &sqlx::SqlitePool {
        self.driver().pool()
    }

    pub async fn run_migrations(&self) -> Result<(), StoreError> {
        self.driver().migrate().await
    }
}

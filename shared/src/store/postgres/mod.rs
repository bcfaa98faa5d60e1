//! PostgreSQL: the production database. The store's logic is `store/sql/`; this
//! module is its driver (`driver.rs`) and the constructors.

mod driver;

use std::time::Duration;

pub use driver::{MIGRATOR, PgConn, PgDriver};

use crate::store::error::StoreError;
use crate::store::sql::SqlStore;

/// Every store port on PostgreSQL.
pub type PgStore = SqlStore<PgDriver>;

impl SqlStore<PgDriver> {
    pub async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> Result<Self, StoreError> {
        Ok(Self::new(PgDriver::connect(url, max_connections, acquire_timeout).await?))
    }

    pub fn from_pool(pool: sqlx::PgPool) -> Self {
        Self::new(PgDriver::from_pool(pool))
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.driver().pool()
    }
}

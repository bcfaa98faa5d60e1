//! Why a store call failed, in terms a caller can act on.

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached, is overloaded, or was busy past the
    /// timeout: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A statement that always returns a row returned none.
    #[error("expected a row, found none")]
    NoRow,
    /// A value this version cannot read.
    #[error("unexpected {what} {value:?} in database")]
    Corrupt { what: String, value: String },
    /// Opening or migrating the database failed.
    #[error("{0}")]
    Setup(String),
}

impl StoreError {
    pub fn corrupt(what: impl Into<String>, value: impl std::fmt::Display) -> Self {
        StoreError::Corrupt { what: what.into(), value: value.to_string() }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            // The connection itself failed: refused, reset, cut mid-message
            // (a restart), or none free in the pool.
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            // SQLite's SQLITE_BUSY / SQLITE_LOCKED: another writer held the lock
            // past the busy timeout.
            sqlx::Error::Database(ref db) if matches!(db.code().as_deref(), Some("5" | "6" | "517")) => {
                StoreError::Unavailable(e)
            }
            // Postgres shutting down or refusing connections (admin shutdown,
            // crash shutdown, cannot connect now, too many connections).
            sqlx::Error::Database(ref db)
                if matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03" | "53300")) =>
            {
                StoreError::Unavailable(e)
            }
            // SQLSTATE classes 08 (connection exception) and 53 (insufficient
            // resources): the server, not the statement, is the problem.
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("53")) => {
                StoreError::Unavailable(e)
            }
            other => StoreError::Database(other),
        }
    }
}


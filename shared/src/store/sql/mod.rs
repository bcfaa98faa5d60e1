//! The store, written once: [`SqlStore`] implements every store port over a
//! [`Driver`] (PostgreSQL in `store/postgres/`, SQLite in `store/sqlite/`).
//!
//! The rule of the line is decisions above, SQL below: each port module here
//! holds the port's rules (idempotency and its race retry, runner planning,
//! claim classification, replay, image decisions and their recipients, scan
//! collapse, event ordering) and its statements, written once in neutral SQL; a
//! driver only executes statements, renders their few dialect fragments and
//! reads their rows. Rows become records here, once ([`rows`]).

/// A statement's `$N` arguments, each converted to its neutral [`Arg`].
macro_rules! args {
    ($($arg:expr),* $(,)?) => { vec![$($crate::store::sql::Arg::from($arg)),*] };
}

mod containers;
mod rate;
mod core;
mod cost;
mod driver;
mod email;
mod fleet;
mod images;
mod ops;
mod rows;
mod usage;
mod users;

pub use driver::{Arg, Conn, Dialect, Driver, Row, Sql};

/// Every store port over one database.
#[derive(Clone)]
pub struct SqlStore<D: Driver> {
    driver: D,
}

impl<D: Driver> SqlStore<D> {
    pub fn new(driver: D) -> Self {
        Self { driver }
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(Some(v.to_owned()))
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(Some(v))
    }
}

impl From<&String> for Arg {
    fn from(v: &String) -> Self {
        Arg::Text(Some(v.clone()))
    }
}

impl From<Option<&str>> for Arg {
    fn from(v: Option<&str>) -> Self {
        Arg::Text(v.map(str::to_owned))
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::Text(v)
    }
}

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Self {
        Arg::Text(v.clone())
    }
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::Int(Some(v))
    }
}

impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::Int(Some(v.into()))
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::Int(v)
    }
}

impl From<Option<i32>> for Arg {
    fn from(v: Option<i32>) -> Self {
        Arg::Int(v.map(i64::from))
    }
}

impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::Float(Some(v))
    }
}

impl From<Option<f64>> for Arg {
    fn from(v: Option<f64>) -> Self {
        Arg::Float(v)
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(Some(v))
    }
}

impl From<Option<bool>> for Arg {
    fn from(v: Option<bool>) -> Self {
        Arg::Bool(v)
    }
}

impl From<uuid::Uuid> for Arg {
    fn from(v: uuid::Uuid) -> Self {
        Arg::Uuid(Some(v))
    }
}

impl From<Option<uuid::Uuid>> for Arg {
    fn from(v: Option<uuid::Uuid>) -> Self {
        Arg::Uuid(v)
    }
}

impl From<chrono::DateTime<chrono::Utc>> for Arg {
    fn from(v: chrono::DateTime<chrono::Utc>) -> Self {
        Arg::Time(Some(v))
    }
}

impl From<Option<chrono::DateTime<chrono::Utc>>> for Arg {
    fn from(v: Option<chrono::DateTime<chrono::Utc>>) -> Self {
        Arg::Time(v)
    }
}

impl From<serde_json::Value> for Arg {
    fn from(v: serde_json::Value) -> Self {
        Arg::Json(v)
    }
}

impl From<&[u8]> for Arg {
    fn from(v: &[u8]) -> Self {
        Arg::Bytes(v.to_vec())
    }
}

impl From<std::time::Duration> for Arg {
    fn from(v: std::time::Duration) -> Self {
        Arg::millis(v)
    }
}

impl From<Vec<String>> for Arg {
    fn from(v: Vec<String>) -> Self {
        Arg::Texts(v)
    }
}

impl From<&[String]> for Arg {
    fn from(v: &[String]) -> Self {
        Arg::Texts(v.to_vec())
    }
}

impl From<&[uuid::Uuid]> for Arg {
    fn from(v: &[uuid::Uuid]) -> Self {
        Arg::Uuids(v.to_vec())
    }
}

impl From<Vec<i64>> for Arg {
    fn from(v: Vec<i64>) -> Self {
        Arg::Ints(v)
    }
}

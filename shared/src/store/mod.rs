//! The store ports: everything the API and the workers read and write. The
//! core port (commands and runners) is `commands`; each other area has its own
//! (`users`, `fleet`, `images`, `email`, `usage`, `containers`).
//!
//! Every state change a caller needs to be atomic is one method, so it runs in
//! one transaction. The ports are implemented once, in `sql/`, over a driver:
//! PostgreSQL (`postgres/`) in production, SQLite (`sqlite/`) embedded.

pub mod rate;
pub mod commands;
pub mod containers;
pub mod cost;
pub mod email;
pub mod fleet;
pub mod error;
pub mod images;
pub mod ops;
pub mod plan;
pub mod postgres;
pub mod sql;
pub mod sqlite;
pub mod usage;
pub mod users;

pub use commands::*;
pub use error::StoreError;
pub use plan::{RunnerChange, plan_runner_command};

/// Every store port: what one database adapter provides. A `dyn Database`
/// upcasts to any one of them.
pub trait Database:
    Store
    + users::UserStore
    + fleet::FleetStore
    + images::ImageStore
    + email::EmailStore
    + usage::UsageStore
    + containers::ContainerStore
    + rate::RateStore
    + cost::CostStore
    + ops::OpsStore
{
}

impl<T> Database for T where
    T: Store
        + users::UserStore
        + fleet::FleetStore
        + images::ImageStore
        + email::EmailStore
        + usage::UsageStore
        + containers::ContainerStore
        + rate::RateStore
        + cost::CostStore
        + ops::OpsStore
{
}

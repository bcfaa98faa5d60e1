//! GeoNEX-core's shared crate: the domain vocabulary, configuration, and the two
//! ports both the API and the workers use (store and queue) with their adapters.

pub mod auth;
pub mod config;
pub mod cost;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod failpoint;
pub mod message;
pub mod metrics;
pub mod queue;
pub mod store;

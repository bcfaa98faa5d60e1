//! GeoNEX-core workers: the consumers that carry out commands, their handlers and
//! retry policy, the relay that re-publishes and rescues, and the cloud port with
//! its adapters.

pub mod cloud;
pub mod consumer;
pub mod failpoint;
pub mod handler;
pub mod reconcile;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod user_data;

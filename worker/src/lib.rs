//! GeoNEX-core workers: the consumers that carry out commands, their handlers and
//! retry policy, the relay that re-publishes and rescues, the cloud port with its
//! adapters, the e-mail handler with the mailer port and its adapters, and the
//! on-instance agent (`geonex agent`).

pub mod agent;
pub mod cloud;
pub mod consumer;
pub mod email;
pub mod failpoint;
pub mod handler;
pub mod reconcile;
pub mod mailer;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod user_data;

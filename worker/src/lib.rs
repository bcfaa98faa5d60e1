//! GeoNEX-core workers: the consumers that carry out commands, their handlers and
//! retry policy, the relay that re-publishes and rescues, the cloud port with its
//! adapters, the e-mail handler with the mailer port and its adapters, S3 output
//! usage (scans, their schedule, S3 event intake) over the object storage port,
//! EC2 state-change event intake, and the on-instance agent (`geonex agent`).

pub mod agent;
pub mod budget;
pub mod cloud;
pub mod consumer;
pub mod costs;
pub mod ec2events;
pub mod email;
pub use geonex_shared::failpoint;
pub mod fence;
pub mod handler;
pub mod reconcile;
pub mod mailer;
pub mod observer;
pub mod presence;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod s3events;
pub mod s3usage;
pub mod pricing;
pub mod spot;
pub mod storage;
pub mod user_data;

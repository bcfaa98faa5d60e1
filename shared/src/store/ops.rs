//! The operations port: what an operator watches. Figures for `/metrics`
//! computed from the database when it is scraped (queues, the outbox, runners by
//! state, the connection pool), and the feed of committed changes behind
//! `/events`.
//!
//! The feed is the database's own: in PostgreSQL triggers announce each change
//! with `pg_notify` on the `geonex_events` channel (delivered at commit, so a
//! rolled-back change is never announced, and every process of the cluster
//! hears every change); in SQLite the same triggers append to `event_log`, which
//! a listener reads from its cursor (other processes on the file, such as
//! `geonex replay`, are heard too). Each event is a JSON object whose `type` is
//! `runner` or `command`; see `migrations/*/0013_events.sql`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{Action, ObservedState};
use crate::store::error::StoreError;

/// Commands of one action in one unfinished status.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueStat {
    pub action: Action,
    /// `queued`, `retrying`, `waiting` or `running`.
    pub status: &'static str,
    pub count: i64,
    /// Seconds since the longest-standing of them last changed.
    pub oldest_secs: f64,
}

/// Accepted commands whose message the broker has not confirmed yet: what the
/// relay still has to publish.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStat {
    pub unpublished: i64,
    /// Seconds since the oldest of them was written (0 when none).
    pub oldest_secs: f64,
}

/// This process's connection pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStat {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// One committed change, as its trigger announced it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// `runner` or `command`.
    pub kind: String,
    pub data: serde_json::Value,
    /// When the change was made (database clock).
    pub at: Option<DateTime<Utc>>,
}

impl ChangeEvent {
    /// Reads a trigger's payload; `None` for one this version does not know.
    pub fn parse(payload: &str) -> Option<Self> {
        let data: serde_json::Value = serde_json::from_str(payload).ok()?;
        let kind = data.get("type")?.as_str()?.to_owned();
        if kind != "runner" && kind != "command" {
            return None;
        }
        let at = data.get("at").and_then(|v| v.as_str()).and_then(|t| {
            DateTime::parse_from_rfc3339(t)
                .ok()
                .map(|d| d.with_timezone(&Utc))
                // PostgreSQL's JSON renders `+00:00` without the `T` on some settings.
                .or_else(|| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z").ok().map(|d| d.with_timezone(&Utc)))
        });
        Some(Self { kind, data, at })
    }
}

/// What a listener hands back.
#[derive(Debug, Clone)]
pub enum Feed {
    Events(Vec<ChangeEvent>),
    /// Changes may have been missed (the connection was lost and made again):
    /// whoever shows state should read it afresh.
    Gap,
}

/// A listener on the change feed; each `next` waits for what comes after.
#[async_trait]
pub trait ChangeListener: Send {
    async fn next(&mut self) -> Result<Feed, StoreError>;
}

#[async_trait]
pub trait OpsStore: Send + Sync + 'static {
    /// Unfinished commands by action and status.
    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError>;
    async fn outbox_stat(&self) -> Result<OutboxStat, StoreError>;
    /// Runners that are not gone for good (deleted and terminated), by observed state.
    async fn runners_by_state(&self) -> Result<Vec<(ObservedState, i64)>, StoreError>;
    fn pool_stat(&self) -> PoolStat;
    /// Starts listening: changes committed from now on.
    async fn listen(&self) -> Result<Box<dyn ChangeListener>, StoreError>;
    /// Ends a command that has not started (queued, retrying or waiting) as
    /// `dead` with `reason` as its last error; false if it was not in one of
    /// those states (running, finished, or unknown). A message still on its
    /// way finds it finished and is dropped; the runner's later commands no
    /// longer wait for it.
    async fn cancel_command(&self, command_id: uuid::Uuid, reason: &str) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_of_both_databases_parse_and_unknown_ones_do_not() {
        let pg =
            r#"{"type":"runner","runner_id":"r1","observed_state":"running","at":"2026-12-02T18:05:19.123456+00:00"}"#;
        let e = ChangeEvent::parse(pg).unwrap();
        assert_eq!(e.kind, "runner");
        assert_eq!(e.at.unwrap().timestamp_subsec_micros(), 123456);
        let lite = r#"{"type":"command","status":"dead","at":"2026-12-02T18:05:19.123Z"}"#;
        assert!(ChangeEvent::parse(lite).unwrap().at.is_some());
        assert!(ChangeEvent::parse(r#"{"type":"image"}"#).is_none());
        assert!(ChangeEvent::parse("not json").is_none());
    }
}

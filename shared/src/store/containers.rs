//! The container store port: per-runner agent tokens, the events the agent posts
//! (applied once per event id) and the container records the describe endpoints
//! list.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::store::error::StoreError;

/// The stored half of an agent token.
#[derive(Debug, Clone)]
pub struct AgentTokenRecord {
    pub token_id: Uuid,
    pub runner_id: String,
    pub secret_hash: Vec<u8>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    ContainerStarted,
    ContainerFinished,
    Heartbeat,
}

impl EventKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "container_started" => Self::ContainerStarted,
            "container_finished" => Self::ContainerFinished,
            "heartbeat" => Self::Heartbeat,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContainerStarted => "container_started",
            Self::ContainerFinished => "container_finished",
            Self::Heartbeat => "heartbeat",
        }
    }
}

/// A validated event from a runner's agent. Container events carry a container id.
#[derive(Debug, Clone)]
pub struct RunnerEvent {
    pub event_id: Uuid,
    pub runner_id: String,
    pub kind: EventKind,
    pub container_id: Option<Uuid>,
    pub instance_id: Option<String>,
    pub image_name: Option<String>,
    pub input_url: Option<String>,
    /// Absent on a finish: the container could not run or was timed out (`failed`).
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub log_tail: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ContainerRecord {
    pub container_id: Uuid,
    pub runner_id: String,
    pub instance_id: Option<String>,
    pub image_name: String,
    /// running, exited, failed or killed.
    pub status: String,
    pub exit_code: Option<i32>,
    pub input_url: Option<String>,
    pub log_tail: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct ContainerQuery {
    pub status: Option<String>,
    pub image_name: Option<String>,
    pub runner_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Page after this (started_at, container_id), newest first.
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

#[async_trait]
pub trait ContainerStore: Send + Sync + 'static {
    /// Records a token the command renders into its instance's user data.
    async fn insert_agent_token(&self, token_id: Uuid, runner_id: &str, command_id: Uuid, secret_hash: &[u8])
    -> Result<(), StoreError>;
    /// Revokes the runner's tokens, except those minted by `keep_command` (the
    /// command whose user data the instance now boots with).
    async fn revoke_agent_tokens(&self, runner_id: &str, keep_command: Option<Uuid>) -> Result<u64, StoreError>;
    async fn agent_token(&self, token_id: Uuid) -> Result<Option<AgentTokenRecord>, StoreError>;
    /// Applies an event once: returns false when its id was already applied.
    async fn record_event(&self, event: &RunnerEvent) -> Result<bool, StoreError>;
    async fn containers_revision(&self) -> Result<i64, StoreError>;
    async fn list_containers(&self, q: &ContainerQuery) -> Result<Vec<ContainerRecord>, StoreError>;
    /// The newest `per_runner` containers of each of these runners, newest first.
    async fn runner_containers(&self, runner_ids: &[String], per_runner: i64) -> Result<Vec<ContainerRecord>, StoreError>;
}

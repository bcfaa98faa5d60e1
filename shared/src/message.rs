//! The message carried by the broker. It is a pointer: the command's parameters
//! live in the store, so a message can be re-published at any time without risk.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Action;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMessage {
    pub command_id: Uuid,
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_id: Option<String>,
    /// Attempts already made when this message was published.
    pub attempt: i32,
    pub enqueued_at: DateTime<Utc>,
    /// The request id of the HTTP call that accepted the command; the worker logs
    /// under it so one id follows a command from request to completion.
    pub trace_id: String,
}

//! The e-mail store port: e-mail commands (what to send, to whom) and the record
//! of each command's delivery, which makes a re-run of an already accepted
//! e-mail a no-op.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::error::StoreError;
use crate::store::commands::Submitted;

/// Which message an e-mail command sends; each names a template set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailKind {
    /// `/send-email`: tells an applicant about their image registration.
    ImageNotice,
    /// To administrators: a new image awaits a decision.
    ImageRegistered,
    /// To the applicant: their image was approved.
    ImageApproved,
    /// To the applicant: their image was rejected.
    ImageRejected,
    /// To a budget's owner and the administrators: 80% of it is spent.
    BudgetWarning,
    /// To a budget's owner and the administrators: it is spent; runners stop.
    BudgetExceeded,
}

impl EmailKind {
    pub const ALL: [EmailKind; 6] = [
        EmailKind::ImageNotice,
        EmailKind::ImageRegistered,
        EmailKind::ImageApproved,
        EmailKind::ImageRejected,
        EmailKind::BudgetWarning,
        EmailKind::BudgetExceeded,
    ];

    /// The template set's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EmailKind::ImageNotice => "image_notice",
            EmailKind::ImageRegistered => "image_registered",
            EmailKind::ImageApproved => "image_approved",
            EmailKind::ImageRejected => "image_rejected",
            EmailKind::BudgetWarning => "budget_warning",
            EmailKind::BudgetExceeded => "budget_exceeded",
        }
    }
}

/// A `send_email` command's parameters: everything the worker needs to render
/// and send the message, so the e-mail does not change if the image does later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailParams {
    pub kind: EmailKind,
    /// One recipient per command: a rejected address fails only its own command.
    pub to: String,
    pub image_name: String,
    /// The person the message is about (the applicant).
    pub user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// Who asked for a command, for the audit fields every command carries.
#[derive(Debug, Clone)]
pub struct CommandOrigin {
    pub requested_by: String,
    pub trace_id: String,
    pub max_attempts: i32,
}

#[derive(Debug, Clone)]
pub struct NewEmailCommand {
    pub command_id: Uuid,
    pub params: EmailParams,
    pub origin: CommandOrigin,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// A send was started; whether the server accepted it is unknown.
    Sending,
    /// The server accepted the message.
    Sent,
}

#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub command_id: Uuid,
    pub message_id: String,
    pub recipient: String,
    pub status: DeliveryStatus,
    pub sends: i32,
    pub smtp_reply: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait EmailStore: Send + Sync + 'static {
    /// Records a `send_email` command (or, for a repeated idempotency key, returns
    /// the earlier one).
    async fn submit_email(&self, cmd: NewEmailCommand) -> Result<Submitted, crate::store::SubmitError>;
    /// The e-mail addresses of every administrator account.
    async fn admin_emails(&self) -> Result<Vec<String>, StoreError>;
    async fn delivery(&self, command_id: Uuid) -> Result<Option<DeliveryRecord>, StoreError>;
    /// Records that a send is about to start (counting repeated starts).
    async fn begin_delivery(&self, command_id: Uuid, message_id: &str, recipient: &str) -> Result<(), StoreError>;
    /// Records that the server accepted the message, with its reply.
    async fn mark_sent(&self, command_id: Uuid, smtp_reply: &str) -> Result<(), StoreError>;
}

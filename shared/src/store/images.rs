//! The image store port: the registry of algorithm images, their review state
//! (`pending → approved | rejected`), and the notification e-mails each step
//! sends, written in the same transaction as the step.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::ImageRef;
use crate::store::email::CommandOrigin;
use crate::store::commands::CommandRecord;
use crate::store::error::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    Pending,
    Approved,
    Rejected,
}

impl ImageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Pending => "pending",
            ImageStatus::Approved => "approved",
            ImageStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [ImageStatus::Pending, ImageStatus::Approved, ImageStatus::Rejected].into_iter().find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageRecord {
    pub image_name: String,
    /// The repository, without tag or digest.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
    /// The applicant (their user name, or `service:NAME`).
    pub owner: String,
    pub status: ImageStatus,
    pub description: String,
    pub organization: String,
    /// Why it was rejected (or a note on the approval).
    pub reason: Option<String>,
    pub decided_by: Option<String>,
    /// Runners (not deleted) configured with this image.
    pub runners: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewImage {
    pub image_name: ImageRef,
    pub description: String,
    pub organization: String,
    pub owner: String,
    /// The applicant's account, whose e-mail address hears the decision.
    pub owner_user_id: Option<Uuid>,
    /// Who hears about the request; empty means every administrator account.
    pub notify: Vec<String>,
    pub origin: CommandOrigin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Reject,
}

#[derive(Debug, Clone)]
pub struct ImageDecision {
    pub image_name: ImageRef,
    pub decision: Decision,
    pub reason: Option<String>,
    pub origin: CommandOrigin,
}

/// A step of the registry and the e-mail commands it queued.
#[derive(Debug, Clone)]
pub struct ImageChange {
    pub image: ImageRecord,
    pub emails: Vec<CommandRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} is already registered")]
    Exists(String),
    #[error("image {0} not found")]
    NotFound(String),
    #[error("image {name} is already {status}")]
    AlreadyDecided { name: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default)]
pub struct ImageQuery {
    pub status: Option<ImageStatus>,
    pub owner: Option<String>,
    /// Only images whose name sorts after this.
    pub after_image_name: Option<String>,
    pub limit: i64,
}

#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// Registers an image as `pending` and queues the administrators' notices.
    /// An applicant may resubmit their own rejected image: it becomes pending again.
    async fn register_image(&self, image: NewImage) -> Result<ImageChange, ImageError>;
    /// Approves or rejects a pending image and queues the applicant's notice
    /// (when the applicant has an e-mail address).
    async fn decide_image(&self, decision: ImageDecision) -> Result<ImageChange, ImageError>;
    async fn get_image(&self, image_name: &str) -> Result<Option<ImageRecord>, StoreError>;
    /// Just the image's status (what every start and restart checks): no count
    /// of the runners using it.
    async fn image_status(&self, image_name: &str) -> Result<Option<ImageStatus>, StoreError>;
    /// Images ordered by name.
    async fn list_images(&self, q: &ImageQuery) -> Result<Vec<ImageRecord>, StoreError>;
    /// A number that changes whenever an image, or the runners using one, change (for ETags).
    async fn images_revision(&self) -> Result<i64, StoreError>;
}

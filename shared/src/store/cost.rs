//! The cost port: the state history runners' costs are computed from, monthly
//! budgets and their crossings, and what idle auto-stop looks at.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cost::StateChange;
use crate::store::commands::RunnerRecord;
use crate::store::error::StoreError;

/// What a budget limits: one user's runners, or the runners of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BudgetScope {
    User,
    Image,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::User => "user",
            BudgetScope::Image => "image",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [BudgetScope::User, BudgetScope::Image].into_iter().find(|b| b.as_str() == s)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BudgetRecord {
    pub budget_id: Uuid,
    pub scope: BudgetScope,
    /// The user (as commands name their requester) or the image name.
    pub subject: String,
    pub monthly_usd: f64,
    pub set_by: String,
    /// What the last check found spent in `spent_month`.
    pub spent_usd: f64,
    pub spent_month: Option<String>,
    pub checked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl BudgetRecord {
    /// Spent, as of the last check, in `month`.
    pub fn exceeded_in(&self, month: &str) -> bool {
        self.spent_month.as_deref() == Some(month) && self.spent_usd >= self.monthly_usd
    }

    /// Whether this budget is drawn on by a runner of `owner` running `image`.
    pub fn governs(&self, owner: &str, image: &str) -> bool {
        match self.scope {
            BudgetScope::User => self.subject == owner,
            BudgetScope::Image => self.subject == image,
        }
    }
}

/// A running runner that idle auto-stop may stop, with what it last did.
#[derive(Debug, Clone)]
pub struct IdleCandidate {
    pub runner: RunnerRecord,
    /// When its newest container started, if it ran any.
    pub last_container_at: Option<DateTime<Utc>>,
    pub running_containers: i64,
}

#[async_trait]
pub trait CostStore: Send + Sync + 'static {
    /// Observed-state changes before `before`, of the given runners (or all),
    /// each runner's in time order.
    async fn state_changes(&self, runner_ids: Option<&[String]>, before: DateTime<Utc>)
    -> Result<Vec<StateChange>, StoreError>;
    /// Every runner, deleted ones too (their cost stays theirs).
    async fn all_runners(&self) -> Result<Vec<RunnerRecord>, StoreError>;

    /// Sets (or changes) the monthly budget of a user or an image.
    async fn set_budget(&self, scope: BudgetScope, subject: &str, monthly_usd: f64, set_by: &str)
    -> Result<BudgetRecord, StoreError>;
    async fn list_budgets(&self) -> Result<Vec<BudgetRecord>, StoreError>;
    /// Records what a check found spent in `month`.
    async fn record_spend(&self, budget_id: Uuid, month: &str, spent_usd: f64) -> Result<(), StoreError>;
    /// Records that a budget crossed `level` percent in `month`; false if that
    /// was recorded before (its notices and stops were queued then).
    async fn record_notice(&self, budget_id: Uuid, month: &str, level: i32, spent_usd: f64)
    -> Result<bool, StoreError>;
    /// The levels each budget crossed in `month`.
    async fn notices(&self, month: &str) -> Result<Vec<(Uuid, i32)>, StoreError>;
    /// The budgets spent in `month` (image budgets before user budgets); which
    /// of them govern a runner, [`BudgetRecord::governs`] says.
    async fn exceeded_in(&self, month: &str) -> Result<Vec<BudgetRecord>, StoreError>;

    /// Running runners with an idle limit, with their containers' last start.
    async fn idle_candidates(&self) -> Result<Vec<IdleCandidate>, StoreError>;
    /// The e-mail address of the user a runner owner names, if it is a user.
    async fn owner_email(&self, owner: &str) -> Result<Option<String>, StoreError>;
}

//! The user store port: accounts, roles and bearer tokens.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::domain::Role;
use crate::store::error::StoreError;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserRecord {
    pub user_id: Uuid,
    pub user_name: String,
    pub display_name: String,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub user_id: Uuid,
    pub user_name: String,
    pub display_name: String,
    pub email: String,
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateUserError {
    /// A unique field is taken: `user_name` or `email`.
    #[error("{0} is already taken")]
    Taken(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whose a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOwner {
    User { user_id: Uuid, user_name: String },
    Service { name: String },
}

impl TokenOwner {
    /// How the owner appears in audit fields such as a command's `requested_by`.
    pub fn label(&self) -> String {
        match self {
            TokenOwner::User { user_name, .. } => user_name.clone(),
            TokenOwner::Service { name } => format!("service:{name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub token_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub owner: TokenOwner,
    pub role: Role,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn create_user(&self, user: NewUser) -> Result<UserRecord, CreateUserError>;
    /// The user and their password hash, by user name in any case.
    async fn user_for_login(&self, user_name: &str) -> Result<Option<(UserRecord, Option<String>)>, StoreError>;
    /// Users ordered by user name, after the given one.
    async fn list_users(&self, after_user_name: Option<&str>, limit: i64) -> Result<Vec<UserRecord>, StoreError>;
    async fn users_revision(&self) -> Result<i64, StoreError>;
    async fn insert_token(
        &self,
        token_id: Uuid,
        secret_hash: &[u8],
        owner: &TokenOwner,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError>;
    async fn token(&self, token_id: Uuid) -> Result<Option<TokenRecord>, StoreError>;
    async fn revoke_token(&self, token_id: Uuid) -> Result<(), StoreError>;
}

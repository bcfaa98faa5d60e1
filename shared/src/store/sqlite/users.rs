//! SQLite adapter of the user store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::error::ErrorKind;
use uuid::Uuid;

use crate::domain::Role;
use crate::store::StoreError;
use crate::store::sqlite::{NOW, SqliteStore, ts, uuid_from, uuid_text};
use crate::store::users::{CreateUserError, NewUser, TokenOwner, TokenRecord, UserRecord, UserStore};

const USER_COLUMNS: &str = "user_id, user_name, display_name, email, role, created_at";

fn role_of(raw: &str) -> Result<Role, StoreError> {
    Role::parse(raw).ok_or_else(|| StoreError::Other(format!("unexpected role {raw:?} in database")))
}

fn user_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<UserRecord, StoreError> {
    let user_id: String = r.try_get("user_id")?;
    let role: String = r.try_get("role")?;
    Ok(UserRecord {
        user_id: uuid_from(&user_id)?,
        user_name: r.try_get("user_name")?,
        display_name: r.try_get("display_name")?,
        email: r.try_get("email")?,
        role: role_of(&role)?,
        created_at: r.try_get("created_at")?,
    })
}

/// The unique index a violation names. SQLite reports no constraint name, only a
/// message; for an index on an expression it reads
/// `UNIQUE constraint failed: index 'app_user_user_name_key'`.
fn violated_index(db: &dyn sqlx::error::DatabaseError) -> Option<&str> {
    if db.kind() != ErrorKind::UniqueViolation {
        return None;
    }
    let (_, rest) = db.message().split_once("index '")?;
    rest.split_once('\'').map(|(name, _)| name)
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(&self, user: NewUser) -> Result<UserRecord, CreateUserError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "insert into app_user (user_id, user_name, display_name, email, role, password_hash) \
             values (?1, ?2, ?3, ?4, ?5, ?6) returning {USER_COLUMNS}"
        )))
        .bind(uuid_text(user.user_id))
        .bind(&user.user_name)
        .bind(&user.display_name)
        .bind(&user.email)
        .bind(user.role.as_str())
        .bind(&user.password_hash)
        .fetch_one(self.pool())
        .await;
        match row {
            Ok(r) => Ok(user_from_row(&r)?),
            Err(sqlx::Error::Database(db)) if violated_index(&*db) == Some("app_user_user_name_key") => {
                Err(CreateUserError::Taken("user_name"))
            }
            Err(sqlx::Error::Database(db)) if violated_index(&*db) == Some("app_user_email_key") => {
                Err(CreateUserError::Taken("email"))
            }
            Err(e) => Err(CreateUserError::Store(e.into())),
        }
    }

    async fn user_for_login(&self, user_name: &str) -> Result<Option<(UserRecord, Option<String>)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS}, password_hash from app_user where lower(user_name) = lower(?1)"
        )))
        .bind(user_name)
        .fetch_optional(self.pool())
        .await?;
        match row {
            Some(r) => Ok(Some((user_from_row(&r)?, r.try_get("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn list_users(&self, after_user_name: Option<&str>, limit: i64) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {USER_COLUMNS} from app_user where (?1 is null or lower(user_name) > lower(?1)) \
             order by lower(user_name) limit ?2"
        )))
        .bind(after_user_name)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn users_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select coalesce(max(revision), 0) from app_user").fetch_one(self.pool()).await?)
    }

    async fn insert_token(
        &self,
        token_id: Uuid,
        secret_hash: &[u8],
        owner: &TokenOwner,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let (user_id, name) = match owner {
            TokenOwner::User { user_id, .. } => (Some(uuid_text(*user_id)), None),
            TokenOwner::Service { name } => (None, Some(name.as_str())),
        };
        sqlx::query(
            "insert into api_token (token_id, secret_hash, user_id, name, role, expires_at) \
             values (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(uuid_text(token_id))
        .bind(secret_hash)
        .bind(user_id)
        .bind(name)
        .bind(role.as_str())
        .bind(expires_at.map(ts))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn token(&self, token_id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        // A login token carries its user's current role: demoting a user takes
        // effect on their live sessions at once.
        let row = sqlx::query(
            "select t.token_id, t.secret_hash, t.user_id, t.name, coalesce(u.role, t.role) as role, \
             t.expires_at, t.revoked_at, u.user_name \
             from api_token t left join app_user u on u.user_id = t.user_id where t.token_id = ?1",
        )
        .bind(uuid_text(token_id))
        .fetch_optional(self.pool())
        .await?;
        let Some(r) = row else { return Ok(None) };
        let role: String = r.try_get("role")?;
        let owner = match (r.try_get::<Option<String>, _>("user_id")?, r.try_get::<Option<String>, _>("name")?) {
            (Some(user_id), _) => TokenOwner::User {
                user_id: uuid_from(&user_id)?,
                user_name: r.try_get::<Option<String>, _>("user_name")?.unwrap_or_default(),
            },
            (None, Some(name)) => TokenOwner::Service { name },
            (None, None) => return Err(StoreError::Other("token without owner".into())),
        };
        let token_id: String = r.try_get("token_id")?;
        Ok(Some(TokenRecord {
            token_id: uuid_from(&token_id)?,
            secret_hash: r.try_get("secret_hash")?,
            owner,
            role: role_of(&role)?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
        }))
    }

    async fn revoke_token(&self, token_id: Uuid) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update api_token set revoked_at = {NOW} where token_id = ?1 and revoked_at is null"
        )))
        .bind(uuid_text(token_id))
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

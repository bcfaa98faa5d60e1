//! The user port: accounts and API tokens.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Role;
use crate::store::error::StoreError;
use crate::store::sql::rows::parsed;
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::users::{CreateUserError, NewUser, TokenOwner, TokenRecord, UserRecord, UserStore};

macro_rules! user_columns {
    () => {
        "user_id, user_name, display_name, email, role, created_at"
    };
}

static INSERT_USER: Sql = Sql::new(concat!(
    "insert into app_user (user_id, user_name, display_name, email, role, password_hash) \
     values ($1, $2, $3, $4, $5, $6) returning ",
    user_columns!()
));
static USER_FOR_LOGIN: Sql = Sql::new(concat!(
    "select ",
    user_columns!(),
    ", password_hash from app_user where lower(user_name) = lower($1)"
));
static LIST_USERS: Sql = Sql::new(concat!(
    "select ",
    user_columns!(),
    " from app_user where ($1 is null or lower(user_name) > lower($1)) order by lower(user_name) limit $2"
));
static USERS_REVISION: Sql = Sql::new("select coalesce(max(revision), 0) as revision from app_user");
static INSERT_TOKEN: Sql = Sql::new(
    "insert into api_token (token_id, secret_hash, user_id, name, role, expires_at) values ($1, $2, $3, $4, $5, $6)",
);
/// A login token carries its user's current role: demoting a user takes effect
/// on their live sessions at once.
static TOKEN: Sql = Sql::new(
    "select t.token_id, t.secret_hash, t.user_id, t.name, coalesce(u.role, t.role) as role, \
     t.expires_at, t.revoked_at, u.user_name \
     from api_token t left join app_user u on u.user_id = t.user_id where t.token_id = $1",
);
static REVOKE_TOKEN: Sql =
    Sql::new("update api_token set revoked_at = {now} where token_id = $1 and revoked_at is null");

fn user(r: &impl Row) -> Result<UserRecord, StoreError> {
    Ok(UserRecord {
        user_id: r.uuid("user_id")?,
        user_name: r.text("user_name")?,
        display_name: r.text("display_name")?,
        email: r.text("email")?,
        role: parsed("role", r.text("role")?, Role::parse)?,
        created_at: r.time("created_at")?,
    })
}

#[async_trait]
impl<D: Driver> UserStore for SqlStore<D> {
    async fn create_user(&self, u: NewUser) -> Result<UserRecord, CreateUserError> {
        let args = args![u.user_id, &u.user_name, &u.display_name, &u.email, u.role.as_str(), &u.password_hash];
        match self.driver.conn().await?.fetch_one(&INSERT_USER, args).await {
            Ok(r) => Ok(user(&r)?),
            Err(e) => Err(match D::unique_violation(&e) {
                Some("app_user_user_name_key") => CreateUserError::Taken("user_name"),
                Some("app_user_email_key") => CreateUserError::Taken("email"),
                _ => CreateUserError::Store(e),
            }),
        }
    }

    async fn user_for_login(&self, user_name: &str) -> Result<Option<(UserRecord, Option<String>)>, StoreError> {
        match self.driver.conn().await?.fetch_optional(&USER_FOR_LOGIN, args![user_name]).await? {
            Some(r) => Ok(Some((user(&r)?, r.opt_text("password_hash")?))),
            None => Ok(None),
        }
    }

    async fn list_users(&self, after_user_name: Option<&str>, limit: i64) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&LIST_USERS, args![after_user_name, limit]).await?;
        rows.iter().map(user).collect()
    }

    async fn users_revision(&self) -> Result<i64, StoreError> {
        self.driver.conn().await?.fetch_one(&USERS_REVISION, vec![]).await?.int("revision")
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
            TokenOwner::User { user_id, .. } => (Some(*user_id), None),
            TokenOwner::Service { name } => (None, Some(name.as_str())),
        };
        let args = args![token_id, secret_hash, user_id, name, role.as_str(), expires_at];
        self.driver.conn().await?.execute(&INSERT_TOKEN, args).await?;
        Ok(())
    }

    async fn token(&self, token_id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let Some(r) = self.driver.conn().await?.fetch_optional(&TOKEN, args![token_id]).await? else {
            return Ok(None);
        };
        let owner = match (r.opt_uuid("user_id")?, r.opt_text("name")?) {
            (Some(user_id), _) => TokenOwner::User { user_id, user_name: r.opt_text("user_name")?.unwrap_or_default() },
            (None, Some(name)) => TokenOwner::Service { name },
            (None, None) => return Err(StoreError::corrupt("token owner", "none")),
        };
        Ok(Some(TokenRecord {
            token_id: r.uuid("token_id")?,
            secret_hash: r.bytes("secret_hash")?,
            owner,
            role: parsed("role", r.text("role")?, Role::parse)?,
            expires_at: r.opt_time("expires_at")?,
            revoked_at: r.opt_time("revoked_at")?,
        }))
    }

    async fn revoke_token(&self, token_id: Uuid) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&REVOKE_TOKEN, args![token_id]).await?;
        Ok(())
    }
}

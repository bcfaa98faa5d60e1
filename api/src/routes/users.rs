//! Accounts and sessions: registration, listing users, login and logout.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use geonex_shared::auth::{Password, TokenKind, dummy_hash, mint_token, verify_password};
use geonex_shared::domain::{DisplayName, EmailAddress, Role, UserName};
use geonex_shared::error::FieldError;
use geonex_shared::store::users::{CreateUserError, NewUser, TokenOwner, UserRecord};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::auth::{Caller, peer};
use crate::error::{ApiError, ErrorBody};
use crate::params::{Cursor, PageLimit, Params, page_size};
use crate::http::{etag, not_modified, page, with_etag};

#[derive(Deserialize, ToSchema)]
pub struct RegisterUserBody {
    user_name: UserName,
    password: Password,
    /// Required, or as `Display_name`.
    display_name: Option<DisplayName>,
    /// The original document's spelling of `display_name`, read when that is absent.
    #[serde(rename = "Display_name")]
    #[schema(value_type = Option<DisplayName>)]
    display_name_as_documented: Option<String>,
    email: EmailAddress,
    /// Only an administrator may set this; self-registered users get `user`.
    role: Option<Role>,
}

#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserRecord>,
    pub next_cursor: Option<String>,
}

/// Not checked against the rules of registration: a login only says whether
/// they match an account.
#[derive(Deserialize, ToSchema)]
pub struct LoginBody {
    user_name: String,
    #[schema(format = Password)]
    password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Session {
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    pub expires_at: chrono::DateTime<Utc>,
    pub user_name: String,
    pub role: Role,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeUsersParams {
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
}

#[utoipa::path(post, path = "/register-user", tag = "users",
    request_body(content = RegisterUserBody, content_type = "application/json",
        description = "JSON or form body"),
    responses(
        (status = 201, description = "User created", body = UserRecord),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 409, description = "user_name or email is taken", body = ErrorBody),
    ))]
pub async fn register_user(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    params: Params,
) -> Result<Response, ApiError> {
    params.require_body("password")?;
    let RegisterUserBody { user_name, password, display_name, display_name_as_documented, email, role } = params.decode()?;
    let display_name = match (display_name, display_name_as_documented) {
        (Some(name), _) => name,
        (None, Some(name)) => DisplayName::parse(&name)?,
        (None, None) => return Err(FieldError::missing("display_name").into()),
    };
    let is_admin = caller.as_ref().is_some_and(|c| c.role == Role::Admin);
    let role = role.unwrap_or(Role::User);
    if role != Role::User && !is_admin {
        return Err(ApiError::Forbidden("only an administrator may choose a role".into()));
    }
    let password_hash = tokio::task::spawn_blocking(move || password.hash())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::Internal)?;
    let user = app
        .db
        .create_user(NewUser {
            user_id: Uuid::now_v7(),
            user_name: user_name.into_inner(),
            display_name: display_name.into_inner(),
            email: email.into_inner(),
            role,
            password_hash,
        })
        .await
        .map_err(|e| match e {
            CreateUserError::Taken(field) => {
                ApiError::Conflict { code: "taken", message: format!("{field} is already taken"), field: Some(field) }
            }
            CreateUserError::Store(s) => s.into(),
        })?;
    tracing::info!(user_name = %user.user_name, role = %user.role, "user registered");
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

#[utoipa::path(get, path = "/describe-users", tag = "users", params(DescribeUsersParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Users by user_name; never a password or token", body = UserList),
        (status = 304, description = "Unchanged"),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an administrator", body = ErrorBody),
    ))]
pub async fn describe_users(State(app): State<AppState>, headers: HeaderMap, params: Params) -> Result<Response, ApiError> {
    let revision = app.db.users_revision().await?;
    let tag = etag("users", revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let p: DescribeUsersParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let after = Cursor::after(p.cursor, 'u')?;
    let (users, next_cursor) = page(app.db.list_users(after.as_deref(), limit + 1).await?, limit, 'u', |u| u.user_name.clone());
    Ok(with_etag(Json(UserList { users, next_cursor }).into_response(), &tag))
}

#[utoipa::path(post, path = "/login", tag = "users",
    request_body(content = LoginBody, content_type = "application/json", description = "JSON or form body"),
    responses(
        (status = 200, description = "A bearer token", body = Session),
        (status = 400, description = "Missing field", body = ErrorBody),
        (status = 401, description = "Wrong user name or password", body = ErrorBody),
        (status = 429, description = "Too many failed attempts; see Retry-After", body = ErrorBody),
    ))]
pub async fn login(State(app): State<AppState>, req: axum::extract::Request) -> Result<Json<Session>, ApiError> {
    let peer = peer(req.extensions());
    let params = <Params as axum::extract::FromRequest<AppState>>::from_request(req, &app).await?;
    params.require_body("password")?;
    let LoginBody { user_name, password } = params.decode()?;
    if let Err(wait) = app.throttle.check(&user_name, peer) {
        return Err(ApiError::TooManyRequests(wait.as_secs().max(1)));
    }
    let found = app.db.user_for_login(&user_name).await?;
    let phc = found.as_ref().and_then(|(_, h)| h.clone()).unwrap_or_else(|| dummy_hash().to_owned());
    // Verify even for unknown users, so timing does not tell which names exist.
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let user = match (ok, found) {
        (true, Some((user, Some(_)))) => user,
        _ => {
            app.throttle.record_failure(&user_name, peer);
            tracing::warn!(user_name = %user_name, peer = ?peer, "failed login");
            return Err(ApiError::Unauthorized("invalid user name or password".into()));
        }
    };
    app.throttle.record_success(&user_name);
    let token = mint_token(TokenKind::Api);
    let expires_at = Utc::now() + Duration::from_secs(app.auth.login_ttl_secs);
    let owner = TokenOwner::User { user_id: user.user_id, user_name: user.user_name.clone() };
    app.db.insert_token(token.token_id, &token.secret_hash, &owner, user.role, Some(expires_at)).await?;
    tracing::info!(user_name = %user.user_name, "login");
    Ok(Json(Session {
        token: token.text.expose_secret().to_owned(),
        expires_at,
        user_name: user.user_name,
        role: user.role,
    }))
}

#[utoipa::path(post, path = "/logout", tag = "users", security(("bearer" = [])),
    responses(
        (status = 200, description = "The token used for this call is revoked"),
        (status = 401, description = "No valid token", body = ErrorBody),
    ))]
pub async fn logout(State(app): State<AppState>, Extension(caller): Extension<Caller>) -> Result<Json<serde_json::Value>, ApiError> {
    app.db.revoke_token(caller.token_id).await?;
    app.caches.tokens.forget(&caller.token_id);
    Ok(Json(serde_json::json!({ "status": "logged out" })))
}

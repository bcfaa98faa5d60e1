//! Who may call what. Every route is declared with an [`Access`] level in the
//! route table (`crate::routes`), and the router wraps each one in [`guard`], so a
//! route cannot exist without a decision about who may use it.
//!
//! Callers present `Authorization: Bearer <token>`: a login token from `/login`
//! or a service account's token from `geonex token create`. Agent tokens (one per
//! runner) are refused here; they are only good for posting that runner's events.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use geonex_shared::auth::{PresentedToken, TokenKind};
use geonex_shared::domain::Role;
use uuid::Uuid;

use crate::state::AppState;
use crate::error::ApiError;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Public,
    /// Anyone while open registration is enabled; administrators otherwise.
    Registration,
    /// A caller with at least this role.
    Role(Role),
    /// A runner's on-instance agent, with that runner's agent token; the
    /// handler checks that the token's runner is the one the request names.
    Agent,
}

/// The authenticated agent, available to handlers as `Extension<AgentCaller>`.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub runner_id: String,
}

/// Resolves an agent token. User tokens are refused with 403: they are valid,
/// just not here.
pub async fn authenticate_agent(app: &AppState, headers: &HeaderMap) -> Result<AgentCaller, Response> {
    let presented = presented_token(headers, "Bearer <agent token>")?;
    if presented.kind != TokenKind::Agent {
        return Err(ApiError::Forbidden("only a runner's agent token may post runner events".into()).into_response());
    }
    let record = match app.db.agent_token(presented.token_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(unauthorized("invalid token")),
        Err(e) => return Err(ApiError::from(e).into_response()),
    };
    if !presented.matches(&record.secret_hash) {
        return Err(unauthorized("invalid token"));
    }
    if record.revoked_at.is_some() {
        return Err(unauthorized("token revoked"));
    }
    Ok(AgentCaller { runner_id: record.runner_id })
}

/// The authenticated caller, available to handlers as `Extension<Caller>`.
#[derive(Debug, Clone)]
pub struct Caller {
    /// How the caller appears in audit fields (`requested_by`).
    pub label: String,
    pub role: Role,
    pub token_id: Uuid,
    pub user_id: Option<Uuid>,
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::Unauthorized(message.to_owned()).into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The token of the `Authorization: Bearer …` header, parsed but not yet checked.
// The rejection is the response itself, as axum extractors return it; it is
// built only for a refused request, so its size costs nothing on the way in.
#[allow(clippy::result_large_err)]
fn presented_token(headers: &HeaderMap, expected: &str) -> Result<PresentedToken, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(&format!("authentication required: send Authorization: {expected}")));
    };
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| unauthorized("malformed Authorization header: expected Bearer <token>"))?;
    PresentedToken::parse(text).ok_or_else(|| unauthorized("invalid token"))
}

/// Resolves the bearer token to a caller.
pub async fn authenticate(app: &AppState, headers: &HeaderMap) -> Result<Caller, Response> {
    let presented = presented_token(headers, "Bearer <token>")?;
    if presented.kind == TokenKind::Agent {
        return Err(ApiError::Forbidden("an agent token can only post its runner's events".into()).into_response());
    }
    // The secret and the expiry are checked on a cached record as on a fresh one.
    let record = match app.caches.tokens.get(&presented.token_id) {
        Some(r) => r,
        None => match app.db.token(presented.token_id).await {
            Ok(Some(r)) => {
                app.caches.tokens.put(r.token_id, r.clone());
                r
            }
            Ok(None) => return Err(unauthorized("invalid token")),
            Err(e) => return Err(ApiError::from(e).into_response()),
        },
    };
    if !presented.matches(&record.secret_hash) {
        return Err(unauthorized("invalid token"));
    }
    if !record.is_live(Utc::now()) {
        return Err(unauthorized("token expired or revoked; log in again"));
    }
    let user_id = match &record.owner {
        geonex_shared::store::users::TokenOwner::User { user_id, .. } => Some(*user_id),
        geonex_shared::store::users::TokenOwner::Service { .. } => None,
    };
    Ok(Caller { label: record.owner.label(), role: record.role, token_id: record.token_id, user_id })
}

/// Middleware enforcing a route's [`Access`].
pub async fn guard(State(app): State<AppState>, access: Access, mut req: Request, next: Next) -> Response {
    let min = match access {
        Access::Public => return next.run(req).await,
        Access::Agent => {
            return match authenticate_agent(&app, req.headers()).await {
                Ok(agent) => {
                    req.extensions_mut().insert(agent);
                    next.run(req).await
                }
                Err(r) => r,
            };
        }
        Access::Registration if app.auth.open_registration => {
            // Registration is open, but an administrator's token still counts
            // (it lets them choose the new user's role).
            if req.headers().contains_key(header::AUTHORIZATION) {
                match authenticate(&app, req.headers()).await {
                    Ok(caller) => {
                        req.extensions_mut().insert(caller);
                    }
                    Err(r) => return r,
                }
            }
            return next.run(req).await;
        }
        Access::Registration => Role::Admin,
        Access::Role(r) => r,
    };
    let caller = match authenticate(&app, req.headers()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if caller.role < min {
        return ApiError::Forbidden(format!("this needs the {min} role; you are {}", caller.role)).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Refuses logins after repeated failures for one user name or from one address,
/// for a sliding window. Kept in memory: each API process counts on its own.
pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self { max_failures: max_failures.max(1), window, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(user_name: &str, peer: Option<SocketAddr>) -> Vec<String> {
        let mut keys = vec![format!("user:{}", user_name.to_lowercase())];
        if let Some(p) = peer {
            keys.push(format!("ip:{}", p.ip()));
        }
        keys
    }

    /// `Err(wait)` while any key is over the limit.
    pub fn check(&self, user_name: &str, peer: Option<SocketAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = None;
        for key in Self::keys(user_name, peer) {
            if let Some(q) = map.get_mut(&key) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
                    q.pop_front();
                }
                if q.len() >= self.max_failures
                    && let Some(oldest) = q.front()
                {
                    let w = self.window.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        // Keep the map from growing without bound under a spray of names.
        if map.len() > 100_000 {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < self.window));
        }
        wait.map_or(Ok(()), Err)
    }

    pub fn record_failure(&self, user_name: &str, peer: Option<SocketAddr>) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for key in Self::keys(user_name, peer) {
            let q = map.entry(key).or_default();
            q.push_back(now);
            while q.len() > self.max_failures {
                q.pop_front();
            }
        }
    }

    pub fn record_success(&self, user_name: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&format!("user:{}", user_name.to_lowercase()));
    }
}

/// The peer address, when the server was started with connect info.
pub fn peer(req_ext: &axum::http::Extensions) -> Option<SocketAddr> {
    req_ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_trips_after_the_limit_and_recovers_after_the_window() {
        let t = LoginThrottle::new(2, Duration::from_millis(200));
        let ip: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert!(t.check("Alice", Some(ip)).is_ok());
        t.record_failure("alice", Some(ip));
        t.record_failure("ALICE", None);
        assert!(t.check("alice", None).is_err(), "per user name, any case");
        assert!(t.check("bob", Some(ip)).is_ok(), "the address has one failure only");
        t.record_failure("bob", Some(ip));
        assert!(t.check("carol", Some(ip)).is_err(), "per address");
        std::thread::sleep(Duration::from_millis(250));
        assert!(t.check("alice", Some(ip)).is_ok());
    }
}

//! Operational endpoints: liveness, readiness, replay of dead commands, and the
//! OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use geonex_shared::domain::Action;
use geonex_shared::error::FieldError;
use geonex_shared::store::ReplaySelector;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::params::{CommandId, Params, document_page_size};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Database and broker reachable"),
        (status = 503, description = "A dependency is unreachable"),
    ))]
pub async fn readyz(State(app): State<AppState>) -> Response {
    let db = tokio::time::timeout(PROBE_TIMEOUT, app.db.ping()).await;
    let mq = tokio::time::timeout(PROBE_TIMEOUT, app.dispatcher.queue().ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    let mq_ok = matches!(mq, Ok(Ok(())));
    let status = if db_ok && mq_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "not ready" },
        "database": if db_ok { "ok" } else { "unreachable" },
        "broker": { "status": if mq_ok { "ok" } else { "unreachable" }, "kind": app.dispatcher.queue().label() },
        "cloud": app.cloud_label,
    });
    (status, Json(body)).into_response()
}

/// Exactly one of the three.
#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct ReplayParams {
    /// Replay one dead command.
    command_id: Option<CommandId>,
    /// Replay every dead command of this action.
    action: Option<Action>,
    /// `true` to replay every dead command.
    all: Option<bool>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ReplayResult {
    pub replayed: Vec<Uuid>,
    pub skipped: Vec<Skipped>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct Skipped {
    pub command_id: Uuid,
    pub reason: String,
}

pub fn replay_selector(params: ReplayParams) -> Result<ReplaySelector, FieldError> {
    match (params.command_id, params.action, params.all.unwrap_or(false)) {
        (Some(CommandId(id)), None, false) => Ok(ReplaySelector::Command(id)),
        (None, Some(a), false) => Ok(ReplaySelector::Action(a)),
        (None, None, true) => Ok(ReplaySelector::All),
        (None, None, false) => Err(FieldError::missing("command_id")),
        _ => Err(FieldError::invalid("command_id", "give exactly one of command_id, action or all=true")),
    }
}

#[utoipa::path(post, path = "/replay-command", tag = "commands", params(ReplayParams),
    request_body(content = ReplayParams, content_type = "application/json"),
    responses(
        (status = 200, description = "Dead commands moved back to queued and re-published", body = ReplayResult),
        (status = 400, description = "No or conflicting selector", body = ErrorBody),
        (status = 404, description = "The command does not exist", body = ErrorBody),
        (status = 409, description = "The command is not dead", body = ErrorBody),
    ))]
pub async fn replay_command(State(app): State<AppState>, params: Params) -> Result<Json<ReplayResult>, ApiError> {
    let selector = replay_selector(params.decode()?)?;
    if let ReplaySelector::Command(id) = selector {
        match app.db.get_command(id).await? {
            None => return Err(ApiError::not_found(&format!("command {id}"), "command_id")),
            Some(c) if c.status != geonex_shared::domain::CommandStatus::Dead => {
                return Err(ApiError::Conflict {
                    code: "not_dead",
                    message: format!("command {id} is {}, only dead commands can be replayed", c.status.as_str()),
                    field: Some("command_id"),
                });
            }
            Some(_) => {}
        }
    }
    let out = app.db.replay(selector).await?;
    for c in &out.replayed {
        tracing::info!(command_id = %c.command_id, action = %c.action, "command replayed");
        app.dispatcher.publish_in_background(c.message());
    }
    Ok(Json(ReplayResult {
        replayed: out.replayed.iter().map(|c| c.command_id).collect(),
        skipped: out.skipped.into_iter().map(|(command_id, reason)| Skipped { command_id, reason }).collect(),
    }))
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document")))]
pub async fn openapi(State(app): State<AppState>) -> Json<utoipa::openapi::OpenApi> {
    let mut doc = crate::ApiDoc::openapi();
    document_page_size(&mut doc, &app.settings);
    Json(doc)
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct CancelParams {
    /// The command to cancel: queued, retrying or waiting.
    command_id: CommandId,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CancelResult {
    pub command_id: Uuid,
    /// Always `dead`: a cancelled command ends like one that failed, with
    /// `last_error` saying who cancelled it, and can be replayed like one.
    pub status: String,
    pub last_error: String,
}

#[utoipa::path(post, path = "/cancel-command", tag = "commands", params(CancelParams),
    request_body(content = CancelParams, content_type = "application/json"),
    responses(
        (status = 200, description = "The command will not run: it is dead, cancelled", body = CancelResult),
        (status = 400, description = "No or a malformed command_id", body = ErrorBody),
        (status = 404, description = "The command does not exist", body = ErrorBody),
        (status = 409, description = "The command is running or finished", body = ErrorBody),
    ))]
pub async fn cancel_command(
    State(app): State<AppState>,
    axum::Extension(caller): axum::Extension<crate::auth::Caller>,
    params: Params,
) -> Result<Json<CancelResult>, ApiError> {
    let CancelParams { command_id: CommandId(id) } = params.decode()?;
    let reason = format!("cancelled by {}", caller.label);
    if app.db.cancel_command(id, &reason).await? {
        tracing::info!(command_id = %id, by = %caller.label, "command cancelled");
        return Ok(Json(CancelResult { command_id: id, status: "dead".into(), last_error: reason }));
    }
    match app.db.get_command(id).await? {
        None => Err(ApiError::not_found(&format!("command {id}"), "command_id")),
        Some(c) => Err(ApiError::Conflict {
            code: "not_cancellable",
            message: format!(
                "command {id} is {}: only queued, retrying or waiting commands can be cancelled",
                c.status.as_str()
            ),
            field: Some("command_id"),
        }),
    }
}

//! The agent's event intake (`POST /runner-events`) and the container lists the
//! dashboard polls (`/describe-containers`, `/describe-runner-containers`).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use geonex_shared::error::FieldError;
use geonex_shared::store::RunnerQuery;
use geonex_shared::store::containers::{ContainerQuery, ContainerRecord, EventKind, RunnerEvent};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::auth::AgentCaller;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Bounded, Cursor, PageLimit, Params, Time, not_a_cursor, page_size};
use crate::http::{etag, not_modified, page, with_etag};

/// Largest log tail an event may carry.
pub const MAX_LOG_TAIL_BYTES: usize = 16 * 1024;
const MAX_TEXT: usize = 2048;

#[derive(Serialize, ToSchema)]
pub struct EventAccepted {
    pub event_id: Uuid,
    /// False when this event id had already been applied (a resend).
    pub applied: bool,
}

fn uuid_field(m: &Map<String, Value>, name: &'static str) -> Result<Option<Uuid>, FieldError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Uuid::parse_str(s).map(Some).map_err(|_| FieldError::invalid(name, "must be a UUID")),
        Some(_) => Err(FieldError::invalid(name, "must be a UUID string")),
    }
}

fn text_field(m: &Map<String, Value>, name: &'static str, max: usize) -> Result<Option<String>, FieldError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() > max => Err(FieldError::invalid(name, format!("must be at most {max} bytes"))),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(FieldError::invalid(name, "must be a string")),
    }
}

fn int_field(m: &Map<String, Value>, name: &'static str, min: i64, max: i64) -> Result<Option<i64>, FieldError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(FieldError::invalid(name, format!("must be an integer from {min} to {max}"))),
        },
    }
}

/// Validates an event body; every error names its field.
fn parse_event(body: &[u8]) -> Result<RunnerEvent, FieldError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| FieldError::invalid("body", format!("is not JSON: {e}")))?;
    let Value::Object(m) = value else {
        return Err(FieldError::invalid("body", "must be a JSON object"));
    };
    let event_id = uuid_field(&m, "event_id")?.ok_or_else(|| FieldError::missing("event_id"))?;
    let runner_id = text_field(&m, "runner_id", 256)?.filter(|s| !s.is_empty()).ok_or_else(|| FieldError::missing("runner_id"))?;
    let kind = text_field(&m, "kind", 64)?.ok_or_else(|| FieldError::missing("kind"))?;
    let kind = EventKind::parse(&kind)
        .ok_or_else(|| FieldError::invalid("kind", "must be one of: container_started, container_finished, heartbeat"))?;
    let container_id = uuid_field(&m, "container_id")?;
    if kind != EventKind::Heartbeat && container_id.is_none() {
        return Err(FieldError::missing("container_id"));
    }
    let instance_id = text_field(&m, "instance_id", 64)?.filter(|s| !s.is_empty());
    if let Some(i) = &instance_id
        && geonex_shared::domain::InstanceId::parse(i).is_err()
    {
        return Err(FieldError::invalid("instance_id", "must look like i-0123456789abcdef0"));
    }
    let at = text_field(&m, "at", 64)?.ok_or_else(|| FieldError::missing("at"))?;
    let at = DateTime::parse_from_rfc3339(&at)
        .map_err(|_| FieldError::invalid("at", "must be an RFC 3339 time"))?
        .with_timezone(&Utc);
    Ok(RunnerEvent {
        event_id,
        runner_id,
        kind,
        container_id,
        instance_id,
        image_name: text_field(&m, "image_name", 256)?,
        input_url: text_field(&m, "input_url", MAX_TEXT)?,
        exit_code: int_field(&m, "exit_code", i64::from(i32::MIN), i64::from(i32::MAX))?.map(|n| n as i32),
        duration_ms: int_field(&m, "duration_ms", 0, i64::MAX)?,
        log_tail: text_field(&m, "log_tail", MAX_LOG_TAIL_BYTES)?,
        at,
    })
}

#[utoipa::path(post, path = "/runner-events", tag = "containers", request_body = Object,
    responses(
        (status = 202, description = "Applied, or already applied earlier (same event_id)", body = EventAccepted),
        (status = 400, description = "Malformed event", body = ErrorBody),
        (status = 401, description = "No, unknown or revoked agent token", body = ErrorBody),
        (status = 403, description = "Not an agent token, or another runner's", body = ErrorBody),
    ))]
pub async fn runner_events(
    State(app): State<AppState>,
    Extension(agent): Extension<AgentCaller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let event = parse_event(&body)?;
    if event.runner_id != agent.runner_id {
        return Err(ApiError::Forbidden("this token belongs to another runner".into()));
    }
    let applied = app.db.record_event(&event).await?;
    Ok((StatusCode::ACCEPTED, Json(EventAccepted { event_id: event.event_id, applied })).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct ContainerList {
    pub containers: Vec<ContainerRecord>,
    pub next_cursor: Option<String>,
}

/// A container's status, as a filter.
#[derive(Debug, Clone, Copy, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Running,
    Exited,
    Failed,
    Killed,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Running => "running",
            ContainerStatus::Exited => "exited",
            ContainerStatus::Failed => "failed",
            ContainerStatus::Killed => "killed",
        }
    }
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeContainersParams {
    status: Option<ContainerStatus>,
    image_name: Option<String>,
    runner_id: Option<String>,
    /// Started at or after this time.
    since: Option<Time>,
    /// Started before this time.
    until: Option<Time>,
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
}

fn decode_container_cursor(raw: &str) -> Result<(DateTime<Utc>, Uuid), FieldError> {
    let (at, id) = raw.split_once('|').ok_or_else(not_a_cursor)?;
    let at = DateTime::parse_from_rfc3339(at).map_err(|_| not_a_cursor())?.with_timezone(&Utc);
    Ok((at, Uuid::parse_str(id).map_err(|_| not_a_cursor())?))
}

#[utoipa::path(get, path = "/describe-containers", tag = "containers", params(DescribeContainersParams),
    responses(
        (status = 200, description = "Containers, newest first", body = ContainerList),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn describe_containers(State(app): State<AppState>, headers: HeaderMap, params: Params) -> Result<Response, ApiError> {
    let revision = app.db.containers_revision().await?;
    let tag = etag("containers", revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let p: DescribeContainersParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let q = ContainerQuery {
        status: p.status.map(|s| s.as_str().to_owned()),
        image_name: p.image_name,
        runner_id: p.runner_id,
        since: p.since.map(|t| t.0),
        until: p.until.map(|t| t.0),
        before: Cursor::after(p.cursor, 'k')?.map(|c| decode_container_cursor(&c)).transpose()?,
        limit: limit + 1,
    };
    let (containers, next_cursor) = page(app.db.list_containers(&q).await?, limit, 'k', |c| format!("{}|{}", c.started_at.to_rfc3339(), c.container_id));
    Ok(with_etag(Json(ContainerList { containers, next_cursor }).into_response(), &tag))
}

#[derive(Serialize, ToSchema)]
pub struct RunnerContainers {
    pub runner_id: String,
    pub runner_name: String,
    pub containers: Vec<ContainerRecord>,
}

#[derive(Serialize, ToSchema)]
pub struct RunnerContainersList {
    pub runners: Vec<RunnerContainers>,
    pub next_cursor: Option<String>,
}

#[derive(serde::Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeRunnerContainersParams {
    runner_id: Option<String>,
    /// Runners per page.
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
    /// Newest containers shown per runner (default 100).
    per_runner: Option<Bounded<1, 1000>>,
}

#[utoipa::path(get, path = "/describe-runner-containers", tag = "containers", params(DescribeRunnerContainersParams),
    responses(
        (status = 200, description = "Runners, ordered by runner_id, each with its newest containers", body = RunnerContainersList),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Bad runner_id filter, limit, per_runner or cursor", body = ErrorBody),
    ))]
pub async fn describe_runner_containers(
    State(app): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let revision = app.db.containers_revision().await?.max(app.db.runners_revision().await?);
    let tag = etag("runner-containers", revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let p: DescribeRunnerContainersParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let per_runner = p.per_runner.map(Bounded::get);
    let q = RunnerQuery {
        runner_id: p.runner_id,
        observed: None,
        desired: None,
        after_runner_id: Cursor::after(p.cursor, 'r')?,
        limit: limit + 1,
    };
    let (runners, next_cursor) = page(app.db.list_runners(&q).await?, limit, 'r', |r| r.runner_id.clone());
    let ids: Vec<String> = runners.iter().map(|r| r.runner_id.clone()).collect();
    let mut by_runner: BTreeMap<String, Vec<ContainerRecord>> = BTreeMap::new();
    for c in app.db.runner_containers(&ids, per_runner.unwrap_or(100)).await? {
        by_runner.entry(c.runner_id.clone()).or_default().push(c);
    }
    let runners = runners
        .into_iter()
        .map(|r| RunnerContainers {
            containers: by_runner.remove(&r.runner_id).unwrap_or_default(),
            runner_id: r.runner_id,
            runner_name: r.runner_name,
        })
        .collect();
    Ok(with_etag(Json(RunnerContainersList { runners, next_cursor }).into_response(), &tag))
}

//! Read endpoints for runners and commands. Lists page with `limit` and an opaque
//! `cursor`, and carry a weak ETag built from the table's revision counter and
//! the query, so a dashboard's repeated poll costs one index lookup and a 304.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::IF_NONE_MATCH;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use geonex_shared::domain::{Action, CommandStatus, DesiredState, ObservedState};
use geonex_shared::store::fleet::TRANSITIONAL;
use geonex_shared::store::{CommandQuery, CommandRecord, RunnerQuery, RunnerRecord, WorkerProcess};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::http::{etag, not_modified, page, with_etag};
use crate::params::{CommandId, Cursor, PageLimit, Params, not_a_cursor, page_size};

/// A runner as `/describe-runners` shows it: the record plus what is computed
/// at read time.
#[derive(Serialize)]
pub struct RunnerView {
    #[serde(flatten)]
    pub runner: RunnerRecord,
    /// Running, but its agent has not been heard from (no event) for longer than
    /// `api.unresponsive_after_secs`. Only shown: such a runner is never reaped.
    pub unresponsive: bool,
    /// Pending, stopping or shutting down for longer than
    /// `reconcile.stuck_after_secs` (since `observed_at`).
    pub stuck: bool,
    /// Seconds its instances have run, all told.
    pub running_seconds: f64,
    /// What that running cost at the price table's rates (null: its type has no price).
    pub cost_usd: Option<f64>,
}

impl RunnerView {
    pub fn of(runner: RunnerRecord, now: DateTime<Utc>, after: chrono::Duration, stuck_after: chrono::Duration) -> Self {
        // Never heard from: count from the last change of the runner's record
        // (the instance reaching running is one).
        let last = runner.last_heartbeat_at.unwrap_or(runner.updated_at);
        let unresponsive = runner.observed_state == ObservedState::Running && now - last > after;
        let since = runner.observed_at.unwrap_or(runner.updated_at);
        let stuck = TRANSITIONAL.contains(&runner.observed_state) && now - since > stuck_after;
        Self { runner, unresponsive, stuck, running_seconds: 0.0, cost_usd: Some(0.0) }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RunnerList {
    #[schema(value_type = Vec<Object>)]
    pub runners: Vec<RunnerView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CommandList {
    #[schema(value_type = Vec<Object>)]
    pub commands: Vec<CommandRecord>,
    pub next_cursor: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeRunnersParams {
    runner_id: Option<String>,
    /// Observed state.
    state: Option<ObservedState>,
    desired_state: Option<DesiredState>,
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeCommandsParams {
    runner_id: Option<String>,
    status: Option<CommandStatus>,
    action: Option<Action>,
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeCommandParams {
    command_id: CommandId,
}

#[utoipa::path(get, path = "/describe-runners", tag = "runners", params(DescribeRunnersParams),
    responses(
        (status = 200, description = "Runners, ordered by runner_id", body = RunnerList),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn describe_runners(State(app): State<AppState>, headers: HeaderMap, params: Params) -> Result<Response, ApiError> {
    // `unresponsive` changes with the clock alone: the tag also changes every
    // quarter of the threshold, so a cached page is at most that much behind.
    let after = chrono::Duration::seconds(i64::try_from(app.settings.unresponsive_after_secs.max(1)).unwrap_or(i64::MAX));
    let now = Utc::now();
    let tick = now.timestamp() / (after.num_seconds() / 4).max(1);
    let kind = format!("runners-{tick}");
    if headers.contains_key(IF_NONE_MATCH) {
        let revision = app.caches.runners_revision.get(|| app.db.runners_revision()).await?;
        if let Some(r) = not_modified(&headers, &etag(&kind, revision, &params)) {
            return Ok(r);
        }
    }
    // A page is about to be sent: it is of the revision now, not the cached one.
    let revision = app.db.runners_revision().await?;
    app.caches.runners_revision.set(revision);
    let tag = etag(&kind, revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    if let Some(page) = app.caches.runner_pages.get(&tag) {
        return Ok(with_etag(json_bytes(page), &tag));
    }
    let p: DescribeRunnersParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let q = RunnerQuery {
        runner_id: p.runner_id,
        observed: p.state,
        desired: p.desired_state,
        after_runner_id: Cursor::after(p.cursor, 'r')?,
        limit: limit + 1,
    };
    let (runners, next_cursor) = page(app.db.list_runners(&q).await?, limit, 'r', |r| r.runner_id.clone());
    let stuck_after = chrono::Duration::from_std(app.stuck_after).unwrap_or(chrono::Duration::MAX);
    let ids: Vec<String> = runners.iter().map(|r| r.runner_id.clone()).collect();
    let costs = crate::routes::costs::lifetime_costs(&app, &ids, now).await?;
    let runners = runners
        .into_iter()
        .map(|r| {
            let cost = costs.get(&r.runner_id).copied().unwrap_or_default();
            let mut v = RunnerView::of(r, now, after, stuck_after);
            v.running_seconds = cost.running_seconds;
            v.cost_usd = (cost.unpriced_seconds == 0.0).then_some((cost.instance_usd * 10_000.0).round() / 10_000.0);
            v
        })
        .collect();
    let page = Bytes::from(serde_json::to_vec(&RunnerList { runners, next_cursor }).map_err(|e| ApiError::Internal(e.to_string()))?);
    app.caches.runner_pages.put(tag.clone(), page.clone());
    Ok(with_etag(json_bytes(page), &tag))
}

fn json_bytes(body: Bytes) -> Response {
    ([(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"))], body).into_response()
}

#[utoipa::path(get, path = "/describe-commands", tag = "commands", params(DescribeCommandsParams),
    responses(
        (status = 200, description = "Commands, newest first", body = CommandList),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn describe_commands(State(app): State<AppState>, headers: HeaderMap, params: Params) -> Result<Response, ApiError> {
    if headers.contains_key(IF_NONE_MATCH) {
        let revision = app.caches.commands_revision.get(|| app.db.commands_revision()).await?;
        if let Some(r) = not_modified(&headers, &etag("commands", revision, &params)) {
            return Ok(r);
        }
    }
    let revision = app.db.commands_revision().await?;
    app.caches.commands_revision.set(revision);
    let tag = etag("commands", revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let p: DescribeCommandsParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let before_seq = match Cursor::after(p.cursor, 'c')? {
        Some(s) => Some(s.parse::<i64>().map_err(|_| not_a_cursor())?),
        None => None,
    };
    let q = CommandQuery {
        runner_id: p.runner_id,
        status: p.status,
        action: p.action,
        before_seq,
        limit: limit + 1,
    };
    let (commands, next_cursor) = page(app.db.list_commands(&q).await?, limit, 'c', |c| c.seq.to_string());
    Ok(with_etag(Json(CommandList { commands, next_cursor }).into_response(), &tag))
}

#[utoipa::path(get, path = "/describe-command", tag = "commands", params(DescribeCommandParams),
    responses(
        (status = 200, description = "One command with its params and result", body = Object),
        (status = 400, description = "Missing or malformed command_id", body = ErrorBody),
        (status = 404, description = "Unknown command", body = ErrorBody),
    ))]
pub async fn describe_command(State(app): State<AppState>, params: Params) -> Result<Response, ApiError> {
    let DescribeCommandParams { command_id: CommandId(id) } = params.decode()?;
    let Some(command) = app.db.get_command(id).await? else {
        return Err(ApiError::not_found(&format!("command {id}"), "command_id"));
    };
    // Who runs it, so an operator can tell a long command from a stalled one.
    let holder = match (command.status, command.lease_holder) {
        (CommandStatus::Running, Some(holder)) => Some(match app.db.get_worker(holder).await? {
            Some(w) => HolderView::of(w, Utc::now(), app.holder_timeout),
            None => HolderView::gone(holder),
        }),
        _ => None,
    };
    Ok(Json(CommandView { command, holder }).into_response())
}

/// `/describe-command`: the command plus, while it runs, the process holding it.
#[derive(Serialize)]
pub struct CommandView {
    #[serde(flatten)]
    pub command: CommandRecord,
    pub holder: Option<HolderView>,
}

/// A worker process as an operator sees it: its registry row and whether its
/// heartbeat is recent enough for it to count as alive.
#[derive(Serialize, ToSchema)]
pub struct HolderView {
    pub worker_id: Uuid,
    pub hostname: Option<String>,
    pub pid: Option<i32>,
    pub version: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// False once the heartbeat is older than `worker.holder_timeout_ms` (or the
    /// process left the registry): its commands are then taken over.
    pub alive: bool,
}

impl HolderView {
    fn of(w: WorkerProcess, now: DateTime<Utc>, timeout: std::time::Duration) -> Self {
        let alive = chrono::Duration::from_std(timeout).is_ok_and(|t| now - w.heartbeat_at <= t);
        Self {
            worker_id: w.worker_id,
            hostname: Some(w.hostname),
            pid: Some(w.pid),
            version: Some(w.version),
            started_at: Some(w.started_at),
            heartbeat_at: Some(w.heartbeat_at),
            alive,
        }
    }

    fn gone(worker_id: Uuid) -> Self {
        Self { worker_id, hostname: None, pid: None, version: None, started_at: None, heartbeat_at: None, alive: false }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<HolderView>,
}

#[utoipa::path(get, path = "/describe-workers", tag = "commands", security(("bearer" = [])),
    responses(
        (status = 200, description = "Worker processes in the registry, newest first, with whether each is alive", body = WorkerList),
    ))]
pub async fn describe_workers(State(app): State<AppState>) -> Result<Json<WorkerList>, ApiError> {
    let now = Utc::now();
    let workers = app.db.list_workers().await?.into_iter().map(|w| HolderView::of(w, now, app.holder_timeout)).collect();
    Ok(Json(WorkerList { workers }))
}

#[derive(Serialize, ToSchema)]
pub struct OrphanList {
    pub orphans: Vec<geonex_shared::store::fleet::OrphanRecord>,
}

#[utoipa::path(get, path = "/describe-orphans", tag = "runners", security(("bearer" = [])),
    responses(
        (status = 200, description = "Instances of this fleet that belong to no live runner, as the last sweep saw them", body = OrphanList),
    ))]
pub async fn describe_orphans(State(app): State<AppState>) -> Result<Json<OrphanList>, ApiError> {
    Ok(Json(OrphanList { orphans: app.db.list_orphans().await? }))
}

//! The runner endpoints of the original API: start, restart, stop and delete.
//! Each validates every parameter, records the command and the runner's desired
//! state in one transaction, publishes after commit, and answers 202.

use axum::{Extension, Json};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use geonex_shared::failpoint;
use geonex_shared::domain::{ImageRef, InstanceId, InstanceType, RunnerId, RunnerName, S3Uri, deserialize_parsed};
use geonex_shared::store::images::ImageStatus;
use geonex_shared::cost::PurchaseOption;
use geonex_shared::error::FieldError;
use geonex_shared::store::{NewRunnerCommand, RunnerOptions, RunnerRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::state::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::http::{idempotency_key, trace_id};
use crate::params::{Params, schema};

/// The answer to an accepted command.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub command_id: Uuid,
    /// `start_runner`, `restart_runner`, `stop_runner`, `delete_runner` or `send_email`.
    pub action: String,
    pub runner_id: Option<String>,
    /// The command's status now (`queued` when just accepted).
    pub status: String,
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct StartRunnerParams {
    /// EC2 instance type, e.g. `m5d.4xlarge` (must be in the allowed list).
    instance_type: InstanceType,
    /// Docker image reference of an algorithm, e.g. `geonex/active_fire_go16abi15:1.5`.
    image_name: ImageRef,
    /// Where results go: `s3://bucket/prefix`.
    s3_output: S3Uri,
    /// Client-chosen runner id.
    runner_id: RunnerId,
    runner_name: RunnerName,
    /// `on-demand` (default), `spot`, or `spot-or-on-demand` (spot, on-demand when spot capacity is short).
    purchase_option: Option<PurchaseOption>,
    /// Comma-separated instance types tried in order when EC2 has no capacity for `instance_type`
    /// (each in the allowed list).
    fallback_instance_types: Option<FallbackTypes>,
    /// Stop the runner when no container has started for this long: seconds, or with
    /// `m`, `h` or `d` (at least 60 s); never while a container runs.
    idle_stop_after: Option<IdleStopAfter>,
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct RestartRunnerParams {
    /// The runner's current instance.
    instance_id: InstanceId,
    image_name: ImageRef,
    s3_output: S3Uri,
    runner_id: RunnerId,
    runner_name: RunnerName,
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct StopOrDeleteRunnerParams {
    instance_id: InstanceId,
    runner_id: RunnerId,
    /// Optional; informational.
    runner_name: Option<RunnerName>,
}

/// `fallback_instance_types`: comma-separated instance types, at most five.
/// Whether each is allowed is the handler's to check.
pub struct FallbackTypes(Vec<InstanceType>);

impl FallbackTypes {
    pub const MAX: usize = 5;

    fn parse(v: &str) -> Result<Self, FieldError> {
        let field = "fallback_instance_types";
        let types = v
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| InstanceType::parse(t).map_err(|e| FieldError::invalid(field, e.reason())))
            .collect::<Result<Vec<_>, FieldError>>()?;
        if types.len() > Self::MAX {
            return Err(FieldError::invalid(field, format!("names at most {} instance types", Self::MAX)));
        }
        Ok(Self(types))
    }

    /// The types, each checked against the allowed list.
    fn allowed(self, app: &AppState) -> Result<Vec<InstanceType>, FieldError> {
        for t in &self.0 {
            app.instance_types.check(t).map_err(|e| FieldError::invalid("fallback_instance_types", e.reason()))?;
        }
        Ok(self.0)
    }
}

impl<'de> Deserialize<'de> for FallbackTypes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, Self::parse)
    }
}

schema!([] FallbackTypes, "FallbackTypes", ObjectBuilder::new()
    .schema_type(Type::String)
    .description(Some("Comma-separated EC2 instance types, at most five."))
    .examples(["m5d.2xlarge,m5.4xlarge"]));

/// `idle_stop_after`: seconds, or a number with `m`, `h` or `d`; 60 s to 30 days.
pub struct IdleStopAfter(i64);

impl IdleStopAfter {
    pub const PATTERN: &str = r"^\+?[0-9]+[smhd]?$";

    fn parse(v: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::invalid("idle_stop_after", "must be a duration such as 900, 30m, 2h or 1d (60 s to 30 days)");
        let (number, unit) = match v.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&v[..i], c),
            _ => (v, 's'),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => n,
            'm' => n.checked_mul(60).ok_or_else(bad)?,
            'h' => n.checked_mul(3600).ok_or_else(bad)?,
            'd' => n.checked_mul(86_400).ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        if !(60..=30 * 86_400).contains(&secs) {
            return Err(bad());
        }
        Ok(Self(secs))
    }
}

impl<'de> Deserialize<'de> for IdleStopAfter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, Self::parse)
    }
}

schema!([] IdleStopAfter, "IdleStopAfter", ObjectBuilder::new()
    .schema_type(Type::String)
    .description(Some("A duration from 60 seconds to 30 days: seconds, or a number with `m`, `h` or `d`."))
    .pattern(Some(IdleStopAfter::PATTERN))
    .examples(["30m"]));

/// A start or restart of a runner whose owner's (or image's) budget is spent
/// this month is refused, naming the budget.
async fn ensure_within_budget(app: &AppState, caller: &str, runner_id: &str, image: &str) -> Result<(), ApiError> {
    let (_, month) = geonex_shared::cost::month_of(chrono::Utc::now());
    let (read_in, spent) =
        app.caches.spent_budgets.get(|| async { app.db.exceeded_in(&month).await.map(|b| (month.clone(), b)) }).await?;
    // Read in the month before, which has just ended: none is spent in this one yet.
    if read_in != month || spent.is_empty() {
        return Ok(());
    }
    // A runner draws on its owner's budget: the caller's for a new one.
    let owner = match app.db.get_runner(runner_id).await? {
        Some(r) => r.owner.unwrap_or_else(|| caller.to_owned()),
        None => caller.to_owned(),
    };
    let Some(b) = spent.iter().find(|b| b.governs(&owner, image)) else { return Ok(()) };
    Err(ApiError::Refused {
        code: "budget_exceeded",
        message: format!(
            "the monthly budget {} of {} {} (${:.2}) is spent for {month} (${:.2}); raise it or wait for the month to end",
            b.budget_id,
            b.scope.as_str(),
            b.subject,
            b.monthly_usd,
            b.spent_usd
        ),
        field: Some("budget"),
    })
}

/// Only approved images may run: refuses unknown, pending and rejected ones.
async fn ensure_approved(app: &AppState, image: &ImageRef) -> Result<(), ApiError> {
    if app.caches.approved.get(image.as_str()).is_some() {
        return Ok(());
    }
    let status = app.db.image_status(image.as_str()).await?;
    let why = match status {
        Some(ImageStatus::Approved) => {
            app.caches.approved.put(image.as_str().to_owned(), ());
            return Ok(());
        }
        None => "is not registered; register it with /register-image and have an administrator approve it",
        Some(ImageStatus::Pending) => "is awaiting an administrator's approval",
        Some(ImageStatus::Rejected) => "was rejected",
    };
    Err(ApiError::Unprocessable {
        code: "image_not_approved",
        message: format!("image {image} {why}; only approved images can run"),
        field: Some("image_name"),
    })
}

async fn submit(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    runner_id: RunnerId,
    request: RunnerRequest,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(headers)?;
    let cmd = NewRunnerCommand {
        command_id: Uuid::now_v7(),
        runner_id,
        request,
        requested_by: caller.label.clone(),
        idempotency_key,
        trace_id: trace_id(headers),
        max_attempts: app.max_attempts,
    };
    let submitted = app.db.submit_runner_command(cmd).await?;
    // Committed, not yet published: a crash here is the relay's to repair.
    failpoint::hit("after-submit-commit").await;
    let c = &submitted.command;
    if submitted.created {
        tracing::info!(command_id = %c.command_id, action = %c.action, runner_id = c.runner_id.as_deref().unwrap_or(""), "command accepted");
        app.dispatcher.publish_in_background(c.message());
        geonex_shared::metrics::command(geonex_shared::metrics::COMMANDS_ACCEPTED, c.action);
    }
    let body = Accepted {
        command_id: c.command_id,
        action: c.action.as_str().to_owned(),
        runner_id: c.runner_id.clone(),
        status: c.status.as_str().to_owned(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if !submitted.created {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

#[utoipa::path(method(get, post), path = "/start-runner", tag = "runners", security(("bearer" = [])),
    params(StartRunnerParams),
    request_body(content = StartRunnerParams, content_type = "application/json",
        description = "POST alternative to the query string"),
    responses(
        (status = 202, description = "Command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 403, description = "The owner's or the image's monthly budget is spent (`budget_exceeded`)", body = ErrorBody),
        (status = 409, description = "The runner exists with other parameters, or was deleted", body = ErrorBody),
        (status = 422, description = "The image is not approved", body = ErrorBody),
    ))]
pub async fn start_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let p: StartRunnerParams = params.decode()?;
    let StartRunnerParams { instance_type, image_name, s3_output, runner_id, runner_name, .. } = p;
    app.instance_types.check(&instance_type)?;
    let options = RunnerOptions {
        purchase_option: p.purchase_option.unwrap_or_default(),
        fallback_instance_types: p.fallback_instance_types.map(|f| f.allowed(&app)).transpose()?.unwrap_or_default(),
        idle_stop_after_secs: p.idle_stop_after.map(|d| d.0),
    };
    ensure_approved(&app, &image_name).await?;
    ensure_within_budget(&app, caller.label.as_str(), runner_id.as_str(), image_name.as_str()).await?;
    let request = RunnerRequest::Start { instance_type, image_name, s3_output, runner_name, options };
    submit(&app, &caller, &headers, runner_id, request).await
}

#[utoipa::path(method(get, post), path = "/restart-runner", tag = "runners", security(("bearer" = [])),
    params(RestartRunnerParams),
    request_body(content = RestartRunnerParams, content_type = "application/json"),
    responses(
        (status = 202, description = "Command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 404, description = "Unknown runner", body = ErrorBody),
        (status = 403, description = "The owner's or the image's monthly budget is spent (`budget_exceeded`)", body = ErrorBody),
        (status = 409, description = "The instance is not the runner's, or the runner was deleted", body = ErrorBody),
        (status = 422, description = "The image is not approved", body = ErrorBody),
    ))]
pub async fn restart_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let RestartRunnerParams { instance_id, image_name, s3_output, runner_id, runner_name } = params.decode()?;
    ensure_approved(&app, &image_name).await?;
    ensure_within_budget(&app, caller.label.as_str(), runner_id.as_str(), image_name.as_str()).await?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Restart { instance_id, image_name, s3_output, runner_name }).await
}

#[utoipa::path(method(get, post), path = "/stop-runner", tag = "runners", security(("bearer" = [])),
    params(StopOrDeleteRunnerParams),
    request_body(content = StopOrDeleteRunnerParams, content_type = "application/json"),
    responses(
        (status = 202, description = "Command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 404, description = "Unknown runner", body = ErrorBody),
        (status = 409, description = "The instance is not the runner's, or the runner was deleted", body = ErrorBody),
    ))]
pub async fn stop_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let StopOrDeleteRunnerParams { instance_id, runner_id, runner_name } = params.decode()?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Stop { instance_id, runner_name, reason: None }).await
}

#[utoipa::path(method(get, post), path = "/delete-runner", tag = "runners", security(("bearer" = [])),
    params(StopOrDeleteRunnerParams),
    request_body(content = StopOrDeleteRunnerParams, content_type = "application/json"),
    responses(
        (status = 202, description = "Command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 404, description = "Unknown runner", body = ErrorBody),
        (status = 409, description = "The instance is not the runner's, or the runner was deleted", body = ErrorBody),
    ))]
pub async fn delete_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let StopOrDeleteRunnerParams { instance_id, runner_id, runner_name } = params.decode()?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Delete { instance_id, runner_name }).await
}

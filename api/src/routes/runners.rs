//! The runner endpoints of the original API: start, restart, stop and delete.
//! Each validates every parameter, records the command and the runner's desired
//! state in one transaction, publishes after commit, and answers 202.

use axum::{Extension, Json};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use geonex_shared::failpoint;
use geonex_shared::domain::{ImageRef, InstanceId, InstanceType, RunnerId, RunnerName, S3Uri};
use geonex_shared::store::images::ImageStatus;
use geonex_shared::store::{NewRunnerCommand, RunnerRequest};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::http::{idempotency_key, trace_id};
use crate::params::Params;

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
#[allow(dead_code)]
pub struct StartRunnerParams {
    /// EC2 instance type, e.g. `m5d.4xlarge` (must be in the allowed list).
    instance_type: String,
    /// Docker image reference of an algorithm, e.g. `geonex/active_fire_go16abi15:1.5`.
    image_name: String,
    /// Where results go: `s3://bucket/prefix`.
    s3_output: String,
    /// Client-chosen runner id (1–128 of `A-Za-z0-9._-`).
    runner_id: String,
    runner_name: String,
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct RestartRunnerParams {
    /// The runner's current instance.
    instance_id: String,
    image_name: String,
    s3_output: String,
    runner_id: String,
    runner_name: String,
}

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StopOrDeleteRunnerParams {
    instance_id: String,
    runner_id: String,
    /// Optional; informational.
    runner_name: Option<String>,
}

/// Only approved images may run: refuses unknown, pending and rejected ones.
async fn ensure_approved(app: &AppState, image: &ImageRef) -> Result<(), ApiError> {
    let status = app.db.get_image(image.as_str()).await?.map(|i| i.status);
    let why = match status {
        Some(ImageStatus::Approved) => return Ok(()),
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
        (status = 409, description = "The runner exists with other parameters, or was deleted", body = ErrorBody),
        (status = 422, description = "The image is not approved", body = ErrorBody),
    ))]
pub async fn start_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let instance_type = params.parse("instance_type", InstanceType::parse)?;
    app.instance_types.check(&instance_type)?;
    let image_name = params.parse("image_name", ImageRef::parse)?;
    let s3_output = params.parse("s3_output", S3Uri::parse)?;
    let runner_id = params.parse("runner_id", RunnerId::parse)?;
    let runner_name = params.parse("runner_name", RunnerName::parse)?;
    ensure_approved(&app, &image_name).await?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Start { instance_type, image_name, s3_output, runner_name }).await
}

#[utoipa::path(method(get, post), path = "/restart-runner", tag = "runners", security(("bearer" = [])),
    params(RestartRunnerParams),
    request_body(content = RestartRunnerParams, content_type = "application/json"),
    responses(
        (status = 202, description = "Command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 404, description = "Unknown runner", body = ErrorBody),
        (status = 409, description = "The instance is not the runner's, or the runner was deleted", body = ErrorBody),
        (status = 422, description = "The image is not approved", body = ErrorBody),
    ))]
pub async fn restart_runner(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let instance_id = params.parse("instance_id", InstanceId::parse)?;
    let image_name = params.parse("image_name", ImageRef::parse)?;
    let s3_output = params.parse("s3_output", S3Uri::parse)?;
    let runner_id = params.parse("runner_id", RunnerId::parse)?;
    let runner_name = params.parse("runner_name", RunnerName::parse)?;
    ensure_approved(&app, &image_name).await?;
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
    let instance_id = params.parse("instance_id", InstanceId::parse)?;
    let runner_id = params.parse("runner_id", RunnerId::parse)?;
    let runner_name = params.parse_opt("runner_name", RunnerName::parse)?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Stop { instance_id, runner_name }).await
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
    let instance_id = params.parse("instance_id", InstanceId::parse)?;
    let runner_id = params.parse("runner_id", RunnerId::parse)?;
    let runner_name = params.parse_opt("runner_name", RunnerName::parse)?;
    submit(&app, &caller, &headers, runner_id, RunnerRequest::Delete { instance_id, runner_name }).await
}

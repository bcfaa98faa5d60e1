//! GeoNEX-core's HTTP API: the router, its handlers, request validation and the
//! OpenAPI document. The API never calls AWS or SMTP: it validates, records
//! commands in the store and publishes them to the queue.

pub mod error;
pub mod params;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use geonex_shared::config::{ApiSettings, S3UsageSettings};
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::InstanceTypePolicy;
use geonex_shared::store::Store;
use geonex_shared::store::usage::UsageStore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::routes::{describe, ops, runners, usage};

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub dispatcher: Dispatcher,
    pub instance_types: InstanceTypePolicy,
    pub settings: ApiSettings,
    pub max_attempts: i32,
    /// What the cloud adapter is, shown by `/readyz`.
    pub cloud_label: String,
    pub usage: Arc<dyn UsageStore>,
    pub usage_settings: S3UsageSettings,
    /// The configured extra outputs in canonical form.
    pub usage_extra_outputs: Vec<String>,
}

impl AppState {
    /// Who is asking, recorded on every command.
    pub fn requester(&self, _headers: &HeaderMap) -> String {
        "anonymous".to_owned()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "GeoNEX-core", description = "Control plane of the GEONEX dashboard: real-time runners on EC2."),
    paths(
        runners::start_runner, runners::restart_runner, runners::stop_runner, runners::delete_runner,
        describe::describe_runners, describe::describe_commands, describe::describe_command,
        usage::get_s3_usage,
        ops::replay_command, ops::healthz, ops::readyz, ops::openapi,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, runners::Accepted, ops::ReplayResult, usage::S3Usage, usage::OutputUsageBody))
)]
pub struct ApiDoc;

/// Every route as (method, path): the router is built from the same handlers,
/// and a test checks that each one appears in the OpenAPI document.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/start-runner"),
    ("POST", "/start-runner"),
    ("GET", "/restart-runner"),
    ("POST", "/restart-runner"),
    ("GET", "/stop-runner"),
    ("POST", "/stop-runner"),
    ("GET", "/delete-runner"),
    ("POST", "/delete-runner"),
    ("GET", "/describe-runners"),
    ("GET", "/describe-commands"),
    ("GET", "/describe-command"),
    ("GET", "/get-s3-usage"),
    ("POST", "/get-s3-usage"),
    ("POST", "/replay-command"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
];

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit_bytes;
    let timeout = Duration::from_millis(state.settings.request_timeout_ms);
    Router::new()
        .route("/start-runner", get(runners::start_runner).post(runners::start_runner))
        .route("/restart-runner", get(runners::restart_runner).post(runners::restart_runner))
        .route("/stop-runner", get(runners::stop_runner).post(runners::stop_runner))
        .route("/delete-runner", get(runners::delete_runner).post(runners::delete_runner))
        .route("/describe-runners", get(describe::describe_runners))
        .route("/describe-commands", get(describe::describe_commands))
        .route("/describe-command", get(describe::describe_command))
        .route("/get-s3-usage", get(usage::get_s3_usage).post(usage::get_s3_usage))
        .route("/replay-command", post(ops::replay_command))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(ops::openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal("handler panicked".into()).into_response()))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, timeout))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

async fn not_found() -> Response {
    ApiError::NotFound { code: "no_such_endpoint", message: "no such endpoint".into(), field: None }.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

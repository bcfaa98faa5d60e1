//! GeoNEX-core's HTTP API: the router, its handlers, request validation and the
//! OpenAPI document. The API never calls AWS or SMTP: it validates, records
//! commands in the store and publishes them to the queue.

pub mod auth;
pub mod cache;
pub mod console;
pub mod docs;
pub mod error;
pub mod events;
pub mod http;
pub mod metrics;
pub mod params;
pub mod routes;
pub mod state;

pub use state::AppState;

use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

use geonex_shared::domain::Role;

use crate::auth::Access;
use crate::error::ApiError;
use crate::docs::Conventions;
use crate::routes::{containers, costs, describe, email, images, ops, runners, usage, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "GeoNEX-core", description = "Control plane of the GEONEX dashboard: real-time runners on EC2."),
    paths(
        runners::start_runner, runners::restart_runner, runners::stop_runner, runners::delete_runner,
        describe::describe_runners, describe::describe_commands, describe::describe_command, describe::describe_orphans,
        describe::describe_workers, costs::describe_costs, costs::set_budget, costs::describe_budgets,
        users::register_user, users::describe_users, users::login, users::logout,
        images::register_image, images::approve_image, images::reject_image, images::describe_images,
        email::send_email,
        usage::get_s3_usage,
        containers::runner_events, containers::describe_containers, containers::describe_runner_containers,
        ops::replay_command, ops::cancel_command, ops::healthz, ops::readyz, ops::openapi, metrics::metrics,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, runners::Accepted, ops::ReplayResult, ops::CancelResult,
        images::ImageList, containers::ContainerList, containers::RunnerContainersList, usage::S3Usage, usage::OutputUsageBody,
        // The types of query parameters (a body's are collected with it).
        params::PageLimit, params::Cursor, params::Time, params::Line<200>, params::Bounded<1, 1000>,
        geonex_shared::domain::RunnerId, geonex_shared::domain::ObservedState, geonex_shared::domain::DesiredState,
        geonex_shared::domain::CommandStatus, geonex_shared::domain::Action, images::StatusFilter,
        containers::ContainerStatus, costs::GroupBy, usage::BucketName, usage::Refresh)),
    modifiers(&BearerAuth, &Conventions)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
    }
}

/// One route: its path, methods, who may call it, and its handlers.
pub struct RouteSpec {
    pub path: &'static str,
    pub methods: &'static [&'static str],
    pub access: Access,
    handler: MethodRouter<AppState>,
}

fn route(path: &'static str, methods: &'static [&'static str], access: Access, handler: MethodRouter<AppState>) -> RouteSpec {
    RouteSpec { path, methods, access, handler }
}

/// Every route of the API. The router is built from this table, each route
/// wrapped in its access guard; the OpenAPI and authorization tests walk it too.
pub fn routes() -> Vec<RouteSpec> {
    use Access::{Agent, Public, Registration};
    const GET_POST: &[&str] = &["GET", "POST"];
    let operator = Access::Role(Role::Operator);
    let user = Access::Role(Role::User);
    let admin = Access::Role(Role::Admin);
    vec![
        route("/start-runner", GET_POST, operator, get(runners::start_runner).post(runners::start_runner)),
        route("/restart-runner", GET_POST, operator, get(runners::restart_runner).post(runners::restart_runner)),
        route("/stop-runner", GET_POST, operator, get(runners::stop_runner).post(runners::stop_runner)),
        route("/delete-runner", GET_POST, operator, get(runners::delete_runner).post(runners::delete_runner)),
        route("/send-email", GET_POST, operator, get(email::send_email).post(email::send_email)),
        route("/register-image", &["POST"], user, post(images::register_image)),
        route("/approve-image", &["POST"], admin, post(images::approve_image)),
        route("/reject-image", &["POST"], admin, post(images::reject_image)),
        route("/describe-images", &["GET"], user, get(images::describe_images)),
        route("/describe-runners", &["GET"], user, get(describe::describe_runners)),
        route("/describe-commands", &["GET"], operator, get(describe::describe_commands)),
        route("/describe-command", &["GET"], operator, get(describe::describe_command)),
        route("/describe-containers", &["GET"], user, get(containers::describe_containers)),
        route("/describe-runner-containers", &["GET"], user, get(containers::describe_runner_containers)),
        route("/runner-events", &["POST"], Agent, post(containers::runner_events)),
        route("/describe-orphans", &["GET"], operator, get(describe::describe_orphans)),
        route("/describe-workers", &["GET"], operator, get(describe::describe_workers)),
        route("/describe-costs", &["GET"], operator, get(costs::describe_costs)),
        route("/set-budget", &["POST"], admin, post(costs::set_budget)),
        route("/describe-budgets", &["GET"], operator, get(costs::describe_budgets)),
        route("/get-s3-usage", GET_POST, user, get(usage::get_s3_usage).post(usage::get_s3_usage)),
        route("/replay-command", &["POST"], admin, post(ops::replay_command)),
        route("/cancel-command", &["POST"], operator, post(ops::cancel_command)),
        route("/register-user", &["POST"], Registration, post(users::register_user)),
        route("/describe-users", &["GET"], admin, get(users::describe_users)),
        route("/login", &["POST"], Public, post(users::login)),
        route("/logout", &["POST"], user, post(users::logout)),
        route("/healthz", &["GET"], Public, get(ops::healthz)),
        route("/readyz", &["GET"], Public, get(ops::readyz)),
        route("/openapi.json", &["GET"], user, get(ops::openapi)),
        route("/metrics", &["GET"], operator, get(metrics::metrics)),
    ]
}

/// Routes for browsers, outside the OpenAPI document (they answer HTML, script
/// and an endless event stream, not JSON), guarded like every other.
pub fn browser_routes() -> Vec<RouteSpec> {
    vec![
        route("/console", &["GET"], Access::Public, get(console::page)),
        route("/console/app.js", &["GET"], Access::Public, get(console::script)),
        route("/console/style.css", &["GET"], Access::Public, get(console::style)),
        route("/events", &["GET"], Access::Role(Role::User), get(events::events)),
    ]
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit_bytes;
    let timeout = Duration::from_millis(state.settings.request_timeout_ms);
    let mut router = Router::new();
    for spec in routes().into_iter().chain(browser_routes()) {
        let access = spec.access;
        let guarded = spec.handler.route_layer(middleware::from_fn_with_state(
            state.clone(),
            move |s: State<AppState>, req: Request, next: Next| auth::guard(s, access, req, next),
        ));
        router = router.route(spec.path, guarded);
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(CatchPanicLayer::custom(|_| ApiError::Internal("handler panicked".into()).into_response()))
        .layer(middleware::from_fn(move |req: Request, next: Next| within(timeout, req, next)))
        .layer(middleware::from_fn(metrics::track))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// Answers a request that takes longer than the request timeout (a database
/// holding its statements, say) with 503 and the error body, like any other
/// unavailable dependency.
async fn within(timeout: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!("request not answered within {timeout:?}")).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::NotFound { code: "no_such_endpoint", message: "no such endpoint".into(), field: None }.into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::MethodNotAllowed.into_response()
}

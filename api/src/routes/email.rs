//! `/send-email` from the original API: validates an e-mail about an image
//! registration, records it as a `send_email` command and answers 202; a worker
//! on the e-mail queue sends it.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use geonex_shared::failpoint;
use geonex_shared::domain::{EmailAddress, ImageRef, UserName};
use geonex_shared::store::email::{CommandOrigin, EmailKind, EmailParams, NewEmailCommand};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::state::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::params::Params;
use crate::http::{idempotency_key, trace_id};
use crate::routes::runners::Accepted;

#[derive(Deserialize, IntoParams, ToSchema)]
#[into_params(parameter_in = Query)]
pub struct SendEmailParams {
    /// The image the message is about (a Docker reference).
    image_name: ImageRef,
    /// The applicant's user name, used in the greeting.
    user_name: UserName,
    /// The recipient's address.
    email: EmailAddress,
}

#[utoipa::path(method(get, post), path = "/send-email", tag = "images", security(("bearer" = [])),
    params(SendEmailParams),
    request_body(content = SendEmailParams, content_type = "application/json",
        description = "POST alternative to the query string"),
    responses(
        (status = 202, description = "E-mail command accepted", body = Accepted),
        (status = 400, description = "A parameter is missing or malformed", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused for a different request", body = ErrorBody),
    ))]
pub async fn send_email(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let SendEmailParams { image_name, user_name, email } = params.decode()?;
    let cmd = NewEmailCommand {
        command_id: Uuid::now_v7(),
        params: EmailParams {
            kind: EmailKind::ImageNotice,
            to: email.into_inner(),
            image_name: image_name.into_inner(),
            user_name: user_name.into_inner(),
            reason: None,
            description: None,
            organization: None,
        },
        origin: CommandOrigin { requested_by: caller.label.clone(), trace_id: trace_id(&headers), max_attempts: app.max_attempts },
        idempotency_key: idempotency_key(&headers)?,
    };
    let submitted = app.db.submit_email(cmd).await?;
    // Committed, not yet published: a crash here is the relay's to repair.
    failpoint::hit("after-submit-commit").await;
    let c = &submitted.command;
    if submitted.created {
        tracing::info!(command_id = %c.command_id, "e-mail command accepted");
        app.dispatcher.publish_in_background(c.message());
        geonex_shared::metrics::command(geonex_shared::metrics::COMMANDS_ACCEPTED, c.action);
    }
    let body = Accepted {
        command_id: c.command_id,
        action: c.action.as_str().to_owned(),
        runner_id: None,
        status: c.status.as_str().to_owned(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if !submitted.created {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

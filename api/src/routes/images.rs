//! The image registry: applicants register Docker images, administrators approve
//! or reject them, and everyone can list them. Each step records its
//! notification e-mails as commands in the same transaction and publishes them
//! after commit.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use geonex_shared::domain::ImageRef;
use geonex_shared::store::email::CommandOrigin;
use geonex_shared::store::images::{
    Decision, ImageChange, ImageDecision, ImageError, ImageQuery, ImageRecord, ImageStatus, NewImage,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::state::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::params::{Cursor, Line, PageLimit, Params, Text, page_size};
use crate::http::{etag, not_modified, page, with_etag};
use crate::http::trace_id;

#[derive(Deserialize, ToSchema)]
pub struct RegisterImageBody {
    /// A Docker image reference, e.g. `geonex/active_fire_go16abi15:1.5`.
    image_name: ImageRef,
    /// What the algorithm does.
    description: Text<2000>,
    /// The applicant's organization.
    organization: Line<200>,
}

#[derive(Deserialize, ToSchema)]
pub struct DecideImageBody {
    image_name: ImageRef,
    /// Optional; sent to the applicant.
    reason: Option<Text<1000>>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DescribeImagesParams {
    status: Option<StatusFilter>,
    /// The applicant's user name (or `service:NAME`).
    owner: Option<Line<200>>,
    limit: Option<PageLimit>,
    cursor: Option<Cursor>,
}

/// An image's status, as a filter.
pub struct StatusFilter(ImageStatus);

impl<'de> Deserialize<'de> for StatusFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ImageStatus::parse(&text)
            .map(StatusFilter)
            .ok_or_else(|| serde::de::Error::custom("must be one of: pending, approved, rejected"))
    }
}

impl utoipa::PartialSchema for StatusFilter {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ImageStatus::schema()
    }
}

/// The same schema as the status it filters on.
impl ToSchema for StatusFilter {
    fn name() -> std::borrow::Cow<'static, str> {
        ImageStatus::name()
    }
}

#[derive(Serialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageRecord>,
    pub next_cursor: Option<String>,
}

fn origin(app: &AppState, caller: &Caller, headers: &HeaderMap) -> CommandOrigin {
    CommandOrigin { requested_by: caller.label.clone(), trace_id: trace_id(headers), max_attempts: app.max_attempts }
}

fn publish(app: &AppState, change: &ImageChange) {
    for c in &change.emails {
        app.dispatcher.publish_in_background(c.message());
        geonex_shared::metrics::command(geonex_shared::metrics::COMMANDS_ACCEPTED, c.action);
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Exists(name) => ApiError::Conflict {
                code: "image_exists",
                message: format!("image {name} is already registered"),
                field: Some("image_name"),
            },
            ImageError::NotFound(name) => ApiError::NotFound {
                code: "image_not_found",
                message: format!("image {name} is not registered"),
                field: Some("image_name"),
            },
            e @ ImageError::AlreadyDecided { .. } => {
                ApiError::Conflict { code: "image_already_decided", message: e.to_string(), field: Some("image_name") }
            }
            ImageError::Store(s) => s.into(),
        }
    }
}

#[utoipa::path(post, path = "/register-image", tag = "images", security(("bearer" = [])),
    request_body(content = RegisterImageBody, content_type = "application/json", description = "JSON or form body"),
    responses(
        (status = 201, description = "Registered, pending approval; administrators are notified", body = ImageRecord),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 409, description = "The image is already registered", body = ErrorBody),
    ))]
pub async fn register_image(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let RegisterImageBody { image_name, description, organization } = params.decode()?;
    let (description, organization) = (description.into_inner(), organization.into_inner());
    let change = app
        .db
        .register_image(NewImage {
            image_name,
            description,
            organization,
            owner: caller.label.clone(),
            owner_user_id: caller.user_id,
            notify: app.admin_recipients.clone(),
            origin: origin(&app, &caller, &headers),
        })
        .await?;
    tracing::info!(image_name = %change.image.image_name, notices = change.emails.len(), "image registered");
    publish(&app, &change);
    Ok((StatusCode::CREATED, Json(change.image)).into_response())
}

async fn decide(app: AppState, caller: Caller, headers: HeaderMap, params: Params, decision: Decision) -> Result<Response, ApiError> {
    let DecideImageBody { image_name, reason } = params.decode()?;
    let reason = reason.map(Text::into_inner);
    let change = app
        .db
        .decide_image(ImageDecision { image_name, decision, reason, origin: origin(&app, &caller, &headers) })
        .await?;
    tracing::info!(image_name = %change.image.image_name, status = change.image.status.as_str(), "image decided");
    publish(&app, &change);
    Ok(Json(change.image).into_response())
}

#[utoipa::path(post, path = "/approve-image", tag = "images", security(("bearer" = [])),
    request_body(content = DecideImageBody, content_type = "application/json", description = "JSON or form body"),
    responses(
        (status = 200, description = "Approved; the applicant is notified", body = ImageRecord),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 409, description = "Already approved or rejected", body = ErrorBody),
    ))]
pub async fn approve_image(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    decide(app, caller, headers, params, Decision::Approve).await
}

#[utoipa::path(post, path = "/reject-image", tag = "images", security(("bearer" = [])),
    request_body(content = DecideImageBody, content_type = "application/json", description = "JSON or form body"),
    responses(
        (status = 200, description = "Rejected; the applicant is notified", body = ImageRecord),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 404, description = "No such image", body = ErrorBody),
        (status = 409, description = "Already approved or rejected", body = ErrorBody),
    ))]
pub async fn reject_image(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    decide(app, caller, headers, params, Decision::Reject).await
}

#[utoipa::path(get, path = "/describe-images", tag = "images", security(("bearer" = [])), params(DescribeImagesParams),
    responses(
        (status = 200, description = "Images, ordered by name", body = ImageList),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorBody),
    ))]
pub async fn describe_images(State(app): State<AppState>, headers: HeaderMap, params: Params) -> Result<Response, ApiError> {
    let revision = app.db.images_revision().await?;
    let tag = etag("images", revision, &params);
    if let Some(r) = not_modified(&headers, &tag) {
        return Ok(r);
    }
    let p: DescribeImagesParams = params.decode()?;
    let limit = page_size(p.limit.as_ref(), &app.settings)?;
    let q = ImageQuery {
        status: p.status.map(|s| s.0),
        owner: p.owner.map(Line::into_inner),
        after_image_name: Cursor::after(p.cursor, 'i')?,
        limit: limit + 1,
    };
    let (images, next_cursor) = page(app.db.list_images(&q).await?, limit, 'i', |i| i.image_name.clone());
    Ok(with_etag(Json(ImageList { images, next_cursor }).into_response(), &tag))
}

//! `GET /get-s3-usage`: S3 output usage straight from the store (never a
//! listing on the request path), with a weak ETag so a polling dashboard gets a
//! 304 while nothing changed; `refresh=true` also requests a scan, collapsing
//! into one already queued or running.

use axum::Extension;
use geonex_shared::domain::Role;

use crate::auth::Caller;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use geonex_shared::domain::{RunnerId, deserialize_parsed, text_schema};
use geonex_shared::error::FieldError;
use geonex_shared::store::usage::{OutputUsage, S3Output, ScanRequest, ScanScope, UsageQuery};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use uuid::Uuid;

use crate::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::params::{NOT_A_BOOLEAN, Params, schema};
use crate::http::{not_modified, with_etag};
use crate::http::trace_id;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetS3UsageParams {
    /// Only the output this runner writes to.
    runner_id: Option<RunnerId>,
    /// Only outputs in this bucket.
    bucket: Option<BucketName>,
    /// `true` (or `1`) to request a scan of the outputs shown (answers with what is known now).
    refresh: Option<Refresh>,
}

/// `refresh`: `true` or `1`, `false` or `0`.
pub struct Refresh(bool);

impl<'de> Deserialize<'de> for Refresh {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "true" | "1" => Ok(Refresh(true)),
            "false" | "0" => Ok(Refresh(false)),
            _ => Err(serde::de::Error::custom(NOT_A_BOOLEAN)),
        }
    }
}

schema!([] Refresh, "Refresh", ObjectBuilder::new().schema_type(Type::Boolean));

/// An S3 bucket's name, without a prefix.
pub struct BucketName(String);

impl<'de> Deserialize<'de> for BucketName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, parse_bucket).map(BucketName)
    }
}

schema!([] BucketName, "BucketName", text_schema(
    "An S3 bucket's name: lowercase letters, digits, `.` and `-`, as S3 names buckets.",
    3,
    64,
    Some(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/?$"),
    "geonex",
));

#[derive(Serialize, ToSchema)]
pub struct OutputUsageBody {
    /// `s3://bucket[/prefix]`; its objects are the keys under `prefix/`.
    pub s3_output: String,
    pub bucket: String,
    pub prefix: String,
    pub bytes: i64,
    pub objects: i64,
    pub runner_ids: Vec<String>,
    pub scanned_at: Option<DateTime<Utc>>,
    pub stale: bool,
    pub error: Option<String>,
    pub error_at: Option<DateTime<Utc>>,
    /// False while `bytes` includes objects S3 events removed without a size.
    pub bytes_exact: bool,
    pub scanning: bool,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<OutputUsage> for OutputUsageBody {
    fn from(u: OutputUsage) -> Self {
        Self {
            s3_output: u.s3_output,
            bucket: u.bucket,
            prefix: u.prefix,
            bytes: u.bytes,
            objects: u.objects,
            runner_ids: u.runner_ids,
            scanned_at: u.scanned_at,
            stale: u.stale,
            error: u.error,
            error_at: u.error_at,
            bytes_exact: u.bytes_exact,
            scanning: u.scanning,
            updated_at: u.updated_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct S3Usage {
    /// Sum over the outputs shown; an output nested inside another shown output
    /// is counted once, in the outer one.
    pub total_bytes: i64,
    pub total_objects: i64,
    pub outputs: Vec<OutputUsageBody>,
    /// With `refresh=true`: the scan command (new, or the pending one it joined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_command_id: Option<Uuid>,
    pub stale_after_secs: u64,
}

fn parse_bucket(v: &str) -> Result<String, FieldError> {
    let o = S3Output::parse("bucket", &format!("s3://{v}"))?;
    if !o.prefix().is_empty() {
        return Err(FieldError::invalid("bucket", "must be a bucket name, without a prefix"));
    }
    Ok(o.bucket().to_owned())
}

/// Totals without double counting nested outputs.
fn totals(outputs: &[OutputUsage]) -> (i64, i64) {
    let parsed: Vec<Option<S3Output>> = outputs.iter().map(|o| S3Output::parse("s3_output", &o.s3_output).ok()).collect();
    let mut bytes = 0;
    let mut objects = 0;
    for (i, o) in outputs.iter().enumerate() {
        let nested = parsed[i].as_ref().is_some_and(|me| {
            parsed.iter().enumerate().any(|(j, other)| j != i && other.as_ref().is_some_and(|p| p != me && p.contains(me)))
        });
        if !nested {
            bytes += o.bytes;
            objects += o.objects;
        }
    }
    (bytes, objects)
}

#[utoipa::path(method(get, post), path = "/get-s3-usage", tag = "usage", params(GetS3UsageParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Usage per output and in total, as last scanned and updated by S3 events", body = S3Usage),
        (status = 304, description = "Unchanged since the ETag given in If-None-Match"),
        (status = 400, description = "Malformed runner_id, bucket or refresh", body = ErrorBody),
        (status = 403, description = "refresh=true without the operator role", body = ErrorBody),
    ))]
pub async fn get_s3_usage(
    State(app): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let GetS3UsageParams { runner_id, bucket, refresh } = params.decode()?;
    let bucket = bucket.map(|b| b.0);
    let refresh = refresh.is_some_and(|r| r.0);
    if refresh && caller.role < Role::Operator {
        return Err(ApiError::Forbidden("refresh=true (a new scan) needs the operator role".into()));
    }
    let stale_after = app.usage_settings.stale_after();
    let q = UsageQuery {
        extra_outputs: app.usage_extra_outputs.clone(),
        runner_id: runner_id.map(RunnerId::into_inner),
        bucket,
        stale_after,
    };

    let tag = if refresh {
        None
    } else {
        let rev = app.db.usage_revision(stale_after).await?;
        let tag = format!(
            "W/\"usage-{}-{}-{}-{}-{}\"",
            rev.usage,
            rev.runners,
            rev.stale,
            rev.scanning,
            params.digest()
        );
        if let Some(r) = not_modified(&headers, &tag) {
            return Ok(r);
        }
        Some(tag)
    };

    let scan_command_id = if refresh {
        // With a filter, the scan covers the outputs shown; without, everything.
        let scope = if q.runner_id.is_some() || q.bucket.is_some() {
            let shown = app.db.list_usage(&q).await?;
            let outputs = shown.iter().filter_map(|o| S3Output::parse("s3_output", &o.s3_output).ok()).collect();
            ScanScope::outputs(outputs)
        } else {
            ScanScope::All
        };
        let submitted = app
            .db
            .request_scan(ScanRequest {
                command_id: Uuid::now_v7(),
                scope,
                requested_by: caller.label.clone(),
                trace_id: trace_id(&headers),
                max_attempts: app.max_attempts,
            })
            .await?;
        let c = &submitted.command;
        if submitted.created {
            tracing::info!(command_id = %c.command_id, action = %c.action, "command accepted");
            app.dispatcher.publish_in_background(c.message());
            geonex_shared::metrics::command(geonex_shared::metrics::COMMANDS_ACCEPTED, c.action);
        }
        Some(c.command_id)
    } else {
        None
    };

    let outputs = app.db.list_usage(&q).await?;
    let (total_bytes, total_objects) = totals(&outputs);
    let body = S3Usage {
        total_bytes,
        total_objects,
        outputs: outputs.into_iter().map(OutputUsageBody::from).collect(),
        scan_command_id,
        stale_after_secs: stale_after.as_secs(),
    };
    let response = Json(body).into_response();
    Ok(match tag {
        Some(tag) => with_etag(response, &tag),
        None => response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(s3_output: &str, bytes: i64, objects: i64) -> OutputUsage {
        OutputUsage {
            s3_output: s3_output.into(),
            bucket: String::new(),
            prefix: String::new(),
            bytes,
            objects,
            runner_ids: vec![],
            scanned_at: None,
            stale: true,
            error: None,
            error_at: None,
            bytes_exact: true,
            scanning: false,
            updated_at: None,
        }
    }

    #[test]
    fn nested_outputs_count_once_in_the_totals() {
        let all = [usage("s3://bkt", 100, 10), usage("s3://bkt/x", 40, 4), usage("s3://ccc/y", 5, 1), usage("s3://bkt2/z", 1, 1)];
        assert_eq!(totals(&all), (106, 12));
        assert_eq!(totals(&all[1..]), (46, 6));
    }

    #[test]
    fn bucket_filters_are_bucket_names() {
        assert_eq!(parse_bucket("geonex").unwrap(), "geonex");
        assert_eq!(parse_bucket("geonex/x").unwrap_err().field, "bucket");
        assert_eq!(parse_bucket("Bad_Bucket").unwrap_err().field, "bucket");
    }
}

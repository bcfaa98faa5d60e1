//! HTTP details every route shares: weak ETags and 304s for polled lists, the
//! request headers commands carry (`Idempotency-Key`, `x-request-id`), and
//! pages of a list.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use geonex_shared::error::FieldError;
use uuid::Uuid;

use crate::error::ApiError;
use crate::params::{Params, encode_cursor};

/// A list's weak ETag: what it lists (`kind`), the table's revision counter
/// and the query.
pub fn etag(kind: &str, revision: i64, params: &Params) -> String {
    format!("W/\"{kind}-{revision}-{}\"", params.digest())
}

/// `Some(304)` when the client already has this version.
pub fn not_modified(headers: &HeaderMap, tag: &str) -> Option<Response> {
    let inm = headers.get(header::IF_NONE_MATCH)?.to_str().ok()?;
    let hit = inm.split(',').map(str::trim).any(|t| t == tag || t == "*" || t.trim_start_matches("W/") == tag.trim_start_matches("W/"));
    hit.then(|| with_etag(StatusCode::NOT_MODIFIED.into_response(), tag))
}

pub fn with_etag(mut r: Response, tag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(tag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The `Idempotency-Key` header, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let bad = || ApiError::Field(FieldError::invalid("Idempotency-Key", "must be 1-255 visible ASCII characters"));
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty() || s.len() > 255 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(s.to_owned()))
}

/// The request id the request-id layer set: it follows a command into the worker.
pub fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| Uuid::new_v4().to_string())
}

/// A page from a query that asked for `limit + 1` items: at most `limit` of
/// them, and the cursor of the next page when there is one (`key` names the
/// last item shown).
pub fn page<T>(mut items: Vec<T>, limit: i64, kind: char, key: impl Fn(&T) -> String) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if items.len() <= limit {
        return (items, None);
    }
    items.truncate(limit);
    let next = items.last().map(|last| encode_cursor(kind, &key(last)));
    (items, next)
}

//! Request parameters, the way the original API takes them: the query string for
//! GET, and for POST a JSON object or a form body (query parameters also count).
//! Everything arrives as a flat map of strings; handlers parse each value into
//! its domain type, so every error names its field.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use geonex_shared::error::FieldError;

use crate::error::ApiError;

#[derive(Debug, Default, Clone)]
pub struct Params {
    values: BTreeMap<String, String>,
    /// Names that came in the URL's query string (which ends up in access logs).
    in_query: Vec<String>,
}

impl Params {
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, ApiError> {
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            if values.insert(k.clone(), v).is_some() {
                return Err(repeated(&k));
            }
        }
        Ok(Self { values, in_query: Vec::new() })
    }

    fn with_query(mut self, names: Vec<String>) -> Self {
        self.in_query = names;
        self
    }

    /// Refuses a secret given in the URL, where proxies and logs would keep it.
    pub fn require_body(&self, name: &'static str) -> Result<(), FieldError> {
        if self.in_query.iter().any(|n| n == name) {
            return Err(FieldError::invalid(name, "must be sent in the request body, not in the URL"));
        }
        Ok(())
    }

    /// The raw value; an empty value counts as absent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn required(&self, name: &'static str) -> Result<&str, FieldError> {
        self.get(name).ok_or_else(|| FieldError::missing(name))
    }

    /// Parses a required parameter with its domain constructor.
    pub fn parse<T>(&self, name: &'static str, parse: impl Fn(&str) -> Result<T, FieldError>) -> Result<T, FieldError> {
        parse(self.required(name)?)
    }

    pub fn parse_opt<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, FieldError>,
    ) -> Result<Option<T>, FieldError> {
        self.get(name).map(parse).transpose()
    }

    /// `limit`, within 1..=max, or the default.
    pub fn limit(&self, default: i64, max: i64) -> Result<i64, FieldError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(FieldError::invalid("limit", format!("must be an integer from 1 to {max}"))),
            },
        }
    }

    /// Decodes the opaque `cursor` the previous page returned.
    pub fn cursor(&self, kind: char) -> Result<Option<String>, FieldError> {
        let Some(raw) = self.get("cursor") else { return Ok(None) };
        let bad = || FieldError::invalid("cursor", "is not a cursor this API returned");
        let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| bad())?;
        let text = String::from_utf8(bytes).map_err(|_| bad())?;
        let mut chars = text.chars();
        if chars.next() != Some(kind) || chars.next() != Some(':') {
            return Err(bad());
        }
        Ok(Some(chars.collect()))
    }

    /// A stable digest of the parameters, for ETags.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for (k, v) in &self.values {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
        hex::encode(&h.finalize()[..8])
    }
}

pub fn encode_cursor(kind: char, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

fn repeated(k: &str) -> ApiError {
    ApiError::Field(FieldError::invalid(k.to_owned(), "was given more than once"))
}

fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .map_err(|e| ApiError::Field(FieldError::invalid("query", format!("is malformed: {e}"))))
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut pairs = query_pairs(req.uri().query())?;
        let query_names: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
        if req.method() == Method::GET || req.method() == Method::HEAD {
            return Ok(Self::from_pairs(pairs)?.with_query(query_names));
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("request body is too large".into())
            } else {
                ApiError::Field(FieldError::invalid("body", "could not be read"))
            }
        })?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::from_pairs(pairs)?.with_query(query_names));
        }
        match content_type.as_deref() {
            Some("application/json") => pairs.extend(json_pairs(&body)?),
            Some("application/x-www-form-urlencoded") => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| ApiError::Field(FieldError::invalid("body", "is not UTF-8")))?;
                pairs.extend(query_pairs(Some(text))?);
            }
            other => {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Type {} is not supported; send application/json or application/x-www-form-urlencoded",
                    other.unwrap_or("(none)")
                )));
            }
        }
        Ok(Self::from_pairs(pairs)?.with_query(query_names))
    }
}

/// A JSON object of scalars, as string pairs. Numbers and booleans are taken as
/// their text; nested values are refused with the field named.
fn json_pairs(body: &[u8]) -> Result<Vec<(String, String)>, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::Field(FieldError::invalid("body", format!("is not valid JSON: {e}"))))?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::Field(FieldError::invalid("body", "must be a JSON object")));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let text = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => continue,
            _ => {
                return Err(ApiError::Field(FieldError::invalid(k, "must be a string")));
            }
        };
        out.push((k, text));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let p = Params::from_pairs(vec![("cursor".into(), encode_cursor('r', "abc"))]).unwrap();
        assert_eq!(p.cursor('r').unwrap().as_deref(), Some("abc"));
        assert_eq!(p.cursor('c').unwrap_err().field, "cursor");
        let junk = Params::from_pairs(vec![("cursor".into(), "%%%".into())]).unwrap();
        assert!(junk.cursor('r').is_err());
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(Params::from_pairs(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
    }
}

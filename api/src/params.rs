//! Request parameters, the way the original API takes them: the query string for
//! GET, and for POST a JSON object or a form body (query parameters also count).
//! Everything arrives as a flat map of strings, which [`Params::decode`] turns
//! into the route's parameter struct — the one the OpenAPI document is made
//! from — with every error naming its field.

use std::collections::BTreeMap;
use std::fmt;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{Method, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use geonex_shared::config::ApiSettings;
use geonex_shared::domain::text_schema;
use geonex_shared::error::FieldError;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::{Deserialize, Deserializer};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use uuid::Uuid;

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

    /// The parameters as the route's parameter struct `T`, deserialized from their
    /// text: numbers and booleans are parsed, and domain types go through their
    /// constructors. A value its type refuses is `invalid` with the type's reason,
    /// a required field without a value `missing`, both naming the field. Values
    /// are read in the order the struct declares their fields, and the first
    /// refused is reported; missing fields are reported after them. Parameters
    /// the struct does not name are ignored.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FieldError> {
        T::deserialize(Decoder(self)).map_err(DecodeError::into_field_error)
    }

    pub fn parse_opt<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, FieldError>,
    ) -> Result<Option<T>, FieldError> {
        self.get(name).map(parse).transpose()
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

/// Why [`Params::decode`] refused the parameters.
#[derive(Debug)]
enum DecodeError {
    /// A rejection that names its field already.
    Field(FieldError),
    /// A value that counts as absent (blank text): its field is missing.
    Missing,
    /// What is wrong with a value, before its field is named.
    Value(String),
}

impl DecodeError {
    fn into_field_error(self) -> FieldError {
        match self {
            DecodeError::Field(e) => e,
            // Only a value raises these, and the field has named them by now.
            DecodeError::Missing => FieldError::missing("parameters"),
            DecodeError::Value(m) => FieldError::invalid("parameters", m),
        }
    }

    /// An error raised while reading `field`'s value, with the field named.
    fn in_field(self, field: &str) -> Self {
        match self {
            DecodeError::Field(e) => DecodeError::Field(e),
            DecodeError::Missing => DecodeError::Field(FieldError::missing(field.to_owned())),
            DecodeError::Value(m) => DecodeError::Field(FieldError::invalid(field.to_owned(), m)),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Field(e) => e.fmt(f),
            DecodeError::Missing => f.write_str("is required"),
            DecodeError::Value(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::Value(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        // A struct's field without a value is named by the struct; a value that
        // calls itself absent (blank text) is named by the field reading it.
        if field.is_empty() { DecodeError::Missing } else { DecodeError::Field(FieldError::missing(field)) }
    }

    fn duplicate_field(field: &'static str) -> Self {
        DecodeError::Field(FieldError::invalid(field, "was given more than once"))
    }
}

/// Marks a value as absent from inside its `Deserialize` (blank text): the field
/// reading it is reported `missing`, as if it had no value at all.
fn absent<E: de::Error>() -> E {
    E::missing_field("")
}

/// The parameters as a serde map: a struct reads the fields it declares, in its
/// order, that have a value.
struct Decoder<'a>(&'a Params);

impl<'de> de::Deserializer<'de> for Decoder<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let entries: Vec<(&str, &str)> =
            self.0.values.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.as_str(), v.as_str())).collect();
        visitor.visit_map(Entries { entries: entries.into_iter(), value: None })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let entries: Vec<(&str, &str)> = fields.iter().filter_map(|f| self.0.get(f).map(|v| (*f, v))).collect();
        visitor.visit_map(Entries { entries: entries.into_iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

struct Entries<'a> {
    entries: std::vec::IntoIter<(&'a str, &'a str)>,
    /// The entry whose key was read last, its value still to be read.
    value: Option<(&'a str, &'a str)>,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = DecodeError;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, DecodeError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.value = Some((key, value));
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DecodeError> {
        let (key, text) = self.value.take().ok_or_else(|| DecodeError::Value("a value without its key".into()))?;
        seed.deserialize(Raw(text)).map_err(|e| e.in_field(key))
    }
}

pub const NOT_A_BOOLEAN: &str = "must be true or false";

/// One parameter's value: text, read as whatever the field's type asks for.
struct Raw<'a>(&'a str);

macro_rules! parse_number {
    ($($method:ident => $visit:ident, $what:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                match self.0.parse() {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(DecodeError::Value($what.into())),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Raw<'_> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_str(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.0 {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(DecodeError::Value(NOT_A_BOOLEAN.into())),
        }
    }

    parse_number! {
        deserialize_i8 => visit_i8, "must be an integer";
        deserialize_i16 => visit_i16, "must be an integer";
        deserialize_i32 => visit_i32, "must be an integer";
        deserialize_i64 => visit_i64, "must be an integer";
        deserialize_u8 => visit_u8, "must be a whole number";
        deserialize_u16 => visit_u16, "must be a whole number";
        deserialize_u32 => visit_u32, "must be a whole number";
        deserialize_u64 => visit_u64, "must be a whole number";
        deserialize_f32 => visit_f32, "must be a number";
        deserialize_f64 => visit_f64, "must be a number";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // Absent values never get here: an empty one is no value.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if !variants.contains(&self.0) {
            return Err(DecodeError::Value(format!("must be one of: {}", variants.join(", "))));
        }
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

// The value types the routes' parameter structs share. Each reads a parameter's
// text (which is what `Params` holds) and has its schema in the OpenAPI document.

/// Gives a type `$schema` (an `ObjectBuilder`) as its schema, named `$name`.
macro_rules! schema {
    ([$($generics:tt)*] $ty:ty, $name:expr, $schema:expr) => {
        impl<$($generics)*> utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let object: utoipa::openapi::schema::Object = $schema.build();
                utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object))
            }
        }

        impl<$($generics)*> utoipa::ToSchema for $ty {
            fn name() -> std::borrow::Cow<'static, str> {
                $name.into()
            }
        }
    };
}
pub(crate) use schema;

fn integer_schema(description: &str, min: i64, max: i64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some(description))
        .minimum(Some(min))
        .maximum(Some(max))
}

/// `limit`: how many items a page holds, from 1 to the configured
/// `api.max_page_size`. [`page_size`], which knows the maximum, checks it.
#[derive(Debug, Clone)]
pub struct PageLimit(String);

impl<'de> Deserialize<'de> for PageLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(PageLimit)
    }
}

schema!([] PageLimit, "PageLimit", {
    let defaults = ApiSettings::default();
    integer_schema("Items per page, at most `api.max_page_size`.", 1, defaults.max_page_size)
        .default(Some(defaults.default_page_size.into()))
});

/// The page size `limit` asks for, or the configured default.
pub fn page_size(limit: Option<&PageLimit>, settings: &ApiSettings) -> Result<i64, FieldError> {
    let max = settings.max_page_size;
    let Some(PageLimit(text)) = limit else { return Ok(settings.default_page_size) };
    match text.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(FieldError::invalid("limit", format!("must be an integer from 1 to {max}"))),
    }
}

/// Writes the configured page sizes into the document's `PageLimit` schema.
pub fn document_page_size(doc: &mut utoipa::openapi::OpenApi, settings: &ApiSettings) {
    let schema = doc.components.as_mut().and_then(|c| c.schemas.get_mut("PageLimit"));
    if let Some(RefOr::T(Schema::Object(o))) = schema {
        o.maximum = Some(settings.max_page_size.into());
        o.default = Some(settings.default_page_size.into());
    }
}

const NOT_A_CURSOR: &str = "is not a cursor this API returned";

/// `cursor`: where the previous page ended, as its `next_cursor` said. Each list
/// has its own kind of cursor; another list's is refused.
#[derive(Debug, Clone)]
pub struct Cursor {
    kind: char,
    position: String,
}

impl Cursor {
    /// The position a cursor of `kind` holds, if one was given.
    pub fn after(cursor: Option<Cursor>, kind: char) -> Result<Option<String>, FieldError> {
        match cursor {
            None => Ok(None),
            Some(c) if c.kind == kind => Ok(Some(c.position)),
            Some(_) => Err(not_a_cursor()),
        }
    }

    fn decode(raw: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
        let mut chars = text.chars();
        let kind = chars.next()?;
        (chars.next() == Some(':')).then(|| Cursor { kind, position: chars.collect() })
    }
}

/// A cursor this API could not have returned.
pub fn not_a_cursor() -> FieldError {
    FieldError::invalid("cursor", NOT_A_CURSOR)
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Cursor::decode(&raw).ok_or_else(|| de::Error::custom(NOT_A_CURSOR))
    }
}

schema!([] Cursor, "Cursor", ObjectBuilder::new()
    .schema_type(Type::String)
    .description(Some("The `next_cursor` of the previous page, to get the next one.")));

pub fn encode_cursor(kind: char, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

/// Free text: at most `max` characters and no control characters (but line
/// breaks and tabs when `multiline`), trimmed; blank text counts as absent.
fn free_text<E: de::Error>(value: &str, max: usize, multiline: bool) -> Result<String, E> {
    if value.chars().count() > max {
        return Err(E::custom(format!("must be at most {max} characters")));
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t'));
    if !value.chars().all(allowed) {
        return Err(E::custom("must not contain control characters"));
    }
    if value.trim().is_empty() {
        return Err(absent());
    }
    Ok(value.trim().to_owned())
}

/// The pattern of [`free_text`]: something besides whitespace, and none of the
/// refused `controls`.
fn free_text_pattern(controls: &str) -> String {
    format!(r"^[^{controls}]*[^\s{controls}][^{controls}]*$")
}

/// Free text on one line (a name, an organization), trimmed, of at most `MAX`
/// characters and no control characters. Blank text counts as absent.
#[derive(Debug, Clone)]
pub struct Line<const MAX: usize>(String);

/// Free text that may span lines (a description, a reason): like [`Line`], but
/// line breaks and tabs are allowed.
#[derive(Debug, Clone)]
pub struct Text<const MAX: usize>(String);

impl<const MAX: usize> Line<MAX> {
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<const MAX: usize> Text<MAX> {
    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Line<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        free_text(&String::deserialize(d)?, MAX, false).map(Line)
    }
}

impl<'de, const MAX: usize> Deserialize<'de> for Text<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        free_text(&String::deserialize(d)?, MAX, true).map(Text)
    }
}

schema!([const MAX: usize] Line<MAX>, format!("Line{MAX}"), text_schema(
    "Text on one line without control characters; surrounding spaces are trimmed.",
    1,
    MAX,
    Some(&free_text_pattern(r"\x00-\x1f\x7f-\x9f")),
    "GeoNEX",
));

schema!([const MAX: usize] Text<MAX>, format!("Text{MAX}"), text_schema(
    "Text without control characters other than line breaks and tabs; surrounding spaces are trimmed.",
    1,
    MAX,
    Some(&free_text_pattern(r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f")),
    "Detects active fires in GOES-16 ABI imagery.",
));

/// An integer from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy)]
pub struct Bounded<const MIN: i64, const MAX: i64>(i64);

impl<const MIN: i64, const MAX: i64> Bounded<MIN, MAX> {
    pub fn get(self) -> i64 {
        self.0
    }
}

impl<'de, const MIN: i64, const MAX: i64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.parse::<i64>() {
            Ok(n) if (MIN..=MAX).contains(&n) => Ok(Bounded(n)),
            _ => Err(de::Error::custom(format!("must be an integer from {MIN} to {MAX}"))),
        }
    }
}

schema!([const MIN: i64, const MAX: i64] Bounded<MIN, MAX>, format!("Integer{MIN}To{MAX}"),
    integer_schema("An integer in a range.", MIN, MAX));

/// A command's id.
#[derive(Debug, Clone, Copy)]
pub struct CommandId(pub Uuid);

impl<'de> Deserialize<'de> for CommandId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Uuid::parse_str(&text).map(CommandId).map_err(|_| de::Error::custom("must be a UUID"))
    }
}

schema!([] CommandId, "CommandId", ObjectBuilder::new()
    .schema_type(Type::String)
    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
    .description(Some("A command's id, as the command's acceptance returned it.")));

/// A time, in RFC 3339.
#[derive(Debug, Clone, Copy)]
pub struct Time(pub DateTime<Utc>);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Time(t.with_timezone(&Utc)))
            .map_err(|_| de::Error::custom("must be an RFC 3339 time, e.g. 2026-12-01T00:00:00Z"))
    }
}

schema!([] Time, "Time", ObjectBuilder::new()
    .schema_type(Type::String)
    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
    .description(Some("An RFC 3339 time, e.g. `2026-12-01T00:00:00Z`.")));

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
    use geonex_shared::domain::{InstanceType, ObservedState, RunnerName};

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params::from_pairs(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()).unwrap()
    }

    #[derive(Debug, Deserialize)]
    struct Probe {
        instance_type: InstanceType,
        runner_name: Option<RunnerName>,
        /// A domain type under another field's name.
        fallback: Option<InstanceType>,
        count: Option<i64>,
        flag: Option<bool>,
        state: Option<ObservedState>,
        note: Option<Line<10>>,
        cursor: Option<Cursor>,
    }

    fn probe(pairs: &[(&str, &str)]) -> Result<Probe, FieldError> {
        params(pairs).decode()
    }

    fn fails(pairs: &[(&str, &str)]) -> FieldError {
        probe(pairs).expect_err("refused")
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let e = fails(&[("runner_name", "P")]);
        assert_eq!((e.field.as_ref(), e.code, e.message.as_str()), ("instance_type", "missing_parameter", "instance_type is required"));
        assert_eq!(e, FieldError::missing("instance_type"));
    }

    #[test]
    fn an_empty_value_counts_as_absent() {
        assert_eq!(fails(&[("instance_type", "")]), FieldError::missing("instance_type"));
        let p = probe(&[("instance_type", "m5d.large"), ("runner_name", ""), ("count", "")]).unwrap();
        assert!(p.runner_name.is_none() && p.count.is_none());
    }

    #[test]
    fn a_bad_value_is_named_with_its_types_reason() {
        let e = fails(&[("instance_type", "huge")]);
        assert_eq!(e, InstanceType::parse("huge").unwrap_err());
        assert_eq!(e.message, "instance_type must be an EC2 instance type such as m5d.4xlarge");
        // The field that reads the value names it, whatever the type calls itself.
        let p = probe(&[("instance_type", "m5d.large"), ("fallback", "t3.micro")]).unwrap();
        assert_eq!((p.instance_type.as_str(), p.fallback.as_ref().map(InstanceType::as_str)), ("m5d.large", Some("t3.micro")));
        let e = fails(&[("instance_type", "m5d.large"), ("fallback", "huge")]);
        assert_eq!((e.field.as_ref(), e.code), ("fallback", "invalid_parameter"));
        assert_eq!(e.message, "fallback must be an EC2 instance type such as m5d.4xlarge");
        let e = fails(&[("instance_type", "m5d.large"), ("runner_name", " padded")]);
        assert_eq!(e, RunnerName::parse(" padded").unwrap_err());
    }

    #[test]
    fn numbers_booleans_and_enums_are_read_from_text() {
        let p = probe(&[("instance_type", "m5d.large"), ("count", "-7"), ("flag", "true"), ("state", "shutting-down")]).unwrap();
        assert_eq!((p.count, p.flag, p.state), (Some(-7), Some(true), Some(ObservedState::ShuttingDown)));
        let ok = [("instance_type", "m5d.large")];
        let with = |k: &'static str, v: &'static str| [ok[0], (k, v)];
        assert_eq!(fails(&with("count", "x")).message, "count must be an integer");
        assert_eq!(fails(&with("flag", "maybe")).message, "flag must be true or false");
        assert_eq!(fails(&with("flag", "1")).message, "flag must be true or false");
        assert_eq!(
            fails(&with("state", "flying")).message,
            "state must be one of: requested, pending, running, stopping, stopped, shutting-down, terminated, failed"
        );
    }

    #[test]
    fn a_number_in_json_is_taken_as_its_text() {
        let body = br#"{"instance_type": "m5d.large", "runner_name": 42, "count": 7, "flag": true, "note": null}"#;
        let p: Probe = Params::from_pairs(json_pairs(body).unwrap()).unwrap().decode().unwrap();
        assert_eq!(p.runner_name.map(RunnerName::into_inner).as_deref(), Some("42"));
        assert_eq!((p.count, p.flag), (Some(7), Some(true)));
        assert!(p.note.is_none());
    }

    #[test]
    fn the_first_bad_field_in_declaration_order_is_reported_and_unknown_ones_are_ignored() {
        let e = fails(&[("count", "x"), ("instance_type", "huge"), ("zzz", "whatever")]);
        assert_eq!(e.field, "instance_type");
        assert!(probe(&[("instance_type", "m5d.large"), ("zzz", "whatever")]).is_ok());
    }

    #[test]
    fn blank_text_is_missing_and_text_keeps_its_limits() {
        let ok = ("instance_type", "m5d.large");
        assert_eq!(fails(&[ok, ("note", "   ")]), FieldError::missing("note"));
        assert_eq!(fails(&[ok, ("note", "eleven char")]).message, "note must be at most 10 characters");
        assert_eq!(fails(&[ok, ("note", "a\tb")]).message, "note must not contain control characters");
        assert_eq!(probe(&[ok, ("note", " trimmed ")]).unwrap().note.map(Line::into_inner).as_deref(), Some("trimmed"));
    }

    #[derive(Debug, Deserialize)]
    struct Aliased {
        #[serde(alias = "Display_name")]
        display_name: String,
    }

    #[test]
    fn an_alias_is_accepted_but_not_both_names_at_once() {
        let p: Aliased = params(&[("Display_name", "Bob")]).decode().unwrap();
        assert_eq!(p.display_name, "Bob");
        let e = params(&[("Display_name", "Bob"), ("display_name", "Bob")]).decode::<Aliased>().unwrap_err();
        assert_eq!(e, FieldError::invalid("display_name", "was given more than once"));
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let ok = ("instance_type", "m5d.large");
        let cursor = encode_cursor('r', "abc");
        let p = probe(&[ok, ("cursor", &cursor)]).unwrap();
        assert_eq!(Cursor::after(p.cursor, 'r').unwrap().as_deref(), Some("abc"));
        let p = probe(&[ok, ("cursor", &cursor)]).unwrap();
        assert_eq!(Cursor::after(p.cursor, 'c').unwrap_err(), not_a_cursor());
        assert_eq!(fails(&[ok, ("cursor", "%%%")]), not_a_cursor());
        assert_eq!(Cursor::after(None, 'r').unwrap(), None);
    }

    #[test]
    fn the_page_size_is_the_default_or_within_the_maximum() {
        let settings = ApiSettings { default_page_size: 100, max_page_size: 1000, ..ApiSettings::default() };
        let limit = |v: &str| PageLimit(v.to_owned());
        assert_eq!(page_size(None, &settings).unwrap(), 100);
        assert_eq!(page_size(Some(&limit("1000")), &settings).unwrap(), 1000);
        for bad in ["0", "1001", "x", "-1"] {
            let e = page_size(Some(&limit(bad)), &settings).unwrap_err();
            assert_eq!(e.message, "limit must be an integer from 1 to 1000", "{bad}");
        }
    }

    #[test]
    fn repeated_parameters_are_refused() {
        assert!(Params::from_pairs(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
    }
}

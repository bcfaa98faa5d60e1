//! Domain vocabulary: validated newtypes for every externally supplied value, and
//! the enums of the command and runner state machines.
//!
//! Parse, don't validate: each newtype's only constructor checks its rules, so code
//! holding a `RunnerId` or an `S3Uri` never re-checks it. Deserializing one goes
//! through that constructor too, and its OpenAPI schema is written next to the
//! rules (the lengths and patterns the constructor checks).

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};

use crate::error::FieldError;

/// An enum whose variants have one wire name each, written once: serde, the
/// database and `as_str`/`parse` all use it.
macro_rules! wire_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:tt),+ $(,)? }) => {
        $(#[$meta])*
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $wire)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_parsed(d, Self::parse)
            }
        }
    };
}

/// Deserializes a text value through its domain constructor, so serde input meets
/// the same rules. The error is the rule broken without a field name
/// ([`FieldError::reason`]): the deserializer's caller knows which field it read.
pub fn deserialize_parsed<'de, D, T>(d: D, parse: impl FnOnce(&str) -> Result<T, FieldError>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let text = String::deserialize(d)?;
    parse(&text).map_err(|e| serde::de::Error::custom(e.reason()))
}

/// The OpenAPI schema of a text value: what it is, its length in characters and,
/// where the rule is a regular expression, its pattern.
pub fn text_schema(description: &str, min: usize, max: usize, pattern: Option<&str>, example: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(pattern)
        .examples([example])
}

/// Gives a type the schema `$schema` (an [`ObjectBuilder`]) in the OpenAPI document.
macro_rules! schema {
    ($name:ident, $schema:expr) => {
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                let object: utoipa::openapi::schema::Object = $schema.build();
                utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(object))
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use schema;

fn check_len(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), FieldError> {
    let n = value.chars().count();
    if n < min {
        return Err(if n == 0 {
            FieldError::missing(field)
        } else {
            FieldError::invalid(field, format!("must be at least {min} characters"))
        });
    }
    if n > max {
        return Err(FieldError::invalid(field, format!("must be at most {max} characters")));
    }
    Ok(())
}

string_newtype!(
    /// Client-chosen runner identifier: opaque (the dashboard sends UUID-shaped
    /// strings, not necessarily RFC 4122), 1–128 characters of `[A-Za-z0-9._-]`.
    RunnerId
);

impl RunnerId {
    pub const MAX_CHARS: usize = 128;
    /// What [`RunnerId::parse`] checks besides the length.
    pub const PATTERN: &str = r"^[A-Za-z0-9._-]+$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "runner_id";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(FieldError::invalid(FIELD, "may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    RunnerId,
    text_schema(
        "Client-chosen runner id: letters, digits, `.`, `_` and `-`.",
        1,
        RunnerId::MAX_CHARS,
        Some(RunnerId::PATTERN),
        "8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd",
    )
);

string_newtype!(
    /// Human-readable runner name, shown in the dashboard and used as the EC2 `Name` tag.
    RunnerName
);

impl RunnerName {
    pub const MAX_CHARS: usize = 128;
    /// What [`RunnerName::parse`] checks besides the length, where `\w` stands for
    /// a letter or digit.
    pub const PATTERN: &str = r"^[\w.()/:@+-](?:[\w .()/:@+-]*[\w.()/:@+-])?$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "runner_name";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        if value.trim() != value {
            return Err(FieldError::invalid(FIELD, "must not start or end with whitespace"));
        }
        if !value
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '(' | ')' | ':' | '/' | '@' | '+'))
        {
            return Err(FieldError::invalid(
                FIELD,
                "may contain only letters, digits, spaces and . _ - ( ) : / @ +",
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    RunnerName,
    text_schema(
        "Runner name, shown in the dashboard and as the instance's `Name` tag: letters, digits, spaces and \
         `. _ - ( ) : / @ +`, not starting or ending with a space.",
        1,
        RunnerName::MAX_CHARS,
        Some(RunnerName::PATTERN),
        "Production",
    )
);

string_newtype!(
    /// An EC2 instance type such as `m5d.4xlarge`: syntactically valid. Whether it is
    /// allowed is a policy question answered by [`InstanceTypePolicy`].
    InstanceType
);

static INSTANCE_TYPE_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(InstanceType::PATTERN).expect("valid regex"));

impl InstanceType {
    pub const MAX_CHARS: usize = 64;
    /// The shape [`InstanceType::parse`] checks; the family (before the dot) must
    /// also have a digit.
    pub const PATTERN: &str = r"^[a-z][a-z0-9-]{0,15}\.[a-z0-9-]{1,24}$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "instance_type";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        let family = value.split('.').next().unwrap_or_default();
        if !INSTANCE_TYPE_RE.is_match(value) || !family.bytes().any(|b| b.is_ascii_digit()) {
            return Err(FieldError::invalid(
                FIELD,
                "must be an EC2 instance type such as m5d.4xlarge",
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    InstanceType,
    text_schema(
        "An EC2 instance type such as `m5d.4xlarge`; its family (before the dot) has a digit.",
        1,
        InstanceType::MAX_CHARS,
        Some(InstanceType::PATTERN),
        "m5d.4xlarge",
    )
);

/// Which instance types operators may launch: a list of exact names or
/// `family.*` patterns. An empty list allows every well-formed type.
#[derive(Debug, Clone, Default)]
pub struct InstanceTypePolicy {
    allowed: Vec<String>,
}

impl InstanceTypePolicy {
    pub fn new(allowed: Vec<String>) -> Self {
        Self { allowed }
    }

    pub fn check(&self, t: &InstanceType) -> Result<(), FieldError> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let ok = self.allowed.iter().any(|p| match p.strip_suffix(".*") {
            Some(family) => t.as_str().split('.').next() == Some(family),
            None => p == t.as_str(),
        });
        if ok {
            Ok(())
        } else {
            Err(FieldError::invalid(
                "instance_type",
                format!("{t} is not in the allowed instance types ({})", self.allowed.join(", ")),
            ))
        }
    }
}

string_newtype!(
    /// An EC2 instance id (`i-` and 8 or 17 hex digits).
    InstanceId
);

static INSTANCE_ID_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(InstanceId::PATTERN).expect("valid regex"));

impl InstanceId {
    pub const MAX_CHARS: usize = 19;
    pub const PATTERN: &str = r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "instance_id";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        if !INSTANCE_ID_RE.is_match(value) {
            return Err(FieldError::invalid(FIELD, "must be an EC2 instance id such as i-01730beccb93d7c5c"));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    InstanceId,
    text_schema("An EC2 instance id.", 1, InstanceId::MAX_CHARS, Some(InstanceId::PATTERN), "i-01730beccb93d7c5c")
);

string_newtype!(
    /// A Docker image reference: `[registry[:port]/]name[/name...][:tag][@sha256:digest]`,
    /// following the grammar of the distribution reference library.
    ImageRef
);

/// The grammar [`ImageRef::parse`] checks, as a regular expression.
static IMAGE_REF_PATTERN: LazyLock<String> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    // A first component is a registry host only if it has a dot or a port, or is
    // `localhost` (as Docker decides); otherwise it is part of the lowercase path.
    let dc = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";
    let domain = format!(r"(?:localhost(?::[0-9]+)?|{dc}(?:\.{dc})+(?::[0-9]+)?|{dc}:[0-9]+)");
    let tag = r"[\w][\w.-]{0,127}";
    let digest = r"sha256:[a-f0-9]{64}";
    format!(r"^(?:{domain}/)?{component}(?:/{component})*(?::{tag})?(?:@{digest})?$")
});

static IMAGE_REF_RE: LazyLock<Regex> = LazyLock::new(|| Regex::new(&IMAGE_REF_PATTERN).expect("valid regex"));

impl ImageRef {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        Self::parse_field("image_name", value)
    }

    pub fn parse_field(field: &'static str, value: &str) -> Result<Self, FieldError> {
        check_len(field, value, 1, Self::MAX_CHARS)?;
        if !IMAGE_REF_RE.is_match(value) {
            return Err(FieldError::invalid(
                field,
                "must be a Docker image reference such as geonex/active_fire_go16abi15:1.5",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        let s = self.0.split('@').next().unwrap_or(&self.0);
        s.rfind(':').map(|i| &s[i + 1..]).filter(|t| !t.contains('/'))
    }

    /// The digest (`sha256:…`), if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.0.split_once('@').map(|(_, d)| d)
    }

    /// The repository part, without tag or digest.
    pub fn repository(&self) -> &str {
        let s = self.0.split('@').next().unwrap_or(&self.0);
        match s.rfind(':') {
            Some(i) if !s[i..].contains('/') => &s[..i],
            _ => s,
        }
    }
}

schema!(
    ImageRef,
    text_schema(
        "A Docker image reference: `[registry[:port]/]name[/name...][:tag][@sha256:digest]`.",
        1,
        ImageRef::MAX_CHARS,
        Some(IMAGE_REF_PATTERN.as_str()),
        "geonex/active_fire_go16abi15:1.5",
    )
);

/// An S3 output location `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(into = "String")]
pub struct S3Uri {
    bucket: String,
    prefix: String,
}

impl From<S3Uri> for String {
    fn from(u: S3Uri) -> String {
        u.to_string()
    }
}

impl<'de> Deserialize<'de> for S3Uri {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_parsed(d, Self::parse)
    }
}

impl S3Uri {
    pub const MAX_CHARS: usize = 1100;
    /// The shape [`S3Uri::parse`] checks; the bucket name has S3's further rules.
    pub const PATTERN: &str = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/.*)?$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "s3_output";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        let Some(rest) = value.strip_prefix("s3://") else {
            return Err(FieldError::invalid(FIELD, "must look like s3://bucket/prefix"));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|m| FieldError::invalid(FIELD, m))?;
        if prefix.len() > 1024 {
            return Err(FieldError::invalid(FIELD, "prefix must be at most 1024 bytes"));
        }
        if prefix.chars().any(|c| c.is_control()) {
            return Err(FieldError::invalid(FIELD, "prefix must not contain control characters"));
        }
        if prefix.starts_with('/') || prefix.contains("//") {
            return Err(FieldError::invalid(FIELD, "prefix must not contain empty path segments"));
        }
        Ok(Self { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

schema!(
    S3Uri,
    text_schema(
        "An S3 location `s3://bucket[/prefix]`: the bucket name follows S3's rules (lowercase letters, \
         digits, `.` and `-`, no IP address, no reserved prefix or suffix); the prefix has at most 1024 \
         bytes, no control characters and no empty path segments.",
        1,
        S3Uri::MAX_CHARS,
        Some(S3Uri::PATTERN),
        "s3://geonex/GO16_ABI15",
    )
);

fn check_bucket(b: &str) -> Result<(), String> {
    if !(3..=63).contains(&b.len()) {
        return Err("bucket name must be 3 to 63 characters".into());
    }
    if !b.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-') {
        return Err("bucket name may contain only lowercase letters, digits, '.' and '-'".into());
    }
    let first = b.as_bytes()[0];
    let last = b.as_bytes()[b.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return Err("bucket name must start and end with a letter or digit".into());
    }
    if b.contains("..") || b.contains(".-") || b.contains("-.") {
        return Err("bucket name must not contain '..', '.-' or '-.'".into());
    }
    if b.split('.').count() == 4 && b.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return Err("bucket name must not be an IP address".into());
    }
    if b.starts_with("xn--") || b.starts_with("sthree-") || b.ends_with("-s3alias") || b.ends_with("--ol-s3") {
        return Err("bucket name uses a reserved prefix or suffix".into());
    }
    Ok(())
}

impl fmt::Display for S3Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

wire_enum! {
    /// What a caller may do. Ordered: an admin may do everything an operator may,
    /// and an operator everything a user may.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum Role {
        User = "user",
        Operator = "operator",
        Admin = "admin",
    }
}

string_newtype!(
    /// A login name: 3–64 characters of `[A-Za-z0-9._-]`, starting with a letter or
    /// digit. Unique regardless of case.
    UserName
);

impl UserName {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 64;
    pub const PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "user_name";
        check_len(FIELD, value, Self::MIN_CHARS, Self::MAX_CHARS)?;
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            || !value.as_bytes()[0].is_ascii_alphanumeric()
        {
            return Err(FieldError::invalid(
                FIELD,
                "must start with a letter or digit and contain only letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    UserName,
    text_schema(
        "A login name: letters, digits, `.`, `_` and `-`, starting with a letter or digit; unique in any case.",
        UserName::MIN_CHARS,
        UserName::MAX_CHARS,
        Some(UserName::PATTERN),
        "alice.smith",
    )
);

string_newtype!(
    /// A person's name as shown in the dashboard.
    DisplayName
);

impl DisplayName {
    pub const MAX_CHARS: usize = 128;
    /// No control characters, no surrounding whitespace.
    pub const PATTERN: &str = r"^[^\s\x00-\x1f\x7f-\x9f](?:[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f])?$";

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "display_name";
        check_len(FIELD, value, 1, Self::MAX_CHARS)?;
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(FieldError::invalid(FIELD, "must not have surrounding spaces or control characters"));
        }
        Ok(Self(value.to_owned()))
    }
}

schema!(
    DisplayName,
    text_schema(
        "A person's name as shown in the dashboard: no control characters or surrounding spaces.",
        1,
        DisplayName::MAX_CHARS,
        Some(DisplayName::PATTERN),
        "Alice Smith",
    )
);

string_newtype!(
    /// An e-mail address, checked by the mail library's RFC 5321 parser.
    EmailAddress
);

impl EmailAddress {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 254;

    pub fn parse(value: &str) -> Result<Self, FieldError> {
        Self::parse_field("email", value)
    }

    pub fn parse_field(field: &'static str, value: &str) -> Result<Self, FieldError> {
        check_len(field, value, Self::MIN_CHARS, Self::MAX_CHARS)?;
        value
            .parse::<lettre::Address>()
            .map_err(|_| FieldError::invalid(field, "is not a valid e-mail address"))?;
        Ok(Self(value.to_owned()))
    }
}

schema!(
    EmailAddress,
    text_schema("An e-mail address.", EmailAddress::MIN_CHARS, EmailAddress::MAX_CHARS, None, "email@gmail.com")
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
);

wire_enum! {
    /// What a command asks for. The string forms are stored and shown in the API.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum Action {
        StartRunner = "start_runner",
        RestartRunner = "restart_runner",
        StopRunner = "stop_runner",
        DeleteRunner = "delete_runner",
        SendEmail = "send_email",
        S3UsageScan = "s3_usage_scan",
    }
}

impl Action {
    /// The work queue (routing key) that carries this action.
    pub fn queue(self) -> WorkQueue {
        match self {
            Action::StartRunner | Action::RestartRunner | Action::StopRunner | Action::DeleteRunner => {
                WorkQueue::Runner
            }
            Action::SendEmail => WorkQueue::Email,
            Action::S3UsageScan => WorkQueue::S3Usage,
        }
    }

    /// The runner's desired state once this action is accepted, for runner actions.
    pub fn desired_state(self) -> Option<DesiredState> {
        match self {
            Action::StartRunner | Action::RestartRunner => Some(DesiredState::Running),
            Action::StopRunner => Some(DesiredState::Stopped),
            Action::DeleteRunner => Some(DesiredState::Deleted),
            _ => None,
        }
    }
}

/// The work queues of the topology; the routing key is the queue's suffix
/// (and the name a worker's `queues` setting uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkQueue {
    Runner,
    Email,
    S3Usage,
}

impl WorkQueue {
    pub const ALL: [WorkQueue; 3] = [WorkQueue::Runner, WorkQueue::Email, WorkQueue::S3Usage];

    pub fn routing_key(self) -> &'static str {
        match self {
            WorkQueue::Runner => "runner",
            WorkQueue::Email => "email",
            WorkQueue::S3Usage => "s3usage",
        }
    }
}

wire_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum CommandStatus {
        Queued = "queued",
        Running = "running",
        Retrying = "retrying",
        /// Not failed: its next step waits for something outside it (the
        /// instance to stop, the EC2 budget); it holds no worker meanwhile.
        Waiting = "waiting",
        Succeeded = "succeeded",
        Dead = "dead",
    }
}

impl CommandStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, CommandStatus::Succeeded | CommandStatus::Dead)
    }
}

wire_enum! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum DesiredState {
        Running = "running",
        Stopped = "stopped",
        Deleted = "deleted",
    }
}

wire_enum! {
    /// What EC2 (or the simulated cloud) last said about a runner's instance, plus
    /// `requested` (accepted, nothing launched yet) and `failed` (the launch failed).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
    pub enum ObservedState {
        Requested = "requested",
        Pending = "pending",
        Running = "running",
        Stopping = "stopping",
        Stopped = "stopped",
        ShuttingDown = "shutting-down",
        Terminated = "terminated",
        Failed = "failed",
    }
}

impl ObservedState {
    /// The instance is gone or going: a new one is needed to run again.
    pub fn is_gone(self) -> bool {
        matches!(self, Self::ShuttingDown | Self::Terminated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples_parse() {
        assert!(InstanceType::parse("m5d.4xlarge").is_ok());
        assert!(ImageRef::parse("geonex/active_fire_go16abi15:1.5").is_ok());
        let s3 = S3Uri::parse("s3://geonex/GO16_ABI15").unwrap();
        assert_eq!((s3.bucket(), s3.prefix()), ("geonex", "GO16_ABI15"));
        assert!(RunnerId::parse("8dcdfcd4-c21a-c8ba-5152-9475dea5f1bd").is_ok());
        assert!(InstanceId::parse("i-01730beccb93d7c5c").is_ok());
        assert!(RunnerName::parse("Production").is_ok());
    }

    #[test]
    fn malformed_values_name_their_field() {
        for (r, field) in [
            (InstanceType::parse("huge").map(|_| ()), "instance_type"),
            (InstanceType::parse("m5d.4xlarge;rm").map(|_| ()), "instance_type"),
            (ImageRef::parse("Geonex/UPPER").map(|_| ()), "image_name"),
            (ImageRef::parse("a b").map(|_| ()), "image_name"),
            (S3Uri::parse("http://x/y").map(|_| ()), "s3_output"),
            (S3Uri::parse("s3://ab/x").map(|_| ()), "s3_output"),
            (S3Uri::parse("s3://Bucket/x").map(|_| ()), "s3_output"),
            (S3Uri::parse("s3://192.168.1.1/x").map(|_| ()), "s3_output"),
            (RunnerId::parse("a/b").map(|_| ()), "runner_id"),
            (RunnerId::parse(&"x".repeat(129)).map(|_| ()), "runner_id"),
            (RunnerName::parse(" padded").map(|_| ()), "runner_name"),
            (InstanceId::parse("i-xyz").map(|_| ()), "instance_id"),
        ] {
            assert_eq!(r.unwrap_err().field, field);
        }
    }

    #[test]
    fn image_refs_follow_the_docker_grammar() {
        for ok in [
            "ubuntu",
            "ubuntu:22.04",
            "registry.example.com:5000/team/app:v1",
            "localhost/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "a__b/c-d",
            "Registry.Example.com/app",
        ] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "x:", "x::1", "x@sha256:zz", "x/", "/x", "x$(id)", "UPPER/case", "Geonex"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ImageRef::parse("geonex/fire:1.5").unwrap().repository(), "geonex/fire");
        assert_eq!(ImageRef::parse("host:5000/fire").unwrap().repository(), "host:5000/fire");
        assert_eq!(ImageRef::parse("host:5000/fire").unwrap().tag(), None);
        assert_eq!(ImageRef::parse("geonex/fire:1.5").unwrap().tag(), Some("1.5"));
        let pinned = format!("geonex/fire:2@sha256:{}", "a".repeat(64));
        let pinned = ImageRef::parse(&pinned).unwrap();
        assert_eq!((pinned.repository(), pinned.tag()), ("geonex/fire", Some("2")));
        assert_eq!(pinned.digest().map(|d| d.len()), Some(71));
    }

    #[test]
    fn user_fields_are_checked() {
        assert!(UserName::parse("alice.smith-2").is_ok());
        for bad in ["al", "-alice", "a b c", "älice"] {
            assert_eq!(UserName::parse(bad).unwrap_err().field, "user_name", "{bad}");
        }
        assert!(EmailAddress::parse("email@gmail.com").is_ok());
        for bad in ["nope", "a@", "@b.c", "a b@c.d"] {
            assert_eq!(EmailAddress::parse(bad).unwrap_err().field, "email", "{bad}");
        }
        assert!(DisplayName::parse(" x").is_err());
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::User);
    }

    /// Whether a value meets the lengths and the pattern `T`'s schema documents.
    fn schema_accepts<T: utoipa::PartialSchema>(value: &str) -> bool {
        let utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o)) = T::schema() else {
            panic!("a text type's schema is an object");
        };
        let n = value.chars().count();
        o.min_length.is_none_or(|m| n >= m)
            && o.max_length.is_none_or(|m| n <= m)
            && o.pattern.as_deref().is_none_or(|p| Regex::new(p).expect("a valid pattern").is_match(value))
    }

    /// The document never refuses a value the code accepts; where the whole rule
    /// is a pattern, it refuses exactly what the code refuses.
    fn agree<T: utoipa::PartialSchema, V>(parse: fn(&str) -> Result<V, FieldError>, exact: bool, values: &[&str]) {
        for v in values {
            let parsed = parse(v).is_ok();
            let documented = schema_accepts::<T>(v);
            assert!(!parsed || documented, "{v:?} parses but the schema of {} refuses it", std::any::type_name::<T>());
            if exact {
                assert_eq!(parsed, documented, "{v:?}: the schema of {} and its parse disagree", std::any::type_name::<T>());
            }
        }
    }

    #[test]
    fn the_schemas_document_what_parse_checks() {
        let long = "x".repeat(300);
        agree::<RunnerId, _>(RunnerId::parse, true, &["8dcdfcd4-c21a", "a.b_c-d", "has space", "a/b", "ünï", "", &long]);
        agree::<InstanceId, _>(InstanceId::parse, true, &["i-01730beccb93d7c5c", "i-0123abcd", "i-xyz", "i-1", "i-01730BECCB93D7C5C"]);
        agree::<ImageRef, _>(ImageRef::parse, true, &["ubuntu:22.04", "registry.example.com:5000/team/app:v1", "UPPER/case", "a b", "x::1", &long]);
        agree::<UserName, _>(UserName::parse, true, &["alice.smith-2", "al", "-alice", "a b c", "älice", &long]);
        agree::<DisplayName, _>(DisplayName::parse, true, &["Erin", "Bob B.", " x", "x ", "tab\there", "x", &long]);
        agree::<RunnerName, _>(RunnerName::parse, false, &["Production", "P (2)", "a@b+c:d/e", " padded", "semi;colon", "quote'd"]);
        agree::<InstanceType, _>(InstanceType::parse, false, &["m5d.4xlarge", "t3.micro", "huge", "m5d", "M5D.LARGE", "m5d.large;rm"]);
        agree::<S3Uri, _>(S3Uri::parse, false, &["s3://geonex/GO16_ABI15", "s3://geonex", "s3://ab/x", "s3://UPPER/x", "http://x/y"]);
        agree::<EmailAddress, _>(EmailAddress::parse, false, &["email@gmail.com", "nope", "a@", &long]);
    }

    /// The values `T`'s schema lists.
    fn documented_values<T: utoipa::PartialSchema>() -> Vec<String> {
        let schema = serde_json::to_value(T::schema()).expect("a schema");
        schema["enum"].as_array().expect("an enum").iter().map(|v| v.as_str().expect("a name").to_owned()).collect()
    }

    #[test]
    fn wire_enums_document_their_wire_names() {
        fn wire<T: Copy>(all: &[T], name: fn(T) -> &'static str) -> Vec<String> {
            all.iter().map(|v| name(*v).to_owned()).collect()
        }
        assert_eq!(documented_values::<Role>(), wire(Role::ALL, Role::as_str));
        assert_eq!(documented_values::<Action>(), wire(Action::ALL, Action::as_str));
        assert_eq!(documented_values::<CommandStatus>(), wire(CommandStatus::ALL, CommandStatus::as_str));
        assert_eq!(documented_values::<DesiredState>(), wire(DesiredState::ALL, DesiredState::as_str));
        assert_eq!(documented_values::<ObservedState>(), wire(ObservedState::ALL, ObservedState::as_str));
    }

    #[test]
    fn deserializing_goes_through_parse_and_says_what_is_wrong() {
        let ok: RunnerId = serde_json::from_str("\"runner-1\"").unwrap();
        assert_eq!(ok.as_str(), "runner-1");
        let s3: S3Uri = serde_json::from_str("\"s3://geonex/out\"").unwrap();
        assert_eq!(s3.bucket(), "geonex");
        let e = serde_json::from_str::<RunnerId>("\"a/b\"").unwrap_err().to_string();
        assert!(e.starts_with("may contain only letters"), "{e}");
    }

    #[test]
    fn instance_type_policy_matches_names_and_families() {
        let p = InstanceTypePolicy::new(vec!["m5d.*".into(), "t3.micro".into()]);
        assert!(p.check(&InstanceType::parse("m5d.4xlarge").unwrap()).is_ok());
        assert!(p.check(&InstanceType::parse("t3.micro").unwrap()).is_ok());
        assert!(p.check(&InstanceType::parse("t3.large").unwrap()).is_err());
        assert!(InstanceTypePolicy::default().check(&InstanceType::parse("x2.big").unwrap()).is_ok());
    }
}

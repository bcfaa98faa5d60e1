//! Domain vocabulary: validated newtypes for every externally supplied value, and
//! the enums of the command and runner state machines.
//!
//! Parse, don't validate: each newtype's only constructor checks its rules, so code
//! holding a `RunnerId` or an `S3Uri` never re-checks it.

use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

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
    };
}

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
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "runner_id";
        check_len(FIELD, value, 1, 128)?;
        if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            return Err(FieldError::invalid(FIELD, "may contain only letters, digits, '.', '_' and '-'"));
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// Human-readable runner name, shown in the dashboard and used as the EC2 `Name` tag.
    RunnerName
);

impl RunnerName {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "runner_name";
        check_len(FIELD, value, 1, 128)?;
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

string_newtype!(
    /// An EC2 instance type such as `m5d.4xlarge`: syntactically valid. Whether it is
    /// allowed is a policy question answered by [`InstanceTypePolicy`].
    InstanceType
);

static INSTANCE_TYPE_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-z][a-z0-9-]{0,15}\.[a-z0-9-]{1,24}$").expect("valid regex"));

impl InstanceType {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "instance_type";
        check_len(FIELD, value, 1, 64)?;
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

static INSTANCE_ID_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$").expect("valid regex"));

impl InstanceId {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "instance_id";
        check_len(FIELD, value, 1, 19)?;
        if !INSTANCE_ID_RE.is_match(value) {
            return Err(FieldError::invalid(FIELD, "must be an EC2 instance id such as i-01730beccb93d7c5c"));
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// A Docker image reference: `[registry[:port]/]name[/name...][:tag][@sha256:digest]`,
    /// following the grammar of the distribution reference library.
    ImageRef
);

static IMAGE_REF_RE: LazyLock<Regex> = LazyLock::new(|| {
    let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
    // A first component is a registry host only if it has a dot or a port, or is
    // `localhost` (as Docker decides); otherwise it is part of the lowercase path.
    let dc = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";
    let domain = format!(r"(?:localhost(?::[0-9]+)?|{dc}(?:\.{dc})+(?::[0-9]+)?|{dc}:[0-9]+)");
    let tag = r"[\w][\w.-]{0,127}";
    let digest = r"sha256:[a-f0-9]{64}";
    Regex::new(&format!(
        r"^(?:{domain}/)?{component}(?:/{component})*(?::{tag})?(?:@{digest})?$"
    ))
    .expect("valid regex")
});

impl ImageRef {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        Self::parse_field("image_name", value)
    }

    pub fn parse_field(field: &'static str, value: &str) -> Result<Self, FieldError> {
        check_len(field, value, 1, 255)?;
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

impl S3Uri {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "s3_output";
        check_len(FIELD, value, 1, 1100)?;
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
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "user_name";
        check_len(FIELD, value, 3, 64)?;
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

string_newtype!(
    /// A person's name as shown in the dashboard.
    DisplayName
);

impl DisplayName {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        const FIELD: &str = "display_name";
        check_len(FIELD, value, 1, 128)?;
        if value.trim() != value || value.chars().any(char::is_control) {
            return Err(FieldError::invalid(FIELD, "must not have surrounding spaces or control characters"));
        }
        Ok(Self(value.to_owned()))
    }
}

string_newtype!(
    /// An e-mail address, checked by the mail library's RFC 5321 parser.
    EmailAddress
);

impl EmailAddress {
    pub fn parse(value: &str) -> Result<Self, FieldError> {
        Self::parse_field("email", value)
    }

    pub fn parse_field(field: &'static str, value: &str) -> Result<Self, FieldError> {
        check_len(field, value, 3, 254)?;
        value
            .parse::<lettre::Address>()
            .map_err(|_| FieldError::invalid(field, "is not a valid e-mail address"))?;
        Ok(Self(value.to_owned()))
    }
}

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
    fn instance_type_policy_matches_names_and_families() {
        let p = InstanceTypePolicy::new(vec!["m5d.*".into(), "t3.micro".into()]);
        assert!(p.check(&InstanceType::parse("m5d.4xlarge").unwrap()).is_ok());
        assert!(p.check(&InstanceType::parse("t3.micro").unwrap()).is_ok());
        assert!(p.check(&InstanceType::parse("t3.large").unwrap()).is_err());
        assert!(InstanceTypePolicy::default().check(&InstanceType::parse("x2.big").unwrap()).is_ok());
    }
}

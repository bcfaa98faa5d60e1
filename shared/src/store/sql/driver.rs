//! The driver boundary: what a database adapter provides to [`SqlStore`]. A
//! driver opens connections and transactions, binds dialect-neutral [`Arg`]s,
//! renders a statement's few dialect fragments, and reads columns of its rows
//! through [`Row`]. It never decides anything: every rule lives in `sql/`.
//!
//! Statements are written once with `$N` placeholders (both dialects accept
//! them) and these fragments, which each driver renders its own way:
//!
//! | fragment | Postgres | SQLite |
//! |---|---|---|
//! | `{now}` | `now()` | the current time in the stored text format |
//! | `{now+$N}`, `{now-$N}` | now plus / minus `$N` milliseconds | the same, computed by `strftime` |
//! | `{for_update}`, `{for_update_of x}` | a row lock | nothing: the write transaction holds the lock |
//! | `{each $N}` | `unnest($N) as each_(value)` | `json_each($N)` (`select value from {each $1}`) |
//! | `{greatest}`, `{least}` | `greatest`, `least` | `max`, `min` (never with NULL arguments) |
//! | `{secs_since x}` | seconds from the time `x` to now | the same, from `julianday` |
//! | `{agg_texts}`, `{no_texts}` | `array_agg`, an empty array | `json_group_array`, `'[]'` |
//!
//! [`SqlStore`]: crate::store::sql::SqlStore

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::error::StoreError;

/// The SQL dialects there are drivers for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A statement: one text for both dialects, or (rarely, where the two differ in
/// more than the fragments above) one each. Each driver renders it once.
pub struct Sql {
    text: std::borrow::Cow<'static, str>,
    sqlite: Option<&'static str>,
    rendered: [OnceLock<String>; 2],
}

impl Sql {
    pub const fn new(text: &'static str) -> Self {
        Self { text: std::borrow::Cow::Borrowed(text), sqlite: None, rendered: [OnceLock::new(), OnceLock::new()] }
    }

    /// A statement whose SQLite text differs beyond the fragments.
    pub const fn per_dialect(postgres: &'static str, sqlite: &'static str) -> Self {
        Self {
            text: std::borrow::Cow::Borrowed(postgres),
            sqlite: Some(sqlite),
            rendered: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// A statement built at run time (a filter with optional parts).
    pub fn dynamic(text: String) -> Self {
        Self { text: std::borrow::Cow::Owned(text), sqlite: None, rendered: [OnceLock::new(), OnceLock::new()] }
    }

    /// The text as `dialect` runs it.
    pub fn text(&self, dialect: Dialect) -> &str {
        let (slot, source) = match dialect {
            Dialect::Postgres => (0, &*self.text),
            Dialect::Sqlite => (1, self.sqlite.unwrap_or(&self.text)),
        };
        self.rendered[slot].get_or_init(|| render(source, dialect))
    }
}

/// Replaces the dialect fragments of a statement.
fn render(text: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(text.len() + 32);
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let fragment = &rest[start + 1..start + len];
        out.push_str(&fragment_in(fragment, dialect).unwrap_or_else(|| format!("{{{fragment}}}")));
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

const SQLITE_NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

fn fragment_in(fragment: &str, dialect: Dialect) -> Option<String> {
    use Dialect::{Postgres, Sqlite};
    let (name, arg) = match fragment.split_once([' ', '+', '-']) {
        Some((name, arg)) => (name, arg.trim()),
        None => (fragment, ""),
    };
    let sign = if fragment.contains('-') { '-' } else { '+' };
    Some(match (name, dialect) {
        ("now", Postgres) if arg.is_empty() => "now()".to_owned(),
        ("now", Sqlite) if arg.is_empty() => SQLITE_NOW.to_owned(),
        ("now", Postgres) => format!("(now() {sign} make_interval(secs => {arg} / 1000.0))"),
        ("now", Sqlite) => {
            format!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '{sign}' || ({arg} / 1000.0) || ' seconds')")
        }
        ("for_update", Postgres) => "for update".to_owned(),
        ("for_update_of", Postgres) => format!("for update of {arg}"),
        ("for_update" | "for_update_of", Sqlite) => String::new(),
        ("each", Postgres) => format!("unnest({arg}) as each_(value)"),
        ("each", Sqlite) => format!("json_each({arg})"),
        ("greatest", Postgres) => "greatest".to_owned(),
        ("greatest", Sqlite) => "max".to_owned(),
        ("least", Postgres) => "least".to_owned(),
        ("least", Sqlite) => "min".to_owned(),
        ("secs_since", Postgres) => format!("extract(epoch from (now() - {arg}))::float8"),
        ("secs_since", Sqlite) => format!("((julianday('now') - julianday({arg})) * 86400.0)"),
        ("agg_texts", Postgres) => "array_agg".to_owned(),
        ("agg_texts", Sqlite) => "json_group_array".to_owned(),
        ("no_texts", Postgres) => "'{}'::text[]".to_owned(),
        ("no_texts", Sqlite) => "'[]'".to_owned(),
        _ => return None,
    })
}

/// A bound value, as the store means it; each driver encodes it in its own types
/// (a UUID is `uuid` in Postgres and hyphenated text in SQLite, a time is
/// `timestamptz` or fixed-format UTC text, JSON is `jsonb` or text, a list is an
/// array or a JSON array for `json_each`).
#[derive(Debug, Clone)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Uuid(Option<Uuid>),
    Time(Option<DateTime<Utc>>),
    Json(serde_json::Value),
    Bytes(Vec<u8>),
    /// A duration for `{now+$N}` / `{now-$N}`, in milliseconds.
    Millis(f64),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    Uuids(Vec<Uuid>),
}

impl Arg {
    pub fn text(v: impl Into<String>) -> Self {
        Arg::Text(Some(v.into()))
    }

    pub fn opt_text<S: AsRef<str>>(v: Option<S>) -> Self {
        Arg::Text(v.map(|s| s.as_ref().to_owned()))
    }

    pub fn int(v: impl Into<i64>) -> Self {
        Arg::Int(Some(v.into()))
    }

    pub fn uuid(v: Uuid) -> Self {
        Arg::Uuid(Some(v))
    }

    pub fn time(v: DateTime<Utc>) -> Self {
        Arg::Time(Some(v))
    }

    /// Durations beyond a century are a century: far enough to mean "never",
    /// near enough for every time format to hold the result.
    pub fn millis(d: Duration) -> Self {
        const CENTURY_MS: f64 = 100.0 * 365.25 * 24.0 * 3600.0 * 1000.0;
        Arg::Millis((d.as_secs_f64() * 1000.0).min(CENTURY_MS))
    }
}

/// Reads the columns of one result row in the store's types.
pub trait Row: Send + Sync {
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn float(&self, col: &str) -> Result<f64, StoreError>;
    fn opt_float(&self, col: &str) -> Result<Option<f64>, StoreError>;
    fn bool(&self, col: &str) -> Result<bool, StoreError>;
    fn uuid(&self, col: &str) -> Result<Uuid, StoreError>;
    fn opt_uuid(&self, col: &str) -> Result<Option<Uuid>, StoreError>;
    fn time(&self, col: &str) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn json(&self, col: &str) -> Result<serde_json::Value, StoreError>;
    fn opt_json(&self, col: &str) -> Result<Option<serde_json::Value>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    /// A list of texts (an array, or a JSON array in SQLite).
    fn texts(&self, col: &str) -> Result<Vec<String>, StoreError>;

    fn i32(&self, col: &str) -> Result<i32, StoreError> {
        let v = self.int(col)?;
        i32::try_from(v).map_err(|_| StoreError::corrupt(col, v))
    }

    fn opt_i32(&self, col: &str) -> Result<Option<i32>, StoreError> {
        self.opt_int(col)?.map(|v| i32::try_from(v).map_err(|_| StoreError::corrupt(col, v))).transpose()
    }
}

/// One connection: on its own (each statement commits) or inside a transaction
/// (from [`Driver::begin`], committed by [`Conn::commit`], rolled back if dropped).
#[async_trait]
pub trait Conn: Send {
    type Row: Row;

    async fn execute(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<u64, StoreError>;
    async fn fetch_optional(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Option<Self::Row>, StoreError>;
    async fn fetch_all(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Vec<Self::Row>, StoreError>;

    async fn fetch_one(&mut self, sql: &Sql, args: Vec<Arg>) -> Result<Self::Row, StoreError> {
        self.fetch_optional(sql, args).await?.ok_or(StoreError::NoRow)
    }

    /// Serializes this transaction with every other one that takes `key`, until
    /// it ends (Postgres: an advisory lock; SQLite: the write lock it holds).
    async fn lock(&mut self, key: &'static str) -> Result<(), StoreError>;
    /// As `lock`, but false at once if another transaction holds `key`.
    async fn try_lock(&mut self, key: &'static str) -> Result<bool, StoreError>;

    async fn commit(self) -> Result<(), StoreError>;
}

/// A database the store runs on.
#[async_trait]
pub trait Driver: Send + Sync + Clone + 'static {
    type Conn: Conn;

    fn dialect(&self) -> Dialect;
    /// A connection whose statements each commit on their own.
    async fn conn(&self) -> Result<Self::Conn, StoreError>;
    /// A write transaction (SQLite takes its write lock at once).
    async fn begin(&self) -> Result<Self::Conn, StoreError>;
    async fn migrate(&self) -> Result<(), StoreError>;
    /// The name of the unique constraint or index a failed write violated.
    fn unique_violation(err: &StoreError) -> Option<&str>;
}

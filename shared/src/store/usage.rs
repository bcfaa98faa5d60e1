//! The usage store port: S3 output usage as the scanner, the S3 event intake and
//! `/get-s3-usage` read and write it, and the scan commands that refresh it.
//! Postgres is the production adapter (`postgres_usage.rs`).
//!
//! An *output* is a bucket and a folder-like prefix in canonical form
//! (`s3://bucket` or `s3://bucket/prefix`, no trailing '/'). Its objects are the
//! keys under `prefix/`, so `s3://b/GO16` never counts `s3://b/GO16_v2/…`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::S3Uri;
use crate::error::FieldError;
use crate::store::error::StoreError;
use crate::store::commands::Submitted;

/// A validated output in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct S3Output {
    bucket: String,
    prefix: String,
}

impl S3Output {
    /// Parses `s3://bucket[/prefix[/]]`; `field` names the parameter or setting at fault.
    pub fn parse(field: &'static str, value: &str) -> Result<Self, FieldError> {
        let uri = S3Uri::parse(value).map_err(|e| FieldError { field: field.into(), code: e.code, message: e.message.replacen("s3_output", field, 1) })?;
        Ok(Self::from_uri(&uri))
    }

    pub fn from_uri(uri: &S3Uri) -> Self {
        Self { bucket: uri.bucket().to_owned(), prefix: uri.prefix().trim_end_matches('/').to_owned() }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix without a trailing '/' (empty for a whole bucket).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix to list: the folder, with its trailing '/'.
    pub fn list_prefix(&self) -> String {
        if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) }
    }

    /// Whether `other` lies inside this output (or is it).
    pub fn contains(&self, other: &S3Output) -> bool {
        self.bucket == other.bucket
            && (self.prefix.is_empty() || other.prefix == self.prefix || other.prefix.starts_with(&self.list_prefix()))
    }
}

impl std::fmt::Display for S3Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.is_empty() { write!(f, "s3://{}", self.bucket) } else { write!(f, "s3://{}/{}", self.bucket, self.prefix) }
    }
}

/// What a scan command covers; stored as the command's params.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum ScanScope {
    /// Every runner's output and every configured extra output, as they are when the scan runs.
    All,
    /// These outputs (canonical strings), sorted.
    Outputs { outputs: Vec<String> },
}

impl ScanScope {
    pub fn outputs(mut outputs: Vec<S3Output>) -> Self {
        outputs.sort();
        outputs.dedup();
        ScanScope::Outputs { outputs: outputs.iter().map(ToString::to_string).collect() }
    }

    /// Whether a scan of `self` also does everything `other` asks for.
    pub fn covers(&self, other: &ScanScope) -> bool {
        match (self, other) {
            (ScanScope::All, _) => true,
            (ScanScope::Outputs { .. }, ScanScope::All) => false,
            (ScanScope::Outputs { outputs: mine }, ScanScope::Outputs { outputs: theirs }) => {
                theirs.iter().all(|o| mine.contains(o))
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScanRequest {
    pub command_id: Uuid,
    pub scope: ScanScope,
    pub requested_by: String,
    pub trace_id: String,
    pub max_attempts: i32,
}

/// One output's usage as `/get-s3-usage` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct OutputUsage {
    pub s3_output: String,
    pub bucket: String,
    pub prefix: String,
    pub bytes: i64,
    pub objects: i64,
    /// Runners whose `s3_output` is this output (empty for configured extra outputs).
    pub runner_ids: Vec<String>,
    /// When the last successful scan finished; null if it was never scanned.
    pub scanned_at: Option<DateTime<Utc>>,
    /// Never scanned, or last scanned longer ago than the staleness threshold.
    pub stale: bool,
    /// Why the last scan of this output failed; the figures are from the scan before.
    pub error: Option<String>,
    pub error_at: Option<DateTime<Utc>>,
    /// False when S3 events removed objects whose size was not known: `bytes` is
    /// an over-estimate until the next scan.
    pub bytes_exact: bool,
    /// A scan of this output is running now.
    pub scanning: bool,
    /// Last change of the figures (by a scan or by S3 events).
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    /// Outputs shown besides the runners' (canonical strings).
    pub extra_outputs: Vec<String>,
    pub runner_id: Option<String>,
    pub bucket: Option<String>,
    pub stale_after: Duration,
}

/// How a scan of one output ended.
#[derive(Debug, Clone)]
pub enum OutputScan {
    Counted { bytes: i64, objects: i64 },
    Failed(String),
}

/// An S3 object event, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEvent {
    pub bucket: String,
    pub key: String,
    pub change: ObjectChange,
    /// Orders events on one key; see [`event_order`].
    pub order: String,
    pub time: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectChange {
    Created { size: i64 },
    Removed,
}

/// The ordering token of an event. S3 sequencers are hex strings of varying
/// length that compare correctly once right-padded with zeros; sources that
/// send none (some emulators) fall back to the event time.
pub fn event_order(sequencer: Option<&str>, time: DateTime<Utc>) -> String {
    match sequencer.filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())) {
        Some(s) => format!("S{:0<64}", s.to_ascii_uppercase()),
        None => format!("T{}", time.format("%Y%m%d%H%M%S%6f")),
    }
}

/// What applying a batch of events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventsApplied {
    /// Events that changed an object's recorded state.
    pub applied: usize,
    /// Duplicates, events older than what is recorded, and events outside every output.
    pub ignored: usize,
    /// Removals of objects whose size was not known.
    pub unknown_size: usize,
}

/// A cheap fingerprint of everything `/get-s3-usage` shows, for ETags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageRevision {
    pub usage: i64,
    pub runners: i64,
    pub stale: i64,
    pub scanning: i64,
}

#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// The outputs to show (runners' and extra), with what is known of each.
    async fn list_usage(&self, q: &UsageQuery) -> Result<Vec<OutputUsage>, StoreError>;
    async fn usage_revision(&self, stale_after: Duration) -> Result<UsageRevision, StoreError>;

    /// Records a scan command, unless a queued or running scan already covers the
    /// scope: then that one is returned (`created` false) and nothing is written.
    async fn request_scan(&self, req: ScanRequest) -> Result<Submitted, StoreError>;
    /// Requests a full scan if none was requested within `interval`. Only one
    /// caller at a time gets to decide (the others get `None` at once), so any
    /// number of workers schedule one scan per interval.
    async fn schedule_full_scan(&self, interval: Duration, req: ScanRequest) -> Result<Option<Submitted>, StoreError>;

    /// Every runner's output plus the extra ones, canonical and deduplicated.
    async fn scan_targets(&self, extra_outputs: &[String]) -> Result<Vec<String>, StoreError>;
    /// Takes the output for this scan command. `None` while another scan holds it.
    /// Returns the moment the listing starts (events before it are in the listing).
    async fn claim_output(&self, output: &S3Output, command_id: Uuid, lease: Duration)
    -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Extends the claim; false if it was lost.
    async fn renew_output(&self, output: &S3Output, command_id: Uuid, lease: Duration) -> Result<bool, StoreError>;
    /// Writes the output's new figures (or its error) and releases it, in one
    /// statement: a reader sees the old totals or the new ones. False if the
    /// claim had been lost (nothing written).
    async fn finish_output(
        &self,
        output: &S3Output,
        command_id: Uuid,
        started_at: DateTime<Utc>,
        scan: &OutputScan,
    ) -> Result<bool, StoreError>;

    /// Applies one notification's events in one transaction.
    async fn apply_object_events(&self, events: &[ObjectEvent]) -> Result<EventsApplied, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_canonical_folders() {
        let a = S3Output::parse("s3_output", "s3://geonex/GO16_ABI15/").unwrap();
        assert_eq!(a.to_string(), "s3://geonex/GO16_ABI15");
        assert_eq!(a.list_prefix(), "GO16_ABI15/");
        let whole = S3Output::parse("s3_output", "s3://geonex").unwrap();
        assert_eq!(whole.list_prefix(), "");
        assert!(whole.contains(&a));
        let sibling = S3Output::parse("s3_output", "s3://geonex/GO16_ABI15_v2").unwrap();
        assert!(!a.contains(&sibling));
        assert!(a.contains(&S3Output::parse("x", "s3://geonex/GO16_ABI15/day1").unwrap()));
        assert_eq!(S3Output::parse("extra_outputs", "http://x").unwrap_err().field, "extra_outputs");
    }

    #[test]
    fn sequencers_compare_after_right_padding_and_time_is_the_fallback() {
        let t = Utc::now();
        assert!(event_order(Some("0055AED6DCD90281E5"), t) < event_order(Some("0055AED6DCD90281E6"), t));
        // A shorter sequencer is padded on the right, as S3 documents.
        assert!(event_order(Some("0055AED6DCD9028"), t) < event_order(Some("0055AED6DCD90281"), t));
        assert_eq!(event_order(Some("abc"), t), event_order(Some("ABC"), t));
        let later = t + chrono::Duration::milliseconds(1);
        assert!(event_order(None, t) < event_order(None, later));
    }

    #[test]
    fn a_full_scan_covers_any_request_and_lists_cover_their_subsets() {
        let o = |s: &str| S3Output::parse("x", s).unwrap();
        let ab = ScanScope::outputs(vec![o("s3://bkt/b"), o("s3://bkt/a")]);
        assert!(ScanScope::All.covers(&ab));
        assert!(ab.covers(&ScanScope::outputs(vec![o("s3://bkt/a")])));
        assert!(!ab.covers(&ScanScope::outputs(vec![o("s3://bkt/c")])));
        assert!(!ab.covers(&ScanScope::All));
        let json = serde_json::to_value(&ab).unwrap();
        assert_eq!(json["scope"], "outputs");
        assert_eq!(serde_json::from_value::<ScanScope>(serde_json::json!({"scope": "all"})).unwrap(), ScanScope::All);
    }
}

//! S3 usage scans: the handler of `s3_usage_scan` commands, the scanner that
//! totals an output with concurrent ListObjectsV2 requests, and the scheduler of
//! periodic full scans.
//!
//! A scan takes each output it covers with a lease in the store (one scan per
//! output at a time; an output another scan holds is skipped, its figures will
//! be fresh), lists it, and writes the totals in one statement when the listing
//! is complete. A missing bucket or a denied prefix becomes that output's error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::Action;
use geonex_shared::store::usage::{OutputScan, S3Output, ScanRequest, ScanScope, UsageStore};
use geonex_shared::store::{CommandRecord, RunnerRecord};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::handler::{Handler, Outcome, Step};
use crate::retry::HandlerError;
use crate::storage::{ObjectStore, StorageError, StorageErrorKind};

/// Totals of a listing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub bytes: i64,
    pub objects: i64,
}

/// Lists outputs fast: the top `split_depth` folder levels are listed with a
/// delimiter so that each sub-folder found is listed concurrently with the
/// others (bounded by `list_concurrency` requests in flight); below that,
/// folders are listed flat, which costs one request per 1000 keys however the
/// keys are nested.
#[derive(Clone)]
pub struct Scanner {
    objects: Arc<dyn ObjectStore>,
    list_concurrency: usize,
    split_depth: u32,
}

struct Listed {
    totals: Totals,
    children: Vec<String>,
    depth: u32,
}

impl Scanner {
    pub fn new(objects: Arc<dyn ObjectStore>, list_concurrency: usize, split_depth: u32) -> Self {
        Self { objects, list_concurrency: list_concurrency.max(1), split_depth }
    }

    /// Lists every object under the output and sums them; timed and counted
    /// (`geonex_s3_scan_duration_seconds`, `geonex_s3_objects_listed_total`).
    pub async fn scan(&self, output: &S3Output) -> Result<Totals, StorageError> {
        let started = std::time::Instant::now();
        let result = self.list_all(output).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        ::metrics::histogram!(geonex_shared::metrics::S3_SCAN_DURATION, "result" => outcome)
            .record(started.elapsed().as_secs_f64());
        if let Ok(t) = &result {
            ::metrics::counter!(geonex_shared::metrics::S3_OBJECTS_LISTED).increment(t.objects.max(0) as u64);
        }
        result
    }

    async fn list_all(&self, output: &S3Output) -> Result<Totals, StorageError> {
        let limit = Arc::new(Semaphore::new(self.list_concurrency));
        let bucket: Arc<str> = Arc::from(output.bucket());
        let mut tasks = JoinSet::new();
        let spawn = |tasks: &mut JoinSet<Result<Listed, StorageError>>, prefix: String, depth: u32| {
            let (objects, limit, bucket) = (self.objects.clone(), limit.clone(), bucket.clone());
            let delimited = depth < self.split_depth;
            tasks.spawn(async move { list_prefix(objects, limit, &bucket, prefix, delimited, depth).await });
        };
        spawn(&mut tasks, output.list_prefix(), 0);
        let mut totals = Totals::default();
        while let Some(joined) = tasks.join_next().await {
            // Returning early drops the set, which cancels the other listings.
            let listed = joined.map_err(|e| StorageError { kind: StorageErrorKind::Other, message: format!("listing task failed: {e}") })??;
            totals.bytes += listed.totals.bytes;
            totals.objects += listed.totals.objects;
            for child in listed.children {
                spawn(&mut tasks, child, listed.depth + 1);
            }
        }
        Ok(totals)
    }
}

async fn list_prefix(
    objects: Arc<dyn ObjectStore>,
    limit: Arc<Semaphore>,
    bucket: &str,
    prefix: String,
    delimited: bool,
    depth: u32,
) -> Result<Listed, StorageError> {
    let mut listed = Listed { totals: Totals::default(), children: Vec::new(), depth };
    let mut token = None;
    loop {
        let page = {
            let _permit = limit
                .acquire()
                .await
                .map_err(|_| StorageError { kind: StorageErrorKind::Other, message: "scan cancelled".into() })?;
            objects.list_page(bucket, &prefix, delimited.then_some("/"), token.take()).await?
        };
        listed.totals.bytes += page.bytes;
        listed.totals.objects += page.objects;
        // A key such as "a//b" makes "a//" a sub-folder of "a/": list it too.
        listed.children.extend(page.common_prefixes.into_iter().filter(|c| c != &prefix));
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(listed),
        }
    }
}

/// Carries out `s3_usage_scan` commands.
pub struct S3UsageHandler {
    store: Arc<dyn UsageStore>,
    scanner: Scanner,
    extra_outputs: Vec<String>,
    concurrency: usize,
    lease: Duration,
}

#[derive(Debug)]
enum Scanned {
    Counted(Totals),
    Failed(String),
    /// Another scan holds the output.
    Skipped,
}

impl S3UsageHandler {
    /// `extra_outputs` are canonical output strings (validated at startup).
    pub fn new(
        store: Arc<dyn UsageStore>,
        scanner: Scanner,
        extra_outputs: Vec<String>,
        concurrency: usize,
        lease: Duration,
    ) -> Self {
        Self { store, scanner, extra_outputs, concurrency: concurrency.max(1), lease }
    }

    async fn scan_one(&self, command_id: Uuid, output: &S3Output) -> Result<Scanned, HandlerError> {
        let store_err = |e: geonex_shared::store::StoreError| HandlerError::retryable(e.to_string());
        let Some(started_at) = self.store.claim_output(output, command_id, self.lease).await.map_err(store_err)? else {
            tracing::info!(s3_output = %output, "output is being scanned by another command; skipped");
            return Ok(Scanned::Skipped);
        };
        let scan = self.scanner.scan(output);
        tokio::pin!(scan);
        let result = loop {
            tokio::select! {
                r = &mut scan => break r,
                _ = tokio::time::sleep(self.lease / 3) => {
                    match self.store.renew_output(output, command_id, self.lease).await {
                        Ok(true) => {}
                        Ok(false) => return Err(HandlerError::retryable(format!("lost the scan lease on {output}"))),
                        Err(e) => tracing::warn!(error = %e, s3_output = %output, "could not renew the scan lease"),
                    }
                }
            }
        };
        let (record, scanned) = match result {
            Ok(t) => (OutputScan::Counted { bytes: t.bytes, objects: t.objects }, Scanned::Counted(t)),
            Err(e) => {
                tracing::warn!(s3_output = %output, error = %e, "scan of output failed");
                (OutputScan::Failed(e.message.clone()), Scanned::Failed(e.message))
            }
        };
        if !self.store.finish_output(output, command_id, started_at, &record).await.map_err(store_err)? {
            return Err(HandlerError::retryable(format!("lost the scan lease on {output} before recording it")));
        }
        Ok(scanned)
    }
}

#[async_trait]
impl Handler for S3UsageHandler {
    fn actions(&self) -> &'static [Action] {
        &[Action::S3UsageScan]
    }

    async fn handle(&self, command: &CommandRecord, _runner: Option<&RunnerRecord>) -> Result<Step, HandlerError> {
        let scope: ScanScope = serde_json::from_value(command.params.clone())
            .map_err(|e| HandlerError::permanent(format!("unreadable scan parameters: {e}")))?;
        let targets = match &scope {
            ScanScope::All => self
                .store
                .scan_targets(&self.extra_outputs)
                .await
                .map_err(|e| HandlerError::retryable(e.to_string()))?,
            ScanScope::Outputs { outputs } => outputs.clone(),
        };
        let mut outputs = Vec::with_capacity(targets.len());
        for t in &targets {
            match S3Output::parse("s3_output", t) {
                Ok(o) => outputs.push(o),
                Err(e) => tracing::warn!(s3_output = %t, error = %e, "not an S3 output; not scanned"),
            }
        }
        let results: Vec<(S3Output, Result<Scanned, HandlerError>)> = futures::stream::iter(outputs)
            .map(|o| async move {
                let r = self.scan_one(command.command_id, &o).await;
                (o, r)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let (mut scanned, mut failed, mut skipped) = (0, 0, 0);
        let mut report = Vec::with_capacity(results.len());
        for (o, r) in results {
            report.push(match r? {
                Scanned::Counted(t) => {
                    scanned += 1;
                    json!({ "s3_output": o.to_string(), "bytes": t.bytes, "objects": t.objects })
                }
                Scanned::Failed(e) => {
                    failed += 1;
                    json!({ "s3_output": o.to_string(), "error": e })
                }
                Scanned::Skipped => {
                    skipped += 1;
                    json!({ "s3_output": o.to_string(), "skipped": "being scanned by another command" })
                }
            });
        }
        report.sort_by(|a, b| a["s3_output"].as_str().cmp(&b["s3_output"].as_str()));
        tracing::info!(scanned, failed, skipped, "usage scan finished");
        Ok(Outcome {
            result: json!({ "scope": scope, "scanned": scanned, "failed": failed, "skipped": skipped, "outputs": report }),
            runner: None,
        }
        .into())
    }
}

/// Requests a full scan every interval. Every worker runs one; the store lets
/// only one of them decide at a time, and a scan requested within the interval
/// (by any of them, or by an operator) counts.
pub struct ScanScheduler {
    store: Arc<dyn UsageStore>,
    dispatcher: Dispatcher,
    interval: Duration,
    max_attempts: i32,
}

impl ScanScheduler {
    pub fn new(store: Arc<dyn UsageStore>, dispatcher: Dispatcher, interval: Duration, max_attempts: i32) -> Self {
        Self { store, dispatcher, interval, max_attempts }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        // Checking is one cheap query: check often enough that a short interval is
        // kept to within a tenth, and at least every minute.
        let tick = (self.interval / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
        loop {
            let req = ScanRequest {
                command_id: Uuid::now_v7(),
                scope: ScanScope::All,
                requested_by: "scheduler".into(),
                trace_id: Uuid::new_v4().to_string(),
                max_attempts: self.max_attempts,
            };
            match self.store.schedule_full_scan(self.interval, req).await {
                Ok(Some(s)) if s.created => {
                    tracing::info!(command_id = %s.command.command_id, "periodic usage scan requested");
                    self.dispatcher.publish_in_background(s.command.message());
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not schedule a usage scan"),
            }
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::storage::ListPage;

    /// An in-memory bucket that pages like S3 (with a tiny page size).
    struct FakeBucket {
        keys: BTreeMap<String, i64>,
        page: usize,
        requests: Mutex<Vec<(String, bool)>>,
    }

    #[async_trait]
    impl ObjectStore for FakeBucket {
        async fn list_page(
            &self,
            bucket: &str,
            prefix: &str,
            delimiter: Option<&str>,
            token: Option<String>,
        ) -> Result<ListPage, StorageError> {
            if bucket != "bkt" {
                return Err(StorageError { kind: StorageErrorKind::NoSuchBucket, message: "NoSuchBucket".into() });
            }
            self.requests.lock().unwrap().push((prefix.to_owned(), delimiter.is_some()));
            // Entries (keys or rolled-up folders) after the token, in order.
            let mut entries: Vec<(String, Option<i64>)> = Vec::new();
            for (k, size) in self.keys.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)) {
                let rest = &k[prefix.len()..];
                match delimiter.and_then(|d| rest.find(d).map(|i| format!("{prefix}{}", &rest[..i + d.len()]))) {
                    Some(folder) => {
                        if entries.last().map(|e| &e.0) != Some(&folder) {
                            entries.push((folder, None));
                        }
                    }
                    None => entries.push((k.clone(), Some(*size))),
                }
            }
            let start = token.map(|t| entries.iter().position(|e| e.0 > t).unwrap_or(entries.len())).unwrap_or(0);
            let slice = &entries[start..(start + self.page).min(entries.len())];
            let mut page = ListPage::default();
            for (name, size) in slice {
                match size {
                    Some(s) => {
                        page.objects += 1;
                        page.bytes += s;
                    }
                    None => page.common_prefixes.push(name.clone()),
                }
            }
            if start + self.page < entries.len() {
                page.next = slice.last().map(|e| e.0.clone());
            }
            Ok(page)
        }

        fn label(&self) -> String {
            "fake".into()
        }
    }

    fn bucket(keys: &[(&str, i64)]) -> Arc<FakeBucket> {
        Arc::new(FakeBucket {
            keys: keys.iter().map(|(k, s)| (k.to_string(), *s)).collect(),
            page: 2,
            requests: Mutex::new(Vec::new()),
        })
    }

    #[tokio::test]
    async fn a_split_scan_counts_every_key_once_at_any_depth_and_page_size() {
        let keys: Vec<(String, i64)> = (0..57)
            .map(|i| (format!("out/{}/{}/f{i}.nc", i % 3, i % 5), i as i64 + 1))
            .chain([("out/top.json".to_owned(), 1000), ("outside/x".to_owned(), 5), ("out_v2/y".to_owned(), 7)])
            .collect();
        let refs: Vec<(&str, i64)> = keys.iter().map(|(k, s)| (k.as_str(), *s)).collect();
        let expected = Totals { objects: 58, bytes: (1..=57).sum::<i64>() + 1000 };
        let output = S3Output::parse("x", "s3://bkt/out").unwrap();
        for depth in 0..4 {
            let fake = bucket(&refs);
            let scanner = Scanner::new(fake.clone(), 3, depth);
            assert_eq!(scanner.scan(&output).await.unwrap(), expected, "split depth {depth}");
            let requests = fake.requests.lock().unwrap();
            let delimited: Vec<_> = requests.iter().filter(|(_, d)| *d).map(|(p, _)| p.clone()).collect();
            match depth {
                0 => assert!(delimited.is_empty()),
                _ => assert!(delimited.contains(&"out/".to_owned())),
            }
            if depth >= 2 {
                assert!(delimited.contains(&"out/1/".to_owned()), "{delimited:?}");
            }
        }
        let whole = S3Output::parse("x", "s3://bkt").unwrap();
        let total = Scanner::new(bucket(&refs), 2, 1).scan(&whole).await.unwrap();
        assert_eq!(total, Totals { objects: 60, bytes: expected.bytes + 12 });
    }

    #[tokio::test]
    async fn a_missing_bucket_is_an_error_of_the_scan() {
        let e = Scanner::new(bucket(&[]), 2, 1).scan(&S3Output::parse("x", "s3://nope/x").unwrap()).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::NoSuchBucket);
    }
}

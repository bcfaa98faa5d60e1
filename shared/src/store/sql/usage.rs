//! The usage port: S3 output figures, scan requests that collapse into one
//! command, per-output scan leases, and S3 object events counted once.
//!
//! Scan requests are serialized by a transaction lock (an advisory lock in
//! Postgres, the write lock in SQLite), so checking for a pending scan and
//! inserting a new one cannot interleave; an output's figures change in single
//! statements, so readers never see half of a scan.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Action;
use crate::store::sql::rows::{self, command_columns};
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::usage::{
    EventsApplied, ObjectChange, ObjectEvent, OutputScan, OutputUsage, S3Output, ScanRequest, ScanScope, UsageQuery,
    UsageRevision, UsageStore,
};
use crate::store::error::StoreError;
use crate::store::commands::Submitted;

/// Serializes scan requests (manual and scheduled).
const REQUEST_LOCK: &str = "geonex.s3usage.request";
/// Held by the one worker deciding whether a periodic scan is due.
const SCHEDULE_LOCK: &str = "geonex.s3usage.schedule";

static PENDING_SCANS: Sql = Sql::new(concat!(
    "select ",
    command_columns!(),
    " from command where action = $1 and status in ('queued', 'retrying', 'running') order by seq"
));
static INSERT_SCAN: Sql = Sql::new(concat!(
    "insert into command (command_id, action, params, status, max_attempts, requested_by, trace_id) \
     values ($1, $2, $3, 'queued', $4, $5, $6) returning ",
    command_columns!()
));
/// Outputs are the runners' (trailing slash dropped) and the configured extra
/// ones; runner ids come back sorted.
static LIST_USAGE: Sql = Sql::new(
    "with o as ( \
         select rtrim(s3_output, '/') as s3_output, runner_id from runner \
         union all select value, null from {each $1} \
     ), g as ( \
         select s3_output, coalesce({agg_texts}(distinct runner_id) filter (where runner_id is not null), \
                                    {no_texts}) as runner_ids \
         from o group by s3_output \
     ) \
     select g.s3_output, g.runner_ids, coalesce(u.bytes, 0) as bytes, coalesce(u.objects, 0) as objects, \
            u.scanned_at, u.last_error, u.error_at, coalesce(u.bytes_exact, true) as bytes_exact, \
            coalesce(u.lease_until > {now}, false) as scanning, u.updated_at, \
            (u.scanned_at is null or u.scanned_at < {now-$2}) as stale \
     from g left join s3_usage u on u.s3_output = g.s3_output \
     where ($3 is null or g.s3_output in (select rtrim(s3_output, '/') from runner where runner_id = $3)) \
       and ($4 is null or substr(g.s3_output, 6) = $4 or substr(g.s3_output, 6, length($4) + 1) = $4 || '/') \
     order by g.s3_output",
);
static REVISION: Sql = Sql::new(
    "select coalesce((select max(revision) from s3_usage), 0) as usage, \
            coalesce((select max(revision) from runner), 0) as runners, \
            (select count(*) from s3_usage where scanned_at < {now-$1}) as stale, \
            (select count(*) from s3_usage where lease_until > {now}) as scanning",
);
static RECENT_FULL_SCAN: Sql = Sql::new(
    "select exists (select 1 from command where action = $1 and params ->> 'scope' = 'all' \
     and created_at > {now-$2}) as recent",
);
static SCAN_TARGETS: Sql = Sql::new(
    "select rtrim(s3_output, '/') as o from runner union select value from {each $1} order by 1",
);
static ADD_OUTPUT: Sql = Sql::new(
    "insert into s3_usage (s3_output, bucket, prefix) values ($1, $2, $3) on conflict (s3_output) do nothing",
);
static CLAIM_OUTPUT: Sql = Sql::new(
    "update s3_usage set lease_command_id = $2, lease_until = {now+$3} \
     where s3_output = $1 and (lease_until is null or lease_until < {now} or lease_command_id = $2) \
     returning {now} as claimed_at",
);
static RENEW_OUTPUT: Sql =
    Sql::new("update s3_usage set lease_until = {now+$3} where s3_output = $1 and lease_command_id = $2");
static COUNTED: Sql = Sql::new(
    "update s3_usage set bytes = $3, objects = $4, scan_started_at = $5, scanned_at = {now}, \
     scan_command_id = $2, last_error = null, error_at = null, bytes_exact = true, \
     lease_command_id = null, lease_until = null \
     where s3_output = $1 and lease_command_id = $2",
);
/// Removals the listing already reflects need not be remembered: a late
/// duplicate of their creation is older than the listing too.
static FORGET_REMOVALS: Sql = Sql::new(
    "delete from s3_object where bucket = $1 and not present and event_time < $3 \
     and ($2 = '' or substr(key, 1, length($2) + 1) = $2 || '/')",
);
static SCAN_FAILED: Sql = Sql::new(
    "update s3_usage set last_error = $3, error_at = {now}, scan_command_id = $2, \
     lease_command_id = null, lease_until = null where s3_output = $1 and lease_command_id = $2",
);
static OUTPUTS_OF_KEY: Sql = Sql::new(
    "select s3_usage_id, scan_started_at from s3_usage where bucket = $1 \
     and (prefix = '' or substr($2, 1, length(prefix) + 1) = prefix || '/')",
);
static OBJECT: Sql = Sql::new(
    "select present, size, event_order from s3_object where bucket = $1 and key = $2 {for_update}",
);
static RECORD_OBJECT: Sql = Sql::new(
    "insert into s3_object (bucket, key, present, size, event_order, event_time) values ($1, $2, $3, $4, $5, $6) \
     on conflict (bucket, key) do update set present = excluded.present, size = excluded.size, \
       event_order = excluded.event_order, event_time = excluded.event_time, updated_at = {now} \
     where s3_object.event_order < excluded.event_order \
       or substr(s3_object.event_order, 1, 1) <> substr(excluded.event_order, 1, 1)",
);
static ADJUST: Sql = Sql::new(
    "update s3_usage set bytes = {greatest}(0, bytes + $2), objects = {greatest}(0, objects + $3), \
     bytes_exact = bytes_exact and $4 where s3_usage_id in (select value from {each $1})",
);

/// Records a scan command unless a pending one covers it, under the request lock.
async fn request_in<C: Conn>(tx: &mut C, req: &ScanRequest) -> Result<Submitted, StoreError> {
    tx.lock(REQUEST_LOCK).await?;
    for row in tx.fetch_all(&PENDING_SCANS, args![Action::S3UsageScan.as_str()]).await? {
        let command = rows::command(&row)?;
        // A scan with params this version cannot read covers nothing.
        let covers = serde_json::from_value::<ScanScope>(command.params.clone()).is_ok_and(|s| s.covers(&req.scope));
        if covers {
            return Ok(Submitted { command, created: false });
        }
    }
    let params = serde_json::to_value(&req.scope).map_err(|e| StoreError::corrupt("scan scope", e))?;
    let args = args![
        req.command_id,
        Action::S3UsageScan.as_str(),
        params,
        req.max_attempts,
        &req.requested_by,
        &req.trace_id
    ];
    Ok(Submitted { command: rows::command(&tx.fetch_one(&INSERT_SCAN, args).await?)?, created: true })
}

fn output_usage(r: &impl Row) -> Result<OutputUsage, StoreError> {
    let s3_output = r.text("s3_output")?;
    let parsed = S3Output::parse("s3_output", &s3_output).map_err(|_| StoreError::corrupt("output", &s3_output))?;
    let mut runner_ids = r.texts("runner_ids")?;
    runner_ids.sort();
    Ok(OutputUsage {
        bucket: parsed.bucket().to_owned(),
        prefix: parsed.prefix().to_owned(),
        s3_output,
        bytes: r.int("bytes")?,
        objects: r.int("objects")?,
        runner_ids,
        scanned_at: r.opt_time("scanned_at")?,
        stale: r.bool("stale")?,
        error: r.opt_text("last_error")?,
        error_at: r.opt_time("error_at")?,
        bytes_exact: r.bool("bytes_exact")?,
        scanning: r.bool("scanning")?,
        updated_at: r.opt_time("updated_at")?,
    })
}

/// Whether an event with ordering token `new` comes after the recorded `old`.
/// Tokens of different kinds (sequencer vs time) cannot be compared: the new
/// event wins, which only matters when a source changes how it orders events.
fn is_newer(new: &str, old: &str) -> bool {
    if new.get(..1) != old.get(..1) {
        return true;
    }
    new > old
}

#[async_trait]
impl<D: Driver> UsageStore for SqlStore<D> {
    async fn list_usage(&self, q: &UsageQuery) -> Result<Vec<OutputUsage>, StoreError> {
        let args = args![q.extra_outputs.clone(), q.stale_after, &q.runner_id, &q.bucket];
        self.driver.conn().await?.fetch_all(&LIST_USAGE, args).await?.iter().map(output_usage).collect()
    }

    async fn usage_revision(&self, stale_after: Duration) -> Result<UsageRevision, StoreError> {
        let r = self.driver.conn().await?.fetch_one(&REVISION, args![stale_after]).await?;
        Ok(UsageRevision {
            usage: r.int("usage")?,
            runners: r.int("runners")?,
            stale: r.int("stale")?,
            scanning: r.int("scanning")?,
        })
    }

    async fn request_scan(&self, req: ScanRequest) -> Result<Submitted, StoreError> {
        let mut tx = self.driver.begin().await?;
        let submitted = request_in(&mut tx, &req).await?;
        tx.commit().await?;
        Ok(submitted)
    }

    async fn schedule_full_scan(&self, interval: Duration, req: ScanRequest) -> Result<Option<Submitted>, StoreError> {
        // One worker decides at a time; one that waited sees the scan the one
        // before it scheduled, and schedules none.
        let mut tx = self.driver.begin().await?;
        if !tx.try_lock(SCHEDULE_LOCK).await? {
            return Ok(None);
        }
        let recent = tx.fetch_one(&RECENT_FULL_SCAN, args![Action::S3UsageScan.as_str(), interval]).await?;
        if recent.bool("recent")? {
            return Ok(None);
        }
        let submitted = request_in(&mut tx, &req).await?;
        tx.commit().await?;
        Ok(Some(submitted))
    }

    async fn scan_targets(&self, extra_outputs: &[String]) -> Result<Vec<String>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&SCAN_TARGETS, args![extra_outputs]).await?;
        rows.iter().map(|r| r.text("o")).collect()
    }

    async fn claim_output(
        &self,
        output: &S3Output,
        command_id: Uuid,
        lease: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut conn = self.driver.conn().await?;
        conn.execute(&ADD_OUTPUT, args![output.to_string(), output.bucket(), output.prefix()]).await?;
        let row = conn.fetch_optional(&CLAIM_OUTPUT, args![output.to_string(), command_id, lease]).await?;
        row.map(|r| r.time("claimed_at")).transpose()
    }

    async fn renew_output(&self, output: &S3Output, command_id: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let args = args![output.to_string(), command_id, lease];
        Ok(self.driver.conn().await?.execute(&RENEW_OUTPUT, args).await? == 1)
    }

    async fn finish_output(
        &self,
        output: &S3Output,
        command_id: Uuid,
        started_at: DateTime<Utc>,
        scan: &OutputScan,
    ) -> Result<bool, StoreError> {
        let done = match scan {
            OutputScan::Counted { bytes, objects } => {
                let mut tx = self.driver.begin().await?;
                let args = args![output.to_string(), command_id, *bytes, *objects, started_at];
                let done = tx.execute(&COUNTED, args).await?;
                tx.execute(&FORGET_REMOVALS, args![output.bucket(), output.prefix(), started_at]).await?;
                tx.commit().await?;
                done
            }
            OutputScan::Failed(error) => {
                let args = args![output.to_string(), command_id, error.as_str()];
                self.driver.conn().await?.execute(&SCAN_FAILED, args).await?
            }
        };
        Ok(done == 1)
    }

    async fn apply_object_events(&self, events: &[ObjectEvent]) -> Result<EventsApplied, StoreError> {
        let mut tx = self.driver.begin().await?;
        let mut result = EventsApplied::default();
        for ev in events {
            // Outputs holding this key; only scanned ones have a baseline to adjust.
            let outputs = tx.fetch_all(&OUTPUTS_OF_KEY, args![&ev.bucket, &ev.key]).await?;
            if outputs.is_empty() {
                result.ignored += 1;
                continue;
            }
            let previous = match tx.fetch_optional(&OBJECT, args![&ev.bucket, &ev.key]).await? {
                Some(r) => Some((r.bool("present")?, r.opt_int("size")?, r.text("event_order")?)),
                None => None,
            };
            if let Some((_, _, order)) = &previous
                && !is_newer(&ev.order, order)
            {
                result.ignored += 1;
                continue;
            }
            let (present, size) = match ev.change {
                ObjectChange::Created { size } => (true, Some(size)),
                ObjectChange::Removed => (false, None),
            };
            let args = args![&ev.bucket, &ev.key, present, size, &ev.order, ev.time];
            if tx.execute(&RECORD_OBJECT, args).await? == 0 {
                // A concurrent intake recorded a newer event for this key first.
                result.ignored += 1;
                continue;
            }
            result.applied += 1;
            // The object as the last applied event left it: None if no event was seen.
            let was: Option<Option<i64>> = previous.map(|(present, size, _)| present.then_some(size.unwrap_or(0)));
            let (d_bytes, d_objects, exact) = match (ev.change, was) {
                (ObjectChange::Created { size }, Some(Some(old))) => (size - old, 0, true),
                (ObjectChange::Created { size }, _) => (size, 1, true),
                (ObjectChange::Removed, Some(Some(old))) => (-old, -1, true),
                // Already removed by an earlier event: nothing more goes away.
                (ObjectChange::Removed, Some(None)) => (0, 0, true),
                // Never seen by an event: the last scan counted it, size unknown.
                (ObjectChange::Removed, None) => (0, -1, false),
            };
            if !exact {
                result.unknown_size += 1;
            }
            let mut ids = Vec::new();
            for o in &outputs {
                if o.opt_time("scan_started_at")?.is_some_and(|s| ev.time >= s) {
                    ids.push(o.int("s3_usage_id")?);
                }
            }
            if ids.is_empty() || (d_bytes == 0 && d_objects == 0 && exact) {
                continue;
            }
            tx.execute(&ADJUST, args![ids, d_bytes, d_objects, exact]).await?;
        }
        tx.commit().await?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::is_newer;

    #[test]
    fn ordering_tokens_of_one_kind_compare_and_of_two_kinds_let_the_new_one_win() {
        assert!(is_newer("S0002", "S0001"));
        assert!(!is_newer("S0001", "S0001"));
        assert!(!is_newer("T20260101", "T20260102"));
        assert!(is_newer("T20260101", "S0002"));
    }
}

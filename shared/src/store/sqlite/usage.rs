//! SQLite adapter of the `UsageStore` port (S3 output usage). Scan requests are
//! serialized by SQLite's single write lock, held from the start of each request's
//! write transaction, so concurrent requests collapse into one command; an
//! output's figures change in single statements or transactions, so readers
//! never see half of a scan.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Row, Sqlite, Transaction};
use uuid::Uuid;

use crate::domain::Action;
use crate::store::sqlite::{COMMAND_COLUMNS, NOW, SqliteStore, command_from_row, json_from, ts, ts_ago, ts_in, uuid_text};
use crate::store::usage::{
    EventsApplied, ObjectChange, ObjectEvent, OutputScan, OutputUsage, S3Output, ScanRequest, ScanScope, UsageQuery,
    UsageRevision, UsageStore,
};
use crate::store::{StoreError, Submitted};

fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Other(e.to_string()))
}

/// Records a scan command unless a pending one covers it. The caller's write
/// transaction keeps other requests out between the check and the insert.
async fn request_in(tx: &mut Transaction<'_, Sqlite>, req: &ScanRequest) -> Result<Submitted, StoreError> {
    let pending = sqlx::query(AssertSqlSafe(format!(
        "select {COMMAND_COLUMNS} from command where action = ?1 \
         and status in ('queued', 'retrying', 'running') order by seq"
    )))
    .bind(Action::S3UsageScan.as_str())
    .fetch_all(&mut **tx)
    .await?;
    for row in &pending {
        let command = command_from_row(row)?;
        // A scan with params this version cannot read covers nothing.
        let covers = serde_json::from_value::<ScanScope>(command.params.clone()).is_ok_and(|s| s.covers(&req.scope));
        if covers {
            return Ok(Submitted { command, created: false });
        }
    }
    let params = json_text(&req.scope)?;
    let row = sqlx::query(AssertSqlSafe(format!(
        "insert into command (command_id, action, params, status, max_attempts, requested_by, trace_id) \
         values (?1, ?2, ?3, 'queued', ?4, ?5, ?6) returning {COMMAND_COLUMNS}"
    )))
    .bind(uuid_text(req.command_id))
    .bind(Action::S3UsageScan.as_str())
    .bind(params)
    .bind(req.max_attempts)
    .bind(&req.requested_by)
    .bind(&req.trace_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Submitted { command: command_from_row(&row)?, created: true })
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn list_usage(&self, q: &UsageQuery) -> Result<Vec<OutputUsage>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "with o as ( \
                 select rtrim(s3_output, '/') as s3_output, runner_id from runner \
                 union all select value, null from json_each(?1) \
             ), g as ( \
                 select s3_output, \
                        coalesce(json_group_array(distinct runner_id) filter (where runner_id is not null), '[]') \
                            as runner_ids \
                 from o group by s3_output \
             ) \
             select g.s3_output, g.runner_ids, coalesce(u.bytes, 0) as bytes, coalesce(u.objects, 0) as objects, \
                    u.scanned_at, u.last_error, u.error_at, coalesce(u.bytes_exact, 1) as bytes_exact, \
                    coalesce(u.lease_until > {NOW}, 0) as scanning, u.updated_at, \
                    (u.scanned_at is null or u.scanned_at < ?2) as stale \
             from g left join s3_usage u on u.s3_output = g.s3_output \
             where (?3 is null or exists (select 1 from json_each(g.runner_ids) where value = ?3)) \
               and (?4 is null or substr(g.s3_output, 6) = ?4 or substr(g.s3_output, 6, length(?4) + 1) = ?4 || '/') \
             order by g.s3_output"
        )))
        .bind(json_text(&q.extra_outputs)?)
        .bind(ts_ago(q.stale_after))
        .bind(&q.runner_id)
        .bind(&q.bucket)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let s3_output: String = r.try_get("s3_output")?;
            let parsed = S3Output::parse("s3_output", &s3_output)
                .map_err(|e| StoreError::Other(format!("unexpected output {s3_output:?} in database: {e}")))?;
            let runner_ids: String = r.try_get("runner_ids")?;
            let mut runner_ids: Vec<String> = serde_json::from_value(json_from(&runner_ids)?)
                .map_err(|e| StoreError::Other(format!("unexpected runner ids in database: {e}")))?;
            // As Postgres's `array_agg(distinct …)` returns them.
            runner_ids.sort();
            out.push(OutputUsage {
                bucket: parsed.bucket().to_owned(),
                prefix: parsed.prefix().to_owned(),
                s3_output,
                bytes: r.try_get("bytes")?,
                objects: r.try_get("objects")?,
                runner_ids,
                scanned_at: r.try_get("scanned_at")?,
                stale: r.try_get("stale")?,
                error: r.try_get("last_error")?,
                error_at: r.try_get("error_at")?,
                bytes_exact: r.try_get("bytes_exact")?,
                scanning: r.try_get("scanning")?,
                updated_at: r.try_get("updated_at")?,
            });
        }
        Ok(out)
    }

    async fn usage_revision(&self, stale_after: Duration) -> Result<UsageRevision, StoreError> {
        let r = sqlx::query(AssertSqlSafe(format!(
            "select coalesce((select max(revision) from s3_usage), 0) as usage, \
                    coalesce((select max(revision) from runner), 0) as runners, \
                    (select count(*) from s3_usage where scanned_at < ?1) as stale, \
                    (select count(*) from s3_usage where lease_until > {NOW}) as scanning"
        )))
        .bind(ts_ago(stale_after))
        .fetch_one(self.pool())
        .await?;
        Ok(UsageRevision {
            usage: r.try_get("usage")?,
            runners: r.try_get("runners")?,
            stale: r.try_get("stale")?,
            scanning: r.try_get("scanning")?,
        })
    }

    async fn request_scan(&self, req: ScanRequest) -> Result<Submitted, StoreError> {
        let mut tx = self.write_tx().await?;
        let submitted = request_in(&mut tx, &req).await?;
        tx.commit().await?;
        Ok(submitted)
    }

    async fn schedule_full_scan(&self, interval: Duration, req: ScanRequest) -> Result<Option<Submitted>, StoreError> {
        // Writers are serialized: a caller that waited for the write lock sees the
        // scan the one before it scheduled, and schedules none.
        let mut tx = self.write_tx().await?;
        let recent: bool = sqlx::query_scalar(
            "select exists (select 1 from command where action = ?1 and json_extract(params, '$.scope') = 'all' \
             and created_at > ?2)",
        )
        .bind(Action::S3UsageScan.as_str())
        .bind(ts_ago(interval))
        .fetch_one(&mut *tx)
        .await?;
        if recent {
            tx.rollback().await?;
            return Ok(None);
        }
        let submitted = request_in(&mut tx, &req).await?;
        tx.commit().await?;
        Ok(Some(submitted))
    }

    async fn scan_targets(&self, extra_outputs: &[String]) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "select rtrim(s3_output, '/') as o from runner union select value from json_each(?1) order by 1",
        )
        .bind(json_text(extra_outputs)?)
        .fetch_all(self.pool())
        .await?)
    }

    async fn claim_output(
        &self,
        output: &S3Output,
        command_id: Uuid,
        lease: Duration,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        sqlx::query(
            "insert into s3_usage (s3_output, bucket, prefix) values (?1, ?2, ?3) on conflict (s3_output) do nothing",
        )
        .bind(output.to_string())
        .bind(output.bucket())
        .bind(output.prefix())
        .execute(self.pool())
        .await?;
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "update s3_usage set lease_command_id = ?2, lease_until = ?3 \
             where s3_output = ?1 and (lease_until is null or lease_until < {NOW} or lease_command_id = ?2) \
             returning {NOW}"
        )))
        .bind(output.to_string())
        .bind(uuid_text(command_id))
        .bind(ts_in(lease))
        .fetch_optional(self.pool())
        .await?)
    }

    async fn renew_output(&self, output: &S3Output, command_id: Uuid, lease: Duration) -> Result<bool, StoreError> {
        let done = sqlx::query("update s3_usage set lease_until = ?3 where s3_output = ?1 and lease_command_id = ?2")
            .bind(output.to_string())
            .bind(uuid_text(command_id))
            .bind(ts_in(lease))
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
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
                let mut tx = self.write_tx().await?;
                let done = sqlx::query(AssertSqlSafe(format!(
                    "update s3_usage set bytes = ?3, objects = ?4, scan_started_at = ?5, scanned_at = {NOW}, \
                     scan_command_id = ?2, last_error = null, error_at = null, bytes_exact = 1, \
                     lease_command_id = null, lease_until = null \
                     where s3_output = ?1 and lease_command_id = ?2"
                )))
                .bind(output.to_string())
                .bind(uuid_text(command_id))
                .bind(bytes)
                .bind(objects)
                .bind(ts(started_at))
                .execute(&mut *tx)
                .await?;
                // Removals the listing already reflects need not be remembered: a
                // late duplicate of their creation is older than the listing too.
                sqlx::query(
                    "delete from s3_object where bucket = ?1 and not present and event_time < ?3 \
                     and (?2 = '' or substr(key, 1, length(?2) + 1) = ?2 || '/')",
                )
                .bind(output.bucket())
                .bind(output.prefix())
                .bind(ts(started_at))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                done
            }
            OutputScan::Failed(error) => {
                sqlx::query(AssertSqlSafe(format!(
                    "update s3_usage set last_error = ?3, error_at = {NOW}, scan_command_id = ?2, \
                     lease_command_id = null, lease_until = null where s3_output = ?1 and lease_command_id = ?2"
                )))
                .bind(output.to_string())
                .bind(uuid_text(command_id))
                .bind(error)
                .execute(self.pool())
                .await?
            }
        };
        Ok(done.rows_affected() == 1)
    }

    async fn apply_object_events(&self, events: &[ObjectEvent]) -> Result<EventsApplied, StoreError> {
        let mut tx = self.write_tx().await?;
        let mut result = EventsApplied::default();
        for ev in events {
            // Outputs holding this key; only scanned ones have a baseline to adjust.
            let outputs: Vec<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
                "select s3_usage_id, scan_started_at from s3_usage where bucket = ?1 \
                 and (prefix = '' or substr(?2, 1, length(prefix) + 1) = prefix || '/')",
            )
            .bind(&ev.bucket)
            .bind(&ev.key)
            .fetch_all(&mut *tx)
            .await?;
            if outputs.is_empty() {
                result.ignored += 1;
                continue;
            }
            let previous: Option<(bool, Option<i64>, String)> =
                sqlx::query_as("select present, size, event_order from s3_object where bucket = ?1 and key = ?2")
                    .bind(&ev.bucket)
                    .bind(&ev.key)
                    .fetch_optional(&mut *tx)
                    .await?;
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
            let inserted = sqlx::query(AssertSqlSafe(format!(
                "insert into s3_object (bucket, key, present, size, event_order, event_time) \
                 values (?1, ?2, ?3, ?4, ?5, ?6) \
                 on conflict (bucket, key) do update set present = excluded.present, size = excluded.size, \
                   event_order = excluded.event_order, event_time = excluded.event_time, updated_at = {NOW} \
                 where s3_object.event_order < excluded.event_order \
                   or substr(s3_object.event_order, 1, 1) <> substr(excluded.event_order, 1, 1)"
            )))
            .bind(&ev.bucket)
            .bind(&ev.key)
            .bind(present)
            .bind(size)
            .bind(&ev.order)
            .bind(ts(ev.time))
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                // Cannot happen while this transaction holds the write lock; kept
                // so the outcome matches the statement's.
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
            let ids: Vec<i64> = outputs
                .iter()
                .filter(|(_, started)| started.is_some_and(|s| ev.time >= s))
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() || (d_bytes == 0 && d_objects == 0 && exact) {
                continue;
            }
            sqlx::query(
                "update s3_usage set bytes = max(0, bytes + ?2), objects = max(0, objects + ?3), \
                 bytes_exact = bytes_exact and ?4 where s3_usage_id in (select value from json_each(?1))",
            )
            .bind(json_text(&ids)?)
            .bind(d_bytes)
            .bind(d_objects)
            .bind(exact)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(result)
    }
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

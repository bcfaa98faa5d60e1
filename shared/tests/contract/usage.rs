//! S3 output usage: scan requests and their collapse, the periodic full scan,
//! output claims, scan results, S3 events and the usage listing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use geonex_shared::domain::{Action, CommandStatus};
use geonex_shared::store::usage::{
    EventsApplied, ObjectChange, ObjectEvent, OutputScan, S3Output, ScanRequest, ScanScope, UsageQuery, UsageStore,
    event_order,
};
use uuid::Uuid;

use crate::raw::Raw;

const HOUR: Duration = Duration::from_secs(3600);

fn output(s: &str) -> S3Output {
    S3Output::parse("s3_output", s).expect("output")
}

fn request(scope: ScanScope) -> ScanRequest {
    ScanRequest {
        command_id: Uuid::now_v7(),
        scope,
        requested_by: "svc".into(),
        trace_id: "trace-scan".into(),
        max_attempts: 4,
    }
}

fn outputs(list: &[&str]) -> ScanScope {
    ScanScope::outputs(list.iter().map(|s| output(s)).collect())
}

async fn scan_commands<S: Raw>(store: &S) -> i64 {
    store.int("select count(*) from command where action = 's3_usage_scan'", &[]).await
}

/// Ends every scan command, as a worker would.
async fn finish_scans<S: Raw>(store: &S) {
    store
        .exec(
            "update command set status = 'succeeded', finished_at = created_at \
             where action = 's3_usage_scan' and status <> 'succeeded'",
            &[],
        )
        .await;
}

fn created(bucket: &str, key: &str, size: i64, sequencer: &str, time: DateTime<Utc>) -> ObjectEvent {
    ObjectEvent {
        bucket: bucket.into(),
        key: key.into(),
        change: ObjectChange::Created { size },
        order: event_order(Some(sequencer), time),
        time,
    }
}

fn removed(bucket: &str, key: &str, sequencer: &str, time: DateTime<Utc>) -> ObjectEvent {
    ObjectEvent { change: ObjectChange::Removed, ..created(bucket, key, 0, sequencer, time) }
}

/// Scans `out` to these figures; returns when the listing started.
async fn scan<S: UsageStore>(store: &S, out: &str, bytes: i64, objects: i64) -> DateTime<Utc> {
    let command = Uuid::now_v7();
    let started = store.claim_output(&output(out), command, HOUR).await.expect("claim").expect("claimed");
    let counted = OutputScan::Counted { bytes, objects };
    assert!(store.finish_output(&output(out), command, started, &counted).await.expect("finish"));
    started
}

async fn usage_of<S: UsageStore>(store: &S, out: &str, extra: &[&str]) -> geonex_shared::store::usage::OutputUsage {
    let extra_outputs = extra.iter().map(|s| s.to_string()).collect();
    let q = UsageQuery { extra_outputs, stale_after: HOUR, ..Default::default() };
    store.list_usage(&q).await.expect("usage").into_iter().find(|u| u.s3_output == out).expect("output listed")
}

async fn scan_requests_collapse_into_pending_scans<S: UsageStore + Raw>(store: S) {
    // Concurrent requests for the same outputs record one command.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            // The same outputs, spelt differently.
            let list: &[&str] = if i % 2 == 0 { &["s3://bkt/a", "s3://bkt/b"] } else { &["s3://bkt/b/", "s3://bkt/a"] };
            let scope = outputs(list);
            tokio::spawn(async move { store.request_scan(request(scope)).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task").expect("request"));
    }
    assert_eq!(results.iter().filter(|s| s.created).count(), 1);
    let first = results.iter().find(|s| s.created).expect("created").command.clone();
    assert!(results.iter().all(|s| s.command.command_id == first.command_id));
    assert_eq!(scan_commands(&store).await, 1);
    assert_eq!(first.action, Action::S3UsageScan);
    assert_eq!(first.status, CommandStatus::Queued);
    assert_eq!((first.requested_by.as_str(), first.trace_id.as_str(), first.max_attempts), ("svc", "trace-scan", 4));
    assert_eq!(first.params, serde_json::json!({"scope": "outputs", "outputs": ["s3://bkt/a", "s3://bkt/b"]}));
    assert_eq!(first.runner_id, None);

    // A subset is covered by the pending scan; another output is not.
    let sub = store.request_scan(request(outputs(&["s3://bkt/b"]))).await.expect("subset");
    assert!(!sub.created);
    assert_eq!(sub.command.command_id, first.command_id);
    let other = store.request_scan(request(outputs(&["s3://bkt/c"]))).await.expect("other");
    assert!(other.created);
    // A full scan covers everything, a list never covers a full scan.
    let all = store.request_scan(request(ScanScope::All)).await.expect("all");
    assert!(all.created);
    assert_eq!(all.command.params, serde_json::json!({"scope": "all"}));
    let covered = store.request_scan(request(outputs(&["s3://bkt/z"]))).await.expect("covered");
    assert_eq!((covered.created, covered.command.command_id), (false, all.command.command_id));
    // The oldest pending scan that covers a request answers it.
    let oldest = store.request_scan(request(outputs(&["s3://bkt/a"]))).await.expect("oldest");
    assert_eq!(oldest.command.command_id, first.command_id);
    assert_eq!(scan_commands(&store).await, 3);

    // A running or retrying scan still covers; a finished one does not.
    store
        .exec(
            "update command set status = 'retrying', next_attempt_at = created_at where action = 's3_usage_scan'",
            &[],
        )
        .await;
    assert!(!store.request_scan(request(ScanScope::All)).await.expect("retrying").created);
    finish_scans(&store).await;
    let fresh = store.request_scan(request(outputs(&["s3://bkt/a"]))).await.expect("after finish");
    assert!(fresh.created);
    assert_eq!(scan_commands(&store).await, 4);

    // Params this version cannot read cover nothing.
    finish_scans(&store).await;
    let odd = Uuid::now_v7().to_string();
    let insert = if S::POSTGRES {
        "insert into command (command_id, action, params, status, max_attempts, requested_by, trace_id) \
         values ($1::uuid, 's3_usage_scan', '{\"scope\": \"galaxy\"}'::jsonb, 'queued', 1, 'old', 't')"
    } else {
        "insert into command (command_id, action, params, status, max_attempts, requested_by, trace_id) \
         values ($1, 's3_usage_scan', '{\"scope\": \"galaxy\"}', 'queued', 1, 'old', 't')"
    };
    store.exec(insert, &[&odd]).await;
    let past_odd = store.request_scan(request(outputs(&["s3://bkt/a"]))).await.expect("past unreadable");
    assert!(past_odd.created);
    assert_ne!(past_odd.command.command_id.to_string(), odd);
}

async fn full_scan_is_scheduled_once_per_interval<S: UsageStore + Raw>(store: S) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.schedule_full_scan(HOUR, request(ScanScope::All)).await })
        })
        .collect();
    let mut scheduled = Vec::new();
    for t in tasks {
        if let Some(s) = t.await.expect("task").expect("schedule") {
            scheduled.push(s);
        }
    }
    assert_eq!(scheduled.len(), 1);
    assert!(scheduled[0].created);
    assert_eq!(scheduled[0].command.params, serde_json::json!({"scope": "all"}));
    assert_eq!(scan_commands(&store).await, 1);

    // Within the interval nothing more is scheduled, even once the scan is done.
    assert!(store.schedule_full_scan(HOUR, request(ScanScope::All)).await.expect("again").is_none());
    finish_scans(&store).await;
    assert!(store.schedule_full_scan(HOUR, request(ScanScope::All)).await.expect("after finish").is_none());
    assert_eq!(scan_commands(&store).await, 1);

    // Once the interval has passed, a new one is.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let next = store.schedule_full_scan(Duration::from_millis(5), request(ScanScope::All)).await.expect("next");
    let next = next.expect("scheduled");
    assert!(next.created);
    assert_ne!(next.command.command_id, scheduled[0].command.command_id);
    // A pending full scan answers the next due one.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let covered = store.schedule_full_scan(Duration::from_millis(5), request(ScanScope::All)).await.expect("covered");
    let covered = covered.expect("answered");
    assert_eq!((covered.created, covered.command.command_id), (false, next.command.command_id));
    assert_eq!(scan_commands(&store).await, 2);

    // Requests for outputs are not full scans: they do not count for the interval.
    finish_scans(&store).await;
    store.request_scan(request(outputs(&["s3://bkt/a"]))).await.expect("list scan");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let due = store.schedule_full_scan(Duration::from_millis(15), request(ScanScope::All)).await.expect("due");
    assert!(due.expect("scheduled").created);
}

async fn scan_targets_are_canonical_and_unique<S: UsageStore + Raw>(store: S) {
    assert!(store.scan_targets(&[]).await.expect("none").is_empty());
    store.add_runner("r-1", "geonex/a:1", "s3://bkt/x/").await;
    store.add_runner("r-2", "geonex/a:1", "s3://bkt/x").await;
    store.add_runner("r-3", "geonex/a:1", "s3://bkt/y").await;
    let extra = ["s3://other".to_string(), "s3://bkt/x".into(), "s3://bkt/a".into()];
    let targets = store.scan_targets(&extra).await.expect("targets");
    assert_eq!(targets, ["s3://bkt/a", "s3://bkt/x", "s3://bkt/y", "s3://other"]);
    assert_eq!(store.scan_targets(&[]).await.expect("runners"), ["s3://bkt/x", "s3://bkt/y"]);
}

async fn an_output_is_claimed_by_one_scan<S: UsageStore + Raw>(store: S) {
    let out = output("s3://bkt/a");
    let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
    let before = Utc::now() - chrono::Duration::seconds(1);
    let started = store.claim_output(&out, c1, HOUR).await.expect("claim").expect("claimed");
    assert!(started >= before && started <= Utc::now() + chrono::Duration::seconds(1));
    assert!(usage_of(&store, "s3://bkt/a", &["s3://bkt/a"]).await.scanning);

    // Another scan is kept out; the holder may claim again and renew.
    assert_eq!(store.claim_output(&out, c2, HOUR).await.expect("claim"), None);
    assert!(store.claim_output(&out, c1, HOUR).await.expect("reclaim").is_some());
    assert!(store.renew_output(&out, c1, HOUR).await.expect("renew"));
    assert!(!store.renew_output(&out, c2, HOUR).await.expect("renew other"));
    let counted = OutputScan::Counted { bytes: 1, objects: 1 };
    assert!(!store.finish_output(&out, c2, started, &counted).await.expect("finish other"));
    assert!(!store.finish_output(&out, c2, started, &OutputScan::Failed("x".into())).await.expect("fail other"));
    assert_eq!(usage_of(&store, "s3://bkt/a", &["s3://bkt/a"]).await.scanned_at, None);

    // Concurrent claims: exactly one wins.
    let contested = output("s3://bkt/contested");
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let contested = contested.clone();
            tokio::spawn(async move { store.claim_output(&contested, Uuid::now_v7(), HOUR).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task").expect("claim").is_some());
    }
    assert_eq!(winners, 1);

    // Finishing releases the output for the next scan.
    assert!(store.finish_output(&out, c1, started, &OutputScan::Counted { bytes: 5, objects: 1 }).await.expect("finish"));
    assert!(!store.renew_output(&out, c1, HOUR).await.expect("renew after finish"));
    assert!(!usage_of(&store, "s3://bkt/a", &["s3://bkt/a"]).await.scanning);
    assert!(store.claim_output(&out, c2, HOUR).await.expect("claim").is_some());

    // An expired claim is taken over, and its holder can no longer finish.
    let lapsing = output("s3://bkt/lapsing");
    let (c3, c4) = (Uuid::now_v7(), Uuid::now_v7());
    let s3 = store.claim_output(&lapsing, c3, Duration::ZERO).await.expect("claim").expect("claimed");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.claim_output(&lapsing, c4, HOUR).await.expect("take over").is_some());
    assert!(!store.finish_output(&lapsing, c3, s3, &OutputScan::Counted { bytes: 9, objects: 9 }).await.expect("late"));
    assert_eq!(usage_of(&store, "s3://bkt/lapsing", &["s3://bkt/lapsing"]).await.bytes, 0);
}

async fn scan_results_replace_totals_and_record_errors<S: UsageStore + Raw>(store: S) {
    let extra = ["s3://bkt/a"];
    let out = output("s3://bkt/a");
    let c1 = Uuid::now_v7();
    let started = store.claim_output(&out, c1, HOUR).await.expect("claim").expect("claimed");
    let during = usage_of(&store, "s3://bkt/a", &extra).await;
    assert_eq!((during.bytes, during.objects, during.scanned_at, during.stale), (0, 0, None, true));
    assert!(store.finish_output(&out, c1, started, &OutputScan::Counted { bytes: 1000, objects: 7 }).await.expect("finish"));
    let u = usage_of(&store, "s3://bkt/a", &extra).await;
    assert_eq!((u.bytes, u.objects, u.bytes_exact, u.stale, u.scanning), (1000, 7, true, false, false));
    assert_eq!((u.error.as_deref(), u.error_at), (None, None));
    assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("bkt", "a"));
    let scanned_at = u.scanned_at.expect("scanned");
    assert!(u.updated_at.is_some());

    // A failed scan keeps the last figures and says why.
    let c2 = Uuid::now_v7();
    let s2 = store.claim_output(&out, c2, HOUR).await.expect("claim").expect("claimed");
    assert!(store.finish_output(&out, c2, s2, &OutputScan::Failed("AccessDenied".into())).await.expect("fail"));
    let u = usage_of(&store, "s3://bkt/a", &extra).await;
    assert_eq!((u.bytes, u.objects, u.scanned_at), (1000, 7, Some(scanned_at)));
    assert_eq!(u.error.as_deref(), Some("AccessDenied"));
    assert!(u.error_at.is_some());
    assert!(!u.scanning);

    // The next good scan clears the error.
    let c3 = Uuid::now_v7();
    let s3 = store.claim_output(&out, c3, HOUR).await.expect("claim").expect("claimed");
    assert!(store.finish_output(&out, c3, s3, &OutputScan::Counted { bytes: 10, objects: 1 }).await.expect("finish"));
    let u = usage_of(&store, "s3://bkt/a", &extra).await;
    assert_eq!((u.bytes, u.objects, u.error.as_deref(), u.error_at), (10, 1, None, None));
    assert!(u.scanned_at.expect("scanned") >= scanned_at);

    // Remembered removals the listing already reflects are forgotten; those of
    // other outputs and later ones stay.
    let t = Utc::now();
    let old = t - chrono::Duration::hours(2);
    store.claim_output(&output("s3://bkt/a_v2"), Uuid::now_v7(), HOUR).await.expect("claim").expect("claimed");
    store
        .apply_object_events(&[
            removed("bkt", "a/old", "10", old),
            removed("bkt", "a_v2/old", "11", old),
            removed("bkt", "a/new", "12", t + chrono::Duration::hours(1)),
            created("bkt", "a/kept", 5, "13", old),
        ])
        .await
        .expect("events");
    assert_eq!(store.int("select count(*) from s3_object", &[]).await, 4);
    let c4 = Uuid::now_v7();
    let s4 = store.claim_output(&out, c4, HOUR).await.expect("claim").expect("claimed");
    assert!(store.finish_output(&out, c4, s4, &OutputScan::Counted { bytes: 10, objects: 1 }).await.expect("finish"));
    assert_eq!(store.int("select count(*) from s3_object where key = 'a/old'", &[]).await, 0);
    assert_eq!(store.int("select count(*) from s3_object", &[]).await, 3);
}

async fn object_events_apply_once_in_order<S: UsageStore + Raw>(store: S) {
    let started = scan(&store, "s3://bkt/out", 100, 2).await;
    scan(&store, "s3://bkt", 1000, 20).await;
    let t = Utc::now() + chrono::Duration::seconds(1);
    assert!(t > started);
    let figures = |u: geonex_shared::store::usage::OutputUsage| (u.bytes, u.objects, u.bytes_exact);
    let out = || usage_of(&store, "s3://bkt/out", &["s3://bkt/out", "s3://bkt"]);
    let whole = || usage_of(&store, "s3://bkt", &["s3://bkt/out", "s3://bkt"]);

    // A new object counts in every scanned output holding it.
    let a = created("bkt", "out/a", 10, "0A", t);
    let r = store.apply_object_events(std::slice::from_ref(&a)).await.expect("create");
    assert_eq!(r, EventsApplied { applied: 1, ignored: 0, unknown_size: 0 });
    assert_eq!(figures(out().await), (110, 3, true));
    assert_eq!(figures(whole().await), (1010, 21, true));

    // A duplicate, alone or in the same batch, counts once.
    let r = store.apply_object_events(&[a.clone(), a.clone()]).await.expect("duplicates");
    assert_eq!(r, EventsApplied { applied: 0, ignored: 2, unknown_size: 0 });
    assert_eq!(figures(out().await), (110, 3, true));
    let b = created("bkt", "out/b", 4, "0B", t);
    let r = store.apply_object_events(&[b.clone(), b.clone()]).await.expect("batch duplicate");
    assert_eq!(r, EventsApplied { applied: 1, ignored: 1, unknown_size: 0 });
    assert_eq!(figures(out().await), (114, 4, true));

    // An overwrite counts the difference.
    store.apply_object_events(&[created("bkt", "out/a", 25, "0C", t)]).await.expect("overwrite");
    assert_eq!(figures(out().await), (129, 4, true));

    // Out of order: the removal comes first, the older overwrite after it is ignored.
    let r = store
        .apply_object_events(&[removed("bkt", "out/a", "0E", t), created("bkt", "out/a", 99, "0D", t)])
        .await
        .expect("reordered");
    assert_eq!(r, EventsApplied { applied: 1, ignored: 1, unknown_size: 0 });
    assert_eq!(figures(out().await), (104, 3, true));
    // A removal of an already removed object takes nothing more away.
    store.apply_object_events(&[removed("bkt", "out/a", "0F", t)]).await.expect("removed again");
    assert_eq!(figures(out().await), (104, 3, true));
    // Shorter sequencers are padded: "0B" comes before "0B01".
    let r = store.apply_object_events(&[created("bkt", "out/b", 6, "0B01", t)]).await.expect("longer");
    assert_eq!(r.applied, 1);
    assert_eq!(figures(out().await), (106, 3, true));

    // Removing an object the scan counted but no event described: size unknown.
    let r = store.apply_object_events(&[removed("bkt", "out/listed", "10", t)]).await.expect("unknown size");
    assert_eq!(r, EventsApplied { applied: 1, ignored: 0, unknown_size: 1 });
    let u = out().await;
    assert_eq!((u.bytes, u.objects, u.bytes_exact), (106, 2, false));

    // Keys outside every output, and in a sibling folder, do not count there.
    let r = store
        .apply_object_events(&[created("other", "out/x", 1, "01", t), created("bkt", "out_v2/x", 7, "01", t)])
        .await
        .expect("outside");
    assert_eq!((r.applied, r.ignored), (1, 1));
    assert_eq!((out().await.bytes, out().await.objects), (106, 2));
    let w = whole().await;
    assert_eq!((w.bytes, w.objects), (1000 + 10 + 4 + 15 - 25 + 2 + 7, 21 + 1 - 1 - 1 + 1));

    // Events older than the scan are already in its figures.
    let old = started - chrono::Duration::hours(1);
    let r = store.apply_object_events(&[created("bkt", "out/old", 50, "01", old)]).await.expect("old");
    assert_eq!(r.applied, 1);
    assert_eq!((out().await.bytes, out().await.objects), (106, 2));

    // Counts never go below zero.
    scan(&store, "s3://bkt/small", 3, 1).await;
    let t2 = Utc::now() + chrono::Duration::seconds(1);
    store
        .apply_object_events(&[
            created("bkt", "small/a", 2, "01", t2),
            removed("bkt", "small/a", "02", t2),
            removed("bkt", "small/b", "03", t2),
            removed("bkt", "small/c", "04", t2),
        ])
        .await
        .expect("below zero");
    let s = usage_of(&store, "s3://bkt/small", &["s3://bkt/small"]).await;
    assert_eq!((s.bytes, s.objects, s.bytes_exact), (3, 0, false));

    // A time-ordered source and a sequencer one cannot be compared: the newest event wins.
    let r = store
        .apply_object_events(&[ObjectEvent {
            bucket: "bkt".into(),
            key: "out/b".into(),
            change: ObjectChange::Removed,
            order: event_order(None, t),
            time: t,
        }])
        .await
        .expect("time ordered");
    assert_eq!(r.applied, 1);
    assert_eq!((out().await.bytes, out().await.objects), (100, 1));
}

async fn listing_shows_outputs_filters_and_staleness<S: UsageStore + Raw>(store: S) {
    store.add_runner("r-2", "geonex/a:1", "s3://bk1/a/").await;
    store.add_runner("r-1", "geonex/a:1", "s3://bk1/a").await;
    store.add_runner("r-3", "geonex/a:1", "s3://bk2/x").await;
    let extra = vec!["s3://bk3".to_string(), "s3://bk1/a".to_string()];
    let q = |runner_id: Option<&str>, bucket: Option<&str>, stale_after: Duration| UsageQuery {
        extra_outputs: extra.clone(),
        runner_id: runner_id.map(str::to_owned),
        bucket: bucket.map(str::to_owned),
        stale_after,
    };

    let all = store.list_usage(&q(None, None, HOUR)).await.expect("all");
    let names: Vec<&str> = all.iter().map(|u| u.s3_output.as_str()).collect();
    assert_eq!(names, ["s3://bk1/a", "s3://bk2/x", "s3://bk3"]);
    assert_eq!(all[0].runner_ids, ["r-1", "r-2"]);
    assert_eq!(all[1].runner_ids, ["r-3"]);
    assert!(all[2].runner_ids.is_empty());
    assert_eq!((all[2].bucket.as_str(), all[2].prefix.as_str()), ("bk3", ""));
    for u in &all {
        assert_eq!((u.bytes, u.objects, u.stale, u.scanning, u.bytes_exact), (0, 0, true, false, true));
        assert_eq!((u.scanned_at, u.updated_at, u.error.as_deref()), (None, None, None));
    }

    let r3 = store.list_usage(&q(Some("r-3"), None, HOUR)).await.expect("r-3");
    assert_eq!(r3.iter().map(|u| u.s3_output.as_str()).collect::<Vec<_>>(), ["s3://bk2/x"]);
    let b1 = store.list_usage(&q(None, Some("bk1"), HOUR)).await.expect("bk1");
    assert_eq!(b1.iter().map(|u| u.s3_output.as_str()).collect::<Vec<_>>(), ["s3://bk1/a"]);
    let b3 = store.list_usage(&q(None, Some("bk3"), HOUR)).await.expect("bk3");
    assert_eq!(b3.iter().map(|u| u.s3_output.as_str()).collect::<Vec<_>>(), ["s3://bk3"]);
    assert!(store.list_usage(&q(None, Some("bk"), HOUR)).await.expect("b").is_empty());
    assert!(store.list_usage(&q(Some("r-3"), Some("bk1"), HOUR)).await.expect("both").is_empty());
    assert!(store.list_usage(&q(Some("r-none"), None, HOUR)).await.expect("unknown").is_empty());

    let rev0 = store.usage_revision(HOUR).await.expect("revision");
    assert_eq!((rev0.stale, rev0.scanning), (0, 0));
    scan(&store, "s3://bk1/a", 42, 2).await;
    let c = Uuid::now_v7();
    store.claim_output(&output("s3://bk2/x"), c, HOUR).await.expect("claim").expect("claimed");
    let all = store.list_usage(&q(None, None, HOUR)).await.expect("all");
    assert_eq!((all[0].bytes, all[0].objects, all[0].stale, all[0].scanning), (42, 2, false, false));
    assert!(all[0].scanned_at.is_some());
    assert_eq!((all[1].stale, all[1].scanning), (true, true));
    let rev1 = store.usage_revision(HOUR).await.expect("revision");
    assert!(rev1.usage > rev0.usage);
    assert_eq!(rev1.runners, rev0.runners);
    assert_eq!((rev1.stale, rev1.scanning), (0, 1));

    // Old scans turn stale.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = store.list_usage(&q(None, None, Duration::from_millis(5))).await.expect("later");
    assert!(later[0].stale);
    assert_eq!(store.usage_revision(Duration::from_millis(5)).await.expect("revision").stale, 1);

    store.add_runner("r-4", "geonex/a:1", "s3://bk4").await;
    let rev2 = store.usage_revision(HOUR).await.expect("revision");
    assert!(rev2.runners > rev1.runners);
    assert_eq!(rev2.usage, rev1.usage);
}

contract!(
    scan_requests_collapse_into_pending_scans,
    full_scan_is_scheduled_once_per_interval,
    scan_targets_are_canonical_and_unique,
    an_output_is_claimed_by_one_scan,
    scan_results_replace_totals_and_record_errors,
    object_events_apply_once_in_order,
    listing_shows_outputs_filters_and_staleness,
);

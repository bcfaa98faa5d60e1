//! The EC2 request budget: a burst of starts launches at the RunInstances
//! bucket's own rate with nothing throttled, waiting starts hold no worker so
//! stops go first, a throttle received anyway slows the budget without failing
//! anything, and several worker processes share one budget — also when one of
//! them is killed mid-burst.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use geonex::startup::Role as AppRole;
use geonex_shared::config::BucketSize;
use geonex_shared::store::rate::Take;
use serde_json::Value;

use crate::helpers::{Mode, PrivateMoto, Process, TestApp, TestConfig, spawn_app_with, unique};

/// An embedded deployment whose simulated cloud meters calls as EC2 does, and
/// whose budget has EC2's real sizes.
async fn metered(extra: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(String, String)> = [
        ("GEONEX_SIM__AWS_RATE_LIMITS", "true"),
        ("GEONEX_EC2__RATE__SCALE", "1"),
        ("GEONEX_SIM__BOOT_DELAY_MS", "100"),
        ("GEONEX_WORKER__CONCURRENCY", "8"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    spawn_app_with(TestConfig { extra_env: env, ..TestConfig::in_mode(Mode::Embedded) }).await
}

fn id(r: &crate::helpers::Reply) -> String {
    r.body["command_id"].as_str().expect("command id").to_owned()
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap_or_default().parse().expect("a time")
}

/// At no moment did more calls finish than the bucket allows: `burst` at once,
/// then `per_sec`. Checked over every window between two finish times, with
/// two calls of slack: a command finishes some time after its call.
fn within_bucket(times: &[DateTime<Utc>], burst: f64, per_sec: f64) {
    let mut t = times.to_vec();
    t.sort();
    for i in 0..t.len() {
        for j in i..t.len() {
            let window = (t[j] - t[i]).num_milliseconds() as f64 / 1000.0;
            let allowed = burst + per_sec * window + 2.0;
            let n = (j - i + 1) as f64;
            assert!(n <= allowed, "{n} launches within {window:.2} s: more than the bucket allows ({t:?})");
        }
    }
}

#[tokio::test]
async fn a_burst_of_starts_launches_at_the_run_instances_rate_and_ec2_throttles_nothing() {
    let app = metered(&[]).await;
    let sim = app.deployment.sim.clone().expect("simulated cloud");
    let runners: Vec<String> = (0..13).map(|i| unique(&format!("burst{i}"))).collect();
    let began = Instant::now();
    let mut ids = Vec::new();
    for r in &runners {
        ids.push(id(&app.start_runner(r, "geonex/fire:1.5").await));
    }
    // Most of the burst waits for the budget, and says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = app.get("/describe-commands?status=waiting").await;
        let listed = waiting.body["commands"].as_array().cloned().unwrap_or_default();
        if let Some(c) = listed.first() {
            let full = app.command(c["command_id"].as_str().unwrap()).await;
            assert!(full["waiting_for"].as_str().unwrap().contains("EC2 request budget"), "{full}");
            break;
        }
        assert!(Instant::now() < deadline, "no start waited for the budget");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut finished = Vec::new();
    for c in &ids {
        let done = app.wait_command(c, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "waiting for the budget spends no attempt: {done}");
        finished.push(at(&done["finished_at"]));
    }
    // 5 at once, then 2 a second: 13 launches take at least 4 seconds.
    assert!(began.elapsed() >= Duration::from_millis(3900), "faster than the bucket allows: {:?}", began.elapsed());
    within_bucket(&finished, 5.0, 2.0);
    assert_eq!(sim.calls().throttled.load(Ordering::Relaxed), 0, "EC2 throttled a call");
    assert_eq!(sim.calls().run.load(Ordering::Relaxed), 13, "one RunInstances per runner, no retries");
}

#[tokio::test]
async fn stops_go_first_while_a_burst_of_starts_waits_for_the_budget() {
    let app = metered(&[]).await;
    // Five runners running (the burst), then a burst of new starts and their stops.
    let running: Vec<String> = (0..5).map(|i| unique(&format!("run{i}"))).collect();
    for r in &running {
        let c = id(&app.start_runner(r, "geonex/fire:1.5").await);
        app.wait_command(&c, &["succeeded"]).await;
    }
    let mut instances = BTreeMap::new();
    for r in &running {
        instances.insert(r.clone(), app.wait_runner(r, "running").await["instance_id"].as_str().unwrap().to_owned());
    }
    let starts: Vec<String> = (0..10).map(|i| unique(&format!("new{i}"))).collect();
    let mut start_ids = Vec::new();
    for r in &starts {
        start_ids.push(id(&app.start_runner(r, "geonex/fire:1.5").await));
    }
    let mut stop_ids = Vec::new();
    for (r, i) in &instances {
        let s = app.get(&format!("/stop-runner?instance_id={i}&runner_id={r}")).await;
        assert_eq!(s.status, 202, "{}", s.body);
        stop_ids.push(id(&s));
    }
    let mut last_stop = DateTime::<Utc>::MIN_UTC;
    for c in &stop_ids {
        let done = app.wait_command(c, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        last_stop = last_stop.max(at(&done["finished_at"]));
    }
    let mut start_finish = Vec::new();
    for c in &start_ids {
        let done = app.wait_command(c, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        start_finish.push(at(&done["finished_at"]));
    }
    start_finish.sort();
    // The run bucket was empty: the burst of starts needs seconds; the stops,
    // accepted after it, are done before most of it.
    assert!(last_stop < start_finish[start_finish.len() - 3], "stops {last_stop} vs starts {start_finish:?}");
}

#[tokio::test]
async fn a_throttle_received_anyway_slows_the_budget_and_the_starts_still_succeed() {
    // Another tool of the account drains EC2's buckets: some calls are refused
    // although this deployment's budget allowed them.
    let app = metered(&[("GEONEX_SIM__THROTTLE_RATE", "0.3")]).await;
    let sim = app.deployment.sim.clone().expect("simulated cloud");
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(id(&app.start_runner(&unique(&format!("thr{i}")), "geonex/fire:1.5").await));
    }
    for c in &ids {
        let done = app.wait_command(c, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["attempts"], 1, "a throttled call spends no attempt: {done}");
    }
    assert!(sim.calls().throttled.load(Ordering::Relaxed) > 0, "the simulated cloud should have throttled something");
    // The buckets that were throttled refill more slowly for a while.
    let mut slowed = false;
    for b in ["run-instances", "describe", "mutating"] {
        let take = Take {
            bucket: format!("default/default/{b}"),
            tokens: 1.0,
            size: BucketSize::new(1.0, 1.0),
            keep: 0.0,
            reserve: false,
            recovery: Duration::from_secs(60),
        };
        slowed |= app.store.bucket_level(&take).await.expect("bucket").is_some_and(|l| l.factor < 1.0);
    }
    assert!(slowed, "a throttled bucket's refill should have been reduced");
}

#[tokio::test]
async fn three_workers_share_one_budget_and_one_killed_mid_burst_leaves_nothing_lost_or_doubled() {
    let moto = PrivateMoto::start().await;
    let mut env = moto.env();
    env.push(("GEONEX_EC2__RATE__SCALE".into(), "1".into()));
    let mut app = spawn_app_with(TestConfig { role: AppRole::Api, extra_env: env, ..TestConfig::default() }).await;
    app.ec2 = moto.ec2();
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Process::start(app.deployment.command(&["worker"]), false).await);
    }
    let runners: Vec<String> = (0..21).map(|i| unique(&format!("w3-{i}"))).collect();
    let mut ids = Vec::new();
    for r in &runners {
        ids.push(id(&app.start_runner(r, "geonex/fire:1.5").await));
    }
    // Kill one worker once the burst is under way.
    let first = app.wait_command(&ids[0], &["succeeded"]).await;
    assert_eq!(first["status"], "succeeded");
    workers[0].kill().await;
    let mut finished = Vec::new();
    for c in &ids {
        let done = app.wait_command(c, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        finished.push(at(&done["finished_at"]));
    }
    // Three processes, one budget: never faster than one RunInstances bucket.
    // The finish times are moto's answers, which a loaded machine delays and
    // bunches, so the check is the whole burst's span: one bucket (three of
    // its five tokens at once, then 1.96 a second) needs 9.2 s for 21 launches,
    // three buckets of their own would need 2 s.
    finished.sort();
    let span = (finished[finished.len() - 1] - finished[0]).num_milliseconds() as f64 / 1000.0;
    assert!(span >= 5.0, "{} launches in {span:.1} s: faster than one bucket allows ({finished:?})", finished.len());
    for r in &runners {
        let live: Vec<_> = app.instances_of(r).await.into_iter().filter(|(_, s)| s != "terminated").collect();
        assert_eq!(live.len(), 1, "runner {r}: {live:?}");
    }
    for w in &mut workers[1..] {
        w.kill().await;
    }
}

#[tokio::test]
async fn reservations_that_fall_due_together_still_reach_ec2_one_refill_apart() {
    use geonex_shared::config::RateSettings;
    use geonex_shared::store::rate::RateStore;
    use geonex_worker::budget::{Budget, Op, Priority, Reservation, Spend};

    let app = spawn_app_with(TestConfig::in_mode(Mode::Embedded)).await;
    let store: std::sync::Arc<dyn RateStore> = match app.deployment.store().await {
        crate::helpers::TestStore::Postgres(s) => std::sync::Arc::new(s),
        crate::helpers::TestStore::Sqlite(s) => std::sync::Arc::new(s),
    };
    // Bookings: two tokens of burst (four less the margin), 0.98 a second;
    // calls: three of burst (one less), one a second. Slow enough that a
    // loaded machine's pauses between the calls below do not refill a token.
    let settings = RateSettings {
        account: unique("pace"),
        run_instances: BucketSize::new(4.0, 1.0),
        scale: 1.0,
        ..RateSettings::default()
    };
    let budget = Budget::new(store, settings, Some("r"));
    for _ in 0..2 {
        assert_eq!(budget.spend(Op::RunInstances, 1.0, Priority::Normal).await.unwrap(), Spend::Now);
        assert_eq!(budget.pace(Op::RunInstances).await.unwrap(), None, "the burst is made at once");
    }
    let mut held = Vec::new();
    for _ in 0..5 {
        match budget.spend(Op::RunInstances, 1.0, Priority::Normal).await.unwrap() {
            Spend::Later { reserved: Some((at, ticket)), .. } => {
                held.push(Reservation { op: Op::RunInstances, at, ticket: Some(ticket) })
            }
            other => panic!("expected a reservation, got {other:?}"),
        }
    }
    // The process was busy for six seconds: every reservation is due at once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut made = 0;
    let mut waits = Vec::new();
    for r in &held {
        assert_eq!(budget.due(r, Priority::Normal).await.unwrap(), None, "{r:?} is due");
        match budget.pace(Op::RunInstances).await.unwrap() {
            None => made += 1,
            Some(after) => waits.push(after),
        }
    }
    // What EC2's burst takes goes now (three: the pace bucket is full again),
    // a fourth only if a second passed between these calls; the others wait
    // about one refill each time they look.
    assert!((3..=4).contains(&made), "{made} made at once, waits {waits:?}");
    assert_eq!(made + waits.len(), 5);
    assert!(waits.iter().all(|w| *w > Duration::from_millis(100) && *w < Duration::from_millis(1200)), "{waits:?}");
}

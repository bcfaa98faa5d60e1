//! Runner commands that make their cloud call and finish: a start succeeds once
//! its instance is launched, the instance observer follows it to running with
//! batched DescribeInstances calls, a restart waits for its instance to stop
//! without holding a worker, and a runner stuck in a transitional state is
//! flagged. Against the simulated cloud, whose boot and stop delays can be long.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{Mode, TestApp, TestConfig, eventually, spawn_app_with, unique};

async fn embedded(env: &[(&str, &str)]) -> TestApp {
    spawn_app_with(TestConfig {
        extra_env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..TestConfig::in_mode(Mode::Embedded)
    })
    .await
}

fn command_id(r: &crate::helpers::Reply) -> String {
    r.body["command_id"].as_str().expect("command id").to_owned()
}

#[tokio::test]
async fn a_start_succeeds_once_its_instance_is_launched_and_the_runner_turns_running_after_the_boot() {
    let app = embedded(&[("GEONEX_SIM__BOOT_DELAY_MS", "5000")]).await;
    let runner = unique("boot");
    let accepted = Instant::now();
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    let done = app.wait_command(&command_id(&r), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(accepted.elapsed() < Duration::from_secs(4), "the start did not wait for the boot");
    assert_eq!(done["result"]["launched"], true, "{done}");
    assert_eq!(done["result"]["state"], "pending", "{done}");
    let instance = done["result"]["instance_id"].as_str().unwrap().to_owned();

    let pending = app.runner(&runner).await;
    assert_eq!(pending["observed_state"], "pending", "{pending}");
    assert_eq!(pending["instance_id"], instance.as_str());
    assert_eq!(pending["stuck"], false);
    let running = app.wait_runner(&runner, "running").await;
    // The runner shows when it became running.
    let at = |v: &Value| v.as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(at(&running["observed_at"]) > at(&pending["observed_at"]), "{pending} {running}");
    assert!(at(&running["observed_at"]) >= at(&done["finished_at"]) + chrono::Duration::milliseconds(4000), "{running}");
}

#[tokio::test]
async fn a_restart_waits_for_its_instance_to_stop_without_holding_the_only_worker_slot() {
    let app = embedded(&[
        ("GEONEX_WORKER__CONCURRENCY", "1"),
        ("GEONEX_SIM__STOP_DELAY_MS", "3000"),
        ("GEONEX_WORKER__INSTANCE_POLL_MS", "300"),
    ])
    .await;
    let a = unique("restart");
    let r = app.start_runner(&a, "geonex/fire:1.5").await;
    app.wait_command(&command_id(&r), &["succeeded"]).await;
    let instance = app.wait_runner(&a, "running").await["instance_id"].as_str().unwrap().to_owned();

    let restart = app
        .get(&format!(
            "/restart-runner?instance_id={instance}&image_name=geonex/fire:2.0&s3_output=s3://geonex/v2&runner_id={a}&runner_name=P"
        ))
        .await;
    assert_eq!(restart.status, 202, "{}", restart.body);
    let restart_id = command_id(&restart);
    // While the instance stops, the restart waits and says what for.
    let deadline = Instant::now() + Duration::from_secs(10);
    let waiting = loop {
        let c = app.command(&restart_id).await;
        if c["status"] == "waiting" {
            break c;
        }
        assert!(Instant::now() < deadline, "the restart never waited: {c}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(waiting["waiting_for"].as_str().unwrap().contains("to stop"), "{waiting}");
    let listed = app.get(&format!("/describe-commands?status=waiting&runner_id={a}")).await;
    assert_eq!(listed.body["commands"].as_array().unwrap().len(), 1, "{}", listed.body);
    assert_eq!(app.runner(&a).await["observed_state"], "stopping");

    // The only worker slot is free meanwhile: another runner starts.
    let b = unique("meanwhile");
    let r = app.start_runner(&b, "geonex/fire:1.5").await;
    let started = app.wait_command(&command_id(&r), &["succeeded"]).await;
    assert_ne!(app.command(&restart_id).await["status"], "succeeded", "{started}");

    let done = app.wait_command(&restart_id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "waiting spends no attempt: {done}");
    assert!(done["waiting_for"].is_null(), "{done}");
    assert_eq!(done["result"]["restarted"], true, "{done}");
    let runner = app.wait_runner(&a, "running").await;
    assert_eq!(runner["instance_id"], instance.as_str());
    assert!(app.user_data(&instance).await.contains("IMAGE='geonex/fire:2.0'"));
}

#[tokio::test]
async fn a_stop_that_arrives_while_the_instance_boots_waits_for_the_boot_and_stops_it() {
    let app = embedded(&[("GEONEX_SIM__BOOT_DELAY_MS", "2000")]).await;
    let runner = unique("early");
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    let start = app.wait_command(&command_id(&r), &["succeeded"]).await;
    let instance = start["result"]["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(app.runner(&runner).await["observed_state"], "pending");
    let stop = app.get(&format!("/stop-runner?instance_id={instance}&runner_id={runner}")).await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    let done = app.wait_command(&command_id(&stop), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempts"], 1, "{done}");
    app.wait_runner(&runner, "stopped").await;
    assert_eq!(app.instances_of(&runner).await, vec![(instance, "stopped".to_owned())]);
}

#[tokio::test]
async fn one_describe_call_per_pass_follows_a_hundred_booting_instances() {
    // Boots long enough that a busy machine still starts all hundred first;
    // passes at most every 400 ms, so a boot spans about twenty of them.
    let app = embedded(&[
        ("GEONEX_SIM__BOOT_DELAY_MS", "8000"),
        ("GEONEX_WORKER__CONCURRENCY", "32"),
        ("GEONEX_RECONCILE__OBSERVE_MIN_MS", "400"),
    ])
    .await;
    let sim = app.deployment.sim.clone().expect("the simulated cloud");
    let mut ids = Vec::new();
    let runners: Vec<String> = (0..100).map(|i| unique(&format!("fleet{i}"))).collect();
    for runner in &runners {
        ids.push(command_id(&app.start_runner(runner, "geonex/fire:1.5").await));
    }
    for id in &ids {
        app.wait_command(id, &["succeeded"]).await;
    }
    let before = sim.calls().describe.load(Ordering::Relaxed);
    let pending = sim.instances().iter().filter(|i| i.state.as_str() == "pending").count();
    assert!(pending > 50, "most instances should still be booting: {pending}");
    eventually("every runner running", Duration::from_secs(30), || async {
        let r = app.get("/describe-runners?state=running&limit=1000").await;
        r.body["runners"].as_array().unwrap().len() == runners.len()
    })
    .await;
    let calls = sim.calls().describe.load(Ordering::Relaxed) - before;
    // About one call per observer pass (every 400 ms here), for all of them:
    // a poll per instance would be a hundred at the very least.
    assert!(calls <= 35, "{calls} DescribeInstances calls for {pending} booting instances");
}

#[tokio::test]
async fn a_runner_pending_longer_than_the_stuck_threshold_is_flagged_and_its_command_says_so() {
    let app = embedded(&[("GEONEX_SIM__BOOT_DELAY_MS", "600000"), ("GEONEX_RECONCILE__STUCK_AFTER_SECS", "1")]).await;
    let runner = unique("stuck");
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    let id = command_id(&r);
    app.wait_command(&id, &["succeeded"]).await;
    eventually("the runner is flagged stuck", Duration::from_secs(15), || async {
        let r = app.runner(&runner).await;
        r["stuck"] == true && r["last_error"].as_str().is_some_and(|e| e.contains("has been pending"))
    })
    .await;
    let c = app.command(&id).await;
    assert!(c["result"]["stuck"].as_str().is_some_and(|s| s.contains("pending")), "{c}");
    assert_eq!(c["result"]["launched"], true, "the result keeps what it launched: {c}");
}

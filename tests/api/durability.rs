//! Nothing lost, nothing doubled: duplicate deliveries, a worker killed mid-command,
//! a broker outage, and dead commands brought back by replay.

use std::time::Duration;

use geonex::startup::Role;
use geonex_shared::queue::Queue;
use geonex_shared::queue::rabbitmq::{RabbitQueue, Topology};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use uuid::Uuid;

use crate::helpers::{Mode, TestConfig, amqp_url, eventually, spawn_app_with, unique};
use crate::proxy::Proxy;

fn topology(app: &crate::helpers::TestApp) -> Topology {
    let s = app.deployment.settings();
    Topology { prefix: s.queue.prefix.clone(), queue_expires_ms: s.queue.queue_expires_ms }
}

/// Ready (undelivered) messages in a queue.
pub async fn ready_messages(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(queue.into(), QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
        .await
        .unwrap();
    let n = q.message_count();
    let _ = conn.close(200, "done".into()).await;
    n
}

#[tokio::test]
async fn a_start_whose_message_is_delivered_three_times_makes_exactly_one_instance() {
    let mut app = spawn_app_with(TestConfig { role: Role::Api, ..TestConfig::default() }).await;
    let runner_id = unique("dup");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id: Uuid = r.body["command_id"].as_str().unwrap().parse().unwrap();
    let command = app.store.get_command(command_id).await.unwrap().unwrap();

    // Two more copies of the message, as a broker redelivery or a relay race would make.
    let topo = topology(&app);
    let broker = RabbitQueue::new(&amqp_url(), topo.clone(), Duration::from_secs(5));
    broker.publish(&command.message(), None).await.unwrap();
    broker.publish(&command.message(), None).await.unwrap();
    let work_queue = topo.work_queue(geonex_shared::domain::WorkQueue::Runner);
    eventually("three copies queued", Duration::from_secs(10), || async { ready_messages(&work_queue).await == 3 }).await;

    let worker = app.deployment.spawn(Role::Worker).await;
    let done = app.wait_command(&command_id.to_string(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded");
    eventually("every copy consumed", Duration::from_secs(10), || async { ready_messages(&work_queue).await == 0 }).await;
    // A graceful stop waits for in-flight deliveries, so every copy has been handled.
    worker.stop().await;
    assert_eq!(app.instances_of(&runner_id).await.len(), 1);
    assert_eq!(app.command(&command_id.to_string()).await["attempts"], 1);
    app.stop_app().await;
}

#[tokio::test]
async fn a_worker_killed_after_run_instances_before_recording_it_leaves_exactly_one_instance() {
    let mut app = spawn_app_with(TestConfig { role: Role::Api, ..TestConfig::default() }).await;
    let runner_id = unique("kill");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();

    // A worker process that dies the moment RunInstances returns.
    let crashing = app
        .deployment
        .command(&["worker"])
        .env("GEONEX_FAILPOINTS", "after-run-instances")
        .env("GEONEX_WORKER__LEASE_SECS", "2")
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), crashing).await.expect("the worker ran").unwrap();
    assert_eq!(status.code(), Some(86), "the worker should have crashed at the failpoint");
    assert_eq!(app.instances_of(&runner_id).await.len(), 1, "the crashed attempt did launch an instance");
    let before = app.command(&command_id).await;
    assert_eq!(before["status"], "running");
    assert!(app.runner(&runner_id).await["instance_id"].is_null());

    // A healthy worker: the message comes back, the lease expires, the command is
    // rescued, and the instance the dead worker launched is adopted.
    let worker = app.deployment.spawn(Role::Worker).await;
    let done = app.wait_command(&command_id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["adopted"], true, "{done}");
    let instances = app.instances_of(&runner_id).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let runner = app.wait_runner(&runner_id, "running").await;
    assert_eq!(runner["instance_id"], instances[0].0.as_str());
    worker.stop().await;
    app.stop_app().await;
}

#[tokio::test]
async fn commands_accepted_while_the_broker_is_unreachable_all_complete_once_it_returns() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let app = spawn_app_with(TestConfig { amqp_url: url, ..TestConfig::default() }).await;

    // The broker works at first.
    let warm = unique("warm");
    let r = app.start_runner(&warm, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;

    proxy.cut().await;
    let mut accepted = Vec::new();
    for i in 0..5 {
        let runner_id = unique(&format!("outage{i}"));
        let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
        assert_eq!(r.status, 202, "the API keeps accepting during a broker outage: {}", r.body);
        accepted.push((runner_id, r.body["command_id"].as_str().unwrap().to_owned()));
    }
    // Nothing can run while the broker is away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (_, id) in &accepted {
        assert_eq!(app.command(id).await["status"], "queued");
    }
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body["broker"]["status"], "unreachable");

    proxy.restore();
    for (runner_id, id) in &accepted {
        let done = app.wait_command(id, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(app.instances_of(runner_id).await.len(), 1);
    }
    eventually("ready again", Duration::from_secs(10), || async { app.get("/readyz").await.status == 200 }).await;
}

#[tokio::test]
async fn a_permanently_failing_command_ends_dead_and_replay_completes_it_once_the_cause_is_fixed() {
    let bad_subnet = TestConfig {
        extra_env: vec![("GEONEX_EC2__SUBNET_ID".into(), "subnet-deadbeef".into())],
        ..TestConfig::default()
    };
    let mut app = spawn_app_with(bad_subnet).await;
    let (a, b) = (unique("dead-a"), unique("dead-b"));
    let ra = app.start_runner(&a, "geonex/fire:1.5").await;
    let rb = app.start_runner(&b, "geonex/fire:1.5").await;
    let (ca, cb) = (ra.body["command_id"].as_str().unwrap().to_owned(), rb.body["command_id"].as_str().unwrap().to_owned());
    for id in [&ca, &cb] {
        let dead = app.wait_command(id, &["succeeded", "dead"]).await;
        assert_eq!(dead["status"], "dead", "{dead}");
        assert_eq!(dead["attempts"], 1, "a permanent error is not retried");
        assert!(dead["last_error"].as_str().unwrap().contains("InvalidSubnetID.NotFound"), "{dead}");
    }
    let runner = app.runner(&a).await;
    assert_eq!(runner["observed_state"], "failed");
    assert!(runner["last_error"].as_str().unwrap().contains("InvalidSubnetID.NotFound"));
    let dead_listed = app.get("/describe-commands?status=dead").await;
    assert_eq!(dead_listed.body["commands"].as_array().unwrap().len(), 2);
    let topo = topology(&app);
    eventually("dead messages parked", Duration::from_secs(10), || async { ready_messages(&topo.dead_queue()).await == 2 })
        .await;

    // Replaying before the fix just fails again.
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", ca.as_str())])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["replayed"][0], ca.as_str());
    app.wait_command(&ca, &["dead"]).await;
    let unknown = Uuid::new_v4().to_string();
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", unknown.as_str())])).await;
    assert_eq!(r.status, 404);

    // The operator fixes the configuration and restarts the service ...
    app.stop_app().await;
    app.deployment.env.retain(|(k, _)| k != "GEONEX_EC2__SUBNET_ID");
    let fixed = app.deployment.spawn(Role::Serve).await;
    app.address = fixed.address.clone();

    // ... then replays one command from the command line and the rest over HTTP.
    let out = app.deployment.command(&["replay", "--command-id", &ca]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ca));
    let done = app.wait_command(&ca, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let again = app.deployment.command(&["replay", "--command-id", &ca]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0 command(s)"));

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/replay-command", fixed.address))
        .bearer_auth(&app.token)
        .json(&serde_json::json!({ "action": "start_runner" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["replayed"], serde_json::json!([cb]));
    let r = http
        .post(format!("{}/replay-command", fixed.address))
        .bearer_auth(&app.token)
        .form(&[("command_id", ca.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "only dead commands can be replayed");
    let done = app.wait_command(&cb, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    for r in [&a, &b] {
        assert_eq!(app.instances_of(r).await.len(), 1);
        app.wait_runner(r, "running").await;
    }
    fixed.stop().await;
}

#[tokio::test]
async fn commands_failing_on_an_unreachable_cloud_are_retried_with_backoff_then_dead_when_attempts_run_out() {
    let moto = crate::helpers::moto_url();
    let proxy = Proxy::start(moto.trim_start_matches("http://")).await;
    let config = TestConfig {
        extra_env: vec![
            ("GEONEX_EC2__ENDPOINT_URL".into(), format!("http://127.0.0.1:{}", proxy.port)),
            ("GEONEX_WORKER__MAX_ATTEMPTS".into(), "3".into()),
        ],
        ..TestConfig::default()
    };
    let app = spawn_app_with(config).await;
    proxy.cut().await;

    // Attempts run out while the cloud stays away: dead, with the last error.
    let a = unique("exhaust");
    let ra = app.start_runner(&a, "geonex/fire:1.5").await;
    let ca = ra.body["command_id"].as_str().unwrap().to_owned();
    let dead = app.wait_command(&ca, &["dead", "succeeded"]).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(dead["last_error"].as_str().unwrap().contains("dispatch failure"), "{dead}");

    // A retrying command completes once the cloud is back.
    let b = unique("recover");
    let rb = app.start_runner(&b, "geonex/fire:1.5").await;
    let cb = rb.body["command_id"].as_str().unwrap().to_owned();
    eventually("a second attempt scheduled", Duration::from_secs(60), || async {
        let c = app.command(&cb).await;
        c["status"] == "retrying" && c["attempts"].as_i64() >= Some(1) && c["last_error"].is_string()
    })
    .await;
    proxy.restore();
    let done = app.wait_command(&cb, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["attempts"].as_i64().unwrap() >= 2, "{done}");
    assert_eq!(app.instances_of(&b).await.len(), 1);

    // And the dead one, replayed.
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", ca.as_str())])).await;
    assert_eq!(r.status, 200);
    let done = app.wait_command(&ca, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(app.instances_of(&a).await.len(), 1);
}

in_both_modes!(a_command_failing_until_its_attempts_run_out_is_dead_and_replay_completes_it_after_the_fix);

/// The retry, dead and replay cycle in either mode: the cloud fails every call
/// (an unreachable EC2 endpoint; a simulated cloud failing every request).
async fn a_command_failing_until_its_attempts_run_out_is_dead_and_replay_completes_it_after_the_fix(mode: Mode) {
    let fault = match mode {
        Mode::Production => ("GEONEX_EC2__ENDPOINT_URL", "http://127.0.0.1:9".to_owned()),
        Mode::Embedded => ("GEONEX_SIM__ERROR_RATE", "1.0".to_owned()),
    };
    let config = TestConfig {
        extra_env: vec![(fault.0.into(), fault.1), ("GEONEX_WORKER__MAX_ATTEMPTS".into(), "3".into())],
        ..TestConfig::in_mode(mode)
    };
    let mut app = spawn_app_with(config).await;
    let (a, b) = (unique("dead-a"), unique("dead-b"));
    let ca = app.start_runner(&a, "geonex/fire:1.5").await.body["command_id"].as_str().unwrap().to_owned();
    let cb = app.start_runner(&b, "geonex/fire:1.5").await.body["command_id"].as_str().unwrap().to_owned();
    for id in [&ca, &cb] {
        let dead = app.wait_command(id, &["dead", "succeeded"]).await;
        assert_eq!(dead["status"], "dead", "{dead}");
        assert_eq!(dead["attempts"], 3, "retried until the attempts ran out: {dead}");
        assert!(dead["last_error"].is_string(), "{dead}");
    }
    assert!(app.runner(&a).await["last_error"].is_string());
    assert_eq!(app.get("/describe-commands?status=dead").await.body["commands"].as_array().unwrap().len(), 2);

    // The operator fixes the cause and restarts the service ...
    app.stop_app().await;
    app.deployment.env.retain(|(k, _)| k != fault.0);
    app.deployment.renew_cloud();
    let fixed = app.deployment.spawn(Role::Serve).await;
    app.address = fixed.address.clone();
    app.app = Some(fixed);

    // ... then replays one command from the command line and the other over HTTP.
    let out = app.deployment.command(&["replay", "--command-id", &ca]).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&ca));
    let r = app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", cb.as_str())])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    for (runner, id) in [(&a, &ca), (&b, &cb)] {
        let done = app.wait_command(id, &["succeeded", "dead"]).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(app.instances_of(runner).await.len(), 1);
        app.wait_runner(runner, "running").await;
    }
    // Nothing is left to replay.
    let again = app.deployment.command(&["replay", "--all"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0 command(s)"), "{again:?}");
    app.stop_app().await;
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_command_finish_before_the_worker_exits() {
    let mut app = spawn_app_with(TestConfig { role: Role::Api, ..TestConfig::default() }).await;
    let runner_id = unique("drain");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    let mut worker = app
        .deployment
        .command(&["worker"])
        .env("GEONEX_FAILPOINTS", "after-run-instances=sleep(2000)")
        .spawn()
        .unwrap();
    eventually("the worker holds the command", Duration::from_secs(30), || async {
        app.command(&command_id).await["status"] == "running"
    })
    .await;
    let pid = worker.id().unwrap().to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await.expect("worker exits").unwrap();
    assert!(status.success(), "{status:?}");
    // It exited only after finishing: the command is done, not left to a rescuer.
    let c = app.command(&command_id).await;
    assert_eq!(c["status"], "succeeded", "{c}");
    assert_eq!(c["attempts"], 1);
    assert_eq!(app.instances_of(&runner_id).await.len(), 1);
    app.stop_app().await;
}

//! A killed process's in-flight commands are taken over within seconds, not when
//! their leases run out: `geonex serve` killed twice during a burst, a `geonex
//! worker` killed while the API keeps running, and one of two workers killed.
//! The cloud is counted straight from moto: one live instance per runner, none
//! without a runner.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use geonex::startup::Role as AppRole;
use geonex_shared::domain::{CommandStatus, Role};
use geonex_shared::store::CommandQuery;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{
    APPROVED_IMAGES, Deployment, PrivateMoto, Process, TestConfig, TestStore, approve_image, eventually,
    service_token, spawn_app_with, unique,
};

/// How long after the last restart everything must have finished.
const RECOVERY: Duration = Duration::from_secs(30);

/// Leases as long as the old default, so only the holder's missing heartbeat
/// can explain a recovery within `RECOVERY`; EC2 is a moto of the test's own,
/// so the time it measures is the system's, not a busy emulator's.
fn config(moto: &PrivateMoto) -> TestConfig {
    let mut extra_env = moto.env();
    extra_env.push(("GEONEX_WORKER__LEASE_SECS".into(), "300".into()));
    TestConfig { extra_env, ..TestConfig::default() }
}

fn api_only(moto: &PrivateMoto) -> TestConfig {
    TestConfig { role: AppRole::Api, ..config(moto) }
}

struct Burst {
    /// (runner id, command id) of every accepted start.
    accepted: Vec<(String, Uuid)>,
}

/// Sends `n` start-runner requests at once and keeps the accepted ones.
async fn burst(address: &str, token: &str, tag: &str, n: usize, into: &mut Burst) {
    let http = reqwest::Client::new();
    let sends = (0..n).map(|i| {
        let runner = unique(&format!("{tag}{i}"));
        let url = format!(
            "{address}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P"
        );
        let req = http.get(url).bearer_auth(token).send();
        async move {
            let r = req.await.expect("request");
            assert_eq!(r.status().as_u16(), 202, "start {runner}");
            let body: Value = r.json().await.expect("json");
            (runner, body["command_id"].as_str().expect("command_id").parse::<Uuid>().expect("uuid"))
        }
    });
    into.accepted.extend(futures::future::join_all(sends).await);
}

/// Waits until some command of the deployment is running (work is in flight).
async fn until_running(store: &TestStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = CommandQuery { status: Some(CommandStatus::Running), limit: 1, ..Default::default() };
        if !store.list_commands(&q).await.expect("list").is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "no command ever started running");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls until every accepted command succeeded, within `RECOVERY` of `since`;
/// returns how long recovery took.
async fn all_succeed(store: &TestStore, burst: &Burst, since: Instant) -> Duration {
    loop {
        let mut pending = Vec::new();
        for (runner, id) in &burst.accepted {
            let c = store.get_command(*id).await.expect("get").expect("accepted command stored");
            if c.status != CommandStatus::Succeeded {
                pending.push(format!("{runner}: {} attempts={} holder={:?}", c.status.as_str(), c.attempts, c.lease_holder));
            }
        }
        if pending.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < RECOVERY,
            "{} of {} commands unfinished {RECOVERY:?} after the last restart: {pending:#?}",
            pending.len(),
            burst.accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every accepted runner is running with exactly one live instance in moto, and
/// moto holds no live instance of this fleet that no runner owns.
async fn one_instance_per_runner(deployment: &Deployment, store: &TestStore, burst: &Burst, moto: &PrivateMoto) {
    let fleet = deployment.settings().ec2.fleet;
    let ec2 = moto.ec2();
    let out = ec2
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:geonex:fleet").values(&fleet).build())
        .send()
        .await
        .expect("describe instances");
    let mut live: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in out.reservations().iter().flat_map(|r| r.instances()) {
        let state = i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default();
        if state == "terminated" {
            continue;
        }
        let runner = i
            .tags()
            .iter()
            .find(|t| t.key() == Some("geonex:runner-id"))
            .and_then(|t| t.value())
            .unwrap_or("(untagged)")
            .to_owned();
        live.entry(runner).or_default().push(i.instance_id().unwrap_or_default().to_owned());
    }
    for (runner, _) in &burst.accepted {
        let instances = live.remove(runner).unwrap_or_default();
        assert_eq!(instances.len(), 1, "runner {runner} has live instances {instances:?}");
        // The instance observer follows each launched instance to running.
        let deadline = Instant::now() + Duration::from_secs(30);
        let r = loop {
            let r = store.get_runner(runner).await.expect("get runner").expect("runner");
            if r.observed_state.as_str() == "running" || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(r.observed_state.as_str(), "running", "{runner}");
        assert_eq!(r.instance_id.as_deref(), Some(instances[0].as_str()), "{runner}");
    }
    assert!(live.is_empty(), "instances no runner owns: {live:?}");
}

/// A production deployment (Postgres, RabbitMQ, moto) with its images approved
/// and an admin token, its processes started by the test.
async fn deployment(moto: &PrivateMoto) -> (Deployment, TestStore, String) {
    let deployment = Deployment::new(&config(moto)).await;
    let store = deployment.store().await;
    for image in APPROVED_IMAGES {
        approve_image(&store, image).await;
    }
    let token = service_token(&store, "recovery", Role::Admin, None).await;
    (deployment, store, token)
}

async fn serve(deployment: &Deployment) -> Process {
    let mut cmd = deployment.command(&["serve"]);
    // The "API listening" line that gives the address is at info.
    cmd.env("GEONEX_LOG__FILTER", "info");
    Process::start(cmd, true).await
}

async fn worker(deployment: &Deployment) -> Process {
    Process::start(deployment.command(&["worker"]), false).await
}

#[tokio::test]
async fn a_serve_process_killed_twice_during_a_burst_finishes_every_start_within_seconds_of_the_restart() {
    let moto = PrivateMoto::start().await;
    let (deployment, store, token) = deployment(&moto).await;
    let mut accepted = Burst { accepted: Vec::new() };

    let mut server = serve(&deployment).await;
    burst(&server.address, &token, "first", 20, &mut accepted).await;
    until_running(&store).await;
    server.kill().await;

    let mut server = serve(&deployment).await;
    burst(&server.address, &token, "second", 20, &mut accepted).await;
    until_running(&store).await;
    server.kill().await;

    let interrupted = {
        let q = CommandQuery { status: Some(CommandStatus::Running), limit: 100, ..Default::default() };
        store.list_commands(&q).await.expect("list").len()
    };
    assert!(interrupted > 0, "the kill should leave commands running");
    let mut server = serve(&deployment).await;
    let restarted = Instant::now();
    let took = all_succeed(&store, &accepted, restarted).await;
    eprintln!("recovery after the second kill: {took:?} for {} commands ({interrupted} interrupted)", accepted.accepted.len());
    one_instance_per_runner(&deployment, &store, &accepted, &moto).await;
    server.kill().await;
}

#[tokio::test]
async fn a_worker_killed_mid_burst_while_the_api_keeps_running_is_taken_over_by_its_replacement() {
    let moto = PrivateMoto::start().await;
    let app = spawn_app_with(api_only(&moto)).await;
    let mut accepted = Burst { accepted: Vec::new() };
    let mut first = worker(&app.deployment).await;
    burst(&app.address, &app.token, "w", 40, &mut accepted).await;
    until_running(&app.store).await;
    first.kill().await;

    let mut second = worker(&app.deployment).await;
    let restarted = Instant::now();
    let took = all_succeed(&app.store, &accepted, restarted).await;
    eprintln!("recovery after a worker kill: {took:?}");
    one_instance_per_runner(&app.deployment, &app.store, &accepted, &moto).await;
    second.kill().await;
}

#[tokio::test]
async fn of_two_workers_the_survivor_takes_over_what_the_killed_one_held() {
    let moto = PrivateMoto::start().await;
    let app = spawn_app_with(api_only(&moto)).await;
    let mut victim = worker(&app.deployment).await;
    let mut survivor = worker(&app.deployment).await;
    // Both registered: the victim's id is the row with its pid.
    let pid = victim.pid();
    let victim_id = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let workers = app.store.list_workers().await.expect("workers");
            if workers.len() == 2
                && let Some(w) = workers.iter().find(|w| w.pid == pid)
            {
                break w.worker_id;
            }
            assert!(Instant::now() < deadline, "both workers should register: {workers:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut accepted = Burst { accepted: Vec::new() };
    burst(&app.address, &app.token, "two", 40, &mut accepted).await;
    // Kill the victim while it holds something.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let q = CommandQuery { status: Some(CommandStatus::Running), limit: 100, ..Default::default() };
        let running = app.store.list_commands(&q).await.expect("list");
        if running.iter().any(|c| c.lease_holder == Some(victim_id)) {
            break;
        }
        assert!(Instant::now() < deadline, "the victim never held a command");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    victim.kill().await;
    let killed = Instant::now();

    // The survivor was never restarted: it takes over on its own.
    let took = all_succeed(&app.store, &accepted, killed).await;
    eprintln!("recovery by the surviving worker: {took:?}");
    one_instance_per_runner(&app.deployment, &app.store, &accepted, &moto).await;
    // What the victim ran shows who ran it.
    let workers = app.store.list_workers().await.expect("workers");
    assert!(workers.iter().any(|w| w.worker_id == victim_id), "a killed worker's row stays until forgotten");
    survivor.kill().await;
}

#[tokio::test]
async fn describe_command_shows_who_holds_a_running_command_and_since_when() {
    let moto = PrivateMoto::start().await;
    let mut app = spawn_app_with(api_only(&moto)).await;
    app.ec2 = moto.ec2();
    // A worker that stops at the failpoint right after RunInstances holds the
    // command while it waits there.
    let mut cmd = app.deployment.command(&["worker"]);
    cmd.env("GEONEX_FAILPOINTS", "after-run-instances=sleep(600000)");
    let mut held = Process::start(cmd, false).await;
    let runner = unique("held");
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    let id = r.body["command_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let c = app.command(&id).await;
        if c["status"] == "running" && c["holder"].is_object() {
            break c;
        }
        assert!(Instant::now() < deadline, "never shown running with a holder: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let holder = &shown["holder"];
    assert_eq!(holder["pid"], held.pid(), "{shown}");
    assert_eq!(holder["alive"], true, "{shown}");
    assert!(holder["hostname"].as_str().is_some_and(|h| !h.is_empty()), "{shown}");
    assert_eq!(shown["lease_holder"], holder["worker_id"]);
    assert!(shown["claimed_at"].as_str().is_some() && shown["lease_until"].as_str().is_some(), "{shown}");
    let workers = app.get("/describe-workers").await;
    assert_eq!(workers.status, 200);
    assert!(workers.body["workers"].as_array().unwrap().iter().any(|w| w["worker_id"] == holder["worker_id"]));

    // Killed after its launch: the holder is shown dead once its heartbeat is
    // stale, and the next worker takes the command over and adopts the instance.
    eventually("the held worker launched", Duration::from_secs(30), || async {
        app.instances_of(&runner).await.len() == 1
    })
    .await;
    held.kill().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = app.command(&id).await;
        if c["status"] != "running" || c["holder"]["alive"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "the dead holder still looks alive: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut next = worker(&app.deployment).await;
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["result"]["adopted"], true, "{done}");
    assert!(done["holder"].is_null(), "a finished command has no holder: {done}");
    assert_eq!(app.instances_of(&runner).await.len(), 1);
    next.kill().await;
}

/// A worker told to consume only the runner queue runs runner commands and
/// leaves e-mail alone, for the workers that take it.
#[tokio::test]
async fn a_worker_given_only_the_runner_queue_leaves_e_mail_to_others() {
    let moto = PrivateMoto::start().await;
    let app = spawn_app_with(api_only(&moto)).await;
    let mut cmd = app.deployment.command(&["worker"]);
    cmd.env("GEONEX_WORKER__QUEUES", "[runner]");
    let mut runner_only = Process::start(cmd, false).await;

    let email = app.get("/send-email?image_name=geonex/fire:1&user_name=ada&email=ada@example.org").await;
    assert_eq!(email.status, 202, "{}", email.body);
    let email_id = email.body["command_id"].as_str().unwrap().to_owned();
    let start = app.start_runner(&unique("q"), APPROVED_IMAGES[0]).await;
    assert_eq!(start.status, 202, "{}", start.body);
    app.wait_command(start.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.command(&email_id).await["status"], "queued", "the runner-only worker took an e-mail");

    let mut any = worker(&app.deployment).await;
    app.wait_command(&email_id, &["succeeded", "dead"]).await;
    runner_only.kill().await;
    any.kill().await;
}

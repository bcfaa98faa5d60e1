//! Reconciliation against moto: changes made outside the API show up, and orphans
//! are reported and (only when enabled, after the grace period) reaped.

use std::time::Duration;

use crate::helpers::{TestApp, TestConfig, eventually, spawn_app_with, unique};

fn sweeping(extra: &[(&str, &str)]) -> TestConfig {
    let mut env = vec![("GEONEX_RECONCILE__INTERVAL_SECS".to_owned(), "1".to_owned())];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    TestConfig { extra_env: env, ..TestConfig::default() }
}

async fn started(app: &TestApp) -> (String, String) {
    let runner = unique("live");
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let instance = app.wait_runner(&runner, "running").await["instance_id"].as_str().unwrap().to_owned();
    (runner, instance)
}

/// An instance of this deployment's fleet that no runner of it launched.
async fn stray(app: &TestApp, runner_tag: &str) -> String {
    stray_in(app, &app.deployment.settings().ec2.fleet, runner_tag).await
}

/// An instance of `fleet` tagged with `runner_tag`, launched by hand.
async fn stray_in(app: &TestApp, fleet: &str, runner_tag: &str) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let out = app
        .ec2
        .run_instances()
        .image_id("ami-03cf127a")
        .min_count(1)
        .max_count(1)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key("geonex:fleet").value(fleet).build())
                .tags(Tag::builder().key("geonex:runner-id").value(runner_tag).build())
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_owned()
}

async fn ec2_state(app: &TestApp, instance_id: &str) -> String {
    let out = app.ec2.describe_instances().instance_ids(instance_id).send().await.unwrap();
    out.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_owned()
}

#[tokio::test]
async fn an_instance_terminated_outside_the_api_shows_terminated_and_its_running_containers_are_killed() {
    let app = spawn_app_with(sweeping(&[])).await;
    let (runner, instance) = started(&app).await;
    sqlx::query(
        "insert into container (container_id, runner_id, instance_id, image_name) values ($1, $2, $3, 'geonex/fire:1.5')",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(&runner)
    .bind(&instance)
    .execute(app.store.pool())
    .await
    .unwrap();

    app.ec2.stop_instances().instance_ids(&instance).send().await.unwrap();
    eventually("the sweep sees the stop", Duration::from_secs(20), || async {
        app.runner(&runner).await["observed_state"] == "stopped"
    })
    .await;
    app.ec2.terminate_instances().instance_ids(&instance).send().await.unwrap();
    eventually("the sweep sees the termination", Duration::from_secs(20), || async {
        app.runner(&runner).await["observed_state"] == "terminated"
    })
    .await;
    let status: String = sqlx::query_scalar("select status from container where runner_id = $1")
        .bind(&runner)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(status, "killed");
    let orphans = app.get("/describe-orphans").await;
    assert_eq!(orphans.body["orphans"], serde_json::json!([]), "a runner's own instance is no orphan");
}

#[tokio::test]
async fn orphans_are_reaped_only_after_the_grace_period_and_a_live_runners_instance_survives() {
    let app = spawn_app_with(sweeping(&[
        ("GEONEX_RECONCILE__REAP_ORPHANS", "true"),
        ("GEONEX_RECONCILE__ORPHAN_GRACE_SECS", "3"),
    ]))
    .await;
    let (runner, instance) = started(&app).await;
    let orphan = stray(&app, &unique("nobody")).await;
    // A second instance carrying the live runner's own tag is an orphan too.
    let twin = stray(&app, &runner).await;

    eventually("orphans reported", Duration::from_secs(20), || async {
        let listed = app.get("/describe-orphans").await.body["orphans"].clone();
        let ids: Vec<&str> = listed.as_array().unwrap().iter().map(|o| o["instance_id"].as_str().unwrap()).collect();
        ids.contains(&orphan.as_str()) && ids.contains(&twin.as_str())
    })
    .await;
    assert_eq!(ec2_state(&app, &orphan).await, "running", "not reaped before the grace period");

    eventually("orphans reaped", Duration::from_secs(30), || async {
        ec2_state(&app, &orphan).await == "terminated" && ec2_state(&app, &twin).await == "terminated"
    })
    .await;
    // The reaper records each reap right after its TerminateInstances.
    eventually("reaps recorded", Duration::from_secs(10), || async {
        let listed = app.get("/describe-orphans").await.body["orphans"].clone();
        listed.as_array().unwrap().iter().all(|o| o["reaped_at"].is_string())
    })
    .await;
    assert_eq!(ec2_state(&app, &instance).await, "running", "the live runner's instance survives");
    app.wait_runner(&runner, "running").await;
}

#[tokio::test]
async fn without_reaping_enabled_orphans_are_only_reported() {
    let app = spawn_app_with(sweeping(&[("GEONEX_RECONCILE__ORPHAN_GRACE_SECS", "0")])).await;
    let orphan = stray(&app, &unique("nobody")).await;
    eventually("orphan seen over several sweeps", Duration::from_secs(20), || async {
        let listed = app.get("/describe-orphans").await.body["orphans"].clone();
        listed.as_array().unwrap().iter().any(|o| {
            let at = |k: &str| o[k].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
            o["instance_id"] == orphan.as_str() && at("last_seen_at") - at("first_seen_at") >= chrono::Duration::seconds(2)
        })
    })
    .await;
    assert_eq!(ec2_state(&app, &orphan).await, "running");
}

#[tokio::test]
async fn another_fleets_instance_with_the_same_runner_id_is_not_this_runners() {
    // Two deployments in one account, each with a runner of the same id.
    let app = spawn_app_with(TestConfig::default()).await;
    let (runner, instance) = started(&app).await;
    let foreign = stray_in(&app, &unique("another-deployment"), &runner).await;
    let r = app.get(&format!("/stop-runner?instance_id={instance}&runner_id={runner}")).await;
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(ec2_state(&app, &instance).await, "stopped");
    assert_eq!(ec2_state(&app, &foreign).await, "running", "the other fleet's instance is left alone");
    assert_eq!(app.runner(&runner).await["instance_id"], instance.as_str());
}

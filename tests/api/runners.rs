//! The runner lifecycle, in both modes (moto's EC2 and the simulated cloud):
//! start, stop, restart, delete, and the rules that keep one runner to one
//! instance.

use std::time::Duration;

use geonex::startup::Role;
use geonex_worker::cloud::LaunchSpec;

use crate::helpers::{Mode, TestConfig, eventually, spawn_app_in, spawn_app_with, unique};

in_both_modes!(
    start_runner_launches_a_tagged_instance_with_user_data_and_describe_shows_it_running,
    stop_then_restart_with_a_new_image_then_delete_drive_the_instance_through_its_states,
    restarting_a_runner_whose_instance_was_terminated_outside_the_api_launches_a_fresh_one,
    the_same_start_sent_twice_makes_exactly_one_instance,
    an_idempotency_key_returns_the_same_command_and_refuses_a_different_request,
    a_second_instance_of_one_runner_found_in_the_cloud_is_terminated,
);

async fn start_runner_launches_a_tagged_instance_with_user_data_and_describe_shows_it_running(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("start");
    let r = app.start_runner(&runner_id, "geonex/active_fire_go16abi15:1.5").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["action"], "start_runner");
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["runner_id"], runner_id.as_str());
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();

    let done = app.wait_command(&command_id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["requested_by"], "service:test-admin");

    assert_eq!(done["result"]["launched"], true, "{done}");
    let runner = app.wait_runner(&runner_id, "running").await;
    let instances = app.instances_of(&runner_id).await;
    assert_eq!(instances.len(), 1, "{instances:?}");
    let (instance_id, state) = &instances[0];
    assert_eq!(state, "running");

    let tags = app.tags_of(instance_id).await;
    let tag = |k: &str| tags.get(k).map(String::as_str);
    assert_eq!(tag("geonex:runner-id"), Some(runner_id.as_str()));
    assert_eq!(tag("geonex:runner-name"), Some("Production"));
    assert_eq!(tag("geonex:command-id"), Some(command_id.as_str()));
    assert_eq!(tag("Name"), Some("geonex-runner Production"));
    if mode == Mode::Production {
        let described = app.ec2.describe_instances().instance_ids(instance_id).send().await.unwrap();
        let inst = &described.reservations()[0].instances()[0];
        assert_eq!(inst.instance_type().map(|t| t.as_str()), Some("m5d.large"));
    }

    let user_data = app.user_data(instance_id).await;
    assert!(user_data.contains("IMAGE='geonex/active_fire_go16abi15:1.5'"), "{user_data}");
    assert!(user_data.contains("S3_OUTPUT='s3://geonex/GO16_ABI15'"), "{user_data}");
    assert!(user_data.contains("/usr/local/bin/geonex agent"), "{user_data}");
    assert!(user_data.contains("GEONEX_AGENT__TOKEN='gnxa_"), "{user_data}");

    assert_eq!(runner["desired_state"], "running");
    assert_eq!(runner["instance_id"], instance_id.as_str());
    assert_eq!(runner["image_name"], "geonex/active_fire_go16abi15:1.5");
    assert_eq!(runner["s3_output"], "s3://geonex/GO16_ABI15");
    assert_eq!(runner["instance_type"], "m5d.large");
    assert_eq!(runner["runner_name"], "Production");
    assert!(runner["last_error"].is_null());
}

async fn stop_then_restart_with_a_new_image_then_delete_drive_the_instance_through_its_states(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("life");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let instance_id = app.runner(&runner_id).await["instance_id"].as_str().unwrap().to_owned();

    let r = app.get(&format!("/stop-runner?instance_id={instance_id}&runner_id={runner_id}&runner_name=Production")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let runner = app.wait_runner(&runner_id, "stopped").await;
    assert_eq!(runner["desired_state"], "stopped");
    assert_eq!(app.instances_of(&runner_id).await, vec![(instance_id.clone(), "stopped".to_owned())]);

    let r = app
        .get(&format!(
            "/restart-runner?instance_id={instance_id}&image_name=geonex/fire:2.0&s3_output=s3://geonex/v2&runner_id={runner_id}&runner_name=Prod2"
        ))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let runner = app.wait_runner(&runner_id, "running").await;
    assert_eq!(runner["image_name"], "geonex/fire:2.0");
    assert_eq!(runner["s3_output"], "s3://geonex/v2");
    assert_eq!(runner["runner_name"], "Prod2");
    assert_eq!(runner["instance_id"], instance_id.as_str(), "a stopped instance is restarted, not replaced");
    let user_data = app.user_data(&instance_id).await;
    assert!(user_data.contains("IMAGE='geonex/fire:2.0'"), "{user_data}");
    assert!(user_data.contains("S3_OUTPUT='s3://geonex/v2'"), "{user_data}");

    // Restarting a running instance: stopped, updated, started.
    let r = app
        .get(&format!(
            "/restart-runner?instance_id={instance_id}&image_name=geonex/fire:3.0&s3_output=s3://geonex/v2&runner_id={runner_id}&runner_name=Prod2"
        ))
        .await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    assert!(app.user_data(&instance_id).await.contains("IMAGE='geonex/fire:3.0'"));
    app.wait_runner(&runner_id, "running").await;

    let r = app.get(&format!("/delete-runner?instance_id={instance_id}&runner_id={runner_id}")).await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let runner = app.wait_runner(&runner_id, "terminated").await;
    assert_eq!(runner["desired_state"], "deleted");
    assert_eq!(app.instances_of(&runner_id).await, vec![(instance_id.clone(), "terminated".to_owned())]);

    // A deleted runner takes no more commands.
    let r = app.get(&format!("/stop-runner?instance_id={instance_id}&runner_id={runner_id}")).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "runner_deleted");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 409);
}

async fn restarting_a_runner_whose_instance_was_terminated_outside_the_api_launches_a_fresh_one(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("fresh");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let old = app.runner(&runner_id).await["instance_id"].as_str().unwrap().to_owned();
    app.cloud().terminate(&old).await.unwrap();

    let r = app
        .get(&format!(
            "/restart-runner?instance_id={old}&image_name=geonex/fire:2.0&s3_output=s3://geonex/out&runner_id={runner_id}&runner_name=Production"
        ))
        .await;
    let done = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let runner = app.wait_runner(&runner_id, "running").await;
    let new = runner["instance_id"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(app.user_data(new).await.contains("IMAGE='geonex/fire:2.0'"));
    let live: Vec<_> = app.instances_of(&runner_id).await.into_iter().filter(|(_, s)| s != "terminated").collect();
    assert_eq!(live.len(), 1);
}

async fn the_same_start_sent_twice_makes_exactly_one_instance(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("twice");
    let first = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let second = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!((first.status, second.status), (202, 202));
    for r in [&first, &second] {
        let c = app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
        assert_eq!(c["status"], "succeeded", "{c}");
    }
    assert_eq!(app.instances_of(&runner_id).await.len(), 1);
    app.wait_runner(&runner_id, "running").await;

    // A start with other parameters is a conflict: that is what restart is for.
    let r = app.start_runner(&runner_id, "geonex/fire:9.9").await;
    assert_eq!(r.status, 409);
    assert_eq!(r.body["error"]["code"], "runner_exists");
}

async fn an_idempotency_key_returns_the_same_command_and_refuses_a_different_request(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("idem");
    let url = |image: &str| {
        format!(
            "{}/start-runner?instance_type=m5d.large&image_name={image}&s3_output=s3://geonex/out&runner_id={runner_id}&runner_name=P",
            app.address
        )
    };
    let a = app.send(app.http.get(url("geonex/fire:1.5")).header("Idempotency-Key", "k-1")).await;
    let b = app.send(app.http.get(url("geonex/fire:1.5")).header("Idempotency-Key", "k-1")).await;
    assert_eq!((a.status, b.status), (202, 202));
    assert_eq!(a.body["command_id"], b.body["command_id"]);
    assert_eq!(b.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let c = app.send(app.http.get(url("geonex/fire:2.0")).header("Idempotency-Key", "k-1")).await;
    assert_eq!(c.status, 409);
    assert_eq!(c.body["error"]["field"], "Idempotency-Key");
    app.wait_command(a.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let listed = app.get(&format!("/describe-commands?runner_id={runner_id}")).await;
    assert_eq!(listed.body["commands"].as_array().unwrap().len(), 1);
    assert_eq!(app.instances_of(&runner_id).await.len(), 1);
}

#[tokio::test]
async fn commands_on_one_runner_apply_in_the_order_they_were_accepted() {
    // Accept start and stop while no worker runs, so both wait in the queue; then
    // a worker with many slots takes both at once and must still apply them in order.
    let mut app = spawn_app_with(TestConfig { role: Role::Api, ..TestConfig::default() }).await;
    let runner_id = unique("order");
    let start = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let stop = app.get(&format!("/stop-runner?instance_id=i-0123456789abcdef0&runner_id={runner_id}")).await;
    assert_eq!((start.status, stop.status), (202, 202), "{}", stop.body);
    let worker = app.deployment.spawn(Role::Worker).await;
    let s1 = app.wait_command(start.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    let s2 = app.wait_command(stop.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!((s1["status"].as_str(), s2["status"].as_str()), (Some("succeeded"), Some("succeeded")));
    let at = |v: &serde_json::Value| v.as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(at(&s1["finished_at"]) <= at(&s2["started_at"]), "{s1} {s2}");
    app.wait_runner(&runner_id, "stopped").await;
    let instances = app.instances_of(&runner_id).await;
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].1, "stopped");
    worker.stop().await;
    app.stop_app().await;
}

async fn a_second_instance_of_one_runner_found_in_the_cloud_is_terminated(mode: Mode) {
    let app = spawn_app_in(mode).await;
    let runner_id = unique("extra");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let kept = app.runner(&runner_id).await["instance_id"].as_str().unwrap().to_owned();
    // Someone launches another instance with the runner's tag.
    let stray = app
        .cloud()
        .launch(&LaunchSpec {
            runner_id: runner_id.clone(),
            runner_name: "stray".into(),
            command_id: unique("by-hand"),
            instance_type: "t3.micro".into(),
            user_data: "#!/bin/sh\n".into(),
            client_token: unique("by-hand"),
            spot: false,
        })
        .await
        .unwrap()
        .instance_id;
    let r = app.get(&format!("/stop-runner?instance_id={kept}&runner_id={runner_id}")).await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    eventually("stray instance terminated", Duration::from_secs(10), || async {
        app.instances_of(&runner_id).await.iter().any(|(id, s)| id == &stray && s == "terminated")
    })
    .await;
    assert_eq!(app.runner(&runner_id).await["instance_id"], kept.as_str());
}

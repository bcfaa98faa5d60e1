//! The on-instance agent's side of the control plane: per-runner tokens in the
//! user data, `POST /runner-events`, and the container lists.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Reply, TestApp, TestConfig, spawn_app_with, unique, user_data_of};

fn config() -> TestConfig {
    TestConfig {
        extra_env: vec![
            ("GEONEX_API__PUBLIC_URL".into(), "https://geonex.example.org".into()),
            ("GEONEX_AGENT__QUEUE_URL".into(), "https://sqs.us-east-1.amazonaws.com/1/goes".into()),
        ],
        ..TestConfig::default()
    }
}

/// Starts a runner and returns its id, instance id and the agent token found in
/// the instance's user data.
async fn started(app: &TestApp) -> (String, String, String) {
    let runner = unique("agent");
    let r = app.start_runner(&runner, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let instance = app.runner(&runner).await["instance_id"].as_str().unwrap().to_owned();
    let token = token_in(&user_data_of(&app.ec2, &instance).await);
    (runner, instance, token)
}

fn token_in(user_data: &str) -> String {
    let line = user_data.lines().find(|l| l.starts_with("GEONEX_AGENT__TOKEN=")).expect("token line in user data");
    line.trim_start_matches("GEONEX_AGENT__TOKEN=").trim_matches('\'').to_owned()
}

async fn post_event(app: &TestApp, token: &str, event: &Value) -> Reply {
    app.send(app.http.post(format!("{}/runner-events", app.address)).bearer_auth(token).json(event)).await
}

fn event(runner: &str, kind: &str, container: Uuid, extra: Value) -> Value {
    let mut e = json!({
        "event_id": Uuid::new_v4(), "runner_id": runner, "kind": kind,
        "container_id": container, "at": chrono::Utc::now().to_rfc3339(),
    });
    if let (Some(e), Value::Object(extra)) = (e.as_object_mut(), extra) {
        e.extend(extra);
    }
    e
}

#[tokio::test]
async fn the_user_data_carries_a_working_token_for_its_runner_only() {
    let app = spawn_app_with(config()).await;
    let (runner, instance, token) = started(&app).await;
    let ud = user_data_of(&app.ec2, &instance).await;
    assert!(ud.contains("GEONEX_AGENT__API_URL='https://geonex.example.org'"), "{ud}");
    assert!(ud.contains("GEONEX_AGENT__QUEUE_URL='https://sqs.us-east-1.amazonaws.com/1/goes'"));
    assert!(token.starts_with("gnxa_"));

    let (other, _, other_token) = started(&app).await;
    let c = Uuid::new_v4();
    let r = post_event(&app, &other_token, &event(&runner, "container_started", c, json!({}))).await;
    assert_eq!(r.status, 403, "another runner's token: {}", r.body);
    let r = post_event(&app, &app.token, &event(&runner, "container_started", c, json!({}))).await;
    assert_eq!(r.status, 403, "a user token: {}", r.body);
    let r = app
        .send_anonymous(app.http.post(format!("{}/runner-events", app.address)).json(&event(&runner, "heartbeat", c, json!({}))))
        .await;
    assert_eq!(r.status, 401);
    let r = post_event(&app, &token, &event(&runner, "container_started", c, json!({}))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post_event(&app, &other_token, &event(&other, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert!(!app.runner(&other).await["last_heartbeat_at"].is_null());

    // Tokens never show in what the API returns.
    let runners = app.get("/describe-runners").await;
    assert!(!runners.body.to_string().contains(&token));
}

#[tokio::test]
async fn a_restart_replaces_the_token_and_a_delete_revokes_it() {
    let app = spawn_app_with(config()).await;
    let (runner, instance, old) = started(&app).await;
    let r = app
        .get(&format!(
            "/restart-runner?instance_id={instance}&image_name=geonex/fire:2&s3_output=s3://geonex/GO16_ABI15&runner_id={runner}&runner_name=Production"
        ))
        .await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let new = token_in(&user_data_of(&app.ec2, &instance).await);
    assert_ne!(old, new);
    let r = post_event(&app, &old, &event(&runner, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 401, "the old token is revoked: {}", r.body);
    let r = post_event(&app, &new, &event(&runner, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 202, "{}", r.body);

    let r = app.get(&format!("/delete-runner?instance_id={instance}&runner_id={runner}")).await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let r = post_event(&app, &new, &event(&runner, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 401, "a deleted runner's token is revoked: {}", r.body);
}

#[tokio::test]
async fn events_are_applied_once_and_containers_are_listed_with_their_exit_codes() {
    let app = spawn_app_with(config()).await;
    let (runner, instance, token) = started(&app).await;
    let (ok, bad, lost) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    for c in [ok, bad, lost] {
        let e = event(&runner, "container_started", c, json!({"input_url": "s3://noaa-goes16/x.nc", "instance_id": instance}));
        assert_eq!(post_event(&app, &token, &e).await.status, 202);
    }
    let finish = event(&runner, "container_finished", ok, json!({"exit_code": 0, "duration_ms": 1500, "log_tail": "done"}));
    let first = post_event(&app, &token, &finish).await;
    assert_eq!((first.status, first.body["applied"].clone()), (202, json!(true)));
    let again = post_event(&app, &token, &finish).await;
    assert_eq!((again.status, again.body["applied"].clone()), (202, json!(false)), "a resent event is a no-op");
    let e = event(&runner, "container_finished", bad, json!({"exit_code": 3}));
    assert_eq!(post_event(&app, &token, &e).await.status, 202);
    let e = event(&runner, "container_finished", lost, json!({"log_tail": "timed out"}));
    assert_eq!(post_event(&app, &token, &e).await.status, 202);

    let all = app.get(&format!("/describe-containers?runner_id={runner}")).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let list = all.body["containers"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    let by_id = |id: Uuid| list.iter().find(|c| c["container_id"] == id.to_string()).unwrap().clone();
    assert_eq!((by_id(ok)["status"].clone(), by_id(ok)["exit_code"].clone()), (json!("exited"), json!(0)));
    assert_eq!((by_id(bad)["status"].clone(), by_id(bad)["exit_code"].clone()), (json!("exited"), json!(3)));
    assert_eq!(by_id(lost)["status"], "failed");
    for key in ["container_id", "runner_id", "instance_id", "image_name", "status", "exit_code", "started_at", "finished_at"] {
        assert!(by_id(ok).get(key).is_some(), "{key} in {}", by_id(ok));
    }
    assert_eq!(by_id(ok)["instance_id"], instance.as_str());
    assert_eq!(by_id(ok)["image_name"], "geonex/fire:1.5");

    let failed = app.get(&format!("/describe-containers?runner_id={runner}&status=failed")).await;
    assert_eq!(failed.body["containers"].as_array().unwrap().len(), 1);
    let page = app.get(&format!("/describe-containers?runner_id={runner}&limit=2")).await;
    assert_eq!(page.body["containers"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap();
    let rest = app.get(&format!("/describe-containers?runner_id={runner}&limit=2&cursor={cursor}")).await;
    assert_eq!(rest.body["containers"].as_array().unwrap().len(), 1);
    assert!(rest.body["next_cursor"].is_null());
    let future = app.get(&format!("/describe-containers?since={}", urlencode(&(chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()))).await;
    assert_eq!(future.body["containers"].as_array().unwrap().len(), 0, "{}", future.body);

    let tag = all.headers["etag"].to_str().unwrap().to_owned();
    let cached = app
        .send(app.http.get(format!("{}/describe-containers?runner_id={runner}", app.address)).header("If-None-Match", &tag))
        .await;
    assert_eq!(cached.status, 304);

    let grouped = app.get(&format!("/describe-runner-containers?runner_id={runner}")).await;
    assert_eq!(grouped.status, 200, "{}", grouped.body);
    let runners = grouped.body["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 1);
    assert_eq!(runners[0]["runner_id"], runner.as_str());
    assert_eq!(runners[0]["runner_name"], "Production");
    assert_eq!(runners[0]["containers"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn malformed_events_and_filters_name_their_field() {
    let app = spawn_app_with(config()).await;
    let (runner, _, token) = started(&app).await;
    let c = Uuid::new_v4();
    let cases = [
        (json!({"runner_id": runner, "kind": "heartbeat", "at": "2026-01-01T00:00:00Z"}), "event_id"),
        (event(&runner, "exploded", c, json!({})), "kind"),
        (event(&runner, "container_finished", c, json!({"exit_code": "zero"})), "exit_code"),
        (event(&runner, "container_started", c, json!({"at": "yesterday"})), "at"),
        (event(&runner, "container_started", c, json!({"log_tail": "x".repeat(20_000)})), "log_tail"),
        (json!({"event_id": Uuid::new_v4(), "runner_id": runner, "kind": "container_started", "at": "2026-01-01T00:00:00Z"}), "container_id"),
    ];
    for (body, field) in cases {
        let r = post_event(&app, &token, &body).await;
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert_eq!(r.body["error"]["field"], field, "{}", r.body);
    }
    for (q, field) in [("status=done", "status"), ("since=today", "since"), ("cursor=zzz", "cursor"), ("limit=0", "limit")] {
        let r = app.get(&format!("/describe-containers?{q}")).await;
        assert_eq!((r.status, r.body["error"]["field"].clone()), (400, json!(field)), "{q}: {}", r.body);
    }
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

//! `POST /cancel-command`: a command that has not started is ended, and no
//! worker runs it afterwards.

use geonex::startup::Role;

use crate::helpers::{TestConfig, spawn_app_with, unique};

#[tokio::test]
async fn a_queued_command_cancelled_before_any_worker_runs_it_stays_dead_and_launches_nothing() {
    // The API alone: the command waits in the queue.
    let app = spawn_app_with(TestConfig { role: Role::Api, ..TestConfig::default() }).await;
    let runner_id = unique("cancel");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.body["command_id"].as_str().unwrap().to_owned();
    let cancel =
        |body: serde_json::Value| app.send(app.http.post(format!("{}/cancel-command", app.address)).json(&body));

    let r = cancel(serde_json::json!({ "command_id": id })).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "dead");
    assert_eq!(r.body["last_error"], "cancelled by service:test-admin");
    let c = app.command(&id).await;
    assert_eq!(c["status"], "dead", "{c}");
    assert_eq!(c["last_error"], "cancelled by service:test-admin");
    assert!(c["finished_at"].is_string());

    let again = cancel(serde_json::json!({ "command_id": id })).await;
    assert_eq!((again.status, again.body["error"]["code"].as_str()), (409, Some("not_cancellable")), "{}", again.body);
    let unknown = cancel(serde_json::json!({ "command_id": uuid::Uuid::new_v4() })).await;
    assert_eq!(unknown.status, 404);
    let bad = cancel(serde_json::json!({ "command_id": "nope" })).await;
    assert_eq!((bad.status, bad.body["error"]["field"].as_str()), (400, Some("command_id")));
    let missing = cancel(serde_json::json!({})).await;
    assert_eq!((missing.status, missing.body["error"]["field"].as_str()), (400, Some("command_id")));

    // A worker that comes up finds its message and drops it.
    let worker = app.deployment.spawn(Role::Worker).await;
    // A command queued behind it on the same queue: once that one has run,
    // the worker has had the cancelled one in its hands.
    let behind = app.start_runner(&unique("behind"), "geonex/fire:1.5").await;
    assert_eq!(behind.status, 202, "{}", behind.body);
    let behind = app.wait_command(behind.body["command_id"].as_str().unwrap(), &["succeeded", "dead"]).await;
    assert_eq!(behind["status"], "succeeded", "{behind}");
    assert_eq!(app.command(&id).await["status"], "dead");
    assert!(app.instances_of(&runner_id).await.is_empty(), "nothing was launched");
    // Replay is how it runs after all.
    let r =
        app.send(app.http.post(format!("{}/replay-command", app.address)).form(&[("command_id", id.as_str())])).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_command(&id, &["succeeded", "dead"]).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    worker.stop().await;
}

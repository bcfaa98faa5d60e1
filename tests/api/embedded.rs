//! One `geonex serve` process as a newcomer runs it: no database URL, no broker,
//! no AWS variables, no SMTP server — SQLite in the data directory, the
//! in-process queue, the simulated cloud and the file mailer. The runner
//! lifecycle, and a kill -9 in the middle of a batch.

use std::path::Path;
use std::time::Duration;

use geonex_shared::domain::Role;
use serde_json::Value;

use crate::helpers::{
    APPROVED_IMAGES, Deployment, Mode, Process, TestConfig, TestStore, approve_image, service_token, unique,
};

/// Starts `geonex serve` with nothing configured but its data directory (and
/// quick timings).
async fn serve(deployment: &Deployment) -> Process {
    let mut cmd = deployment.command(&["serve"]);
    for var in ["GEONEX_CLOUD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_ENDPOINT_URL"] {
        cmd.env_remove(var);
    }
    for (k, _) in &deployment.env {
        assert!(
            !["GEONEX_DATABASE_URL", "GEONEX_AMQP_URL", "GEONEX_SMTP_URL"].contains(&k.as_str()) && !k.starts_with("GEONEX_EC2__"),
            "the embedded deployment configures {k}"
        );
    }
    cmd.env("GEONEX_SIM__BOOT_DELAY_MS", "300")
        .env("GEONEX_SIM__STOP_DELAY_MS", "100")
        .env("GEONEX_SIM__LATENCY_MS", "40")
        .env("GEONEX_LOG__FILTER", "info");
    Process::start(cmd, true).await
}

async fn call(http: &reqwest::Client, token: &str, url: String) -> (u16, Value) {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_done(http: &reqwest::Client, token: &str, address: &str, command_id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, c) = call(http, token, format!("{address}/describe-command?command_id={command_id}")).await;
        if matches!(c["status"].as_str(), Some("succeeded" | "dead")) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "command {command_id} did not finish: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An embedded deployment (its SQLite database migrated, images approved) and an
/// admin token.
async fn setup() -> (Deployment, TestStore, String) {
    let deployment = Deployment::new(&TestConfig::in_mode(Mode::Embedded)).await;
    let store = deployment.store().await;
    for image in APPROVED_IMAGES {
        approve_image(&store, image).await;
    }
    let token = service_token(&store, "embedded", Role::Admin, None).await;
    (deployment, store, token)
}

/// Instances in the simulated cloud's saved state, by runner id.
fn sim_instances(dir: &Path) -> Vec<(String, String)> {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("sim-cloud.json")).unwrap()).unwrap();
    state["instances"]
        .as_object()
        .unwrap()
        .values()
        .map(|i| (i["tags"]["geonex:runner-id"].as_str().unwrap().to_owned(), i["instance_id"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn one_process_with_the_in_process_queue_and_the_simulated_cloud_runs_the_runner_lifecycle() {
    let (deployment, _store, token) = setup().await;
    let dir = deployment.data_dir.0.clone();
    let mut server = serve(&deployment).await;
    let http = reqwest::Client::new();
    let a = &server.address;

    let (status, ready) = call(&http, &token, format!("{a}/readyz")).await;
    assert_eq!(status, 200, "{ready}");
    assert!(ready["cloud"].as_str().unwrap().contains("SIMULATED"), "{ready}");
    assert_eq!(ready["broker"]["kind"], "in-process queue");
    // The start says what it chose for each port, where to go, and how to get in.
    let log = server.log.lock().unwrap().join("\n");
    let summary = format!("store: sqlite ({})", dir.join("geonex.db").display());
    assert!(log.contains(&summary), "{log}");
    assert!(log.contains("queue: in-process") && log.contains("SIMULATED") && log.contains("mail: files in"), "{log}");
    assert!(log.contains("geonex token create"), "{log}");

    let runner = unique("sim");
    let (status, r) = call(&http, &token, format!(
        "{a}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P"
    ))
    .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(wait_done(&http, &token, a, r["command_id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, runners) = call(&http, &token, format!("{a}/describe-runners?runner_id={runner}")).await;
    let instance = runners["runners"][0]["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(runners["runners"][0]["observed_state"], "running");

    for (path, expect) in [
        (format!("stop-runner?instance_id={instance}&runner_id={runner}"), "stopped"),
        (format!("restart-runner?instance_id={instance}&image_name=geonex/fire:2&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P"), "running"),
        (format!("delete-runner?instance_id={instance}&runner_id={runner}"), "terminated"),
    ] {
        let (status, r) = call(&http, &token, format!("{a}/{path}")).await;
        assert_eq!(status, 202, "{path}: {r}");
        let done = wait_done(&http, &token, a, r["command_id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{path}: {done}");
        let (_, runners) = call(&http, &token, format!("{a}/describe-runners?runner_id={runner}")).await;
        assert_eq!(runners["runners"][0]["observed_state"], expect, "{path}");
    }
    assert_eq!(sim_instances(&dir).len(), 1);

    // The request id of the HTTP call follows the command into the worker's log.
    let runner = unique("traced");
    let r = http
        .get(format!(
            "{a}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P"
        ))
        .bearer_auth(&token)
        .header("x-request-id", "trace-4d2c9e")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-4d2c9e");
    let r: Value = r.json().await.unwrap();
    wait_done(&http, &token, a, r["command_id"].as_str().unwrap()).await;
    let log = server.log.lock().unwrap().clone();
    let worker_lines: Vec<Value> = log
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["span"]["trace_id"] == "trace-4d2c9e")
        .collect();
    assert!(worker_lines.iter().any(|v| v["message"] == "command succeeded"), "{log:#?}");
    assert!(worker_lines.iter().all(|v| v["span"]["command_id"] == r["command_id"]));
    server.kill().await;
}

#[tokio::test]
async fn a_server_killed_mid_batch_completes_every_accepted_command_after_restart_with_one_instance_each() {
    let (deployment, store, token) = setup().await;
    let dir = deployment.data_dir.0.clone();
    let mut server = serve(&deployment).await;
    let http = reqwest::Client::new();

    let mut accepted = Vec::new();
    for i in 0..15 {
        let runner = unique(&format!("batch{i}"));
        let (status, r) = call(&http, &token, format!(
            "{}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P",
            server.address
        ))
        .await;
        assert_eq!(status, 202, "{r}");
        accepted.push((runner, r["command_id"].as_str().unwrap().to_owned()));
    }
    // kill -9: no graceful shutdown, work in flight.
    server.kill().await;
    let before: Vec<String> = {
        let mut v = Vec::new();
        for (_, id) in &accepted {
            let command = store.get_command(id.parse().unwrap()).await.unwrap().expect("accepted command stored");
            v.push(command.status.as_str().to_owned());
        }
        v
    };
    assert!(before.iter().any(|s| s != "succeeded"), "the kill should interrupt the batch: {before:?}");

    let mut server = serve(&deployment).await;
    let restarted = std::time::Instant::now();
    for (runner, id) in &accepted {
        let done = wait_done(&http, &token, &server.address, id).await;
        assert_eq!(done["status"], "succeeded", "{runner}: {done}");
    }
    // The killed process's running commands are resumed at start, not after their leases.
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(20), "resuming took {took:?}");
    let instances = sim_instances(&dir);
    for (runner, _) in &accepted {
        let n = instances.iter().filter(|(r, _)| r == runner).count();
        assert_eq!(n, 1, "runner {runner} has {n} simulated instances");
    }
    server.kill().await;
}

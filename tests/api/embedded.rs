//! One `geonex serve` process as a newcomer runs it: no database URL, no broker,
//! no AWS variables, no SMTP server — SQLite in the data directory, the
//! in-process queue, the simulated cloud and the file mailer. The runner
//! lifecycle, a kill -9 in the middle of a batch, and the agents of simulated
//! instances: containers on simulated new data, their outputs in the folder
//! store, and their resumption after a restart.

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
            !["GEONEX_DATABASE_URL", "GEONEX_AMQP_URL", "GEONEX_SMTP_URL"].contains(&k.as_str())
                && (!k.starts_with("GEONEX_EC2__") || k.starts_with("GEONEX_EC2__RATE__")),
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

/// Polls until the runner shows `state` (the observer follows its instance).
async fn wait_observed(http: &reqwest::Client, token: &str, address: &str, runner: &str, state: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, runners) = call(http, token, format!("{address}/describe-runners?runner_id={runner}")).await;
        let r = runners["runners"][0].clone();
        if r["observed_state"] == state {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "runner {runner} never showed {state}: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    setup_with(&[]).await
}

/// [`setup`] with more settings.
async fn setup_with(extra_env: &[(&str, &str)]) -> (Deployment, TestStore, String) {
    let config = TestConfig {
        extra_env: extra_env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..TestConfig::in_mode(Mode::Embedded)
    };
    let deployment = Deployment::new(&config).await;
    let store = deployment.store().await;
    for image in APPROVED_IMAGES {
        approve_image(&store, image).await;
    }
    let token = service_token(&store, "embedded", Role::Admin, None).await;
    (deployment, store, token)
}

/// Instances in the simulated cloud's saved state (snapshot and journal), by
/// runner id.
fn sim_instances(dir: &Path) -> Vec<(String, String)> {
    let settings = geonex_shared::config::SimSettings::default();
    geonex_worker::cloud::sim::SimCloud::saved_instances(&dir.join("sim-cloud.json"), &settings)
        .expect("saved simulated cloud")
        .into_iter()
        .map(|i| (i.tags["geonex:runner-id"].clone(), i.instance_id))
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
    let instance = wait_observed(&http, &token, a, &runner, "running").await["instance_id"].as_str().unwrap().to_owned();

    for (path, expect) in [
        (format!("stop-runner?instance_id={instance}&runner_id={runner}"), "stopped"),
        (format!("restart-runner?instance_id={instance}&image_name=geonex/fire:2&s3_output=s3://geonex/o&runner_id={runner}&runner_name=P"), "running"),
        (format!("delete-runner?instance_id={instance}&runner_id={runner}"), "terminated"),
    ] {
        let (status, r) = call(&http, &token, format!("{a}/{path}")).await;
        assert_eq!(status, 202, "{path}: {r}");
        let done = wait_done(&http, &token, a, r["command_id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{path}: {done}");
        wait_observed(&http, &token, a, &runner, expect).await;
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

/// Simulated agents with a file a second, quick containers, and half of them failing.
const SIMULATED_AGENTS: &[(&str, &str)] = &[
    ("GEONEX_SIM__AGENTS", "true"),
    ("GEONEX_SIM__DATA_INTERVAL_SECS", "1"),
    ("GEONEX_SIM__CONTAINER_MS", "200"),
    ("GEONEX_SIM__CONTAINER_FAILURE_RATE", "0.5"),
];

async fn containers_of(http: &reqwest::Client, token: &str, address: &str, runner: &str) -> Vec<Value> {
    let (status, body) = call(http, token, format!("{address}/describe-containers?runner_id={runner}&limit=1000")).await;
    assert_eq!(status, 200, "{body}");
    body["containers"].as_array().cloned().unwrap_or_default()
}

/// Polls until `check` holds for the runner's containers.
async fn wait_containers(
    http: &reqwest::Client,
    token: &str,
    address: &str,
    runner: &str,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let containers = containers_of(http, token, address, runner).await;
        if check(&containers) {
            return containers;
        }
        if std::time::Instant::now() >= deadline {
            let seen: Vec<String> = containers.iter().map(|c| format!("{} {} {}", c["started_at"], c["status"], c["exit_code"])).collect();
            panic!("timed out waiting for {what}; containers: {seen:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn finished(containers: &[Value]) -> usize {
    containers.iter().filter(|c| c["status"] != "running").count()
}

/// Every regular file under a folder.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The agent token in a simulated instance's user data, as the worker rendered it.
fn agent_token(dir: &Path, instance: &str) -> String {
    let user_data = geonex_worker::cloud::sim::SimCloud::saved_user_data(&dir.join("sim-cloud.json"), instance)
        .expect("saved simulated cloud")
        .expect("the instance");
    let line = user_data.lines().find(|l| l.starts_with("GEONEX_AGENT__TOKEN=")).expect("a token in the user data");
    line.trim_start_matches("GEONEX_AGENT__TOKEN=").trim_matches('\'').to_owned()
}

async fn start(http: &reqwest::Client, token: &str, address: &str, runner: &str, s3_output: &str) -> String {
    let (status, r) = call(http, token, format!(
        "{address}/start-runner?instance_type=m5d.large&image_name=geonex/fire:1.5&s3_output={s3_output}&runner_id={runner}&runner_name=Sim"
    ))
    .await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(wait_done(http, token, address, r["command_id"].as_str().unwrap()).await["status"], "succeeded");
    let (_, runners) = call(http, token, format!("{address}/describe-runners?runner_id={runner}")).await;
    runners["runners"][0]["instance_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_simulated_runner_runs_containers_on_new_data_writes_outputs_and_stops_with_its_instance() {
    let (deployment, _store, token) = setup_with(SIMULATED_AGENTS).await;
    let dir = deployment.data_dir.0.clone();
    let mut server = serve(&deployment).await;
    let http = reqwest::Client::new();
    let a = server.address.clone();
    let runner = unique("fed");
    let prefix = unique("GO16_ABI15");
    let instance = start(&http, &token, &a, &runner, &format!("s3://geonex/{prefix}")).await;

    // New files arrive every second; containers succeed and fail.
    let containers = wait_containers(&http, &token, &a, &runner, "a succeeded and a failed container", |cs| {
        finished(cs) >= 2 && cs.iter().any(|c| c["exit_code"] == 0) && cs.iter().any(|c| c["status"] != "running" && c["exit_code"] != 0)
    })
    .await;
    for c in containers.iter().filter(|c| c["status"] != "running") {
        let input = c["input_url"].as_str().unwrap_or_default();
        assert!(input.starts_with("s3://noaa-goes16/ABI-L1b-RadC/") && input.ends_with(".nc"), "{c}");
        assert!(c["log_tail"].as_str().unwrap_or_default().contains(input), "{c}");
        assert_eq!(c["instance_id"], instance.as_str(), "{c}");
        assert_eq!(c["image_name"], "geonex/fire:1.5", "{c}");
        assert!(c["finished_at"].is_string(), "{c}");
    }
    let (_, grouped) = call(&http, &token, format!("{a}/describe-runner-containers?runner_id={runner}")).await;
    assert_eq!(grouped["runners"][0]["runner_name"], "Sim", "{grouped}");
    assert!(grouped["runners"][0]["containers"].as_array().unwrap().len() >= 2, "{grouped}");
    let (_, runners) = call(&http, &token, format!("{a}/describe-runners?runner_id={runner}")).await;
    assert!(runners["runners"][0]["last_heartbeat_at"].is_string(), "{runners}");
    assert_eq!(runners["runners"][0]["unresponsive"], false, "{runners}");

    // The outputs are files in the folder store, and a scan counts them.
    let output_dir = dir.join("s3/geonex").join(&prefix);
    let written = files_under(&output_dir);
    for ext in ["nc", "png", "json", "log"] {
        assert!(written.iter().any(|f| f.extension().is_some_and(|e| e == ext)), "a .{ext} in {written:?}");
    }
    let (status, r) = call(&http, &token, format!("{a}/get-s3-usage?refresh=true&runner_id={runner}")).await;
    assert_eq!(status, 200, "{r}");
    let scan = wait_done(&http, &token, &a, r["scan_command_id"].as_str().unwrap()).await;
    assert_eq!(scan["status"], "succeeded", "{scan}");
    let after_scan = files_under(&output_dir).len();
    let (_, usage) = call(&http, &token, format!("{a}/get-s3-usage?runner_id={runner}")).await;
    let objects = usage["outputs"][0]["objects"].as_u64().unwrap_or_default() as usize;
    assert!(written.len() <= objects && objects <= after_scan, "{} ≤ {objects} ≤ {after_scan}: {usage}", written.len());
    assert!(usage["outputs"][0]["bytes"].as_u64().unwrap_or_default() > 0, "{usage}");

    // Once the instance stops, its feed stops: nothing new for several intervals.
    let (status, r) = call(&http, &token, format!("{a}/stop-runner?instance_id={instance}&runner_id={runner}")).await;
    assert_eq!(status, 202, "{r}");
    assert_eq!(wait_done(&http, &token, &a, r["command_id"].as_str().unwrap()).await["status"], "succeeded");
    let stopped_at = chrono::Utc::now();
    // Everything the agent spooled before it stopped reaches the API (a start
    // event may wait in the spool behind a retry): then nothing more comes.
    let spool = dir.join("sim-agents").join(&instance).join("events.jsonl");
    let settled = wait_containers(&http, &token, &a, &runner, "no container left running, the spool delivered", |cs| {
        cs.iter().all(|c| c["status"] != "running") && std::fs::metadata(&spool).is_ok_and(|m| m.len() == 0)
    })
    .await;
    for c in &settled {
        let started = chrono::DateTime::parse_from_rfc3339(c["started_at"].as_str().unwrap_or_default()).unwrap();
        assert!(started < stopped_at, "a container started after the stop: {c}");
    }
    // A container the stop cut short has had the time to write what it writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let files = files_under(&output_dir).len();
    let quiet_until = std::time::Instant::now() + Duration::from_millis(3_500);
    while std::time::Instant::now() < quiet_until {
        let now = containers_of(&http, &token, &a, &runner).await;
        assert_eq!(now.len(), settled.len(), "a container after the stop: {now:#?}");
        assert_eq!(files_under(&output_dir).len(), files, "an output after the stop");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The agent token went into the user data and over HTTP, never into the log.
    let secret = agent_token(&dir, &instance);
    assert!(secret.starts_with("gnxa_"), "{secret}");
    let log = server.log.lock().unwrap().join("\n");
    let agent_started = log.lines().any(|l| l.contains("agent starting") && l.contains(&instance));
    assert!(agent_started, "no agent started on {instance} in the log");
    assert!(!log.contains(&secret), "the agent token is in the log");
    server.child.kill().await.unwrap();
}

#[tokio::test]
async fn a_restarted_server_resumes_the_agents_of_instances_still_running() {
    // The user data names the server's address: the restarted server listens there again.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let mut env = SIMULATED_AGENTS.to_vec();
    env.push(("GEONEX_LISTEN", &listen));
    let (deployment, _store, token) = setup_with(&env).await;
    let mut server = serve(&deployment).await;
    let http = reqwest::Client::new();
    let a = server.address.clone();
    let runner = unique("resumed");
    start(&http, &token, &a, &runner, &format!("s3://geonex/{}", unique("out"))).await;
    wait_containers(&http, &token, &a, &runner, "a finished container", |cs| finished(cs) >= 1).await;

    // kill -9, possibly in the middle of a container.
    let before = finished(&containers_of(&http, &token, &a, &runner).await);
    server.child.kill().await.unwrap();
    let restarted_at = chrono::Utc::now();
    let mut server = serve(&deployment).await;
    assert_eq!(server.address, a);
    let started_before_the_kill = |c: &Value| {
        chrono::DateTime::parse_from_rfc3339(c["started_at"].as_str().unwrap_or_default()).is_ok_and(|t| t < restarted_at)
    };
    // New containers run, and one the kill cut off ran again and finished.
    wait_containers(&http, &token, &a, &runner, "new containers, and none left running from before the restart", |cs| {
        finished(cs) >= before + 2 && !cs.iter().any(|c| c["status"] == "running" && started_before_the_kill(c))
    })
    .await;
    wait_observed(&http, &token, &a, &runner, "running").await;
    server.kill().await;
}

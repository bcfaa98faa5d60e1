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
    let instance = app.wait_runner(&runner, "running").await["instance_id"].as_str().unwrap().to_owned();
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

/// A queue of the shared moto server, for one test.
async fn queue() -> (aws_sdk_sqs::Client, String) {
    let sqs = aws_sdk_sqs::Client::new(&crate::helpers::ec2_sdk_config());
    let url = sqs.create_queue().queue_name(unique("agent")).send().await.unwrap().queue_url.unwrap();
    (sqs, url)
}

fn s3_event(key: &str, sequencer: &str) -> String {
    json!({"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": "noaa-goes16"},
        "object": {"key": key, "sequencer": sequencer}}}]})
    .to_string()
}

/// A small real program standing in for the image: it records its input in a
/// file named after the container and exits with the code the key asks for.
fn container_script(dir: &std::path::Path) -> String {
    let script = dir.join("container.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\necho \"processing $1\"\nprintf '%s\\n' \"$1\" >> \"$3/$2.out\"\n\
         case \"$1\" in *exit3*) exit 3;; esac\nexit 0\n",
    )
    .unwrap();
    format!("sh {} {{input_url}} {{container_id}} {}", script.display(), dir.display())
}

struct AgentRun {
    dir: std::path::PathBuf,
    child: tokio::process::Child,
}

impl AgentRun {
    fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".out"))
            .collect();
        v.sort();
        v
    }

    fn runs(&self) -> usize {
        self.outputs().iter().map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap().lines().count()).sum()
    }
}

async fn spawn_agent(app: &TestApp, api_url: &str, queue_url: &str, runner: &str, token: &str) -> AgentRun {
    spawn_agent_with(app, api_url, queue_url, runner, token, |cmd, dir| {
        cmd.env("GEONEX_AGENT__COMMAND", container_script(dir));
    })
    .await
}

/// Starts an agent; `configure` adds to its environment (it gets the agent's directory).
async fn spawn_agent_with(
    app: &TestApp,
    api_url: &str,
    queue_url: &str,
    runner: &str,
    token: &str,
    configure: impl FnOnce(&mut tokio::process::Command, &std::path::Path),
) -> AgentRun {
    let dir = std::env::temp_dir().join(unique("geonex-agent"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = app.deployment.command(&["agent"]);
    command
        .env("AWS_ENDPOINT_URL", crate::helpers::moto_url())
        .env("AWS_REGION", "us-east-1")
        .env("GEONEX_AGENT__QUEUE_URL", queue_url)
        .env("GEONEX_AGENT__API_URL", api_url)
        .env("GEONEX_AGENT__TOKEN", token)
        .env("GEONEX_AGENT__RUNNER_ID", runner)
        .env("GEONEX_AGENT__IMAGE_NAME", "geonex/fire:1.5")
        .env("GEONEX_AGENT__S3_OUTPUT", "s3://geonex/GO16_ABI15")
        .env("GEONEX_AGENT__SPOOL_DIR", dir.join("spool"))
        .env("GEONEX_AGENT__WAIT_SECS", "1")
        .env("GEONEX_AGENT__HEARTBEAT_SECS", "1")
        .env("GEONEX_AGENT__CONCURRENCY", "2");
    configure(&mut command, &dir);
    let child = command.spawn().expect("start the agent");
    AgentRun { dir, child }
}

async fn containers_of(app: &TestApp, runner: &str) -> Vec<Value> {
    let r = app.get(&format!("/describe-runner-containers?runner_id={runner}")).await;
    r.body["runners"][0]["containers"].as_array().cloned().unwrap_or_default()
}

fn finished(containers: &[Value]) -> usize {
    containers.iter().filter(|c| c["status"] != "running").count()
}

async fn queue_is_empty(sqs: &aws_sdk_sqs::Client, url: &str) -> bool {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes.unwrap_or_default();
    [A::ApproximateNumberOfMessages, A::ApproximateNumberOfMessagesNotVisible]
        .iter()
        .all(|a| attrs.get(a).map(String::as_str) == Some("0"))
}

#[tokio::test]
async fn the_agent_runs_each_notification_once_and_its_containers_show_with_exit_codes() {
    let app = spawn_app_with(config()).await;
    let (runner, _, token) = started(&app).await;
    let (sqs, url) = queue().await;
    let mut agent = spawn_agent(&app, &app.address, &url, &runner, &token).await;

    sqs.send_message().queue_url(&url).message_body(r#"{"Service":"Amazon S3","Event":"s3:TestEvent"}"#).send().await.unwrap();
    let ok = s3_event("ABI/2026/001/ok.nc", "001");
    sqs.send_message().queue_url(&url).message_body(&ok).send().await.unwrap();
    let sns = json!({"Type": "Notification", "Message": s3_event("ABI/2026/001/exit3.nc", "002")}).to_string();
    sqs.send_message().queue_url(&url).message_body(&sns).send().await.unwrap();

    eventually_containers(&app, &runner, 2).await;
    // The same object announced again (S3 delivers at least once).
    sqs.send_message().queue_url(&url).message_body(&ok).send().await.unwrap();
    crate::helpers::eventually("the duplicate is consumed", std::time::Duration::from_secs(30), || async {
        queue_is_empty(&sqs, &url).await
    })
    .await;

    let containers = containers_of(&app, &runner).await;
    assert_eq!(containers.len(), 2, "{containers:?}");
    assert_eq!(agent.runs(), 2, "each object ran once: {:?}", agent.outputs());
    let by_input = |k: &str| containers.iter().find(|c| c["input_url"].as_str().unwrap_or("").ends_with(k)).unwrap().clone();
    assert_eq!((by_input("ok.nc")["status"].clone(), by_input("ok.nc")["exit_code"].clone()), (json!("exited"), json!(0)));
    assert_eq!(by_input("exit3.nc")["exit_code"], 3);
    assert_eq!(by_input("ok.nc")["input_url"], "s3://noaa-goes16/ABI/2026/001/ok.nc");
    assert!(by_input("ok.nc")["log_tail"].as_str().unwrap().contains("processing s3://noaa-goes16/ABI/2026/001/ok.nc"));
    assert!(!app.runner(&runner).await["last_heartbeat_at"].is_null());
    agent.child.start_kill().unwrap();
}

async fn eventually_containers(app: &TestApp, runner: &str, n: usize) {
    crate::helpers::eventually(&format!("{n} finished containers"), std::time::Duration::from_secs(30), || async {
        finished(&containers_of(app, runner).await) >= n
    })
    .await;
}

#[tokio::test]
async fn events_of_containers_that_finish_while_the_api_is_down_arrive_once_it_is_back() {
    let app = spawn_app_with(config()).await;
    let (runner, _, token) = started(&app).await;
    let (sqs, url) = queue().await;
    let proxy = crate::proxy::Proxy::start(app.address.trim_start_matches("http://")).await;
    proxy.cut().await;
    let mut agent = spawn_agent(&app, &format!("http://127.0.0.1:{}", proxy.port), &url, &runner, &token).await;

    for i in 0..4 {
        let body = s3_event(&format!("ABI/2026/002/{}.nc", if i == 0 { "exit3".to_owned() } else { i.to_string() }), &format!("1{i}"));
        sqs.send_message().queue_url(&url).message_body(body).send().await.unwrap();
    }
    crate::helpers::eventually("every container ran and its message was deleted", std::time::Duration::from_secs(30), || async {
        agent.runs() == 4 && queue_is_empty(&sqs, &url).await
    })
    .await;
    assert!(containers_of(&app, &runner).await.is_empty(), "nothing reached the API while it was down");

    proxy.restore();
    eventually_containers(&app, &runner, 4).await;
    let containers = containers_of(&app, &runner).await;
    assert_eq!(containers.len(), 4, "none lost, none doubled: {containers:?}");
    assert_eq!(containers.iter().filter(|c| c["exit_code"] == 3).count(), 1);
    assert_eq!(containers.iter().filter(|c| c["exit_code"] == 0).count(), 3);
    let events: i64 = sqlx::query_scalar("select count(*) from runner_event where runner_id = $1 and kind <> 'heartbeat'")
        .bind(&runner)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(events, 8, "one start and one finish per container");
    agent.child.start_kill().unwrap();
}

#[tokio::test]
async fn a_runner_whose_agent_falls_silent_is_shown_unresponsive_and_never_reaped() {
    let mut cfg = config();
    cfg.extra_env.extend([
        ("GEONEX_API__UNRESPONSIVE_AFTER_SECS".to_owned(), "2".to_owned()),
        ("GEONEX_RECONCILE__INTERVAL_SECS".to_owned(), "1".to_owned()),
        ("GEONEX_RECONCILE__REAP_ORPHANS".to_owned(), "true".to_owned()),
        ("GEONEX_RECONCILE__ORPHAN_GRACE_SECS".to_owned(), "0".to_owned()),
    ]);
    let app = spawn_app_with(cfg).await;
    let (runner, instance, token) = started(&app).await;
    let r = post_event(&app, &token, &event(&runner, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 202);
    assert_eq!(app.runner(&runner).await["unresponsive"], false);
    crate::helpers::eventually("the silent runner is flagged", std::time::Duration::from_secs(20), || async {
        app.runner(&runner).await["unresponsive"] == true
    })
    .await;
    // Several sweeps with reaping on have run since the last heartbeat.
    let out = app.ec2.describe_instances().instance_ids(&instance).send().await.unwrap();
    let state = out.reservations()[0].instances()[0].state().unwrap().name().unwrap().as_str().to_owned();
    assert_eq!(state, "running");
    app.wait_runner(&runner, "running").await;
    let r = post_event(&app, &token, &event(&runner, "heartbeat", Uuid::new_v4(), json!({}))).await;
    assert_eq!(r.status, 202);
    assert_eq!(app.runner(&runner).await["unresponsive"], false, "heard from again");
}

/// A `docker` standing in for the real CLI, first on the agent's PATH.
/// `docker run … --name NAME … IMAGE` starts the "container" in a session of its
/// own, as the docker daemon would (killing the client does not end it), and
/// follows it until it ends; `docker rm -f NAME` records the call and ends it.
fn fake_docker(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let docker = dir.join("docker");
    std::fs::write(
        &docker,
        r#"#!/bin/sh
dir="$(dirname "$0")"
cmd="$1"; shift
case "$cmd" in
run)
  name=unnamed
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) name="$2"; shift 2 ;;
      -e) shift 2 ;;
      *) shift ;;
    esac
  done
  echo "run $name" >> "$dir/docker.log"
  setsid sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec sleep 120' "$dir/$name.pid" </dev/null >/dev/null 2>&1 &
  until [ -s "$dir/$name.pid" ]; do sleep 0.05; done
  echo "container $name started"
  while kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; do sleep 0.1; done
  ;;
rm)
  echo "rm $*" >> "$dir/docker.log"
  for name in "$@"; do
    [ "$name" = -f ] && continue
    [ -s "$dir/$name.pid" ] && kill "$(cat "$dir/$name.pid")"
  done
  ;;
*)
  echo "unexpected: docker $cmd $*" >> "$dir/docker.log"
  exit 1
  ;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

/// Whether a process is still running (a zombie is not).
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_container_past_its_timeout_is_stopped_by_name_with_the_default_commands() {
    let app = spawn_app_with(config()).await;
    let (runner, _, token) = started(&app).await;
    let (sqs, url) = queue().await;
    // The default command and stop command, with docker replaced.
    let mut agent = spawn_agent_with(&app, &app.address, &url, &runner, &token, |cmd, dir| {
        cmd.env("PATH", fake_docker(dir)).env("GEONEX_AGENT__TIMEOUT_SECS", "1").env("GEONEX_AGENT__STOP_TIMEOUT_SECS", "5");
    })
    .await;
    sqs.send_message().queue_url(&url).message_body(s3_event("ABI/2026/003/slow.nc", "301")).send().await.unwrap();

    eventually_containers(&app, &runner, 1).await;
    let c = containers_of(&app, &runner).await[0].clone();
    assert_eq!(c["status"], "failed", "{c}");
    assert!(c["log_tail"].as_str().unwrap().contains("killed after 1s"), "{c}");
    let name = format!("geonex-{}", c["container_id"].as_str().unwrap());
    let log = std::fs::read_to_string(agent.dir.join("docker.log")).unwrap();
    assert!(log.lines().any(|l| l == format!("run {name}")), "the container is named after its id: {log}");
    assert!(log.lines().any(|l| l == format!("rm -f {name}")), "the stop command ran: {log}");
    let pid = std::fs::read_to_string(agent.dir.join(format!("{name}.pid"))).unwrap().trim().to_owned();
    crate::helpers::eventually("the container itself ended", std::time::Duration::from_secs(5), || async { !alive(&pid) }).await;
    agent.child.start_kill().unwrap();
}

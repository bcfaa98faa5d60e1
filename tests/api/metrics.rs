//! `/metrics`: the Prometheus text format, read by a parser and by a strict
//! line check, and counters that move as commands go through.

use geonex_shared::domain::Role;
use std::collections::HashMap;

use crate::helpers::{Mode, TestApp, TestConfig, service_token, spawn_app_with, unique};

/// A free port on loopback, for a listener a deployment opens itself.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port()
}

/// Every line is a comment (`# HELP`, `# TYPE` before the samples it names) or
/// `name{label="value",…} number`, and no series appears twice.
fn check_strictly(text: &str) {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .enumerate()
                .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()))
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(valid_name(name), "bad metric name in {line:?}");
            assert!(["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind), "{line:?}");
            assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none(), "{name} typed twice");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).expect("labels in braces");
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("label pair in {line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(!v.trim_end_matches('"').contains('"'), "unescaped quote in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family) || typed.contains_key(name), "{name} has no # TYPE before it");
        assert!(seen.insert(series.to_owned()), "series {series} appears twice");
    }
}

struct Scrape(prometheus_parse::Scrape);

impl Scrape {
    fn parse(text: &str) -> Self {
        check_strictly(text);
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        Self(prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format"))
    }

    /// The value of the one sample of `name` with these labels (0 when absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
                prometheus_parse::Value::Summary(_) => 0.0,
            })
            .sum()
    }

    fn has(&self, name: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == name)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.http.get(format!("{}/metrics", app.address)).bearer_auth(&app.token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Scrape::parse(&r.text().await.unwrap())
}

#[tokio::test]
async fn metrics_parse_and_their_counters_move_as_a_runner_starts() {
    let port = free_port();
    let config = TestConfig {
        extra_env: vec![("GEONEX_METRICS__LISTEN".into(), format!("127.0.0.1:{port}"))],
        ..TestConfig::in_mode(Mode::Production)
    };
    let app = spawn_app_with(config).await;

    // Operators only on the API listener.
    let url = format!("{}/metrics", app.address);
    assert_eq!(app.http.get(&url).send().await.unwrap().status(), 401);
    let user = service_token(&app.store, "metrics-user", Role::User, None).await;
    assert_eq!(app.http.get(&url).bearer_auth(&user).send().await.unwrap().status(), 403);
    let operator = service_token(&app.store, "metrics-operator", Role::Operator, None).await;
    assert_eq!(app.http.get(&url).bearer_auth(&operator).send().await.unwrap().status(), 200);

    let before = scrape(&app).await;
    let runner_id = unique("metrics");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    app.wait_command(&command_id, &["succeeded"]).await;
    app.wait_runner(&runner_id, "running").await;
    let after = scrape(&app).await;

    let start = [("action", "start_runner")];
    for name in ["geonex_commands_accepted_total", "geonex_commands_started_total", "geonex_commands_succeeded_total"] {
        let delta = after.value(name, &start) - before.value(name, &start);
        assert!(delta >= 1.0, "{name} moved by {delta}");
    }
    let run = [("operation", "RunInstances"), ("code", "ok")];
    assert!(after.value("geonex_ec2_requests_total", &run) >= 1.0, "RunInstances counted");
    assert!(after.value("geonex_ec2_requests_total", &[("operation", "DescribeInstances"), ("code", "ok")]) >= 1.0);
    let accepted = [("route", "/start-runner"), ("method", "GET"), ("status", "202")];
    assert!(after.value("geonex_http_requests_total", &accepted) >= 1.0);
    assert!(after.has("geonex_http_request_duration_seconds"), "latency histogram");
    assert!(after.value("geonex_command_duration_seconds", &start) >= 1.0, "handler time histogram");
    // Probing random paths adds no series.
    let _ = app.get(&format!("/{}", unique("no-such-path"))).await;
    let probed = scrape(&app).await;
    assert!(probed.value("geonex_http_requests_total", &[("route", "unmatched"), ("status", "404")]) >= 1.0);

    // Figures from the database, exact for this deployment.
    assert_eq!(after.value("geonex_database_up", &[]), 1.0);
    assert_eq!(after.value("geonex_runners", &[("observed_state", "running")]), 1.0);
    assert_eq!(after.value("geonex_runners", &[("observed_state", "pending")]), 0.0);
    for queue in ["runner", "email", "s3usage"] {
        assert_eq!(after.value("geonex_queue_depth", &[("queue", queue), ("status", "queued")]), 0.0, "{queue}");
        assert!(after.has("geonex_queue_oldest_seconds"));
    }
    assert_eq!(after.value("geonex_outbox_unpublished", &[]), 0.0);
    assert!(after.has("geonex_outbox_lag_seconds"));
    assert!(after.value("geonex_db_pool_max_connections", &[]) >= 1.0);
    assert!(after.has("geonex_db_pool_connections"));

    // The scrape listener needs no token and serves only /metrics.
    let scrape_url = format!("http://127.0.0.1:{port}/metrics");
    let r = reqwest::get(&scrape_url).await.unwrap();
    assert_eq!(r.status(), 200);
    let listener = Scrape::parse(&r.text().await.unwrap());
    assert!(listener.value("geonex_commands_succeeded_total", &start) >= 1.0);
    assert_eq!(reqwest::get(format!("http://127.0.0.1:{port}/describe-runners")).await.unwrap().status(), 404);
}

#[tokio::test]
async fn retries_and_dead_commands_are_counted_while_the_cloud_fails() {
    let config = TestConfig {
        extra_env: vec![
            ("GEONEX_SIM__ERROR_RATE".into(), "1.0".into()),
            ("GEONEX_WORKER__MAX_ATTEMPTS".into(), "2".into()),
        ],
        ..TestConfig::in_mode(Mode::Embedded)
    };
    let app = spawn_app_with(config).await;
    let before = scrape(&app).await;
    let runner_id = unique("metrics-dead");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    app.wait_command(&command_id, &["dead"]).await;
    let after = scrape(&app).await;
    let start = [("action", "start_runner")];
    assert!(
        after.value("geonex_commands_retried_total", &start) - before.value("geonex_commands_retried_total", &start)
            >= 1.0
    );
    assert!(
        after.value("geonex_commands_dead_total", &start) - before.value("geonex_commands_dead_total", &start) >= 1.0
    );
    assert_eq!(after.value("geonex_queue_depth", &[("queue", "runner"), ("status", "retrying")]), 0.0);
    assert_eq!(after.value("geonex_runners", &[("observed_state", "failed")]), 1.0, "the runner shows the failure");
}

#[tokio::test]
async fn a_worker_process_serves_its_own_metrics_on_the_scrape_listener() {
    let app = spawn_app_with(TestConfig { role: geonex::startup::Role::Api, ..TestConfig::default() }).await;
    let port = free_port();
    let worker = crate::helpers::Process::start(
        {
            let mut cmd = app.deployment.command(&["worker"]);
            cmd.env("GEONEX_METRICS__LISTEN", format!("127.0.0.1:{port}"));
            cmd
        },
        false,
    )
    .await;
    let runner_id = unique("worker-metrics");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    let command_id = r.body["command_id"].as_str().unwrap().to_owned();
    app.wait_command(&command_id, &["succeeded"]).await;

    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = reqwest::get(&url).await.expect("the worker's scrape listener").text().await.unwrap();
    let scraped = Scrape::parse(&text);
    let start = [("action", "start_runner")];
    // What the worker did is counted in the worker, what the API did in the API.
    assert_eq!(scraped.value("geonex_commands_started_total", &start), 1.0, "{text}");
    assert_eq!(scraped.value("geonex_commands_succeeded_total", &start), 1.0);
    assert_eq!(scraped.value("geonex_commands_accepted_total", &start), 0.0);
    assert!(scraped.value("geonex_ec2_requests_total", &[("operation", "RunInstances"), ("code", "ok")]) >= 1.0);
    assert_eq!(scraped.value("geonex_database_up", &[]), 1.0);
    let api = scrape(&app).await;
    assert!(api.value("geonex_commands_accepted_total", &start) >= 1.0);
    drop(worker);
}

#[tokio::test]
async fn sent_e_mails_and_s3_scans_are_counted() {
    let app = crate::helpers::spawn_app_in(Mode::Embedded).await;
    let before = scrape(&app).await;
    let r = app.get("/send-email?image_name=geonex/fire:1&user_name=user1&email=user1@example.org").await;
    assert_eq!(r.status, 202, "{}", r.body);
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;

    // An output of three objects, as folders of the embedded S3.
    let runner_id = unique("metrics-scan");
    let r = app.start_runner(&runner_id, "geonex/fire:1.5").await;
    app.wait_command(r.body["command_id"].as_str().unwrap(), &["succeeded"]).await;
    let folder = app.deployment.data_dir.0.join("s3/geonex/GO16_ABI15/2026");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["a.nc", "b.png", "c.json"] {
        std::fs::write(folder.join(name), b"0123456789").unwrap();
    }
    let r = app.get("/get-s3-usage?refresh=true").await;
    let scan = r.body["scan_command_id"].as_str().expect("a scan").to_owned();
    app.wait_command(&scan, &["succeeded"]).await;

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| after.value(name, labels) - before.value(name, labels);
    assert!(delta("geonex_emails_sent_total", &[]) >= 1.0);
    assert!(delta("geonex_commands_succeeded_total", &[("action", "send_email")]) >= 1.0);
    assert!(delta("geonex_s3_objects_listed_total", &[]) >= 3.0);
    assert!(after.value("geonex_s3_scan_duration_seconds", &[("result", "ok")]) >= 1.0, "scan time recorded");
}

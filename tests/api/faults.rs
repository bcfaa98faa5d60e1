//! The fault suite: every part of a production deployment (PostgreSQL,
//! RabbitMQ, moto for EC2 and S3, an SMTP server) killed, restarted or made to
//! misbehave while a load of every kind of command runs, then counted with
//! independent clients: every accepted command finished, exactly one instance
//! per runner in the state its commands left it, none without a runner, exactly
//! one e-mail per send command.
//!
//! Each scenario has services of its own (a moto, an SMTP server, and the
//! RabbitMQ node or PostgreSQL cluster it stops), runs `geonex api` and
//! `geonex worker` as child processes (so they can be killed with kill -9),
//! restores whatever it stopped even when it fails, and prints its row of the
//! fault report (`target/fault-report/` collects the rows of a run).

mod ec2proxy;
mod load;
mod services;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use geonex_shared::domain::Role;
use serde_json::Value;

use crate::helpers::{
    APPROVED_IMAGES, Deployment, PrivateMoto, Process, TestConfig, TestStore, amqp_url, approve_image,
    ec2_sdk_config_for, eventually, pg_admin_url, service_token, unique,
};
use crate::smtp::SmtpServer;
use ec2proxy::{Ec2FaultProxy, Rates};
use load::{Api, Findings, Ledger, Load, Plan, Row, is_unavailable_body};
use services::{Outage, PrivatePostgres, PrivateRabbit};

/// How long after a fault ends every accepted command must have finished.
const SETTLE: Duration = Duration::from_secs(180);
/// How long the load may take to send its last command.
const SENDING: Duration = Duration::from_secs(300);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Where a scenario's deployment finds its services.
struct StageConfig {
    amqp_url: String,
    postgres_admin_url: String,
    moto: PrivateMoto,
    /// EC2 through this URL (a fault proxy) instead of moto directly.
    ec2_url: Option<String>,
    extra_env: Vec<(String, String)>,
}

impl StageConfig {
    async fn shared_services() -> Self {
        Self {
            amqp_url: amqp_url(),
            postgres_admin_url: pg_admin_url(),
            moto: PrivateMoto::start().await,
            ec2_url: None,
            extra_env: Vec::new(),
        }
    }
}

/// One scenario's deployment and its processes. Fields drop in order: the
/// processes first (killed), then the store, the database, the SMTP server
/// and moto.
struct Stage {
    api: Option<Process>,
    workers: Vec<Process>,
    store: TestStore,
    deployment: Deployment,
    smtp: SmtpServer,
    moto: PrivateMoto,
    api_port: u16,
    client: Arc<Api>,
}

impl Stage {
    async fn new(config: StageConfig) -> Self {
        let smtp = SmtpServer::start().await;
        let api_port = free_port();
        let ec2_url = config.ec2_url.clone().unwrap_or_else(|| config.moto.url.clone());
        let mut extra_env: Vec<(String, String)> = [
            ("GEONEX_LISTEN", format!("127.0.0.1:{api_port}")),
            ("GEONEX_EC2__ENDPOINT_URL", ec2_url),
            ("GEONEX_S3USAGE__ENDPOINT_URL", config.moto.url.clone()),
            ("GEONEX_SMTP_URL", smtp.url()),
            ("GEONEX_EMAIL__FROM", "GeoNEX <geonex@geonex.test>".into()),
            ("GEONEX_EMAIL__TIMEOUT_MS", "5000".into()),
            // An unreachable database is answered within a second, not five.
            ("GEONEX_DATABASE__ACQUIRE_TIMEOUT_MS", "1000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        extra_env.extend(config.extra_env);
        let test_config = TestConfig {
            amqp_url: config.amqp_url,
            postgres_admin_url: config.postgres_admin_url,
            extra_env,
            ..TestConfig::default()
        };
        let deployment = Deployment::new(&test_config).await;
        let store = deployment.store().await;
        for image in APPROVED_IMAGES {
            approve_image(&store, image).await;
        }
        let token = service_token(&store, "faults", Role::Admin, None).await;
        fill_bucket(&config.moto.url).await;
        // moto builds its EC2 backend on the first EC2 call (seconds, on two
        // busy cores): done here, so a scenario's timings are the system's.
        config.moto.ec2().describe_instances().send().await.expect("warm moto's EC2");
        let client = Arc::new(Api::new(format!("http://127.0.0.1:{api_port}"), token));
        Self { api: None, workers: Vec::new(), store, deployment, smtp, moto: config.moto, api_port, client }
    }

    /// Starts `geonex api` on the stage's port (again, after a kill).
    async fn start_api(&mut self, failpoints: Option<&str>, env: &[(&str, &str)]) {
        let mut cmd = self.deployment.command(&["api"]);
        // The "API listening" line that says it is up is at info.
        cmd.env("GEONEX_LOG__FILTER", "info,tower_http=warn");
        if let Some(f) = failpoints {
            cmd.env("GEONEX_FAILPOINTS", f);
        }
        cmd.envs(env.iter().copied());
        let process = Process::start(cmd, true).await;
        assert!(process.address.ends_with(&format!(":{}", self.api_port)), "the API listens on {}", process.address);
        self.api = Some(process);
    }

    async fn start_worker(&mut self, failpoints: Option<&str>) -> usize {
        self.start_worker_with(failpoints, &[]).await
    }

    async fn start_worker_with(&mut self, failpoints: Option<&str>, env: &[(&str, &str)]) -> usize {
        let mut cmd = self.deployment.command(&["worker"]);
        if let Some(f) = failpoints {
            cmd.env("GEONEX_FAILPOINTS", f);
        }
        cmd.envs(env.iter().copied());
        self.workers.push(Process::start(cmd, false).await);
        self.workers.len() - 1
    }

    fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// Every process started is still the same process: none had to be restarted.
    fn assert_never_restarted(&mut self) {
        let api = self.api.iter_mut();
        for p in api.chain(self.workers.iter_mut()) {
            assert!(matches!(p.child.try_wait(), Ok(None)), "a geonex process exited: {:?}", p.log.lock().map(|l| l.join("\n")));
        }
    }

    /// Counts the outcome and prints the scenario's row; fails the test on
    /// anything lost, doubled, stuck or answered with a server error.
    async fn verify(&self, scenario: &str, ledger: &Ledger, since: Instant) -> Findings {
        let mut f = load::settle(self.pool(), ledger, since, SETTLE).await;
        let fleet = self.deployment.settings().ec2.fleet;
        load::check_instances(&mut f, self.pool(), &self.moto.ec2(), &fleet, &ledger.runners(), Duration::from_secs(60)).await;
        load::check_emails(&mut f, &self.smtp, &ledger.emails()).await;
        let row = Row {
            scenario: scenario.to_owned(),
            accepted: ledger.accepted().len(),
            finished: f.finished,
            lost: f.unfinished.len() + f.dead.len() + f.missing_emails.len(),
            duplicate_instances: f.duplicate_instances.len(),
            duplicate_emails: f.duplicate_emails.len(),
            recovery: f.recovery,
        };
        row.publish();
        let stats = &self.client.stats;
        eprintln!(
            "{scenario}: answers by status {:?}, {} requests unanswered (and sent again)",
            stats.statuses.lock().map(|s| s.clone()).unwrap_or_default(),
            stats.unanswered.load(Ordering::Relaxed)
        );
        eprintln!("{scenario}: first requests answered 503: {:?}", stats.unavailable.lock().map(|v| v.clone()).unwrap_or_default());
        let violations = stats.violations.lock().map(|v| v.clone()).unwrap_or_default();
        assert!(violations.is_empty(), "server errors other than a 503 with the error body: {violations:#?}");
        let refused = ledger.refused.lock().map(|r| r.clone()).unwrap_or_default();
        assert!(refused.is_empty(), "requests the API refused: {refused:#?}");
        assert!(row.accepted >= 200, "the load should be a few hundred commands, was {}", row.accepted);
        assert!(f.unfinished.is_empty(), "accepted commands never finished: {:#?}", f.unfinished);
        assert!(f.dead.is_empty(), "commands dead although every fault ended: {:#?}", f.dead);
        assert!(f.stray_unfinished.is_empty(), "unfinished commands in the database: {:#?}", f.stray_unfinished);
        assert!(f.duplicate_instances.is_empty(), "runners with more than one instance: {:#?}", f.duplicate_instances);
        assert!(f.wrong_state.is_empty(), "runners not as their commands left them: {:#?}", f.wrong_state);
        assert!(f.orphans.is_empty(), "live instances no runner owns: {:#?}", f.orphans);
        assert!(f.missing_emails.is_empty(), "send commands whose message never arrived: {:#?}", f.missing_emails);
        assert!(f.duplicate_emails.is_empty(), "messages sent twice: {:#?}", f.duplicate_emails);
        f
    }
}

/// The bucket the runners write to, with a few objects for the scans to count.
async fn fill_bucket(moto: &str) {
    let config = aws_sdk_s3::config::Builder::from(&ec2_sdk_config_for(moto)).force_path_style(true).build();
    let s3 = aws_sdk_s3::Client::from_conf(config);
    s3.create_bucket().bucket(load::BUCKET).send().await.expect("create the outputs bucket");
    for i in 0..12 {
        let body = aws_sdk_s3::primitives::ByteStream::from(vec![b'x'; 100 + i]);
        s3.put_object().bucket(load::BUCKET).key(format!("out{}/2026/336/{i}.nc", i % 6)).body(body).send().await.expect("put an output");
    }
}

/// What `/readyz` says now (status, body); `None` while the API is not answering.
async fn readiness(api: &Api) -> Option<(u16, Value)> {
    api.once("/readyz", None).await.ok()
}

async fn wait_ready(api: &Api, what: &str) {
    eventually(what, Duration::from_secs(60), || async { readiness(api).await.is_some_and(|(s, _)| s == 200) }).await;
}

/// Runs a blocking control command (stopping or starting a service) without
/// stalling the runtime's other tasks: the load keeps going meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_node_restarted_mid_load_loses_and_doubles_nothing() {
    let rabbit = PrivateRabbit::start().await;
    let mut stage = Stage::new(StageConfig { amqp_url: rabbit.url(), ..StageConfig::shared_services().await }).await;
    stage.start_api(None, &[]).await;
    stage.start_worker(None).await;
    stage.start_worker(None).await;
    let load = Load::start(stage.client.clone(), Plan::default(), &unique("mq"));
    tokio::time::sleep(Duration::from_secs(4)).await;

    let outage = blocking(|| Outage::begin(&rabbit));
    // The API keeps accepting; readiness names the broker.
    eventually("readyz reports the broker down", Duration::from_secs(20), || async {
        readiness(&stage.client)
            .await
            .is_some_and(|(s, b)| s == 503 && b["broker"]["status"] == "unreachable" && b["database"] == "ok")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restored = blocking(|| outage.end());
    wait_ready(&stage.client, "readyz back to 200 after the broker restart").await;

    let ledger = load.finish(SENDING).await;
    stage.verify("RabbitMQ node restarted", &ledger, restored).await;
    // Nobody restarted the API or the workers: they reconnected by themselves.
    stage.assert_never_restarted();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_exhausted_and_down_mid_load_answers_503_and_recovers_by_itself() {
    let pg = PrivatePostgres::start().await;
    let mut stage =
        Stage::new(StageConfig { postgres_admin_url: pg.admin_url(), ..StageConfig::shared_services().await }).await;
    // A small pool for the API, so that a few slow statements exhaust it; every
    // request reads its token from the database (no token cache), so a lock on
    // the tokens holds them all.
    stage.start_api(None, &[("GEONEX_DATABASE__MAX_CONNECTIONS", "4"), ("GEONEX_AUTH__TOKEN_CACHE_MS", "0")]).await;
    stage.start_worker(None).await;
    stage.start_worker(None).await;
    let load = Load::start(stage.client.clone(), Plan::default(), &unique("pg"));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. A restart: every session is cut at once.
    blocking(|| pg.restart());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 2. The pool exhausted: a lock holds every token lookup, so the API's
    //    four connections wait on it and further requests find none free.
    let mut locker = stage.pool().begin().await.expect("begin");
    sqlx::query("lock table api_token in access exclusive mode").execute(&mut *locker).await.expect("lock");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        locker.rollback().await.expect("release the lock");
    });
    let probes = (0..12).map(|_| stage.client.once("/describe-runners?limit=1", None));
    let answers = futures::future::join_all(probes).await;
    release.await.expect("the lock released");
    let exhausted: Vec<&(u16, Value)> = answers.iter().flatten().filter(|(s, _)| *s == 503).collect();
    assert!(!exhausted.is_empty(), "an exhausted pool should answer 503: {answers:?}");
    assert!(exhausted.iter().all(|(_, b)| is_unavailable_body(b)), "{exhausted:?}");

    // 3. Down for a while: connections refused.
    let outage = blocking(|| Outage::begin(&pg));
    let start = "/start-runner?instance_type=m5d.large&image_name=geonex/fire:1&s3_output=s3://geonex-faults/x&runner_id=down-1&runner_name=Down";
    let email = "/send-email?image_name=geonex/fire:1&user_name=down&email=down@example.org";
    for path in ["/describe-runners", "/describe-commands", "/describe-images", "/get-s3-usage", start, email] {
        let (status, body) = stage.client.once(path, Some(&unique("down"))).await.expect("the API answers while the database is down");
        assert_eq!(status, 503, "{path} while the database is down: {body}");
        assert!(is_unavailable_body(&body), "{path}: {body}");
    }
    let (status, body) = readiness(&stage.client).await.expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "unreachable", "{body}");
    assert_eq!(stage.client.once("/healthz", None).await.map(|r| r.0), Ok(200), "liveness does not depend on the database");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restored = blocking(|| outage.end());
    wait_ready(&stage.client, "readyz back to 200 after the database came back").await;

    let ledger = load.finish(SENDING).await;
    stage.verify("PostgreSQL restarted, pool exhausted, down 8 s", &ledger, restored).await;
    stage.assert_never_restarted();
}

/// Instances moto launched for the fleet that no runner row records yet: each
/// is a worker between RunInstances and the database write.
async fn launched_unrecorded(stage: &Stage) -> usize {
    let fleet = stage.deployment.settings().ec2.fleet;
    let out = stage
        .moto
        .ec2()
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:geonex:fleet").values(&fleet).build())
        .send()
        .await
        .expect("describe instances");
    let launched = out.reservations().iter().flat_map(|r| r.instances()).count();
    let recorded: i64 = sqlx::query_scalar("select count(*) from runner where instance_id is not null")
        .fetch_one(stage.pool())
        .await
        .unwrap_or(0);
    launched.saturating_sub(recorded as usize)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_between_run_instances_and_the_record_leaves_one_instance_per_runner() {
    let mut stage = Stage::new(StageConfig::shared_services().await).await;
    stage.start_api(None, &[]).await;
    // This worker stops right after each RunInstances returns, before it
    // records the instance: killed there, its launches are known only to EC2.
    // It takes runner commands only: a kill in the instant between the SMTP
    // server's acceptance and its record would send that e-mail again (the
    // README's guarantees say so), and this scenario is about the launches.
    let doomed = stage.start_worker_with(Some("after-run-instances=sleep(600000)"), &[("GEONEX_WORKER__QUEUES", "[runner]")]).await;
    stage.start_worker(None).await;
    let load = Load::start(stage.client.clone(), Plan::default(), &unique("wk"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while launched_unrecorded(&stage).await < 3 {
        assert!(Instant::now() < deadline, "the doomed worker never held three launches");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = launched_unrecorded(&stage).await;
    stage.workers[doomed].kill().await;
    let killed = Instant::now();
    eprintln!("killed a worker holding {held} launches it had not recorded");
    stage.start_worker(None).await;

    let ledger = load.finish(SENDING).await;
    let f = stage.verify("worker kill -9 after RunInstances", &ledger, killed).await;
    assert!(f.recovery < Duration::from_secs(120), "{:?}", f.recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_killed_between_commit_and_publish_loses_no_command() {
    let mut stage = Stage::new(StageConfig::shared_services().await).await;
    stage.start_worker(None).await;
    stage.start_worker(None).await;
    // This API stops after committing each command, before publishing it.
    stage.start_api(Some("after-submit-commit=sleep(600000)"), &[]).await;
    let load = Load::start(stage.client.clone(), Plan::default(), &unique("api"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held: i64 = sqlx::query_scalar("select count(*) from command where published_at is null and status = 'queued'")
            .fetch_one(stage.pool())
            .await
            .unwrap_or(0);
        if held >= 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the API never held five committed commands");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(api) = stage.api.as_mut() {
        api.kill().await;
    }
    // A new API process on the same address; clients send again what got no answer.
    stage.start_api(None, &[]).await;
    let restarted = Instant::now();

    let ledger = load.finish(SENDING).await;
    stage.verify("API kill -9 after commit, before publish", &ledger, restarted).await;
    let (status, _) = stage.client.once("/healthz", None).await.expect("the API answers");
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec2_throttling_capacity_errors_and_timeouts_are_retried_until_every_command_finishes() {
    let moto = PrivateMoto::start().await;
    // A timed-out call is held past the client's 1.5 s attempt timeout.
    let proxy = Ec2FaultProxy::start(&moto.url, Duration::from_secs(4)).await;
    let config = StageConfig {
        moto,
        ec2_url: Some(proxy.url.clone()),
        extra_env: vec![
            ("GEONEX_EC2__TIMEOUT_MS".into(), "1500".into()),
            // Enough attempts to outlast the injection.
            ("GEONEX_WORKER__MAX_ATTEMPTS".into(), "40".into()),
        ],
        ..StageConfig::shared_services().await
    };
    let mut stage = Stage::new(config).await;
    stage.start_api(None, &[]).await;
    stage.start_worker(None).await;
    stage.start_worker(None).await;
    proxy.inject(Rates { throttle: 0.15, capacity: 0.6, timeout: 0.05 });
    let load = Load::start(stage.client.clone(), Plan::default(), &unique("ec2"));

    // While EC2 misbehaves, the capacity shortage shows in the commands.
    let surfaced = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, surfaced) = (stage.pool().clone(), surfaced.clone());
        tokio::spawn(async move {
            loop {
                let n: i64 = sqlx::query_scalar("select count(*) from command where last_error like '%InsufficientInstanceCapacity%'")
                    .fetch_one(&pool)
                    .await
                    .unwrap_or(0);
                if n > 0 {
                    surfaced.store(true, Ordering::SeqCst);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(20)).await;
    proxy.stop_injecting();
    let cleared = Instant::now();
    watcher.abort();
    let i = proxy.injected();
    let (throttled, capacity, timed_out) =
        (i.throttled.load(Ordering::Relaxed), i.capacity.load(Ordering::Relaxed), i.timed_out.load(Ordering::Relaxed));
    eprintln!("injected: {throttled} throttled, {capacity} capacity errors, {timed_out} timeouts; {} forwarded", i.forwarded.load(Ordering::Relaxed));
    assert!(throttled > 0 && capacity > 0 && timed_out > 0, "every kind of fault should have been injected");

    let ledger = load.finish(SENDING).await;
    stage.verify("EC2 throttling, capacity errors, timeouts", &ledger, cleared).await;
    // Retries stay visible after success.
    let kept: i64 = sqlx::query_scalar(
        "select count(*) from command where status = 'succeeded' and result->>'previous_error' like '%InsufficientInstanceCapacity%'",
    )
    .fetch_one(stage.pool())
    .await
    .expect("count");
    assert!(surfaced.load(Ordering::SeqCst) || kept > 0, "no command showed the capacity errors EC2 answered");
    eprintln!("{kept} succeeded commands show the capacity error they retried through");
}

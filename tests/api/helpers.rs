//! Test harness. A test runs against one of two deployments:
//! - production: its own Postgres database, its own RabbitMQ exchange and queues
//!   (a unique prefix; idle queues expire), unique runner ids in the shared moto
//!   server;
//! - embedded: its own data directory holding the SQLite database, with the
//!   in-process queue, the simulated cloud and the file mailer.
//!
//! Either way the application is the real one, bound to port 0. `in_both_modes!`
//! runs a behaviour test against both, so the two cannot drift apart.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::{Credentials, Region};
use geonex::startup::{Application, Role as AppRole};
use geonex_shared::domain::Role;
use geonex_shared::config::Settings;
use geonex_shared::store::Database;
use geonex_shared::store::postgres::PgStore;
use geonex_shared::store::sqlite::SqliteStore;
use geonex_worker::cloud::Cloud;
use geonex_worker::cloud::ec2::Ec2Cloud;
use geonex_worker::cloud::sim::SimCloud;
use serde_json::Value;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub fn pg_admin_url() -> String {
    std::env::var("GEONEX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn amqp_url() -> String {
    std::env::var("GEONEX_TEST_AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn moto_url() -> String {
    std::env::var("GEONEX_TEST_MOTO_URL").unwrap_or_else(|_| "http://127.0.0.1:5000".into())
}

/// A moto server of one test's own, on a free port, stopped when dropped: for
/// tests whose timing must not depend on how busy the shared one is.
pub struct PrivateMoto {
    child: std::process::Child,
    pub url: String,
}

impl PrivateMoto {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().unwrap().port();
        let program = std::env::var("GEONEX_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
        let child = std::process::Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (pip install 'moto[server]')");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while http.get(format!("{url}/moto-api/")).send().await.is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self { child, url }
    }

    /// A client for checking what exists in this moto.
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&ec2_sdk_config_for(&self.url))
    }

    /// The settings that point a deployment's EC2 at this moto.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("GEONEX_EC2__ENDPOINT_URL".into(), self.url.clone())]
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A database created for one test and dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    /// The server's admin URL it was created through (and is dropped through).
    admin: String,
}

impl TestDatabase {
    /// A database on the server of `admin` (the shared test server, or a
    /// private cluster a test restarts).
    pub async fn create_on(admin: &str) -> Self {
        let name = format!("geonex_test_{}", Uuid::new_v4().simple());
        let admin = admin.to_owned();
        let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test Postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or_else(|| admin.clone());
        Self { url: format!("{base}/{name}"), name, admin }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        // Drop runs outside async context; a short-lived runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// A directory for one test, removed when the test ends.
pub struct TestDir(pub std::path::PathBuf);

impl TestDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("create test directory");
        Self(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which set of adapters a deployment runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Postgres, RabbitMQ, moto for AWS (and an SMTP server when a test gives one).
    Production,
    /// SQLite in the data directory, the in-process queue, the simulated cloud,
    /// the file mailer.
    Embedded,
}

/// `in_both_modes!(case_a, case_b)`: for each `async fn case_a(mode: Mode)` in
/// the calling module, a test module `case_a` with a `production` and an
/// `embedded` test.
macro_rules! in_both_modes {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn production() {
                    super::$case(crate::helpers::Mode::Production).await
                }

                #[tokio::test]
                async fn embedded() {
                    super::$case(crate::helpers::Mode::Embedded).await
                }
            }
        )*
    };
}

/// Options for one application under test.
#[derive(Clone)]
pub struct TestConfig {
    pub mode: Mode,
    pub role: AppRole,
    /// Broker URL (e.g. through a proxy the test controls).
    pub amqp_url: String,
    /// The Postgres server the test database is created on (production mode).
    pub postgres_admin_url: String,
    pub extra_env: Vec<(String, String)>,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Production,
            role: AppRole::Serve,
            amqp_url: amqp_url(),
            postgres_admin_url: pg_admin_url(),
            extra_env: Vec::new(),
        }
    }
}

impl TestConfig {
    pub fn in_mode(mode: Mode) -> Self {
        Self { mode, ..Self::default() }
    }
}

pub fn ec2_sdk_config() -> aws_config::SdkConfig {
    ec2_sdk_config_for(&moto_url())
}

pub fn ec2_sdk_config_for(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "geonex-tests",
        )))
        .build()
}

/// A second, independent EC2 client, for checking what really exists in the cloud.
pub fn ec2_client() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&ec2_sdk_config())
}

/// The environment of one test's deployment: everything a `geonex` process needs
/// to join it (database, queue prefix, cloud, fast timings).
pub struct Deployment {
    pub mode: Mode,
    /// The Postgres database (production mode).
    pub db: Option<TestDatabase>,
    pub data_dir: TestDir,
    pub env: Vec<(String, String)>,
    /// The simulated cloud of embedded mode, shared by every application of the
    /// deployment (as one cloud outlives the processes using it).
    pub sim: Option<Arc<SimCloud>>,
}

impl Deployment {
    pub async fn new(config: &TestConfig) -> Self {
        let data_dir = TestDir::new("geonex-data");
        let mut env: Vec<(String, String)> = [
            ("GEONEX_LISTEN", "127.0.0.1:0".to_owned()),
            ("GEONEX_DATA_DIR", data_dir.0.display().to_string()),
            ("GEONEX_WORKER__RETRY_BASE_MS", "200".into()),
            ("GEONEX_WORKER__RETRY_CAP_MS", "2000".into()),
            ("GEONEX_WORKER__LEASE_SECS", "30".into()),
            ("GEONEX_RELAY__INTERVAL_MS", "200".into()),
            ("GEONEX_RELAY__GRACE_MS", "1000".into()),
            // A message the broker lost is published again soon.
            ("GEONEX_RELAY__OVERDUE_MS", "15000".into()),
            // The EC2 budget is on, with room for the bursts tests make; the
            // budget tests set real sizes.
            ("GEONEX_EC2__RATE__SCALE", "1000".into()),
            // Instances are followed, and waiting commands look again, quickly.
            ("GEONEX_RECONCILE__OBSERVE_MIN_MS", "100".into()),
            ("GEONEX_RECONCILE__OBSERVE_MAX_MS", "400".into()),
            ("GEONEX_WORKER__INSTANCE_POLL_MS", "100".into()),
            // Tests that want periodic scans turn them on.
            ("GEONEX_S3USAGE__SCAN_INTERVAL_SECS", "0".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let db = match config.mode {
            Mode::Production => {
                let db = TestDatabase::create_on(&config.postgres_admin_url).await;
                let prefix = unique("geonex-test");
                env.extend(
                    [
                        ("GEONEX_DATABASE_URL", db.url.clone()),
                        ("GEONEX_AMQP_URL", config.amqp_url.clone()),
                        ("GEONEX_QUEUE__PREFIX", prefix.clone()),
                        ("GEONEX_EC2__FLEET", prefix),
                        ("GEONEX_QUEUE__QUEUE_EXPIRES_MS", "60000".into()),
                        ("GEONEX_QUEUE__PUBLISH_TIMEOUT_MS", "1000".into()),
                        ("GEONEX_EC2__ENDPOINT_URL", moto_url()),
                        ("GEONEX_EC2__REGION", "us-east-1".into()),
                        ("GEONEX_S3USAGE__ENDPOINT_URL", moto_url()),
                        ("GEONEX_S3USAGE__REGION", "us-east-1".into()),
                        ("GEONEX_S3USAGE__FORCE_PATH_STYLE", "true".into()),
                        ("GEONEX_S3USAGE__SQS_WAIT_SECS", "1".into()),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v)),
                );
                Some(db)
            }
            Mode::Embedded => {
                env.extend(
                    [
                        ("GEONEX_CLOUD", "sim"),
                        ("GEONEX_SIM__BOOT_DELAY_MS", "200"),
                        ("GEONEX_SIM__STOP_DELAY_MS", "100"),
                        // The agents of simulated instances post heartbeats and
                        // containers and write outputs, which would move the
                        // counts, bytes and ETags other tests check: tests that
                        // want them turn them on.
                        ("GEONEX_SIM__AGENTS", "false"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned())),
                );
                None
            }
        };
        for (k, v) in &config.extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let mut deployment = Self { mode: config.mode, db, data_dir, env, sim: None };
        if config.mode == Mode::Embedded {
            deployment.sim = Some(Arc::new(deployment.open_sim()));
        }
        deployment
    }

    /// The simulated cloud, its state kept in the data directory as `geonex serve` keeps it.
    fn open_sim(&self) -> SimCloud {
        SimCloud::open(Some(self.data_dir.0.join("sim-cloud.json")), self.settings().sim).expect("simulated cloud")
    }

    /// After a change of settings: the simulated cloud takes the new ones (its
    /// instances are carried over). Moto needs nothing.
    pub fn renew_cloud(&mut self) {
        if self.sim.is_some() {
            self.sim = Some(Arc::new(self.open_sim()));
        }
    }

    /// The store of this deployment, opened beside its applications.
    pub async fn store(&self) -> TestStore {
        let store = match &self.db {
            Some(db) => TestStore::Postgres(PgStore::connect(&db.url, 4, Duration::from_secs(5)).await.expect("store")),
            None => TestStore::Sqlite(
                SqliteStore::open_in(&self.data_dir.0, 4, Duration::from_secs(10)).await.expect("store"),
            ),
        };
        store.migrate().await.expect("migrate");
        store
    }

    /// The cloud as this deployment's applications see it.
    pub fn cloud(&self) -> Arc<dyn Cloud> {
        match &self.sim {
            Some(sim) => sim.clone(),
            None => {
                let settings = self.settings();
                let endpoint = settings.ec2.endpoint_url.clone().unwrap_or_else(moto_url);
                Arc::new(Ec2Cloud::with_config(&ec2_sdk_config_for(&endpoint), settings.ec2))
            }
        }
    }

    pub fn settings(&self) -> Settings {
        let (settings, unknown) = Settings::load_from(self.env.clone()).expect("test settings");
        assert!(unknown.is_empty(), "unknown settings in test env: {unknown:?}");
        settings
    }

    /// Starts an application of this deployment in this process.
    pub async fn spawn(&self, role: AppRole) -> RunningApp {
        let settings = self.settings();
        if let Ok(filter) = std::env::var("TEST_LOG") {
            geonex::telemetry::init(&geonex_shared::config::LogSettings { format: "pretty".into(), filter });
        }
        let cloud = self.cloud();
        let aws = ec2_sdk_config_for(&settings.s3usage.endpoint_url.clone().unwrap_or_else(moto_url));
        let app = Application::build_with(settings, role, cloud, &aws).await.expect("build application");
        let port = app.port();
        let shutdown = app.shutdown_token();
        let task = tokio::spawn(app.run_until_stopped());
        RunningApp { address: format!("http://127.0.0.1:{port}"), shutdown, task }
    }

    /// A `geonex` process of this deployment (for crash tests).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_geonex"));
        cmd.args(args)
            .envs(self.env.iter().cloned())
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("GEONEX_LOG__FILTER", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if self.mode == Mode::Embedded {
            return;
        }
        // Quorum queues are not free: delete this test's queues and exchanges now
        // rather than waiting for them to expire.
        let prefix = self.settings().queue.prefix;
        let topology = geonex_shared::queue::rabbitmq::Topology { prefix: prefix.clone(), queue_expires_ms: None };
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(async {
                let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await.ok()?;
                let ch = conn.create_channel().await.ok()?;
                for q in topology.all_queues() {
                    let _ = ch.queue_delete(q.into(), lapin::options::QueueDeleteOptions::default()).await;
                }
                for x in [prefix.clone(), format!("{prefix}.delay")] {
                    let _ = ch.exchange_delete(x.into(), lapin::options::ExchangeDeleteOptions::default()).await;
                }
                let _ = conn.close(200, "test finished".into()).await;
                Some(())
            })
        })
        .join();
    }
}

/// A `geonex` child process of a deployment, its log captured (for crash tests:
/// `child.kill()` is a kill -9).
pub struct Process {
    pub child: tokio::process::Child,
    /// The API's URL, for processes that serve it.
    pub address: String,
    /// Every log line so far.
    pub log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Process {
    /// Spawns `cmd`; with `listens`, waits until its API is listening.
    pub async fn start(mut cmd: tokio::process::Command, listens: bool) -> Self {
        use tokio::io::AsyncBufReadExt;
        cmd.stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn geonex");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        // Keep draining the log so the process never blocks on a full pipe.
        let echo = std::env::var_os("TEST_CHILD_LOG").is_some();
        let pid = child.id().unwrap_or_default();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[child {pid}] {line}");
                }
                sink.lock().unwrap().push(line.clone());
                if line.contains("API listening")
                    && let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(v["url"].as_str().unwrap_or_default().to_owned());
                }
            }
        });
        let address = if listens {
            tokio::time::timeout(Duration::from_secs(60), rx).await.expect("the API started").unwrap_or_default()
        } else {
            String::new()
        };
        Self { child, address, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("process still running") as i32
    }

    /// kill -9: no graceful shutdown, work in flight.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill");
    }
}

pub struct RunningApp {
    pub address: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningApp {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// A deployment with one application serving HTTP, plus clients to inspect it.
pub struct TestApp {
    /// An administrator's token; `get` and `send` use it unless told otherwise.
    pub token: String,
    pub deployment: Deployment,
    pub app: Option<RunningApp>,
    pub address: String,
    pub http: reqwest::Client,
    pub store: TestStore,
    /// moto's EC2, for production-mode tests that act behind the API's back.
    pub ec2: aws_sdk_ec2::Client,
}

/// The deployment's store, behind every store port.
pub enum TestStore {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

impl std::ops::Deref for TestStore {
    type Target = dyn Database;

    fn deref(&self) -> &Self::Target {
        match self {
            TestStore::Postgres(s) => s,
            TestStore::Sqlite(s) => s,
        }
    }
}

impl TestStore {
    /// The Postgres pool, for production-mode tests that check rows directly.
    pub fn pool(&self) -> &sqlx::PgPool {
        match self {
            TestStore::Postgres(s) => s.pool(),
            TestStore::Sqlite(_) => panic!("this test reads Postgres rows; run it in production mode"),
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(TestConfig::default()).await
}

pub async fn spawn_app_in(mode: Mode) -> TestApp {
    spawn_app_with(TestConfig::in_mode(mode)).await
}

/// Images the runner tests use, approved in every test deployment: only approved
/// images may run. The first is the original document's example.
pub const APPROVED_IMAGES: &[&str] = &[
    "geonex/active_fire_go16abi15:1.5",
    "geonex/fire:1",
    "geonex/fire:1.5",
    "geonex/fire:2",
    "geonex/fire:2.0",
    "geonex/fire:3.0",
    "geonex/fire:9.9",
];

/// Registers and approves an image straight in the store, as an administrator
/// would through the API (without the notices that would send).
pub async fn approve_image(store: &TestStore, image_name: &str) {
    const UPSERT: &str = "insert into image (image_name, owner, status, description, organization, decided_by, decided_at) \
         values ($1, 'test', 'approved', 'test image', 'GeoNEX', 'test', {now}) \
         on conflict (image_name) do update set status = 'approved', decided_by = 'test', decided_at = {now}, \
         reason = null";
    match store {
        TestStore::Postgres(s) => {
            sqlx::query(sqlx::AssertSqlSafe(UPSERT.replace("{now}", "now()")))
                .bind(image_name)
                .execute(s.pool())
                .await
                .expect("approve image");
        }
        TestStore::Sqlite(s) => {
            sqlx::query(sqlx::AssertSqlSafe(
                UPSERT.replace("$1", "?1").replace("{now}", "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"),
            ))
            .bind(image_name)
            .execute(s.pool())
            .await
            .expect("approve image");
        }
    }
}

pub async fn spawn_app_with(config: TestConfig) -> TestApp {
    let deployment = Deployment::new(&config).await;
    let app = deployment.spawn(config.role).await;
    let store = deployment.store().await;
    for image in APPROVED_IMAGES {
        approve_image(&store, image).await;
    }
    let token = service_token(&store, "test-admin", Role::Admin, None).await;
    TestApp {
        token,
        address: app.address.clone(),
        app: Some(app),
        deployment,
        http: reqwest::Client::new(),
        store,
        ec2: ec2_client(),
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// Mints a service-account token straight into the store.
pub async fn service_token(
    store: &TestStore,
    name: &str,
    role: Role,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> String {
    use geonex_shared::store::users::TokenOwner;
    use secrecy::ExposeSecret;
    let t = geonex_shared::auth::mint_token(geonex_shared::auth::TokenKind::Api);
    store
        .insert_token(t.token_id, &t.secret_hash, &TokenOwner::Service { name: name.to_owned() }, role, expires_at)
        .await
        .expect("insert token");
    t.text.expose_secret().to_owned()
}

impl TestApp {
    pub async fn get(&self, path_and_query: &str) -> Reply {
        self.send(self.http.get(format!("{}{}", self.address, path_and_query))).await
    }

    /// Sends with the administrator's token unless the request carries its own
    /// Authorization header.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let mut req = req.build().expect("request");
        if !req.headers().contains_key(reqwest::header::AUTHORIZATION) {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token)).unwrap();
            req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
        }
        self.execute(req).await
    }

    /// Sends exactly as built: no token is added.
    pub async fn send_anonymous(&self, req: reqwest::RequestBuilder) -> Reply {
        self.execute(req.build().expect("request")).await
    }

    async fn execute(&self, req: reqwest::Request) -> Reply {
        let resp = self.http.execute(req).await.expect("request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Reply { status, headers, body }
    }

    /// Starts a runner, approving its image first.
    pub async fn start_runner(&self, runner_id: &str, image: &str) -> Reply {
        approve_image(&self.store, image).await;
        self.get(&format!(
            "/start-runner?instance_type=m5d.large&image_name={image}&s3_output=s3://geonex/GO16_ABI15&runner_id={runner_id}&runner_name=Production"
        ))
        .await
    }

    pub async fn command(&self, command_id: &str) -> Value {
        self.get(&format!("/describe-command?command_id={command_id}")).await.body
    }

    /// Polls until the command is in one of `statuses`.
    pub async fn wait_command(&self, command_id: &str, statuses: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let c = self.command(command_id).await;
            if statuses.contains(&c["status"].as_str().unwrap_or("")) {
                return c;
            }
            assert!(Instant::now() < deadline, "command {command_id} never reached {statuses:?}: {c}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn runner(&self, runner_id: &str) -> Value {
        let r = self.get(&format!("/describe-runners?runner_id={runner_id}")).await;
        r.body["runners"][0].clone()
    }

    /// Polls until the runner's observed state is `state` (the instance observer
    /// follows instances after their commands finish); returns the runner.
    pub async fn wait_runner(&self, runner_id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.runner(runner_id).await;
            if r["observed_state"] == state {
                return r;
            }
            assert!(Instant::now() < deadline, "runner {runner_id} never showed {state}: {r}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every instance ever launched for this runner, with its state (moto and the
    /// simulated cloud keep terminated instances listed).
    pub async fn instances_of(&self, runner_id: &str) -> Vec<(String, String)> {
        match &self.deployment.sim {
            Some(sim) => sim
                .instances()
                .into_iter()
                .filter(|i| i.tags.get("geonex:runner-id").is_some_and(|r| r == runner_id))
                .map(|i| (i.instance_id, i.state.as_str().to_owned()))
                .collect(),
            None => instances_tagged(&self.ec2, runner_id).await,
        }
    }

    /// The cloud, as the application sees it (moto or the simulated cloud).
    pub fn cloud(&self) -> Arc<dyn Cloud> {
        self.deployment.cloud()
    }

    /// An instance's tags, straight from the cloud.
    pub async fn tags_of(&self, instance_id: &str) -> std::collections::BTreeMap<String, String> {
        let info = self.cloud().describe(instance_id).await.expect("describe instance").expect("instance exists");
        info.tags.into_iter().collect()
    }

    /// An instance's user data, straight from the cloud.
    pub async fn user_data(&self, instance_id: &str) -> String {
        match &self.deployment.sim {
            Some(sim) => sim.user_data(instance_id).expect("simulated instance"),
            None => user_data_of(&self.ec2, instance_id).await,
        }
    }

    pub async fn stop_app(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

pub async fn instances_tagged(ec2: &aws_sdk_ec2::Client, runner_id: &str) -> Vec<(String, String)> {
    let out = ec2
        .describe_instances()
        .filters(aws_sdk_ec2::types::Filter::builder().name("tag:geonex:runner-id").values(runner_id).build())
        .send()
        .await
        .expect("describe instances");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                i.state().and_then(|s| s.name()).map(|n| n.as_str().to_owned()).unwrap_or_default(),
            )
        })
        .collect()
}

pub async fn user_data_of(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> String {
    use base64::Engine;
    let out = ec2
        .describe_instance_attribute()
        .instance_id(instance_id)
        .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
        .send()
        .await
        .expect("describe instance attribute");
    let encoded = out.user_data().and_then(|v| v.value()).unwrap_or_default();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).expect("base64")).expect("utf-8")
}

/// Polls an async condition until it holds or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

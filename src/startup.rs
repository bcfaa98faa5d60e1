//! Builds the running system from settings: adapters for each port, then the API
//! server, the workers and the relay, depending on the role. `Application::build`
//! binds the listener (port 0 works), so tests run the real thing. With the
//! simulated cloud, the workers also run the agents of its running instances.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use geonex_api::AppState;
use geonex_api::auth::LoginThrottle;
use geonex_shared::config::{CloudChoice, Settings};
use geonex_shared::cost::PriceTable;
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::InstanceTypePolicy;
use geonex_shared::queue::Queue;
use geonex_shared::queue::local::LocalQueue;
use geonex_shared::queue::rabbitmq::{RabbitQueue, Topology};
use geonex_shared::store::Database;
use geonex_shared::store::postgres::PgStore;
use geonex_shared::store::sqlite::SqliteStore;
use geonex_shared::store::usage::S3Output;
use geonex_worker::cloud::Cloud;
use geonex_worker::cloud::ec2::Ec2Cloud;
use geonex_worker::cloud::sim::SimCloud;
use geonex_worker::cloud::sim_agents::SimAgents;
use geonex_worker::budget::Budget;
use geonex_worker::consumer::Worker;
use geonex_worker::costs::CostKeeper;
use geonex_worker::ec2events::InstanceEventIntake;
use geonex_worker::observer::Observer;
use geonex_worker::reconcile::Reconciler;
use geonex_worker::email::{EmailHandler, EmailTemplates};
use geonex_worker::mailer::Mailer;
use geonex_worker::mailer::file::FileMailer;
use geonex_worker::mailer::smtp::SmtpMailer;
use geonex_worker::relay::Relay;
use geonex_worker::runner::{AgentEndpoints, RunnerHandler};
use geonex_worker::s3events::EventIntake;
use geonex_worker::spot::Relauncher;
use geonex_worker::s3usage::{S3UsageHandler, ScanScheduler, Scanner};
use geonex_worker::storage::ObjectStore;
use geonex_worker::storage::folder::FolderObjectStore;
use geonex_worker::storage::s3::S3ObjectStore;
use geonex_worker::storage::sqs::SqsEventQueue;
use geonex_worker::user_data::UserDataTemplate;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Which parts of the system this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// API, workers and relay in one process.
    Serve,
    Api,
    /// Workers and relay.
    Worker,
}

impl Role {
    fn api(self) -> bool {
        matches!(self, Role::Serve | Role::Api)
    }

    fn worker(self) -> bool {
        matches!(self, Role::Serve | Role::Worker)
    }
}

/// The adapters behind each port, built from settings.
pub struct Ports {
    /// The database, behind every store port (it upcasts to each).
    pub db: Arc<dyn Database>,
    pub queue: Arc<dyn Queue>,
    /// Which database, for the startup summary (no credentials).
    pub store_label: String,
}

/// The database of `GEONEX_DATABASE_URL` (`postgres://…` or `sqlite://…`), or
/// SQLite in the data directory when it is unset; migrated.
pub async fn open_database(settings: &Settings) -> anyhow::Result<(Arc<dyn Database>, String)> {
    let db = &settings.database;
    let timeout = Duration::from_millis(db.acquire_timeout_ms);
    let (store, label): (Arc<dyn Database>, String) = match settings.database_url() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::connect(url, db.max_connections, timeout).await.context("connecting to PostgreSQL")?;
            (Arc::new(store), "postgres".into())
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::connect(url, db.max_connections, timeout.max(SQLITE_BUSY_TIMEOUT))
                .await
                .context("opening the SQLite database")?;
            (Arc::new(store), format!("sqlite ({})", url.trim_start_matches("sqlite:").trim_start_matches("//")))
        }
        Some(_) => bail!("GEONEX_DATABASE_URL must start with postgres://, postgresql:// or sqlite://"),
        None => {
            let store = SqliteStore::open_in(&settings.data_dir, db.max_connections, SQLITE_BUSY_TIMEOUT)
                .await
                .with_context(|| format!("opening the SQLite database in {}", settings.data_dir.display()))?;
            (Arc::new(store), format!("sqlite ({})", settings.data_dir.join("geonex.db").display()))
        }
    };
    store.migrate().await.context("migrating the database")?;
    Ok((store, label))
}

/// How long an SQLite statement waits for another connection's write to finish.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

impl Ports {
    /// Connects every port. `role` decides whether an in-process queue is allowed
    /// (only when one process runs both the API and the workers).
    pub async fn connect_for(settings: &Settings, role: Role) -> anyhow::Result<Self> {
        let (store, store_label) = open_database(settings).await?;
        let queue: Arc<dyn Queue> = match broker(settings) {
            Some(broker) => broker,
            None if role == Role::Serve => {
                // The in-memory queue starts empty: resume everything unfinished.
                let resumed = store.recover_unfinished().await.context("recovering unfinished commands")?;
                if resumed > 0 {
                    tracing::info!(resumed, "resuming unfinished commands");
                }
                Arc::new(LocalQueue::new())
            }
            None => bail!("GEONEX_AMQP_URL is not set: separate API and worker processes need a broker"),
        };
        Ok(Self {
            db: store,
            queue,
            store_label,
        })
    }
}

/// The RabbitMQ queue of `GEONEX_AMQP_URL`, if one is configured.
pub fn broker(settings: &Settings) -> Option<Arc<dyn Queue>> {
    let url = settings.amqp_url()?;
    let topology = Topology { prefix: settings.queue.prefix.clone(), queue_expires_ms: settings.queue.queue_expires_ms };
    Some(Arc::new(RabbitQueue::new(url, topology, Duration::from_millis(settings.queue.publish_timeout_ms))))
}

/// Whether anything points at AWS (or an emulator of it).
fn aws_configured(settings: &Settings) -> bool {
    const AWS_VARS: &[&str] = &[
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ];
    settings.ec2.endpoint_url.is_some()
        || settings.ec2.region.is_some()
        || AWS_VARS.iter().any(|v| std::env::var_os(v).is_some())
}

/// The simulated cloud of `settings.data_dir`.
fn open_sim_cloud(settings: &Settings) -> anyhow::Result<Arc<SimCloud>> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("creating the data directory {}", settings.data_dir.display()))?;
    let file = settings.data_dir.join("sim-cloud.json");
    tracing::warn!(state = %file.display(), "using the SIMULATED cloud: no real instances will be launched");
    Ok(Arc::new(SimCloud::open(Some(file), settings.sim.clone()).map_err(anyhow::Error::msg)?))
}

/// The agents of a simulated cloud's running instances, as cloud-init would
/// start them.
fn sim_agents(settings: &Settings, sim: Arc<SimCloud>) -> SimAgents {
    // Simulated containers write where usage scans look: the folders.
    let outputs = (!usage_reads_s3(settings)).then(|| settings.data_dir.join("s3"));
    SimAgents::new(sim, settings.agent.clone(), settings.sim.clone(), settings.data_dir.join("sim-agents"), outputs)
}

/// `geonex sim-cloud`: the simulated cloud over EC2's API, with its agents,
/// until `shutdown`.
pub async fn serve_sim_cloud(settings: &Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let sim = open_sim_cloud(settings)?;
    let listener = TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let agents = settings.sim.agents.then(|| tokio::spawn(sim_agents(settings, sim.clone()).run(shutdown.clone())));
    let router = geonex_worker::cloud::sim_ec2api::router(sim)
        .route("/readyz", axum::routing::get(|| async { "ready" }));
    tracing::info!(url = %format!("http://{addr}"), agents = settings.sim.agents, "simulated cloud serving EC2's API");
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await?;
    if let Some(agents) = agents {
        let _ = agents.await;
    }
    Ok(())
}

pub async fn build_cloud(settings: &Settings) -> anyhow::Result<Arc<dyn Cloud>> {
    let sim = || -> anyhow::Result<Arc<dyn Cloud>> { Ok(open_sim_cloud(settings)?) };
    match settings.cloud {
        Some(CloudChoice::Aws) => Ok(Arc::new(Ec2Cloud::new(settings.ec2.clone()).await)),
        Some(CloudChoice::Sim) => sim(),
        None if aws_configured(settings) => Ok(Arc::new(Ec2Cloud::new(settings.ec2.clone()).await)),
        None => sim(),
    }
}

/// Where S3 outputs are listed: S3 (or an emulator) when the deployment is
/// configured for AWS, else folders `<data dir>/s3/<bucket>/<key>`. Chosen as the
/// cloud is: `GEONEX_CLOUD` first, then whether any AWS or S3 usage setting is present.
pub fn build_object_store(settings: &Settings, aws: &aws_config::SdkConfig) -> anyhow::Result<Arc<dyn ObjectStore>> {
    if usage_reads_s3(settings) {
        return Ok(Arc::new(S3ObjectStore::with_config(aws, &settings.s3usage)));
    }
    let root = settings.data_dir.join("s3");
    std::fs::create_dir_all(&root).with_context(|| format!("creating the S3 folder {}", root.display()))?;
    tracing::warn!(root = %root.display(), "S3 outputs are folders under {}: usage scans count local files", root.display());
    Ok(Arc::new(FolderObjectStore::new(root)))
}

/// Whether usage scans list S3 (else folders in the data directory), chosen as
/// the cloud is.
fn usage_reads_s3(settings: &Settings) -> bool {
    let s3_configured = settings.s3usage.endpoint_url.is_some() || settings.s3usage.region.is_some();
    match settings.cloud {
        Some(CloudChoice::Aws) => true,
        Some(CloudChoice::Sim) => false,
        None => s3_configured || aws_configured(settings),
    }
}

/// The SMTP server of `GEONEX_SMTP_URL`, or `.eml` files in the data directory.
pub fn build_mailer(settings: &Settings) -> anyhow::Result<Arc<dyn Mailer>> {
    Ok(match settings.smtp_url() {
        Some(url) => Arc::new(SmtpMailer::new(url, settings.email.timeout())?),
        None => Arc::new(FileMailer::new(settings.data_dir.join("mail"))),
    })
}

/// The AWS SDK configuration for S3 and SQS from the standard chain, with the
/// usage settings' region and endpoint applied.
pub async fn aws_config_for_usage(settings: &Settings) -> aws_config::SdkConfig {
    let queues = settings.s3usage.sqs_queue_url.is_some() || settings.reconcile.ec2_events_queue_url.is_some();
    if !queues && !usage_reads_s3(settings) {
        // Nothing here talks to AWS: skip the credential and region chain (which
        // would probe the instance metadata service).
        return aws_config::SdkConfig::builder().behavior_version(aws_config::BehaviorVersion::latest()).build();
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &settings.s3usage.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &settings.s3usage.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// The configured extra outputs in canonical form; a malformed one stops startup.
pub fn extra_outputs(settings: &Settings) -> anyhow::Result<Vec<String>> {
    settings
        .s3usage
        .extra_outputs
        .iter()
        .map(|o| {
            S3Output::parse("s3usage.extra_outputs", o)
                .map(|o| o.to_string())
                .map_err(|e| anyhow::anyhow!("GEONEX_S3USAGE__EXTRA_OUTPUTS: {e}"))
        })
        .collect()
}

/// The API's URL as the agents reach it, rendered into the user data: the
/// configured public URL, else, for a simulated cloud's agents (which run in
/// this process), this process's own listener.
fn agent_api_url(settings: &Settings, simulated: bool, local: Option<std::net::SocketAddr>) -> Option<String> {
    if let Some(url) = settings.api.public_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
        return Some(url.to_owned());
    }
    let mut addr = local.filter(|_| simulated)?;
    // Bound to every interface: loopback reaches it.
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    Some(format!("http://{addr}"))
}

/// Background loops of the worker role besides the consumers and the relay.
type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

pub struct Application {
    listener: Option<TcpListener>,
    port: u16,
    router: Option<axum::Router>,
    worker: Option<(Worker, Relay, Reconciler)>,
    tasks: Vec<Task>,
    shutdown: CancellationToken,
    summary: String,
}

impl Application {
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Self> {
        let cloud = build_cloud(&settings).await?;
        Self::build_with_cloud(settings, role, cloud).await
    }

    /// Builds with a cloud adapter made by the caller.
    pub async fn build_with_cloud(settings: Settings, role: Role, cloud: Arc<dyn Cloud>) -> anyhow::Result<Self> {
        let aws = aws_config_for_usage(&settings).await;
        Self::build_with(settings, role, cloud, &aws).await
    }

    /// Builds with a cloud adapter and the AWS SDK configuration for S3 and SQS
    /// made by the caller (e.g. with explicit credentials).
    pub async fn build_with(
        settings: Settings,
        role: Role,
        cloud: Arc<dyn Cloud>,
        aws: &aws_config::SdkConfig,
    ) -> anyhow::Result<Self> {
        let extra_outputs = extra_outputs(&settings)?;
        let shutdown = CancellationToken::new();
        let ports = Ports::connect_for(&settings, role).await?;
        let dispatcher = Dispatcher::start(ports.db.clone(), ports.queue.clone(), shutdown.clone());
        let mailer = build_mailer(&settings)?;
        let objects = build_object_store(&settings, aws)?;
        for a in &settings.email.admin_recipients {
            geonex_shared::domain::EmailAddress::parse_field("email.admin_recipients", a)
                .with_context(|| format!("GEONEX_EMAIL__ADMIN_RECIPIENTS: {a:?}"))?;
        }
        let mut summary = format!(
            "store: {}; queue: {}; cloud: {}; storage: {}; mail: {}",
            ports.store_label,
            ports.queue.label(),
            cloud.label(),
            objects.label(),
            mailer.label()
        );

        // The listener comes first: a simulated cloud's agents report to it.
        let listener = if role.api() {
            let listener =
                TcpListener::bind(&settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
            Some(listener)
        } else {
            None
        };
        let local = listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let port = local.map_or(0, |a| a.port());
        let sim = cloud.clone().simulated();
        let agent_api_url = agent_api_url(&settings, sim.is_some(), local);

        let mut tasks: Vec<Task> = Vec::new();
        // The recorder is installed before anything records into it.
        geonex_shared::metrics::handle();
        tasks.push(Box::pin(geonex_shared::metrics::upkeep(shutdown.clone())));
        if let Some(addr) = settings.metrics.listen.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("binding the metrics listener {addr}"))?;
            summary.push_str(&format!("; metrics: http://{}/metrics", listener.local_addr()?));
            let router = geonex_api::metrics::scrape_router(ports.db.clone());
            let stop = shutdown.clone();
            tasks.push(Box::pin(async move {
                let serve = axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }));
        }
        let prices = Arc::new(
            PriceTable::load(settings.cost.prices_file.as_deref()).map_err(anyhow::Error::msg).context("GEONEX_COST__PRICES_FILE")?,
        );
        // Interrupted spot runners get a new instance, whoever sees the old one go.
        let relauncher = Relauncher::new(ports.db.clone(), settings.worker.max_attempts);
        let worker = if role.worker() {
            if let Some(sim) = sim.filter(|_| settings.sim.agents) {
                if agent_api_url.is_none() {
                    tracing::warn!("the agents of simulated instances cannot report: set GEONEX_API__PUBLIC_URL");
                }
                let agents = sim_agents(&settings, sim);
                summary.push_str(&format!("; {}", agents.label()));
                tasks.push(Box::pin(agents.run(shutdown.clone())));
            }
            let usage_handler = S3UsageHandler::new(
                ports.db.clone(),
                Scanner::new(objects, settings.s3usage.list_concurrency, settings.s3usage.split_depth),
                extra_outputs.clone(),
                settings.s3usage.concurrency,
                settings.worker.lease(),
            );
            if let Some(interval) = settings.s3usage.scan_interval() {
                let scheduler =
                    ScanScheduler::new(ports.db.clone(), dispatcher.clone(), interval, settings.worker.max_attempts);
                tasks.push(Box::pin(scheduler.run(shutdown.clone())));
            }
            if let Some(url) = &settings.s3usage.sqs_queue_url {
                let events = Arc::new(SqsEventQueue::with_config(aws, &settings.s3usage, url));
                tasks.push(Box::pin(EventIntake::new(events, ports.db.clone()).run(shutdown.clone())));
            }
            if let Some(url) = settings.reconcile.ec2_events_queue()? {
                let s = &settings.s3usage;
                let events = Arc::new(SqsEventQueue::new(aws, s.endpoint_url.as_deref(), url, s.sqs_wait_secs));
                tasks.push(Box::pin(InstanceEventIntake::new(events, ports.db.clone(), relauncher.clone()).run(shutdown.clone())));
            }
            let template = UserDataTemplate::load(settings.ec2.user_data_template.as_deref())?;
            let budget = Budget::new(ports.db.clone(), settings.ec2.rate.clone(), settings.ec2.region.as_deref());
            let handler = RunnerHandler::new(
                cloud.clone(),
                ports.db.clone(),
                ports.db.clone(),
                template,
                AgentEndpoints { api_url: agent_api_url.clone(), queue_url: settings.agent.queue_url.clone() },
                budget.clone(),
                Duration::from_secs(settings.worker.instance_wait_secs),
                Duration::from_millis(settings.worker.instance_poll_ms),
            );
            let email_handler = EmailHandler::new(
                ports.db.clone(),
                mailer,
                EmailTemplates::load(settings.email.template_dir.as_deref())?,
                &settings.email.from,
            )?;
            let worker = Worker::new(
                ports.db.clone(),
                dispatcher.clone(),
                vec![Arc::new(handler), Arc::new(email_handler), Arc::new(usage_handler)],
                settings.worker.clone(),
                settings.queue.prefetch,
            );
            let relay = Relay::new(
                ports.db.clone(),
                dispatcher.clone(),
                settings.relay.clone(),
                settings.worker.holder_timeout(),
            );
            let reconciler = Reconciler::new(
                cloud.clone(),
                ports.db.clone(),
                budget.clone(),
                relauncher.clone(),
                settings.reconcile.clone(),
            );
            let observer = Observer::new(cloud.clone(), ports.db.clone(), budget, relauncher, &settings.reconcile);
            let keeper = CostKeeper::new(
                ports.db.clone(),
                dispatcher.clone(),
                prices.clone(),
                settings.price_region(),
                Duration::from_secs(settings.cost.check_interval_secs),
                settings.worker.max_attempts,
            );
            tasks.push(Box::pin(keeper.run(shutdown.clone())));
            tasks.push(Box::pin(observer.run(shutdown.clone())));
            Some((worker, relay, reconciler))
        } else {
            None
        };

        let router = if role.api() {
            let state = AppState {
                db: ports.db.clone(),
                admin_recipients: settings.email.admin_recipients.clone(),
                dispatcher: dispatcher.clone(),
                instance_types: InstanceTypePolicy::new(settings.ec2.allowed_instance_types.clone()),
                settings: settings.api.clone(),
                auth: settings.auth.clone(),
                throttle: Arc::new(LoginThrottle::new(
                    settings.auth.max_failed_logins,
                    Duration::from_secs(settings.auth.failed_login_window_secs),
                )),
                max_attempts: settings.worker.max_attempts,
                holder_timeout: settings.worker.holder_timeout(),
                stuck_after: Duration::from_secs(settings.reconcile.stuck_after_secs),
                prices: prices.clone(),
                price_region: settings.price_region(),
                cloud_label: cloud.label(),
                usage_settings: settings.s3usage.clone(),
                usage_extra_outputs: extra_outputs.clone(),
                events: Some(geonex_api::events::EventHub::start(ports.db.clone(), shutdown.clone())),
                caches: Arc::new(geonex_api::cache::Caches::new(
                    Duration::from_millis(settings.auth.token_cache_ms),
                    Duration::from_millis(settings.api.revision_cache_ms),
                    settings.api.page_cache_entries,
                )),
            };
            Some(geonex_api::router(state))
        } else {
            None
        };
        Ok(Self { listener, port, router, worker, tasks, shutdown, summary })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cancel this token to stop the application gracefully.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn summary(&self) -> &str {
        &self.summary
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some((worker, relay, reconciler)) = self.worker {
            tasks.spawn(worker.run(self.shutdown.clone()));
            tasks.spawn(relay.run(self.shutdown.clone()));
            tasks.spawn(reconciler.run(self.shutdown.clone()));
        }
        for task in self.tasks {
            tasks.spawn(task);
        }
        if let (Some(listener), Some(router)) = (self.listener, self.router) {
            let shutdown = self.shutdown.clone();
            tasks.spawn(async move {
                let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
                let serve = axum::serve(listener, service).with_graceful_shutdown(shutdown.cancelled_owned());
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

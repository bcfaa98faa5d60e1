//! Typed, layered configuration: defaults, then an optional TOML file
//! (`GEONEX_CONFIG`, or `geonex.toml` in the working directory), then `GEONEX_*`
//! environment variables (`GEONEX_SECTION__KEY` for nested keys).
//!
//! Secrets are `SecretString`: they print as `[REDACTED]` in `Debug` and serialize
//! as `***`, so the effective configuration can be logged safely.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};

fn redact<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: String,
    /// `postgres://…`. Required in this release.
    #[serde(serialize_with = "redact")]
    pub database_url: Option<SecretString>,
    /// RabbitMQ URL (`amqp://…`, `amqps://…`).
    #[serde(serialize_with = "redact")]
    pub amqp_url: Option<SecretString>,
    /// `smtp://[user:pass@]host[:port]` (add `?tls=required` for STARTTLS) or
    /// `smtps://…` (TLS from the start). Unset: e-mails are written as `.eml`
    /// files under `data_dir/mail`.
    #[serde(serialize_with = "redact")]
    pub smtp_url: Option<SecretString>,
    /// `aws` (EC2 through the AWS SDK) or `sim` (the simulated cloud). Unset: `aws`
    /// when any AWS or EC2 endpoint setting is present, `sim` otherwise. S3 outputs
    /// follow it: S3 with `aws`, folders `data_dir/s3/<bucket>/<key>` with `sim`
    /// (unset: S3 when an S3 usage endpoint or region is set too).
    pub cloud: Option<CloudChoice>,
    /// Local data: the simulated cloud's state, S3 outputs as folders (`s3/`),
    /// e-mails as files (`mail/`).
    pub data_dir: PathBuf,
    pub database: DatabaseSettings,
    pub queue: QueueSettings,
    pub worker: WorkerSettings,
    pub relay: RelaySettings,
    pub ec2: Ec2Settings,
    pub sim: SimSettings,
    pub reconcile: ReconcileSettings,
    pub s3usage: S3UsageSettings,
    pub api: ApiSettings,
    pub auth: AuthSettings,
    pub email: EmailSettings,
    pub agent: AgentSettings,
    pub log: LogSettings,
    pub cost: CostSettings,
    pub metrics: MetricsSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: None,
            amqp_url: None,
            smtp_url: None,
            cloud: None,
            data_dir: PathBuf::from("./geonex-data"),
            database: DatabaseSettings::default(),
            queue: QueueSettings::default(),
            worker: WorkerSettings::default(),
            relay: RelaySettings::default(),
            ec2: Ec2Settings::default(),
            sim: SimSettings::default(),
            reconcile: ReconcileSettings::default(),
            s3usage: S3UsageSettings::default(),
            api: ApiSettings::default(),
            auth: AuthSettings::default(),
            email: EmailSettings::default(),
            agent: AgentSettings::default(),
            log: LogSettings::default(),
            cost: CostSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

/// What runners cost and what stops them: prices, budgets' checks, idle auto-stop.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CostSettings {
    /// A TOML price table (the shipped one's layout) laid over the shipped prices.
    pub prices_file: Option<PathBuf>,
    /// The region prices are looked up in; unset: `ec2.region`, else `us-east-1`.
    pub region: Option<String>,
    /// How often budgets are checked and idle runners stopped (0: never).
    pub check_interval_secs: u64,
}

impl Default for CostSettings {
    fn default() -> Self {
        Self { prices_file: None, region: None, check_interval_secs: 60 }
    }
}

impl Settings {
    /// The region runners' prices come from.
    pub fn price_region(&self) -> String {
        self.cost.region.clone().or_else(|| self.ec2.region.clone()).unwrap_or_else(|| "us-east-1".into())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DatabaseSettings {
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self { max_connections: 20, acquire_timeout_ms: 5_000 }
    }
}

/// One token bucket: `burst` tokens at most, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
pub struct BucketSize {
    pub burst: f64,
    pub per_sec: f64,
}

impl BucketSize {
    pub const fn new(burst: f64, per_sec: f64) -> Self {
        Self { burst, per_sec }
    }
}

/// The EC2 API's token buckets, as AWS meters each account and Region (the
/// defaults are AWS's documented sizes; accounts with raised limits raise them).
/// Kept in the database, so every worker process draws from one budget.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RateSettings {
    /// Off: EC2 calls are made as fast as commands come.
    pub enabled: bool,
    /// Names the AWS account the buckets meter (with the region, the buckets'
    /// key): deployments sharing an account share a budget.
    pub account: String,
    pub run_instances: BucketSize,
    /// Instances RunInstances may launch (the resource bucket).
    pub run_instances_resource: BucketSize,
    pub start_instances: BucketSize,
    pub terminate_instances: BucketSize,
    /// Other mutating calls: StopInstances, ModifyInstanceAttribute.
    pub mutating: BucketSize,
    /// Filtered or paginated Describe* calls.
    pub describe: BucketSize,
    /// The share of the Describe bucket background work (the observer, the
    /// sweep) may use; the rest is kept for commands.
    pub background_share: f64,
    /// After a `RequestLimitExceeded` the refill rate halves; it grows back to
    /// full over this many seconds.
    pub recovery_secs: f64,
    /// Multiplies every bucket's burst and refill (an account whose limits were
    /// raised across the board; test deployments).
    pub scale: f64,
}

impl RateSettings {
    /// A bucket's size with the scale applied.
    pub fn scaled(&self, b: BucketSize) -> BucketSize {
        let k = if self.scale > 0.0 { self.scale } else { 1.0 };
        BucketSize::new(b.burst * k, b.per_sec * k)
    }
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            account: "default".into(),
            run_instances: BucketSize::new(5.0, 2.0),
            run_instances_resource: BucketSize::new(1000.0, 2.0),
            start_instances: BucketSize::new(5.0, 2.0),
            terminate_instances: BucketSize::new(100.0, 5.0),
            mutating: BucketSize::new(50.0, 5.0),
            describe: BucketSize::new(100.0, 20.0),
            background_share: 0.5,
            recovery_secs: 60.0,
            scale: 1.0,
        }
    }
}

/// Which cloud adapter runs runners (`GEONEX_CLOUD`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudChoice {
    /// EC2 through the AWS SDK.
    Aws,
    /// The simulated cloud.
    Sim,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct QueueSettings {
    /// Name of the exchange and prefix of every queue (`geonex`, `geonex.runner`, …).
    pub prefix: String,
    /// Unacknowledged messages a worker holds per queue.
    pub prefetch: u16,
    /// How long a publish may wait for the broker's confirm before the relay takes over.
    pub publish_timeout_ms: u64,
    /// Delete idle queues after this long (for throwaway environments only).
    pub queue_expires_ms: Option<u64>,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self { prefix: "geonex".into(), prefetch: 32, publish_timeout_ms: 2_000, queue_expires_ms: None }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// Commands a worker process handles at once.
    pub concurrency: usize,
    /// A claimed command's lease; renewed (every third of it) while its handler
    /// runs. The backstop for a holder that vanished without its heartbeat
    /// saying so; a killed worker's commands are taken over after `holder_timeout_ms`.
    pub lease_secs: u64,
    /// How often a worker process refreshes its row in the worker registry.
    pub heartbeat_ms: u64,
    /// A worker whose heartbeat is older than this is presumed dead: the commands
    /// it held are taken over.
    pub holder_timeout_ms: u64,
    /// Attempts before a command is dead.
    pub max_attempts: i32,
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// Delay before a command blocked behind an earlier one on the same runner is retried.
    pub blocked_delay_ms: u64,
    /// How long in-flight commands may run after SIGTERM before the worker exits.
    pub shutdown_grace_secs: u64,
    /// Longest a command waits for its instance to get somewhere (stopped before
    /// a restart) before it fails.
    pub instance_wait_secs: u64,
    /// How long a waiting command releases its worker before it looks again.
    pub instance_poll_ms: u64,
    /// The work queues this process consumes (`runner`, `email`, `s3usage`);
    /// empty: all of them. Lets a deployment give e-mail or scans workers of
    /// their own.
    pub queues: Vec<crate::domain::WorkQueue>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            lease_secs: 30,
            heartbeat_ms: 2_000,
            holder_timeout_ms: 10_000,
            max_attempts: 8,
            retry_base_ms: 1_000,
            retry_cap_ms: 600_000,
            blocked_delay_ms: 1_000,
            shutdown_grace_secs: 30,
            instance_wait_secs: 600,
            instance_poll_ms: 2_000,
            queues: Vec::new(),
        }
    }
}

impl WorkerSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms.max(100))
    }

    /// Never shorter than three heartbeats, so one late beat cannot make a live
    /// worker look dead.
    pub fn holder_timeout(&self) -> Duration {
        Duration::from_millis(self.holder_timeout_ms).max(self.heartbeat() * 3)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RelaySettings {
    /// How often the relay looks for commands whose publish was not confirmed,
    /// and the rescuer for expired leases.
    pub interval_ms: u64,
    /// A command accepted this long ago without a confirmed publish is re-published.
    pub grace_ms: u64,
    /// A retrying command still unclaimed this long after its due time, or a
    /// queued one this long after its confirmed publish, is re-published (its
    /// message was lost). Longer than a message may wait in a backlog, or the
    /// backlog gets duplicates (harmless, dropped at the claim, but work).
    pub overdue_ms: u64,
    pub batch: i64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self { interval_ms: 1_000, grace_ms: 5_000, overdue_ms: 120_000, batch: 500 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Ec2Settings {
    /// Overrides the AWS endpoint for EC2 (an emulator); `AWS_ENDPOINT_URL` also works.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// Tags this deployment's instances (`geonex:fleet`); sweeps and the orphan
    /// reaper only look at instances of their own fleet.
    pub fleet: String,
    pub ami_id: String,
    pub subnet_id: Option<String>,
    pub security_group_ids: Vec<String>,
    pub key_name: Option<String>,
    pub iam_instance_profile: Option<String>,
    /// Exact instance types or `family.*` patterns; empty allows any well-formed type.
    pub allowed_instance_types: Vec<String>,
    /// A minijinja template file replacing the built-in user data.
    pub user_data_template: Option<PathBuf>,
    /// The EC2 request budget every worker of the deployment shares.
    pub rate: RateSettings,
    /// Longest wait for one EC2 request; a call (the SDK's own retries included)
    /// gets three times this. Without it a request EC2 never answers would hold
    /// its command, lease renewed, forever.
    pub timeout_ms: u64,
}

impl Ec2Settings {
    pub fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

impl Default for Ec2Settings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            fleet: "geonex".into(),
            ami_id: "ami-03cf127a".into(),
            subnet_id: None,
            security_group_ids: Vec::new(),
            key_name: None,
            iam_instance_profile: None,
            allowed_instance_types: ["t3.*", "t3a.*", "m5.*", "m5d.*", "m6i.*", "c5.*", "c6i.*", "r5.*"]
                .into_iter()
                .map(String::from)
                .collect(),
            user_data_template: None,
            rate: RateSettings::default(),
            timeout_ms: 20_000,
        }
    }
}

/// The sweep that keeps runners' observed state true to the cloud, and the orphan
/// reaper.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ReconcileSettings {
    /// How often the worker compares runners with the cloud (0 disables the sweep).
    pub interval_secs: u64,
    /// Terminate instances of this fleet that belong to no live runner.
    pub reap_orphans: bool,
    /// How long an orphan must have been seen before it may be terminated.
    pub orphan_grace_secs: u64,
    /// SQS queue receiving EC2 instance state-change events (an EventBridge rule's
    /// target, directly or through SNS), so runners follow their instances within
    /// seconds; unset (or blank) leaves it to the sweep. The SQS endpoint and
    /// long-poll wait are `s3usage.endpoint_url` and `s3usage.sqs_wait_secs`.
    pub ec2_events_queue_url: Option<String>,
    /// The instance observer's fastest pace: no pass sooner than this after
    /// the last.
    pub observe_min_ms: u64,
    /// Its slowest pace while instances are on their way: how late a runner
    /// may show its instance's new state.
    pub observe_max_ms: u64,
    /// A runner pending, stopping or shutting down for longer than this is
    /// flagged `stuck`.
    pub stuck_after_secs: u64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval_secs: 60,
            reap_orphans: false,
            orphan_grace_secs: 3_600,
            ec2_events_queue_url: None,
            observe_min_ms: 1_000,
            observe_max_ms: 10_000,
            stuck_after_secs: 900,
        }
    }
}

impl ReconcileSettings {
    /// The EC2 event queue, if one is set; a value that is not an http(s) URL is an error.
    pub fn ec2_events_queue(&self) -> Result<Option<&str>, ConfigError> {
        match self.ec2_events_queue_url.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok(Some(url)),
            Some(_) => Err(ConfigError(
                "GEONEX_RECONCILE__EC2_EVENTS_QUEUE_URL must be an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)"
                    .into(),
            )),
        }
    }
}

/// The simulated cloud: timings, injected faults, and the agents of its
/// instances with their simulated data feed and containers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SimSettings {
    /// Time an instance spends `pending` before it is `running`.
    pub boot_delay_ms: u64,
    /// Time spent `stopping` or `shutting-down`.
    pub stop_delay_ms: u64,
    /// Added to every call.
    pub latency_ms: u64,
    /// Probability (0–1) of an internal error on any call.
    pub error_rate: f64,
    /// Probability of a throttling error on any call.
    pub throttle_rate: f64,
    /// Probability of an insufficient-capacity error on a launch.
    pub capacity_error_rate: f64,
    /// Run the agent (the code of `geonex agent`) on every running simulated
    /// instance, configured from the instance's user data.
    pub agents: bool,
    /// A new simulated GOES file reaches every agent this often; `0`: never
    /// (the agents still send heartbeats).
    pub data_interval_secs: u64,
    /// About how long a simulated container runs.
    pub container_ms: u64,
    /// Probability (0–1) that a simulated container fails.
    pub container_failure_rate: f64,
    /// Meter calls with EC2's own token buckets (RunInstances and
    /// StartInstances 5 / 2 per second, TerminateInstances 100 / 5, other
    /// mutating calls 50 / 5, filtered Describe* 100 / 20) and answer
    /// `RequestLimitExceeded` when one is empty, as EC2 does.
    pub aws_rate_limits: bool,
    /// Probability of a spot launch failing for want of spot capacity.
    pub spot_capacity_error_rate: f64,
    /// Instance types the simulated cloud has no capacity for at all.
    pub short_instance_types: Vec<String>,
}

impl Default for SimSettings {
    fn default() -> Self {
        Self {
            boot_delay_ms: 2_000,
            stop_delay_ms: 1_000,
            latency_ms: 0,
            error_rate: 0.0,
            throttle_rate: 0.0,
            capacity_error_rate: 0.0,
            agents: true,
            data_interval_secs: 20,
            container_ms: 3_000,
            container_failure_rate: 0.1,
            aws_rate_limits: false,
            spot_capacity_error_rate: 0.0,
            short_instance_types: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct S3UsageSettings {
    /// Overrides the AWS endpoint for S3 and SQS (an emulator); `AWS_ENDPOINT_URL` also works.
    pub endpoint_url: Option<String>,
    pub region: Option<String>,
    /// Path-style S3 addressing (`endpoint/bucket/key`), which emulators need.
    pub force_path_style: bool,
    /// Outputs shown and scanned besides the runners' own (`s3://bucket[/prefix]`).
    pub extra_outputs: Vec<String>,
    /// A full scan is scheduled this often; 0 turns periodic scans off.
    pub scan_interval_secs: u64,
    /// Outputs one scan lists at once.
    pub concurrency: usize,
    /// ListObjectsV2 requests one scan has in flight at once.
    pub list_concurrency: usize,
    /// Folder levels below an output that are listed with a delimiter, so their
    /// sub-folders can be listed concurrently; deeper levels are listed flat.
    pub split_depth: u32,
    /// An output last scanned longer ago than this is shown as stale.
    pub stale_after_secs: u64,
    /// SQS queue receiving S3 event notifications (directly or through SNS);
    /// unset turns incremental updates off.
    pub sqs_queue_url: Option<String>,
    /// Long-poll wait of one SQS receive.
    pub sqs_wait_secs: u32,
}

impl Default for S3UsageSettings {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: None,
            force_path_style: false,
            extra_outputs: Vec::new(),
            scan_interval_secs: 3_600,
            concurrency: 4,
            list_concurrency: 16,
            split_depth: 2,
            stale_after_secs: 7_200,
            sqs_queue_url: None,
            sqs_wait_secs: 20,
        }
    }
}

impl S3UsageSettings {
    pub fn stale_after(&self) -> Duration {
        Duration::from_secs(self.stale_after_secs)
    }

    pub fn scan_interval(&self) -> Option<Duration> {
        (self.scan_interval_secs > 0).then(|| Duration::from_secs(self.scan_interval_secs))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ApiSettings {
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    pub request_timeout_ms: u64,
    pub default_page_size: i64,
    pub max_page_size: i64,
    /// The API's URL as runners' instances reach it; rendered into the user data
    /// so the on-instance agent can post its events.
    pub public_url: Option<String>,
    /// A runner whose agent has not been heard from for this long is shown as
    /// `unresponsive` (it is never terminated for that).
    pub unresponsive_after_secs: u64,
    /// How long a list's revision counter is reused for conditional polls
    /// (0: read it on every request). A change can take this long to turn an ETag.
    pub revision_cache_ms: u64,
    /// Rendered `/describe-runners` pages kept by ETag (0: none).
    pub page_cache_entries: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self { body_limit_bytes: 64 * 1024, request_timeout_ms: 30_000, default_page_size: 100, max_page_size: 1_000, public_url: None,
            unresponsive_after_secs: 300, revision_cache_ms: 100, page_cache_entries: 16 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSettings {
    /// Whether anyone may create an account with `/register-user` (as role `user`).
    /// When false, only administrators can register users.
    pub open_registration: bool,
    /// Lifetime of a token issued by `/login`.
    pub login_ttl_secs: u64,
    /// Failed logins for one user name, or from one address, within the window
    /// before further attempts are refused with 429.
    pub max_failed_logins: usize,
    pub failed_login_window_secs: u64,
    /// How long a verified token is reused without reading the database (0:
    /// read it on every request). A token revoked through another API process
    /// stops working here within this time; a logout here, at once.
    pub token_cache_ms: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self { open_registration: true, login_ttl_secs: 12 * 3600, max_failed_logins: 5, failed_login_window_secs: 300, token_cache_ms: 1_000 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct EmailSettings {
    /// The From address of every e-mail, e.g. `GeoNEX <geonex@example.org>`.
    /// Its domain also names the Message-IDs.
    pub from: String,
    /// Longest wait for the SMTP server on one command (connect and each reply).
    pub timeout_ms: u64,
    /// A directory whose `NAME.subject.j2`, `NAME.txt.j2` and `NAME.html.j2` files
    /// replace the built-in templates of the same name.
    pub template_dir: Option<PathBuf>,
    /// Who hears about a new image request; empty means every administrator account.
    pub admin_recipients: Vec<String>,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            from: "GeoNEX <geonex@localhost>".into(),
            timeout_ms: 30_000,
            template_dir: None,
            admin_recipients: Vec::new(),
        }
    }
}

impl EmailSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The on-instance agent (`geonex agent`). The worker renders `queue_url` into
/// the user data; the agent reads the rest from its own environment. The agents
/// of simulated instances take their identity from the user data and their
/// limits (concurrency, timeout, heartbeat, log tail) from these settings of
/// the process running the simulated cloud.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AgentSettings {
    /// The SQS queue of new-data notifications (S3 events, bare or in SNS envelopes).
    pub queue_url: Option<String>,
    /// The control plane's API, e.g. `https://geonex.example.org`.
    pub api_url: Option<String>,
    /// This runner's agent token (`gnxa_…`).
    #[serde(serialize_with = "redact")]
    pub token: Option<SecretString>,
    pub runner_id: Option<String>,
    pub image_name: Option<String>,
    pub s3_output: Option<String>,
    pub instance_id: Option<String>,
    /// The program run once per notification, split on whitespace; `{input_url}`,
    /// `{s3_output}`, `{runner_id}`, `{image_name}` and `{container_id}` are
    /// replaced in each word. The default names the container
    /// `geonex-{container_id}` so that `stop_command` can find it.
    pub command: String,
    /// Containers run at once.
    pub concurrency: usize,
    /// A container running longer is killed and reported `failed`.
    pub timeout_secs: u64,
    /// Run (with the same placeholders) when a container runs past its timeout,
    /// after its process group is killed: killing `docker run` ends only the
    /// client, this ends the container. Empty runs nothing.
    pub stop_command: String,
    /// Longest wait for the stop command; it is killed after that.
    pub stop_timeout_secs: u64,
    /// Where events wait while the API is unreachable.
    pub spool_dir: PathBuf,
    pub heartbeat_secs: u64,
    /// SQS long-poll wait (at most 20).
    pub wait_secs: i32,
    /// Bytes of a container's output kept as its log tail.
    pub log_tail_bytes: usize,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            queue_url: None,
            api_url: None,
            token: None,
            runner_id: None,
            image_name: None,
            s3_output: None,
            instance_id: None,
            command: "docker run --rm --name geonex-{container_id} -e INPUT_URL={input_url} -e S3_OUTPUT={s3_output} \
                      -e RUNNER_ID={runner_id} -e CONTAINER_ID={container_id} {image_name}"
                .into(),
            concurrency: 2,
            timeout_secs: 3_600,
            stop_command: "docker rm -f geonex-{container_id}".into(),
            stop_timeout_secs: 30,
            spool_dir: PathBuf::from("/var/lib/geonex-agent"),
            heartbeat_secs: 60,
            wait_secs: 20,
            log_tail_bytes: 4_096,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogSettings {
    /// `json`, `text` (`pretty` is another name for it) or `auto`: text when
    /// standard error is a terminal, JSON lines otherwise.
    pub format: String,
    /// An `EnvFilter` directive; `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { format: "auto".into(), filter: "info".into() }
    }
}

/// Where Prometheus scrapes. `/metrics` on the API's listener needs an
/// operator's token; `listen` adds a listener that serves only `/metrics`,
/// without a token (for a scraper on a private network, and for worker
/// processes, which have no API listener).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct MetricsSettings {
    pub listen: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Loads defaults, the optional file and the process environment.
    pub fn load() -> Result<(Settings, Vec<String>), ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(vars)
    }

    /// Loads from an explicit environment; returns the settings and the names of
    /// `GEONEX_*` variables that match no setting (to be warned about).
    pub fn load_from(vars: Vec<(String, String)>) -> Result<(Settings, Vec<String>), ConfigError> {
        let file = vars
            .iter()
            .find(|(k, _)| k == "GEONEX_CONFIG")
            .map(|(_, v)| PathBuf::from(v))
            .unwrap_or_else(|| PathBuf::from("geonex.toml"));
        let env_vars: Vec<(String, String)> = vars
            .iter()
            .filter(|(k, _)| k.starts_with("GEONEX_") && !NOT_SETTINGS.contains(&k.as_str()))
            .cloned()
            .collect();
        let figment = Figment::new().merge(Toml::file(&file)).merge(EnvList(env_vars.clone()));
        let settings: Settings = figment.extract().map_err(|e| ConfigError(e.to_string()))?;
        let known = known_keys();
        let unknown = env_vars
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !known.contains(&key_of(k)))
            .cloned()
            .collect();
        Ok((settings, unknown))
    }

    pub fn database_url(&self) -> Option<&str> {
        self.database_url.as_ref().map(|s| s.expose_secret())
    }

    pub fn amqp_url(&self) -> Option<&str> {
        self.amqp_url.as_ref().map(|s| s.expose_secret())
    }

    pub fn smtp_url(&self) -> Option<&str> {
        self.smtp_url.as_ref().map(|s| s.expose_secret())
    }

    /// The effective configuration with secrets redacted.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

/// `GEONEX_*` variables read elsewhere: the config file's path, and crash points
/// for recovery tests.
const NOT_SETTINGS: &[&str] = &["GEONEX_CONFIG", "GEONEX_FAILPOINTS"];

/// `GEONEX_EC2__AMI_ID` → `ec2.ami_id`.
fn key_of(var: &str) -> String {
    var.trim_start_matches("GEONEX_").to_ascii_lowercase().replace("__", ".")
}

fn known_keys() -> BTreeSet<String> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeSet<String>) {
        if let serde_json::Value::Object(map) = v {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                walk(&key, v, out);
                out.insert(key);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &Settings::default().redacted_json(), &mut out);
    out
}

/// A figment provider over an explicit list of `GEONEX_*` variables, so tests and
/// subprocesses can load configuration without touching the process environment.
struct EnvList(Vec<(String, String)>);

impl figment::Provider for EnvList {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("GEONEX_* environment variables")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (k, v) in &self.0 {
            let key = key_of(k);
            let value: figment::value::Value = v.parse().unwrap_or_else(|_| v.clone().into());
            insert_path(&mut dict, &key, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, key: &str, value: figment::value::Value) {
    match key.split_once('.') {
        None => {
            dict.insert(key.to_owned(), value);
        }
        Some((head, rest)) => {
            let entry = dict
                .entry(head.to_owned())
                .or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn environment_overrides_defaults_and_nested_keys() {
        let (s, unknown) = Settings::load_from(env(&[
            ("GEONEX_LISTEN", "0.0.0.0:9000"),
            ("GEONEX_DATABASE_URL", "postgres://u:hunter2@db/x"),
            ("GEONEX_WORKER__CONCURRENCY", "4"),
            ("GEONEX_EC2__ALLOWED_INSTANCE_TYPES", "[m5d.*, t3.micro]"),
            ("GEONEX_EC2__AMI_ID", "ami-12345678"),
            ("GEONEX_WROKER__CONCURRENCY", "2"),
        ]))
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:9000");
        assert_eq!(s.worker.concurrency, 4);
        assert_eq!(s.ec2.ami_id, "ami-12345678");
        assert_eq!(s.ec2.allowed_instance_types, vec!["m5d.*", "t3.micro"]);
        assert_eq!(s.database_url(), Some("postgres://u:hunter2@db/x"));
        assert_eq!(unknown, vec!["GEONEX_WROKER__CONCURRENCY".to_string()]);
    }

    #[test]
    fn secrets_never_print() {
        let (s, _) = Settings::load_from(env(&[
            ("GEONEX_DATABASE_URL", "postgres://u:hunter2@db/x"),
            ("GEONEX_SMTP_URL", "smtp://mailer:hunter2@mail.example.org:587?tls=required"),
        ]))
        .unwrap();
        assert_eq!(s.smtp_url(), Some("smtp://mailer:hunter2@mail.example.org:587?tls=required"));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.redacted_json().to_string().contains("hunter2"));
    }

    #[test]
    fn the_ec2_event_queue_is_optional_and_must_be_a_url() {
        let (s, _) = Settings::load_from(env(&[])).unwrap();
        assert_eq!(s.reconcile.ec2_events_queue().unwrap(), None);
        let url = "https://sqs.us-east-1.amazonaws.com/123456789012/geonex-ec2";
        let (s, unknown) = Settings::load_from(env(&[("GEONEX_RECONCILE__EC2_EVENTS_QUEUE_URL", url)])).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(s.reconcile.ec2_events_queue().unwrap(), Some(url));
        let (s, _) = Settings::load_from(env(&[("GEONEX_RECONCILE__EC2_EVENTS_QUEUE_URL", " ")])).unwrap();
        assert_eq!(s.reconcile.ec2_events_queue().unwrap(), None);
        let (s, _) = Settings::load_from(env(&[("GEONEX_RECONCILE__EC2_EVENTS_QUEUE_URL", "geonex-ec2")])).unwrap();
        let err = s.reconcile.ec2_events_queue().unwrap_err();
        assert!(err.to_string().contains("EC2_EVENTS_QUEUE_URL"), "{err}");
    }

    #[test]
    fn the_agent_names_its_containers_and_stops_them_by_name_unless_told_otherwise() {
        let (s, _) = Settings::load_from(env(&[])).unwrap();
        assert!(s.agent.command.contains("--name geonex-{container_id}"), "{}", s.agent.command);
        assert_eq!(s.agent.stop_command, "docker rm -f geonex-{container_id}");
        let (s, unknown) = Settings::load_from(env(&[("GEONEX_AGENT__STOP_COMMAND", ""), ("GEONEX_AGENT__STOP_TIMEOUT_SECS", "5")])).unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!((s.agent.stop_command.as_str(), s.agent.stop_timeout_secs), ("", 5));
    }

    #[test]
    fn simulated_instances_run_agents_on_a_simulated_feed_unless_told_otherwise() {
        let (s, _) = Settings::load_from(env(&[])).unwrap();
        assert!(s.sim.agents);
        assert_eq!((s.sim.data_interval_secs, s.sim.container_ms), (20, 3_000));
        assert_eq!(s.log.format, "auto");
        let (s, unknown) = Settings::load_from(env(&[
            ("GEONEX_SIM__AGENTS", "false"),
            ("GEONEX_SIM__DATA_INTERVAL_SECS", "1"),
            ("GEONEX_SIM__CONTAINER_MS", "200"),
            ("GEONEX_SIM__CONTAINER_FAILURE_RATE", "0.5"),
            ("GEONEX_LOG__FORMAT", "text"),
        ]))
        .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert!(!s.sim.agents);
        assert_eq!((s.sim.data_interval_secs, s.sim.container_ms, s.sim.container_failure_rate), (1, 200, 0.5));
        assert_eq!(s.log.format, "text");
    }

    #[test]
    fn malformed_values_are_reported() {
        let err = Settings::load_from(env(&[("GEONEX_WORKER__CONCURRENCY", "many")])).unwrap_err();
        assert!(err.to_string().contains("concurrency"), "{err}");
    }
}

//! `geonex bench launch`: launching runners when EC2, not the pipeline, sets
//! the pace. In a scratch database and vhost, against the simulated cloud:
//! 1. a burst of starts with a short and with a long simulated boot: the rate
//!    at which the commands complete (it must not depend on the boot), the
//!    time until every runner runs, and the DescribeInstances calls the
//!    observer spent per runner that reached `running`;
//! 2. with the simulated cloud metering calls as EC2 does and the cluster's
//!    budget at EC2's own sizes: a burst of starts and, issued with it, stops
//!    of as many running runners: how long the starts take beside the
//!    RunInstances bucket's own limit, how many calls EC2 throttled, and
//!    whether the stops went first;
//! 3. the same burst of starts through several worker processes sharing one
//!    budget, one of them killed mid-burst: nothing lost, no runner with two
//!    instances; against `geonex sim-cloud` (the simulated cloud over EC2's
//!    API, metering calls as EC2 does, shared by the processes as an account
//!    is) or, with `--ec2-endpoint`, moto or a real account.
//!
//! Every figure comes from the database (command times) and from the
//! serving process's `/metrics` (EC2 requests by operation and code), which
//! the simulated cloud and the EC2 adapter count alike.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use geonex_worker::cloud::Cloud;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderValue};

use super::load::{self, Load, MakeRequest, Until};
use super::pipeline::{IMAGE, Target};
use super::probe::Probe;
use super::progress::Progress;
use super::scratch::{ScratchDatabase, ScratchDir, ScratchVhost};
use super::serve::{self, Serve};
use super::table::{Comparison, Row, Unit, baseline as measured};

#[derive(Debug, Clone, clap::Args)]
pub struct LaunchBench {
    /// Starts in the burst of step 1.
    #[arg(long, default_value_t = 1_000)]
    pub burst: usize,
    /// The short and the long simulated boot of step 1, in seconds.
    #[arg(long, default_value_t = 2)]
    pub short_boot_secs: u64,
    #[arg(long, default_value_t = 60)]
    pub long_boot_secs: u64,
    /// Starts (and stops) in the burst of steps 2 and 3.
    #[arg(long, default_value_t = 200)]
    pub rate_burst: usize,
    /// Worker processes of step 3.
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Leave out step 1 (the boots), step 2 (EC2's rate limits) or step 3
    /// (several workers).
    #[arg(long)]
    pub skip_boot: bool,
    #[arg(long)]
    pub skip_rate: bool,
    #[arg(long)]
    pub skip_workers: bool,
    /// An EC2 endpoint (moto's, or a real account's) for step 3, instead of
    /// the simulated cloud served over EC2's API.
    #[arg(long)]
    pub ec2_endpoint: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// A PostgreSQL URL with the right to create databases (see `bench pipeline`).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// The RabbitMQ broker (see `bench pipeline`).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
}

/// EC2's RunInstances bucket: its burst and refill a second.
const RUN_BURST: f64 = 5.0;
const RUN_PER_SEC: f64 = 2.0;

pub async fn run(args: LaunchBench) -> anyhow::Result<()> {
    if args.burst == 0 || args.rate_burst == 0 || args.workers == 0 || args.concurrency == 0 {
        bail!("--burst, --rate-burst, --workers and --concurrency must be at least 1");
    }
    super::in_scratch(&args.database_url, &args.amqp_url, async |db, vhost, dir| measure(&args, db, vhost, dir).await).await
}

/// The scratch resources and the tokens every step uses.
struct Setup<'a> {
    db: &'a ScratchDatabase,
    vhost: &'a ScratchVhost,
    dir: &'a ScratchDir,
    admin: String,
    operator: String,
    concurrency: usize,
    /// Whether the image every run uses has been registered and approved.
    approved: std::sync::atomic::AtomicBool,
}

impl Setup<'_> {
    /// The environment of a process of this run, with `extra` over the bench's defaults.
    fn env(&self, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let data = |name: &str| self.dir.0.join(name).display().to_string();
        let mut pinned: Vec<(String, String)> = vec![
            ("GEONEX_CONFIG".into(), data("no-config.toml")),
            ("GEONEX_CLOUD".into(), "sim".into()),
            ("GEONEX_DATA_DIR".into(), data("data")),
            ("GEONEX_DATABASE_URL".into(), self.db.url.clone()),
            ("GEONEX_AMQP_URL".into(), self.vhost.url.clone()),
        ];
        for (k, v) in extra {
            pinned.retain(|(pk, _)| pk != k);
            pinned.push(((*k).to_owned(), v.clone()));
        }
        serve::environment(pinned)
    }

    /// A target on `sut`, the image approved through the first one.
    async fn target(&self, sut: &Serve) -> anyhow::Result<Target> {
        if !self.approved.swap(true, std::sync::atomic::Ordering::Relaxed) {
            serve::approve_image(&sut.url, &self.admin, IMAGE).await?;
        }
        Ok(Target {
            url: sut.url.clone(),
            auth: HeaderValue::from_str(&format!("Bearer {}", self.operator))?,
            probe: Probe::postgres(&self.db.url).await?,
            client: load::client(self.concurrency)?,
            progress: Arc::new(Progress::default()),
            concurrency: self.concurrency,
        })
    }
}

async fn measure(args: &LaunchBench, db: &ScratchDatabase, vhost: &ScratchVhost, dir: &ScratchDir) -> anyhow::Result<Vec<Row>> {
    let mut setup = Setup {
        db,
        vhost,
        dir,
        admin: String::new(),
        operator: String::new(),
        concurrency: args.concurrency,
        approved: false.into(),
    };
    let env = setup.env(&[]);
    setup.admin = serve::token(&env, "bench-admin", "admin").await?;
    setup.operator = serve::token(&env, "bench", "operator").await?;
    let mut rows = Vec::new();

    // 1. The boot, short and long.
    if !args.skip_boot {
        // Unmeasured: the first burst into a new database runs slower (its
        // tables are empty, their statistics not yet gathered), whichever boot
        // it has; both measured bursts then find it alike.
        boot_run(&setup, args.burst.div_ceil(5), args.short_boot_secs, "bench-a-").await?;
        let short = boot_run(&setup, args.burst, args.short_boot_secs, "bench-b-").await?;
        let long = boot_run(&setup, args.burst, args.long_boot_secs, "bench-c-").await?;
        let n = args.burst;
        rows.push(Row::new(
            format!("start-runner commands completed/s, {n} in a burst, boot {} s", args.short_boot_secs),
            short.per_sec,
            Unit::PerSec,
            Comparison::None,
        ));
        rows.push(Row::new(
            format!("start-runner commands completed/s, {n} in a burst, boot {} s (target within 20% of boot {} s)", args.long_boot_secs, args.short_boot_secs),
            long.per_sec,
            Unit::PerSec,
            measured(&format!("boot {} s", args.short_boot_secs), Some(short.per_sec)),
        ));
        rows.push(Row::new(
            format!("all {n} running after, boot {} s (target boot + 15 s)", args.long_boot_secs),
            long.all_running.as_secs_f64(),
            Unit::Secs,
            Comparison::Target { value: (args.long_boot_secs + 15) as f64 },
        ));
        for (burst, boot, target) in [(&long, args.long_boot_secs, true), (&short, args.short_boot_secs, false)] {
            let (transitions, calls, passes) = (burst.transitions, burst.describe_calls, burst.passes);
            rows.push(Row::new(
                format!(
                    "DescribeInstances calls per transition observed ({calls} in {passes} observer passes, for {transitions}), boot {boot} s{}",
                    if target { " (target 0.01)" } else { "" }
                ),
                calls / transitions.max(1.0),
                Unit::Fraction,
                if target { Comparison::Target { value: 0.01 } } else { Comparison::None },
            ));
        }
    }

    // 2. EC2's rate limits, simulated.
    if !args.skip_rate {
        rows.extend(rate_run(&setup, args.rate_burst).await?);
    }

    // 3. Several worker processes sharing one budget and one EC2, one killed:
    //    the simulated cloud over EC2's API (first without limits for the
    //    runners to stop, then metering calls as EC2 does), or the endpoint given.
    let (n, fleet) = (args.rate_burst, format!("geonex-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    match &args.ec2_endpoint {
        _ if args.skip_workers => {}
        Some(endpoint) => {
            let to_stop = prelaunch(&setup, n, endpoint, &fleet).await?;
            rows.extend(workers_run(&setup, args.workers, endpoint, &fleet, to_stop, false).await?);
        }
        None => {
            let data = setup.dir.0.join("sim-cloud").display().to_string();
            let sim_env = |limits: bool, boot_ms: &str| {
                setup.env(&[
                    ("GEONEX_DATA_DIR", data.clone()),
                    ("GEONEX_SIM__AWS_RATE_LIMITS", limits.to_string()),
                    ("GEONEX_SIM__BOOT_DELAY_MS", boot_ms.to_owned()),
                ])
            };
            let sim = Serve::start_as("sim-cloud", "simulated cloud over EC2's API, no limits", sim_env(false, "0")).await?;
            let to_stop = prelaunch(&setup, n, &sim.url, &fleet).await;
            let to_stop = finish(sim, to_stop).await?;
            // The same simulated cloud (its state is in its data directory), now metered.
            let label = "simulated cloud over EC2's API, metering calls as EC2 does";
            let sim = Serve::start_as("sim-cloud", label, sim_env(true, "2000")).await?;
            let result = workers_run(&setup, args.workers, &sim.url, &fleet, to_stop, true).await;
            rows.extend(finish(sim, result).await?);
        }
    }
    Ok(rows)
}

/// What a burst of starts did.
struct Burst {
    per_sec: f64,
    all_running: Duration,
    describe_calls: f64,
    /// The state changes the observer saw, and its passes.
    transitions: f64,
    passes: f64,
}

async fn boot_run(setup: &Setup<'_>, n: usize, boot_secs: u64, prefix: &str) -> anyhow::Result<Burst> {
    // A simulated cloud of its own: instances of another run's would boot again
    // at this run's pace, and the sweep would hand them to the observer.
    let data = setup.dir.0.join(format!("boot-{boot_secs}")).display().to_string();
    let env = setup.env(&[("GEONEX_SIM__BOOT_DELAY_MS", (boot_secs * 1000).to_string()), ("GEONEX_DATA_DIR", data)]);
    let sut = Serve::start(&format!("simulated cloud, boot {boot_secs} s"), env).await?;
    let result = async {
        let t = setup.target(&sut).await?;
        let before = ec2_requests(&t).await?;
        let seen_before = observed(&t).await?;
        let started = Instant::now();
        let (_, completed) = t.commands(&format!("{n} starts, boot {boot_secs} s"), n, t.starts(prefix)).await?;
        t.progress.phase(&format!("runners running, boot {boot_secs} s"), n);
        let ticker = t.progress.show();
        let running = t.probe.wait_running(prefix, n, Duration::from_secs(boot_secs + 60), &t.progress).await;
        ticker.finish().await;
        running?;
        let all_running = started.elapsed();
        let after = ec2_requests(&t).await?;
        let seen_after = observed(&t).await?;
        let (transitions, passes) = (seen_after.0 - seen_before.0, seen_after.1 - seen_before.1);
        t.probe.close().await;
        Ok(Burst {
            per_sec: n as f64 / completed.as_secs_f64(),
            all_running,
            describe_calls: count(&after, "DescribeInstances", None) - count(&before, "DescribeInstances", None),
            transitions,
            passes,
        })
    }
    .await;
    finish(sut, result).await
}

async fn rate_run(setup: &Setup<'_>, n: usize) -> anyhow::Result<Vec<Row>> {
    // The runners to stop, started first without the limits.
    let env = setup.env(&[("GEONEX_SIM__BOOT_DELAY_MS", "0".into())]);
    let sut = Serve::start("simulated cloud, no rate limits", env).await?;
    let result = async {
        let t = setup.target(&sut).await?;
        t.commands(&format!("{n} runners to stop later"), n, t.starts("bench-s-")).await?;
        let instances = t.probe.instances("bench-s-").await?;
        t.probe.close().await;
        Ok(instances)
    }
    .await;
    let instances = Arc::new(finish(sut, result).await?);

    let env = setup.env(&[
        ("GEONEX_SIM__AWS_RATE_LIMITS", "true".into()),
        ("GEONEX_EC2__RATE__SCALE", "1".into()),
        ("GEONEX_SIM__BOOT_DELAY_MS", "2000".into()),
    ]);
    let sut = Serve::start("simulated cloud metering calls as EC2 does", env).await?;
    let result = async {
        let t = setup.target(&sut).await?;
        let seq = t.probe.last_seq().await?;
        t.progress.phase(&format!("{n} starts and {n} stops within EC2's rate limits"), 2 * n);
        let ticker = t.progress.show();
        let load = |make| Load { client: &t.client, expect: StatusCode::ACCEPTED, make, progress: &t.progress };
        let starts = load(t.starts("bench-r-")).closed_loop(Until::Count(n), t.concurrency);
        let stops = load(stops(&t, instances.clone())).closed_loop(Until::Count(instances.len()), t.concurrency);
        let done = t.probe.wait_succeeded(seq, n + instances.len(), &t.progress);
        let result = tokio::try_join!(starts, stops, done);
        ticker.finish().await;
        result.context("the rate-limited burst")?;
        let start_span = t.probe.span(seq, "start_runner").await?;
        let stop_span = t.probe.span(seq, "stop_runner").await?;
        let requests = ec2_requests(&t).await?;
        let throttled = count(&requests, "", Some("RequestLimitExceeded"));
        let which: Vec<String> = requests
            .iter()
            .filter(|((_, code), n)| code == "RequestLimitExceeded" && **n > 0.0)
            .map(|((op, _), n)| format!("{op} {n}"))
            .collect();
        t.probe.close().await;
        Ok(vec![
            Row::new(
                format!("{n} starts launched within EC2's rate limits in (target (n − 5) / 2 s + 10%)"),
                start_span,
                Unit::Secs,
                Comparison::Target { value: launch_limit(n) },
            ),
            Row::new(
                match which.is_empty() {
                    true => format!("RequestLimitExceeded answers during those {n} starts (target 0)"),
                    false => format!("RequestLimitExceeded answers during those {n} starts ({}; target 0)", which.join(", ")),
                },
                throttled,
                Unit::Count,
                Comparison::Target { value: 0.0 },
            ),
            Row::new(
                format!("{} stops issued with the starts, all done after (target before the starts)", instances.len()),
                stop_span,
                Unit::Secs,
                measured("the starts", Some(start_span)),
            ),
        ])
    }
    .await;
    finish(sut, result).await
}

/// The environment of a process whose EC2 is `endpoint`, tagging fleet `fleet`,
/// with the cluster's budget at `scale` times EC2's own sizes.
fn ec2_env(setup: &Setup<'_>, endpoint: &str, fleet: &str, scale: &str) -> Vec<(String, String)> {
    let mut extra = serve::ec2_at(endpoint, fleet);
    extra.push(("GEONEX_EC2__RATE__SCALE", scale.to_owned()));
    setup.env(&extra)
}

/// `n` runners started through `endpoint` with the budget out of the way, for
/// step 3 to stop: (runner, instance) pairs.
async fn prelaunch(setup: &Setup<'_>, n: usize, endpoint: &str, fleet: &str) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let env = ec2_env(setup, endpoint, fleet, "1000000");
    let sut = Serve::start(&format!("EC2 at {endpoint}, no budget"), env).await?;
    let result = async {
        let t = setup.target(&sut).await?;
        t.commands(&format!("{n} runners to stop later"), n, t.starts("bench-v-")).await?;
        let instances = t.probe.instances("bench-v-").await?;
        t.probe.close().await;
        Ok(Arc::new(instances))
    }
    .await;
    finish(sut, result).await
}

/// As many starts as `to_stop` holds, and stops of `to_stop`, through `workers`
/// worker processes and one API process; one worker is killed a quarter of
/// the way through. `metered`: the endpoint is `geonex sim-cloud`, whose
/// `/calls` count the requests it throttled.
async fn workers_run(
    setup: &Setup<'_>,
    workers: usize,
    endpoint: &str,
    fleet: &str,
    to_stop: Arc<Vec<(String, String)>>,
    metered: bool,
) -> anyhow::Result<Vec<Row>> {
    let n = to_stop.len();
    let env = ec2_env(setup, endpoint, fleet, "1");
    let mut api = Serve::start_as("api", &format!("EC2 at {endpoint}"), env.clone()).await?;
    let mut procs = Vec::new();
    for _ in 0..workers {
        procs.push(Serve::worker(env.clone())?);
    }
    let result = async {
        let t = setup.target(&api).await?;
        let seq = t.probe.last_seq().await?;
        let throttled_before = throttled(&t, endpoint, metered).await?;
        t.progress.phase(&format!("{n} starts and {n} stops through {workers} workers, one killed"), 2 * n);
        let ticker = t.progress.show();
        let load = |make| Load { client: &t.client, expect: StatusCode::ACCEPTED, make, progress: &t.progress };
        let starts = load(t.starts("bench-w-")).closed_loop(Until::Count(n), t.concurrency);
        let stops = load(stops(&t, to_stop.clone())).closed_loop(Until::Count(n), t.concurrency);
        let done = async {
            // A quarter of the way through, one worker dies as a crash would end it.
            t.probe.wait_succeeded(seq, n / 2, &t.progress).await?;
            if let Some(doomed) = procs.pop() {
                doomed.kill().await;
            }
            t.probe.wait_succeeded(seq, 2 * n, &t.progress).await
        };
        let result = tokio::try_join!(starts, stops, done);
        ticker.finish().await;
        result.context("the burst through several workers")?;
        let span = t.probe.span(seq, "start_runner").await?;
        let stop_span = t.probe.span(seq, "stop_runner").await?;
        let throttled_after = throttled(&t, endpoint, metered).await?;
        let (key, secret) = serve::credentials();
        let settings = geonex_shared::config::Ec2Settings {
            endpoint_url: Some(endpoint.to_owned()),
            region: Some("us-east-1".into()),
            fleet: fleet.to_owned(),
            ..geonex_shared::config::Ec2Settings::default()
        };
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "bench"))
            .load()
            .await;
        let cloud = geonex_worker::cloud::ec2::Ec2Cloud::with_config(&config, settings);
        let mut per_runner: BTreeMap<String, usize> = BTreeMap::new();
        let listed = cloud.list_fleet_instances().await.map_err(|e| anyhow::anyhow!("listing the fleet: {e}"))?;
        eprintln!("fleet {fleet}: {} instances", listed.len());
        for i in listed {
            if let Some(r) = i.tags.get(geonex_worker::cloud::TAG_RUNNER_ID) {
                *per_runner.entry(r.clone()).or_default() += 1;
            }
        }
        let doubled = per_runner.values().filter(|&&k| k > 1).count();
        let missing = n - per_runner.keys().filter(|r| r.starts_with("bench-w-")).count();
        t.probe.close().await;
        let cloud = if metered { "the simulated cloud over EC2's API".to_owned() } else { endpoint.to_owned() };
        let mut rows = vec![
            Row::new(
                format!("{n} starts through {workers} workers sharing one budget and {cloud}, one killed, launched in (target (n − 5) / 2 s + 10%)"),
                span,
                Unit::Secs,
                Comparison::Target { value: launch_limit(n) },
            ),
            Row::new(
                format!("{n} stops issued with them, all done after (target before the starts)"),
                stop_span,
                Unit::Secs,
                measured("the starts", Some(span)),
            ),
            Row::new("runners with two instances (target 0)", doubled as f64, Unit::Count, Comparison::Target { value: 0.0 }),
            Row::new("runners with no instance (target 0)", missing as f64, Unit::Count, Comparison::Target { value: 0.0 }),
        ];
        if let (Some(before), Some(after)) = (throttled_before, throttled_after) {
            rows.push(Row::new(
                format!("RequestLimitExceeded answers during those {n} starts (target 0)"),
                after - before,
                Unit::Count,
                Comparison::Target { value: 0.0 },
            ));
        }
        anyhow::Ok(rows)
    }
    .await;
    for p in procs {
        p.stop().await;
    }
    let result = match result {
        Err(e) if api.check_alive().is_err() => Err(e.context(format!("geonex api died:\n{}", api.log_tail()))),
        r => r,
    };
    api.stop().await;
    result
}

/// The requests `geonex sim-cloud` at `endpoint` has throttled, when it is one.
async fn throttled(t: &Target, endpoint: &str, metered: bool) -> anyhow::Result<Option<f64>> {
    if !metered {
        return Ok(None);
    }
    let calls: serde_json::Value =
        t.client.get(format!("{endpoint}/calls")).send().await.context("GET /calls of the simulated cloud")?.json().await?;
    Ok(calls["throttled"].as_f64())
}

/// RunInstances' own limit for `n` launches: the burst at once, then the
/// refill, with 10% to spare.
fn launch_limit(n: usize) -> f64 {
    ((n as f64 - RUN_BURST).max(0.0) / RUN_PER_SEC) * 1.1
}

/// Stop requests for the runners of `list`.
fn stops(t: &Target, list: Arc<Vec<(String, String)>>) -> MakeRequest {
    let (base, auth) = (t.url.clone(), t.auth.clone());
    Arc::new(move |client, i| {
        let (runner, instance) = &list[i];
        client.get(format!("{base}/stop-runner?instance_id={instance}&runner_id={runner}")).header(AUTHORIZATION, auth.clone())
    })
}

/// Stops the serving process, with its log's tail when the run failed because it died.
async fn finish<T>(mut sut: Serve, result: anyhow::Result<T>) -> anyhow::Result<T> {
    let result = match result {
        Err(e) if sut.check_alive().is_err() => Err(e.context(format!("geonex serve died:\n{}", sut.log_tail()))),
        r => r,
    };
    sut.stop().await;
    result
}

/// `geonex_ec2_requests_total` by (operation, code), scraped from `/metrics`.
async fn ec2_requests(t: &Target) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    Ok(parse_ec2_requests(&scrape(t).await?))
}

/// `geonex_observer_transitions_total` and `…_passes_total`, scraped from `/metrics`.
async fn observed(t: &Target) -> anyhow::Result<(f64, f64)> {
    let text = scrape(t).await?;
    let sum = |name: &str| text.lines().filter_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok()).sum();
    Ok((sum(geonex_shared::metrics::OBSERVER_TRANSITIONS), sum(geonex_shared::metrics::OBSERVER_PASSES)))
}

async fn scrape(t: &Target) -> anyhow::Result<String> {
    let resp = t.client.get(format!("{}/metrics", t.url)).header(AUTHORIZATION, t.auth.clone()).send().await.context("GET /metrics")?;
    if resp.status() != StatusCode::OK {
        bail!("/metrics answered {}", resp.status());
    }
    Ok(resp.text().await?)
}

fn parse_ec2_requests(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with(geonex_shared::metrics::EC2_REQUESTS)) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |name: &str| {
            labels.split(&[',', '{', '}'][..]).find_map(|kv| kv.strip_prefix(&format!("{name}=\""))?.strip_suffix('"').map(str::to_owned))
        };
        if let (Some(op), Some(code), Ok(v)) = (label("operation"), label("code"), value.parse::<f64>()) {
            *out.entry((op, code)).or_default() += v;
        }
    }
    out
}

/// Requests of `op` (every operation when empty) with `code` (any when `None`).
fn count(requests: &BTreeMap<(String, String), f64>, op: &str, code: Option<&str>) -> f64 {
    requests
        .iter()
        .filter(|((o, c), _)| (op.is_empty() || o == op) && code.is_none_or(|want| c == want))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_requests_are_read_from_the_exposition_by_operation_and_code() {
        let text = "# TYPE geonex_ec2_requests_total counter\n\
            geonex_ec2_requests_total{operation=\"DescribeInstances\",code=\"ok\"} 12\n\
            geonex_ec2_requests_total{operation=\"RunInstances\",code=\"RequestLimitExceeded\"} 3\n\
            geonex_ec2_requests_total{operation=\"RunInstances\",code=\"ok\"} 200\n\
            geonex_http_requests_total{route=\"/x\"} 5\n";
        let r = parse_ec2_requests(text);
        assert_eq!(count(&r, "DescribeInstances", None), 12.0);
        assert_eq!(count(&r, "", Some("RequestLimitExceeded")), 3.0);
        assert_eq!(count(&r, "RunInstances", None), 203.0);
        assert!((launch_limit(200) - 107.25).abs() < 1e-9);
    }
}

//! `geonex bench pipeline`: the command pipeline measured end to end against
//! real services, beside the anchors measured in the same run.
//!
//! In a scratch database and a scratch vhost it starts `geonex serve` with the
//! simulated cloud (EC2 is not what is measured; in production mode it is
//! `geonex sim-cloud`, a process of its own reached over EC2's API through the
//! SDK, so the serving process holds only the control plane) and drives it
//! over HTTP:
//! 1. N start-runner requests for distinct runners, timed from the first
//!    request until every command has succeeded in the database;
//! 2. a stop (half of them) or a delete (the other half) of each, timed the same way;
//! 3. the fleet topped up to `--runners` live runners, then `/describe-runners`
//!    (a page of 100) polled for its 200 and its 304 path; the serving
//!    process's memory read then;
//! 4. start-runner requests at a fixed offered rate while the workers are busy
//!    with them, for the latency of the 202;
//! 5. the first step again in embedded mode (SQLite, the in-process queue).
//!
//! `bare_axum` is polled by the same load generator; `raw_amqp` runs on the
//! scratch vhost before the system starts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, ETAG, HeaderValue, IF_NONE_MATCH};

use super::baseline::{self, Anchors, BareAxum, RawAmqp};
use super::load::{self, Load, MakeRequest, Outcome, Until};
use super::probe::Probe;
use super::progress::Progress;
use super::scratch::{ScratchDatabase, ScratchDir, ScratchVhost};
use super::serve::{self, Serve};
use super::table::{Comparison, Row, Unit, baseline as measured};

#[derive(Debug, Clone, clap::Args)]
pub struct PipelineBench {
    /// Start-runner commands of the end-to-end run (distinct runners); as many
    /// stops and deletes follow.
    #[arg(long, default_value_t = 20_000)]
    pub commands: usize,
    /// Requests in flight at once (end-to-end runs and polling).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Offered start-runner requests a second for the accept latency.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u32,
    /// How long the fixed rate is offered.
    #[arg(long, default_value_t = 5)]
    pub rate_secs: u64,
    /// Live runners while `/describe-runners` is polled and memory is read.
    #[arg(long, default_value_t = 10_000)]
    pub runners: usize,
    /// How long each polling path (and each of bare_axum's) is driven.
    #[arg(long, default_value_t = 5)]
    pub poll_secs: u64,
    /// Leave out the embedded-mode run.
    #[arg(long)]
    pub skip_embedded: bool,
    /// A PostgreSQL URL with the right to create databases; the bench creates
    /// its own scratch database on that server and drops it afterwards.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub database_url: String,
    /// The RabbitMQ broker; the bench creates its own vhost there with
    /// `rabbitmqctl` (run on the broker's host) and deletes it afterwards.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub amqp_url: String,
    /// The anchors' Cargo project (default: `../shared/anchors` beside the checkout).
    #[arg(long)]
    pub anchors: Option<PathBuf>,
}

/// The image every benchmark runner runs.
pub(super) const IMAGE: &str = "geonex/bench:1";

pub async fn run(args: PipelineBench) -> anyhow::Result<()> {
    if args.commands < 2 || args.runners == 0 || args.concurrency == 0 || args.rate == 0 {
        bail!("--commands must be at least 2; --runners, --concurrency and --rate at least 1");
    }
    let anchors_dir = args.anchors.clone().unwrap_or_else(baseline::default_dir);
    let anchors = match baseline::build(&anchors_dir).await {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("no baselines: {e:#}; they are shown as n/a");
            None
        }
    };
    super::in_scratch(&args.database_url, &args.amqp_url, async |db, vhost, dir| {
        measure(&args, anchors.as_ref(), db, vhost, dir).await
    })
    .await
}

/// What one run against a serving process needs.
pub(super) struct Target {
    pub url: String,
    pub auth: HeaderValue,
    pub probe: Probe,
    pub client: reqwest::Client,
    pub progress: Arc<Progress>,
    pub concurrency: usize,
}

impl Target {
    /// Sends `total` requests made by `make`, each expecting 202, and waits
    /// until all their commands have succeeded; returns the HTTP run and the
    /// time from the first request to the last success.
    pub async fn commands(&self, label: &str, total: usize, make: MakeRequest) -> anyhow::Result<(Outcome, Duration)> {
        let seq = self.probe.last_seq().await?;
        self.progress.phase(label, total);
        let ticker = self.progress.show();
        let started = Instant::now();
        let sent = Load { client: &self.client, expect: StatusCode::ACCEPTED, make, progress: &self.progress }
            .closed_loop(Until::Count(total), self.concurrency);
        let done = self.probe.wait_succeeded(seq, total, &self.progress);
        let result = tokio::try_join!(sent, done);
        let elapsed = started.elapsed();
        ticker.finish().await;
        let (sent, ()) = result.with_context(|| label.to_owned())?;
        Ok((sent, elapsed))
    }

    /// Start-runner requests for the runners `{prefix}{i:06}`.
    pub fn starts(&self, prefix: &str) -> MakeRequest {
        let (base, auth, prefix) = (format!("{}/start-runner", self.url), self.auth.clone(), prefix.to_owned());
        Arc::new(move |client, i| {
            let url = format!(
                "{base}?instance_type=m5d.large&image_name={IMAGE}&s3_output=s3://geonex-bench/out&runner_id={prefix}{i:06}&runner_name=bench"
            );
            client.get(url).header(AUTHORIZATION, auth.clone())
        })
    }

    /// `/describe-runners` (a page of 100) for `secs`; with `etag`, conditional.
    async fn poll_runners(&self, etag: Option<HeaderValue>, secs: u64) -> anyhow::Result<Outcome> {
        let url = format!("{}/describe-runners?limit=100", self.url);
        poll(&self.client, &url, Some(self.auth.clone()), etag, secs, self.concurrency, &self.progress).await
    }
}

/// A polling run: GET `url` for `secs` with `concurrency` in flight; 304 is
/// expected with an ETag, 200 without.
async fn poll(
    client: &reqwest::Client,
    url: &str,
    auth: Option<HeaderValue>,
    etag: Option<HeaderValue>,
    secs: u64,
    concurrency: usize,
    progress: &Arc<Progress>,
) -> anyhow::Result<Outcome> {
    let expect = if etag.is_some() { StatusCode::NOT_MODIFIED } else { StatusCode::OK };
    progress.phase(&format!("GET {url} ({expect})"), 0);
    let ticker = progress.show();
    let url = url.to_owned();
    let make: MakeRequest = Arc::new(move |client, _| {
        let mut req = client.get(&url);
        if let Some(a) = &auth {
            req = req.header(AUTHORIZATION, a.clone());
        }
        if let Some(tag) = &etag {
            req = req.header(IF_NONE_MATCH, tag.clone());
        }
        req
    });
    let out = Load { client, expect, make, progress }.closed_loop(Until::Elapsed(Duration::from_secs(secs)), concurrency).await;
    ticker.finish().await;
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

async fn measure(
    args: &PipelineBench,
    anchors: Option<&Anchors>,
    db: &ScratchDatabase,
    vhost: &ScratchVhost,
    dir: &ScratchDir,
) -> anyhow::Result<Vec<Row>> {
    let mut raw = None;
    // raw_amqp can fail as it shuts down (its consumer is cancelled while the
    // connection still expects frames); its figure is taken from a run that finished.
    for _ in 0..5 {
        let Some(a) = anchors else { break };
        match a.raw_amqp(&vhost.url, args.commands).await {
            Ok(r) => {
                raw = Some(r);
                break;
            }
            Err(e) => eprintln!("raw_amqp: {e:#}"),
        }
    }
    let data = |name: &str| dir.0.join(name).display().to_string();
    let pinned = |mut extra: Vec<(&str, String)>| {
        extra.push(("GEONEX_CONFIG", data("no-config.toml")));
        extra.push(("GEONEX_CLOUD", "sim".into()));
        serve::environment(extra.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    };

    // EC2 is the simulated cloud in a process of its own, over EC2's API: the
    // serving process's memory is the control plane's, and its calls cost what
    // the SDK costs.
    let sim = Serve::start_as("sim-cloud", "simulated cloud over EC2's API", pinned(vec![("GEONEX_DATA_DIR", data("sim-cloud"))])).await?;
    let mut env = pinned(vec![
        ("GEONEX_DATA_DIR", data("production")),
        ("GEONEX_DATABASE_URL", db.url.clone()),
        ("GEONEX_AMQP_URL", vhost.url.clone()),
    ]);
    for (k, v) in serve::ec2_at(&sim.url, "geonex-bench") {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_owned(), v));
    }
    let rows = async {
        let admin = serve::token(&env, "bench-admin", "admin").await?;
        let operator = serve::token(&env, "bench", "operator").await?;
        let mut sut = Serve::start("PostgreSQL, RabbitMQ, simulated cloud over EC2's API", env).await?;
        let probe = Probe::postgres(&db.url).await?;
        let result = production(args, &mut sut, probe, &admin, &operator, raw, anchors).await;
        let result = match result {
            Err(e) if sut.check_alive().is_err() => Err(e.context(format!("geonex serve died:\n{}", sut.log_tail()))),
            r => r,
        };
        sut.stop().await;
        result
    }
    .await;
    sim.stop().await;
    let mut rows = rows?;

    if !args.skip_embedded {
        let data_dir = dir.0.join("embedded");
        let env = pinned(vec![("GEONEX_DATA_DIR", data_dir.display().to_string())]);
        let admin = serve::token(&env, "bench-admin", "admin").await?;
        let operator = serve::token(&env, "bench", "operator").await?;
        let mut sut = Serve::start("embedded: SQLite, in-process queue, simulated cloud", env).await?;
        let result = async {
            serve::approve_image(&sut.url, &admin, IMAGE).await?;
            let target = Target {
                url: sut.url.clone(),
                auth: HeaderValue::from_str(&format!("Bearer {operator}"))?,
                probe: Probe::sqlite(&data_dir.join("geonex.db")).await?,
                client: load::client(args.concurrency)?,
                progress: Arc::new(Progress::default()),
                concurrency: args.concurrency,
            };
            let (_, e2e) = target.commands("embedded: end-to-end starts", args.commands, target.starts("bench-e-")).await?;
            target.probe.close().await;
            Ok::<_, anyhow::Error>(Row::new(
                format!("embedded: end-to-end start-runner commands/s ({} runners, SQLite, in-process queue)", args.commands),
                args.commands as f64 / e2e.as_secs_f64(),
                Unit::PerSec,
                Comparison::Target { value: 1_000.0 },
            ))
        }
        .await;
        let result = match result {
            Err(e) if sut.check_alive().is_err() => Err(e.context(format!("geonex serve died:\n{}", sut.log_tail()))),
            r => r,
        };
        sut.stop().await;
        rows.push(result?);
    }
    Ok(rows)
}

/// Steps 1 to 4 against the production setup.
async fn production(
    args: &PipelineBench,
    sut: &mut Serve,
    probe: Probe,
    admin: &str,
    operator: &str,
    raw: Option<RawAmqp>,
    anchors: Option<&Anchors>,
) -> anyhow::Result<Vec<Row>> {
    serve::approve_image(&sut.url, admin, IMAGE).await?;
    let t = Target {
        url: sut.url.clone(),
        auth: HeaderValue::from_str(&format!("Bearer {operator}"))?,
        probe,
        client: load::client(args.concurrency)?,
        progress: Arc::new(Progress::default()),
        concurrency: args.concurrency,
    };
    let (n, c) = (args.commands, args.concurrency);
    let raw_e2e = || measured("raw_amqp end to end", raw.map(|r| r.end_to_end_per_s));
    let mut rows = Vec::new();

    // 1. Starts, end to end.
    let (accepted, e2e) = t.commands("end-to-end starts", n, t.starts("bench-a-")).await?;
    rows.push(Row::new(
        format!("end-to-end start-runner commands/s ({n} runners, {c} concurrent; target 25% of raw_amqp)"),
        n as f64 / e2e.as_secs_f64(),
        Unit::PerSec,
        raw_e2e(),
    ));
    rows.push(Row::new(
        "start-runner requests accepted/s (HTTP 202, same run)",
        accepted.per_sec(),
        Unit::PerSec,
        measured("raw_amqp publish confirmed", raw.map(|r| r.publish_per_s)),
    ));

    // 2. Stops and deletes of the same runners, end to end.
    let instances = Arc::new(t.probe.instances("bench-a-").await?);
    if instances.len() != n {
        bail!("{} of the {n} started runners have an instance", instances.len());
    }
    let make: MakeRequest = {
        let (base, auth, list) = (t.url.clone(), t.auth.clone(), instances.clone());
        Arc::new(move |client, i| {
            let (runner, instance) = &list[i];
            let action = if i < list.len() / 2 { "stop-runner" } else { "delete-runner" };
            client
                .get(format!("{base}/{action}?instance_id={instance}&runner_id={runner}"))
                .header(AUTHORIZATION, auth.clone())
        })
    };
    let (_, mix) = t.commands("end-to-end stops and deletes", n, make).await?;
    rows.push(Row::new(
        format!("end-to-end stop/delete commands/s ({} stops, {} deletes)", n / 2, n - n / 2),
        n as f64 / mix.as_secs_f64(),
        Unit::PerSec,
        raw_e2e(),
    ));

    // 3. The fleet at `--runners`, polled; memory read then.
    let live = usize::try_from(t.probe.live_runners().await?).unwrap_or(0);
    if live < args.runners {
        t.commands("fleet", args.runners - live, t.starts("bench-f-")).await?;
    }
    let live = t.probe.live_runners().await?;
    eprintln!("waiting for the {live} live runners to settle");
    t.probe.settle().await?;
    let first = t
        .client
        .get(format!("{}/describe-runners?limit=100", t.url))
        .header(AUTHORIZATION, t.auth.clone())
        .send()
        .await
        .context("GET /describe-runners")?;
    if first.status() != StatusCode::OK {
        bail!("/describe-runners answered {}", first.status());
    }
    let ok = t.poll_runners(None, args.poll_secs).await?;
    // The ETag also turns with the clock (a tick of a quarter of the
    // unresponsive threshold): a run that straddles one is run again.
    let mut not_modified = None;
    for _ in 0..2 {
        let etag = t
            .client
            .get(format!("{}/describe-runners?limit=100", t.url))
            .header(AUTHORIZATION, t.auth.clone())
            .send()
            .await?
            .headers()
            .get(ETAG)
            .cloned()
            .context("/describe-runners sent no ETag")?;
        match t.poll_runners(Some(etag), args.poll_secs).await {
            Ok(o) => {
                not_modified = Some(o);
                break;
            }
            Err(e) => eprintln!("the 304 run is repeated: {e:#}"),
        }
    }
    let not_modified = not_modified.context("the 304 path failed twice")?;
    let at_fleet = sut.memory()?;
    sut.check_alive()?;

    let bare = match anchors {
        Some(a) => match bare_axum(a, &t, args.poll_secs).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("bare_axum: {e:#}");
                None
            }
        },
        None => None,
    };
    let page = format!("page of 100, {live} live runners");
    rows.push(Row::new(
        format!("/describe-runners 200 requests/s ({page}; target 25% of bare_axum)"),
        ok.per_sec(),
        Unit::PerSec,
        measured("bare_axum 200", bare.as_ref().map(|b| b.0.per_sec())),
    ));
    rows.push(Row::new(
        "/describe-runners 200 p99",
        ms(ok.latencies.percentile(99.0)),
        Unit::Millis,
        measured("bare_axum 200", bare.as_ref().map(|b| ms(b.0.latencies.percentile(99.0)))),
    ));
    rows.push(Row::new(
        "/describe-runners 304 requests/s (If-None-Match; target 50% of bare_axum)",
        not_modified.per_sec(),
        Unit::PerSec,
        measured("bare_axum 304", bare.as_ref().map(|b| b.1.per_sec())),
    ));
    rows.push(Row::new(
        "/describe-runners 304 p99",
        ms(not_modified.latencies.percentile(99.0)),
        Unit::Millis,
        measured("bare_axum 304", bare.as_ref().map(|b| ms(b.1.latencies.percentile(99.0)))),
    ));
    rows.push(Row::new(
        format!("peak RSS of geonex serve with {live} live runners (VmHWM)"),
        at_fleet.peak_mib,
        Unit::MiB,
        Comparison::Target { value: 100.0 },
    ));

    // 4. Accept latency at a fixed offered rate while the workers work.
    let count = usize::try_from(u64::from(args.rate) * args.rate_secs).unwrap_or(usize::MAX).max(1);
    let seq = t.probe.last_seq().await?;
    t.progress.phase(&format!("{} start-runner requests/s offered", args.rate), count);
    let ticker = t.progress.show();
    let offered = Load { client: &t.client, expect: StatusCode::ACCEPTED, make: t.starts("bench-l-"), progress: &t.progress }
        .open_loop(args.rate, count);
    let done = t.probe.wait_succeeded(seq, count, &t.progress);
    let result = tokio::try_join!(offered, done);
    ticker.finish().await;
    let (offered, ()) = result.context("the fixed-rate run")?;
    let at = format!("{} req/s offered, {count} requests", args.rate);
    rows.push(Row::new(format!("accept latency p50 ({at})"), ms(offered.latencies.percentile(50.0)), Unit::Millis, Comparison::None));
    rows.push(Row::new(
        "accept latency p99 (target 10 ms)",
        ms(offered.latencies.percentile(99.0)),
        Unit::Millis,
        Comparison::Target { value: 10.0 },
    ));
    rows.push(Row::new("accept latency max", ms(offered.latencies.max()), Unit::Millis, Comparison::None));

    let after = sut.memory()?;
    rows.push(Row::new("RSS of geonex serve after the run (VmRSS)", after.rss_mib, Unit::MiB, Comparison::Target { value: 100.0 }));
    rows.push(Row::new("peak RSS of geonex serve over the run (VmHWM)", after.peak_mib, Unit::MiB, Comparison::Target { value: 100.0 }));
    t.probe.close().await;
    Ok(rows)
}

/// bare_axum's 200 and 304 paths, driven as `/describe-runners` was.
async fn bare_axum(anchors: &Anchors, t: &Target, secs: u64) -> anyhow::Result<(Outcome, Outcome)> {
    let bare: BareAxum = anchors.bare_axum().await?;
    let etag = HeaderValue::from_static(BareAxum::ETAG);
    let result = async {
        let ok = poll(&t.client, &bare.url, None, None, secs, t.concurrency, &t.progress).await?;
        let not_modified = poll(&t.client, &bare.url, None, Some(etag), secs, t.concurrency, &t.progress).await?;
        Ok((ok, not_modified))
    }
    .await;
    bare.stop().await;
    result
}

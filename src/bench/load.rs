//! The HTTP load generator: in-process, on reqwest (hyper), so the project and
//! the bare axum baseline are driven by the same client on the same cores, and
//! a measured ratio says something about the server, not the tool.
//!
//! A closed loop keeps a fixed number of requests in flight (throughput); an
//! open loop sends at a fixed rate whatever the answers do, and times each
//! request from when it was due, so a stalled server cannot hide its stall by
//! slowing the generator down (coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::StatusCode;

use super::progress::Progress;

/// Builds the i-th request of a run.
pub type MakeRequest = Arc<dyn Fn(&reqwest::Client, usize) -> reqwest::RequestBuilder + Send + Sync>;

/// A client for one run: keep-alive connections, one per request in flight.
pub fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency.max(1))
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
        .context("building the HTTP client")
}

/// Request latencies of one run, sorted.
#[derive(Debug, Clone)]
pub struct Latencies(Vec<Duration>);

impl Latencies {
    fn new(mut all: Vec<Duration>) -> Self {
        all.sort_unstable();
        Self(all)
    }

    /// The `p`-th percentile (0–100), nearest rank.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn max(&self) -> Duration {
        self.0.last().copied().unwrap_or_default()
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub requests: usize,
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl Outcome {
    pub fn per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// When a closed loop stops.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this many requests.
    Count(usize),
    /// After this long (requests in flight then are finished and counted).
    Elapsed(Duration),
}

/// Sends one request, reads the whole body, and checks the status.
async fn send(req: reqwest::RequestBuilder, expect: StatusCode, i: usize) -> anyhow::Result<()> {
    let resp = req.send().await.with_context(|| format!("request {i}"))?;
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("reading the answer to request {i}"))?;
    if status != expect {
        bail!("request {i} answered {status}, expected {expect}: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// One run of load: the requests `make` builds, sent by `client`, each answer
/// checked to be `expect` and counted in `progress`.
pub struct Load<'a> {
    pub client: &'a reqwest::Client,
    pub expect: StatusCode,
    pub make: MakeRequest,
    pub progress: &'a Arc<Progress>,
}

impl Load<'_> {
    /// `concurrency` requests in flight until `until`.
    pub async fn closed_loop(self, until: Until, concurrency: usize) -> anyhow::Result<Outcome> {
        let Load { client, expect, make, progress } = self;
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency.max(1) {
            let (client, make, next, progress) = (client.clone(), make.clone(), next.clone(), progress.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let more = match until {
                        Until::Count(n) => i < n,
                        Until::Elapsed(d) => started.elapsed() < d,
                    };
                    if !more {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let t = Instant::now();
                    send(make(&client, i), expect, i).await?;
                    latencies.push(t.elapsed());
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut all = Vec::new();
        while let Some(done) = tasks.join_next().await {
            all.extend(done.context("a load task panicked")??);
        }
        Ok(Outcome { requests: all.len(), elapsed: started.elapsed(), latencies: Latencies::new(all) })
    }

    /// `count` requests at `rate` a second, each timed from when it was due.
    pub async fn open_loop(self, rate: u32, count: usize) -> anyhow::Result<Outcome> {
        let Load { client, expect, make, progress } = self;
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
        let started = tokio::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..count {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due).await;
            let (req, progress) = (make(client, i), progress.clone());
            tasks.spawn(async move {
                send(req, expect, i).await?;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                Ok::<_, anyhow::Error>(due.elapsed())
            });
        }
        let mut all = Vec::with_capacity(count);
        while let Some(done) = tasks.join_next().await {
            all.push(done.context("a load task panicked")??);
        }
        Ok(Outcome { requests: all.len(), elapsed: started.elapsed(), latencies: Latencies::new(all) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latencies::new((1..=100).rev().map(Duration::from_millis).collect());
        assert_eq!(l.percentile(50.0), Duration::from_millis(50));
        assert_eq!(l.percentile(99.0), Duration::from_millis(99));
        assert_eq!(l.percentile(100.0), Duration::from_millis(100));
        assert_eq!(l.max(), Duration::from_millis(100));
        assert_eq!(Latencies::new(vec![]).percentile(99.0), Duration::ZERO);
    }
}

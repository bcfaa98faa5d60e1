//! The EC2 request budget: every EC2 call takes its tokens from the account's
//! buckets in the database before it is made, so all worker processes together
//! stay within the API's rate limits instead of each finding them by being
//! throttled.
//!
//! The slow buckets (RunInstances, StartInstances) take reservations: a start
//! that finds the bucket empty pays for the next token the refill brings and
//! waits for its turn without holding a worker, so a burst of starts launches
//! at the bucket's own rate, one refill apart, with nobody retrying in vain.
//! A reservation is a place in the bucket's queue (a ticket), not a time: it
//! is due once the refill has brought that many tokens in all, so a throttle
//! that slows the refill moves every reservation booked before it back too.
//! Reservations pace the bookings; the calls themselves are paced too, by a
//! bucket of EC2's size (one token short) that each call of those buckets
//! pays when it is made: reservations that fall due together (the process was
//! busy, the broker's delayed messages came late) reach EC2 at most a burst at
//! once and then one refill apart, as EC2's own bucket takes them.
//! Other calls that find no token wait briefly and try again. Stops and deletes
//! (they save money) may use the whole Describe bucket, starts leave a tenth of
//! it, and background work (the observer, the sweep) its configured share.
//! A `RequestLimitExceeded` still received (other tools share the account)
//! halves the bucket's refill for a while.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use geonex_shared::config::{BucketSize, RateSettings};
use geonex_shared::store::rate::{RateStore, Take, Taken};

/// The EC2 calls the control plane makes, by the bucket that meters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    RunInstances,
    /// The instances a RunInstances launches (a bucket of its own).
    RunInstancesResource,
    StartInstances,
    StopInstances,
    TerminateInstances,
    ModifyInstanceAttribute,
    DescribeInstances,
}

impl Op {
    /// Whether the call changes something in EC2 (everything but a describe).
    pub fn mutates(self) -> bool {
        self != Op::DescribeInstances
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::RunInstances => "RunInstances",
            Op::RunInstancesResource => "RunInstances instances",
            Op::StartInstances => "StartInstances",
            Op::StopInstances => "StopInstances",
            Op::TerminateInstances => "TerminateInstances",
            Op::ModifyInstanceAttribute => "ModifyInstanceAttribute",
            Op::DescribeInstances => "DescribeInstances",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Op::RunInstances,
            Op::RunInstancesResource,
            Op::StartInstances,
            Op::StopInstances,
            Op::TerminateInstances,
            Op::ModifyInstanceAttribute,
            Op::DescribeInstances,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }

    /// The bucket's name and size.
    fn bucket(self, s: &RateSettings) -> (&'static str, BucketSize) {
        match self {
            Op::RunInstances => ("run-instances", s.run_instances),
            Op::RunInstancesResource => ("run-instances-resource", s.run_instances_resource),
            Op::StartInstances => ("start-instances", s.start_instances),
            Op::TerminateInstances => ("terminate-instances", s.terminate_instances),
            Op::StopInstances | Op::ModifyInstanceAttribute => ("mutating", s.mutating),
            Op::DescribeInstances => ("describe", s.describe),
        }
    }

    /// Calls whose callers queue for the next token rather than retry. (Stops
    /// and terminations queueing too was measured worse: the launch benchmark's
    /// 200 stops were throttled 17 times instead of never.)
    fn reserves(self) -> bool {
        matches!(self, Op::RunInstances | Op::RunInstancesResource | Op::StartInstances)
    }
}

/// Whose call it is, for the share of the bucket it may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Stops and deletes: they save money.
    High,
    /// Starts and restarts.
    Normal,
    /// The observer and the sweep.
    Background,
}

/// What the caller may do.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Spend {
    /// Make the call now.
    Now,
    /// Come back after `after`; with `reserved` the tokens are paid for (the
    /// expected time and the ticket) and the call may be made once the ticket
    /// is due, without taking them again.
    Later { after: Duration, reserved: Option<(DateTime<Utc>, f64)> },
}

/// A reservation a command holds: the call it paid for, when it is expected
/// to fall due, and its place in the bucket's queue (none for reservations
/// recorded before places were kept: those go by the time alone).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation {
    pub op: Op,
    pub at: DateTime<Utc>,
    pub ticket: Option<f64>,
}

/// The share of a bucket's refill rate the budget counts on.
const REFILL_MARGIN: f64 = 0.95;
/// The same for the buckets whose calls are also paced as they are made: the
/// pace keeps them within EC2's own bucket, so the bookings need less margin,
/// and what they leave is what catches up after a lull (calls that waited
/// behind slow answers): the pace drains a backlog only as fast as the
/// bookings leave room.
const PACED_REFILL_MARGIN: f64 = 0.98;
/// The tokens of a bucket's burst the budget leaves to EC2.
const BURST_MARGIN: f64 = 2.0;

/// The window callers denied a token come back within: half the time the
/// bucket takes to refill from empty, between 0.1 s and 5 s.
fn denied_spread(size: BucketSize) -> Duration {
    let refill = size.burst / size.per_sec.max(1e-6);
    Duration::from_secs_f64((refill / 2.0).clamp(0.1, 5.0))
}

#[derive(Clone)]
pub struct Budget {
    store: Arc<dyn RateStore>,
    settings: RateSettings,
    /// account/region: the buckets' prefix.
    scope: String,
}

impl Budget {
    pub fn new(store: Arc<dyn RateStore>, settings: RateSettings, region: Option<&str>) -> Self {
        let scope = format!("{}/{}", settings.account, region.unwrap_or("default"));
        Self { store, settings, scope }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn take(&self, op: Op, tokens: f64, priority: Priority) -> Take {
        let (name, size) = op.bucket(&self.settings);
        let size = self.settings.scaled(size);
        // A little short of EC2's bucket: our clock and EC2's never agree to the
        // millisecond, and a call leaves some time after its tokens were taken,
        // so calls reach EC2 a little bunched up; a call a hair early is a call
        // throttled. Two tokens of the burst and 5% of the refill are the margin:
        // launches woken from their waits by the broker's delayed messages
        // arrive up to a few hundred milliseconds off their turn, so two can
        // reach EC2 close together (one token of margin let the launch
        // benchmark's 200 starts be throttled once, which halved the refill).
        let burst = if size.burst > BURST_MARGIN + 1.0 { size.burst - BURST_MARGIN } else { size.burst };
        let margin = if op.reserves() { PACED_REFILL_MARGIN } else { REFILL_MARGIN };
        let size = BucketSize::new(burst, size.per_sec * margin);
        let keep = match (op, priority) {
            (Op::DescribeInstances, Priority::Normal) => size.burst * 0.1,
            (_, Priority::Background) => size.burst * (1.0 - self.settings.background_share.clamp(0.0, 1.0)),
            _ => 0.0,
        };
        Take {
            bucket: format!("{}/{name}", self.scope),
            tokens,
            size,
            keep,
            reserve: op.reserves() && priority != Priority::Background,
            recovery: Duration::from_secs_f64(self.settings.recovery_secs.max(1.0)),
        }
    }

    /// Takes the tokens for `tokens` calls (or instances) of `op`.
    pub async fn spend(&self, op: Op, tokens: f64, priority: Priority) -> Result<Spend, String> {
        if !self.settings.enabled {
            return Ok(Spend::Now);
        }
        let take = self.take(op, tokens, priority);
        match self.store.take_tokens(&take).await.map_err(|e| e.to_string())? {
            Taken::Granted => Ok(Spend::Now),
            Taken::Reserved { ready_in, ticket } => {
                let at = Utc::now() + chrono::Duration::from_std(ready_in).unwrap_or_default();
                Ok(Spend::Later { after: ready_in, reserved: Some((at, ticket)) })
            }
            // Spread out over up to half the time the bucket takes to refill,
            // so that the callers denied together (a few hundred stops after
            // a burst) do not all come back for the same next token, and
            // looking again costs a few calls a second, not hundreds.
            Taken::Denied { retry_in } => {
                let spread = denied_spread(take.size);
                let after = retry_in.max(Duration::from_millis(50)) + spread.mul_f64(rand::random::<f64>());
                Ok(Spend::Later { after, reserved: None })
            }
        }
    }

    /// The bucket that paces the calls of a reserving `op` as they are made:
    /// EC2's own size less one token of burst. The bookings already keep to
    /// 98% of the refill; this one only stops bunches EC2's burst would not
    /// take, and otherwise lets calls through without a second wait.
    fn pace_take(&self, op: Op) -> Take {
        let (name, size) = op.bucket(&self.settings);
        let size = self.settings.scaled(size);
        let burst = if size.burst >= 2.0 { size.burst - 1.0 } else { size.burst };
        Take {
            bucket: format!("{}/{name}/calls", self.scope),
            size: BucketSize::new(burst, size.per_sec),
            reserve: false,
            keep: 0.0,
            ..self.take(op, 1.0, Priority::High)
        }
    }

    /// Paces a call of a reserving `op` that is about to be made (its tokens
    /// are paid): `None`, make it now; otherwise look again after the time
    /// given, still holding what was paid. Other calls are not paced.
    pub async fn pace(&self, op: Op) -> Result<Option<Duration>, String> {
        if !self.settings.enabled || !op.reserves() {
            return Ok(None);
        }
        match self.store.take_tokens(&self.pace_take(op)).await.map_err(|e| e.to_string())? {
            Taken::Denied { retry_in } => {
                let jitter = Duration::from_millis(rand::random_range(0..50));
                Ok(Some(retry_in.max(Duration::from_millis(20)) + jitter))
            }
            Taken::Granted | Taken::Reserved { .. } => Ok(None),
        }
    }

    /// How long until a reservation falls due (`None`: now). Its place in the
    /// queue is compared with what the refill has brought, so a reservation
    /// booked before a throttle shrank the refill waits for the slower refill
    /// rather than reaching EC2 at the pace it was booked at.
    pub async fn due(&self, r: &Reservation, priority: Priority) -> Result<Option<Duration>, String> {
        match r.ticket {
            Some(ticket) if self.settings.enabled => self
                .store
                .ticket_due(&self.take(r.op, 0.0, priority), ticket)
                .await
                .map_err(|e| e.to_string()),
            _ => Ok(Some((r.at - Utc::now()).to_std().unwrap_or_default()).filter(|d| !d.is_zero())),
        }
    }

    /// For background work: waits in this task until the tokens are there and
    /// takes them.
    pub async fn wait_for(&self, op: Op, tokens: f64) -> Result<(), String> {
        loop {
            match self.spend(op, tokens, Priority::Background).await? {
                Spend::Now => return Ok(()),
                Spend::Later { after, .. } => tokio::time::sleep(after.min(Duration::from_secs(10))).await,
            }
        }
    }

    /// EC2 throttled an `op` call although the budget allowed it.
    pub async fn throttled(&self, op: Op) {
        if !self.settings.enabled {
            return;
        }
        let mut takes = vec![self.take(op, 0.0, Priority::High)];
        if op.reserves() {
            takes.push(self.pace_take(op));
        }
        for take in &takes {
            if let Err(e) = self.store.throttled(take).await {
                tracing::warn!(error = %e, "could not record the throttling in the EC2 budget");
            }
        }
    }
}

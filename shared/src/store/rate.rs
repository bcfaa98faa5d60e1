//! The rate port (the EC2 request budget): token buckets in the database that every worker process
//! draws from before it calls EC2, so the cluster as a whole stays within the
//! account's API rate limits.

use std::time::Duration;

use async_trait::async_trait;

use crate::config::BucketSize;
use crate::store::error::StoreError;

/// A request for tokens from one bucket.
#[derive(Debug, Clone)]
pub struct Take {
    /// The bucket's key (account/region/bucket).
    pub bucket: String,
    pub tokens: f64,
    pub size: BucketSize,
    /// Tokens that must remain after the take: what higher-priority callers
    /// keep for themselves.
    pub keep: f64,
    /// Whether the take may overdraw the bucket: a reservation of the next
    /// tokens the refill brings, for callers that then wait their turn.
    pub reserve: bool,
    /// How long a throttled bucket's refill takes to grow back to full.
    pub recovery: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Taken {
    /// The call may be made now.
    Granted,
    /// Paid for: the call may be made once the bucket's refill has brought
    /// `ticket` tokens in all, which at today's rate is in `ready_in`.
    Reserved { ready_in: Duration, ticket: f64 },
    /// Not enough tokens; none were taken. Enough will be there in `retry_in`.
    Denied { retry_in: Duration },
}

/// A bucket as it stands now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketLevel {
    pub tokens: f64,
    /// The refill's share of its configured rate (below 1 after throttling).
    pub factor: f64,
}

#[async_trait]
pub trait RateStore: Send + Sync + 'static {
    /// Takes tokens in one atomic step, after refilling the bucket for the
    /// time since it last changed.
    async fn take_tokens(&self, take: &Take) -> Result<Taken, StoreError>;
    /// How long until a reservation's `ticket` falls due, at the bucket's rate
    /// now (`None`: it is due). A throttle since the reservation was made
    /// moves it back.
    async fn ticket_due(&self, take: &Take, ticket: f64) -> Result<Option<Duration>, StoreError>;
    /// EC2 throttled a call although the budget allowed it (other clients share
    /// the account): EC2's bucket is empty, so this one is too (what it held
    /// is dropped, reservations move back), and its refill halves (at least a
    /// tenth remains).
    async fn throttled(&self, take: &Take) -> Result<(), StoreError>;
    async fn bucket_level(&self, take: &Take) -> Result<Option<BucketLevel>, StoreError>;
}

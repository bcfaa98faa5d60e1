//! The rate port: token buckets refilled and taken from in one statement each.

use std::time::Duration;

use async_trait::async_trait;

use crate::store::rate::{BucketLevel, RateStore, Take, Taken};
use crate::store::error::StoreError;
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};

/// The refill share now: it grows back linearly over the recovery time ($6 s).
macro_rules! factor_now {
    () => {
        "{least}(1.0, factor + {secs_since updated_at} / $6)"
    };
}

/// The bucket's tokens now: refilled at `per_sec` ($3) scaled by the share,
/// up to the burst ($2).
macro_rules! level_now {
    () => {
        concat!("{least}($2, tokens + {secs_since updated_at} * $3 * ", factor_now!(), ")")
    };
}

static ADD: Sql = Sql::new(
    "insert into rate_bucket (name, tokens, factor, issued, updated_at) values ($1, $2, 1.0, 0, {now}) \
     on conflict (name) do nothing",
);
/// $4 tokens taken, $5 tokens to keep, $7 whether the take may overdraw.
/// `issued` counts what was ever taken: `tokens + issued` is what the refill
/// has brought in all, and the `issued` a take leaves is its place in the
/// queue (its ticket).
static TAKE: Sql = Sql::new(concat!(
    "update rate_bucket set tokens = ",
    level_now!(),
    " - $4, issued = issued + $4, factor = ",
    factor_now!(),
    ", updated_at = {now} where name = $1 and (",
    level_now!(),
    " - $4 >= $5 or $7) returning tokens, factor, issued"
));
/// The bucket now; `tokens + issued` is what the refill has brought in all,
/// to compare a ticket with.
static LEVEL: Sql = Sql::new(concat!(
    "select ",
    level_now!(),
    " as tokens, ",
    factor_now!(),
    " as factor, issued from rate_bucket where name = $1"
));
static THROTTLED: Sql = Sql::new(concat!(
    "update rate_bucket set tokens = {least}(0.0, ",
    level_now!(),
    "), factor = {greatest}(0.1, ",
    factor_now!(),
    " * 0.5), updated_at = {now} where name = $1"
));

fn args_of(t: &Take) -> Vec<crate::store::sql::Arg> {
    let recovery = t.recovery.as_secs_f64().max(0.001);
    args![t.bucket.as_str(), t.size.burst, t.size.per_sec, t.tokens, t.keep, recovery, t.reserve]
}

/// How long until `missing` tokens have come in at the bucket's current rate.
fn time_for(missing: f64, t: &Take, factor: f64) -> Duration {
    let rate = (t.size.per_sec * factor).max(1e-6);
    Duration::from_secs_f64((missing / rate).clamp(0.0, 86_400.0))
}

#[async_trait]
impl<D: Driver> RateStore for SqlStore<D> {
    async fn take_tokens(&self, t: &Take) -> Result<Taken, StoreError> {
        let mut conn = self.driver.conn().await?;
        // One statement in the common case; a bucket seen for the first time is
        // created full, once.
        for _ in 0..2 {
            if let Some(row) = conn.fetch_optional(&TAKE, args_of(t)).await? {
                let (left, factor) = (row.float("tokens")?, row.float("factor")?);
                if left >= 0.0 {
                    return Ok(Taken::Granted);
                }
                return Ok(Taken::Reserved { ready_in: time_for(-left, t, factor), ticket: row.float("issued")? });
            }
            if let Some(row) = conn.fetch_optional(&LEVEL, args_of(t)).await? {
                let (level, factor) = (row.float("tokens")?, row.float("factor")?);
                return Ok(Taken::Denied { retry_in: time_for(t.tokens + t.keep - level, t, factor) });
            }
            conn.execute(&ADD, args![t.bucket.as_str(), t.size.burst]).await?;
        }
        Err(StoreError::NoRow)
    }

    async fn ticket_due(&self, t: &Take, ticket: f64) -> Result<Option<Duration>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&LEVEL, args_of(t)).await?;
        // A bucket that is gone (dropped by hand) owes nobody anything.
        let Some(row) = row else { return Ok(None) };
        let (served, factor) = (row.float("tokens")? + row.float("issued")?, row.float("factor")?);
        // A millionth of a token short is due: floating point, not a queue.
        Ok((served + 1e-6 < ticket).then(|| time_for(ticket - served, t, factor)))
    }

    async fn throttled(&self, t: &Take) -> Result<(), StoreError> {
        let mut conn = self.driver.conn().await?;
        conn.execute(&ADD, args![t.bucket.as_str(), t.size.burst]).await?;
        conn.execute(&THROTTLED, args_of(t)).await?;
        Ok(())
    }

    async fn bucket_level(&self, t: &Take) -> Result<Option<BucketLevel>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&LEVEL, args_of(t)).await?;
        row.map(|r| Ok(BucketLevel { tokens: r.float("tokens")?, factor: r.float("factor")? })).transpose()
    }
}

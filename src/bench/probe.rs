//! Reads the database of the system under test from outside, with one count
//! query per look: how many of a phase's commands have finished, and the
//! runners' instances that stops and deletes must name.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sqlx::Row;

use super::progress::Progress;

pub enum Probe {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// Where a phase's commands are.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    succeeded: i64,
    dead: i64,
}

impl Probe {
    pub async fn postgres(url: &str) -> anyhow::Result<Self> {
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url).await.context("connecting the probe")?;
        Ok(Self::Postgres(pool))
    }

    pub async fn sqlite(file: &std::path::Path) -> anyhow::Result<Self> {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(file)
            .read_only(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await.context("opening the probe")?;
        Ok(Self::Sqlite(pool))
    }

    /// The newest command's sequence number: a phase's commands come after it.
    pub async fn last_seq(&self) -> anyhow::Result<i64> {
        const SQL: &str = "select coalesce(max(seq), 0) from command";
        let seq = match self {
            Probe::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
            Probe::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
        };
        Ok(seq)
    }

    async fn counts(&self, after_seq: i64) -> anyhow::Result<Counts> {
        const SQL: &str = "select \
            coalesce(sum(case when status = 'succeeded' then 1 else 0 end), 0) as succeeded, \
            coalesce(sum(case when status = 'dead' then 1 else 0 end), 0) as dead \
            from command where seq > $1 and status in ('succeeded', 'dead')";
        Ok(match self {
            Probe::Postgres(p) => {
                let row = sqlx::query(SQL).bind(after_seq).fetch_one(p).await?;
                Counts { succeeded: row.try_get("succeeded")?, dead: row.try_get("dead")? }
            }
            Probe::Sqlite(p) => {
                let row = sqlx::query(sqlx::AssertSqlSafe(SQL.replace("$1", "?1"))).bind(after_seq).fetch_one(p).await?;
                Counts { succeeded: row.try_get("succeeded")?, dead: row.try_get("dead")? }
            }
        })
    }

    /// Waits until `expected` commands after `after_seq` have succeeded,
    /// reporting progress; fails on a dead command or when nothing finishes
    /// for a minute.
    pub async fn wait_succeeded(&self, after_seq: i64, expected: usize, progress: &Arc<Progress>) -> anyhow::Result<()> {
        let mut last = (Counts::default().succeeded, Instant::now());
        loop {
            let c = self.counts(after_seq).await.context("counting finished commands")?;
            progress.done.store(c.succeeded as usize, Ordering::Relaxed);
            if c.dead > 0 {
                bail!("{} command(s) ended dead (see /describe-commands?status=dead)", c.dead);
            }
            if c.succeeded as usize >= expected {
                return Ok(());
            }
            if c.succeeded != last.0 {
                last = (c.succeeded, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(60) {
                bail!("no command finished for a minute: {} of {expected} succeeded", c.succeeded);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `(runner_id, instance_id)` of the runners whose id starts with `prefix`.
    pub async fn instances(&self, prefix: &str) -> anyhow::Result<Vec<(String, String)>> {
        const SQL: &str =
            "select runner_id, instance_id from runner where runner_id like $1 and instance_id is not null order by runner_id";
        let pattern = format!("{prefix}%");
        let rows: Vec<(String, String)> = match self {
            Probe::Postgres(p) => sqlx::query_as(SQL).bind(pattern).fetch_all(p).await?,
            Probe::Sqlite(p) => sqlx::query_as(sqlx::AssertSqlSafe(SQL.replace("$1", "?1"))).bind(pattern).fetch_all(p).await?,
        };
        Ok(rows)
    }

    /// Waits until no runner is on its way between states and no runner row
    /// has changed for a second: the instance observer has caught up with the
    /// commands, so a page's ETag stays put.
    pub async fn settle(&self) -> anyhow::Result<()> {
        const SQL: &str = "select \
            coalesce(sum(case when observed_state in ('requested', 'pending', 'stopping', 'shutting-down') then 1 else 0 end), 0) as moving, \
            coalesce(max(revision), 0) as revision from runner";
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = None;
        loop {
            let (moving, revision): (i64, i64) = match self {
                Probe::Postgres(p) => sqlx::query_as(SQL).fetch_one(p).await?,
                Probe::Sqlite(p) => sqlx::query_as(SQL).fetch_one(p).await?,
            };
            if moving == 0 && last == Some(revision) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the fleet did not settle within two minutes: {moving} runners between states");
            }
            last = (moving == 0).then_some(revision);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Runners whose id starts with `prefix` that are observed `running`.
    pub async fn running(&self, prefix: &str) -> anyhow::Result<i64> {
        const SQL: &str = "select count(*) from runner where runner_id like $1 and observed_state = 'running'";
        let pattern = format!("{prefix}%");
        Ok(match self {
            Probe::Postgres(p) => sqlx::query_scalar(SQL).bind(pattern).fetch_one(p).await?,
            Probe::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.replace("$1", "?1"))).bind(pattern).fetch_one(p).await?,
        })
    }

    /// Waits until `expected` runners of `prefix` are running, reporting
    /// progress; fails when none more gets there for `patience`.
    pub async fn wait_running(&self, prefix: &str, expected: usize, patience: Duration, progress: &Arc<Progress>) -> anyhow::Result<()> {
        let mut last = (0, Instant::now());
        loop {
            let n = self.running(prefix).await.context("counting running runners")?;
            progress.done.store(n as usize, Ordering::Relaxed);
            if n as usize >= expected {
                return Ok(());
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > patience {
                bail!("no runner started running for {patience:?}: {n} of {expected} running");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Seconds from the first of an action's commands after `after_seq` being
    /// accepted to the last of them finishing, by the database's clock.
    pub async fn span(&self, after_seq: i64, action: &str) -> anyhow::Result<f64> {
        const SQL: &str = "select extract(epoch from max(finished_at) - min(created_at))::float8 \
            from command where seq > $1 and action = $2";
        match self {
            Probe::Postgres(p) => {
                let secs: Option<f64> = sqlx::query_scalar(SQL).bind(after_seq).bind(action).fetch_one(p).await?;
                secs.with_context(|| format!("no {action} command after {after_seq}"))
            }
            Probe::Sqlite(_) => bail!("spans are read from PostgreSQL only"),
        }
    }

    /// Runners not deleted.
    pub async fn live_runners(&self) -> anyhow::Result<i64> {
        const SQL: &str = "select count(*) from runner where desired_state <> 'deleted'";
        Ok(match self {
            Probe::Postgres(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
            Probe::Sqlite(p) => sqlx::query_scalar(SQL).fetch_one(p).await?,
        })
    }

    pub async fn close(&self) {
        match self {
            Probe::Postgres(p) => p.close().await,
            Probe::Sqlite(p) => p.close().await,
        }
    }
}

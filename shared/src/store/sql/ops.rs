//! The operations port: scrape-time figures, written once, and the change
//! feed, which is the one thing each database does its own way (LISTEN/NOTIFY
//! in PostgreSQL, the `event_log` table in SQLite).

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::domain::{Action, ObservedState};
use crate::store::error::StoreError;
use crate::store::ops::{ChangeEvent, ChangeListener, Feed, OpsStore, OutboxStat, PoolStat, QueueStat};
use crate::store::postgres::PgDriver;
use crate::store::sql::rows::parsed;
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::sqlite::SqliteDriver;

/// A waiting command is stored as retrying with what it waits for.
static QUEUES: Sql = Sql::new(
    "select action, status, waiting_for is not null as waiting, count(*) as n, \
       {secs_since min(updated_at)} as oldest \
     from command where status in ('queued', 'retrying', 'running') \
     group by action, status, waiting_for is not null",
);
/// The outbox's own index (`command_unpublished_idx`) answers this.
static OUTBOX: Sql = Sql::new(
    "select count(*) as n, coalesce({secs_since min(updated_at)}, 0.0) as oldest from command \
     where published_at is null and status in ('queued', 'retrying')",
);
static RUNNERS: Sql = Sql::new(
    "select observed_state, count(*) as n from runner \
     where not (desired_state = 'deleted' and observed_state = 'terminated') group by observed_state",
);

async fn queue_stats<D: Driver>(driver: &D) -> Result<Vec<QueueStat>, StoreError> {
    let rows = driver.conn().await?.fetch_all(&QUEUES, vec![]).await?;
    rows.iter()
        .map(|r| {
            let status = match (r.text("status")?.as_str(), r.bool("waiting")?) {
                ("queued", _) => "queued",
                ("running", _) => "running",
                (_, true) => "waiting",
                (_, false) => "retrying",
            };
            Ok(QueueStat {
                action: parsed("action", r.text("action")?, Action::parse)?,
                status,
                count: r.int("n")?,
                oldest_secs: r.float("oldest")?.max(0.0),
            })
        })
        .collect()
}

async fn outbox_stat<D: Driver>(driver: &D) -> Result<OutboxStat, StoreError> {
    let r = driver.conn().await?.fetch_one(&OUTBOX, vec![]).await?;
    Ok(OutboxStat { unpublished: r.int("n")?, oldest_secs: r.float("oldest")?.max(0.0) })
}

async fn runners_by_state<D: Driver>(driver: &D) -> Result<Vec<(ObservedState, i64)>, StoreError> {
    let rows = driver.conn().await?.fetch_all(&RUNNERS, vec![]).await?;
    rows.iter()
        .map(|r| Ok((parsed("observed_state", r.text("observed_state")?, ObservedState::parse)?, r.int("n")?)))
        .collect()
}

/// Publishing is marked done too: the relay has nothing left to send for it.
static CANCEL: Sql = Sql::new(
    "update command set status = 'dead', last_error = $2, finished_at = {now}, next_attempt_at = null, \
       waiting_for = null, budget_op = null, budget_at = null, budget_ticket = null, published_at = coalesce(published_at, {now}) \
     where command_id = $1 and status in ('queued', 'retrying')",
);

async fn cancel_command<D: Driver>(driver: &D, command_id: uuid::Uuid, reason: &str) -> Result<bool, StoreError> {
    Ok(driver.conn().await?.execute(&CANCEL, args![command_id, reason]).await? == 1)
}

/// The channel the triggers of `0013_events.sql` notify.
const CHANNEL: &str = "geonex_events";

/// What each database does its own way: its pool's figures and its change feed.
#[async_trait]
pub trait OpsDriver: Driver {
    fn pool_stat(&self) -> PoolStat;
    async fn listen(&self) -> Result<Box<dyn ChangeListener>, StoreError>;
}

#[async_trait]
impl<D: OpsDriver> OpsStore for SqlStore<D> {
    async fn cancel_command(&self, command_id: uuid::Uuid, reason: &str) -> Result<bool, StoreError> {
        cancel_command(self.driver(), command_id, reason).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStat>, StoreError> {
        queue_stats(self.driver()).await
    }

    async fn outbox_stat(&self) -> Result<OutboxStat, StoreError> {
        outbox_stat(self.driver()).await
    }

    async fn runners_by_state(&self) -> Result<Vec<(ObservedState, i64)>, StoreError> {
        runners_by_state(self.driver()).await
    }

    fn pool_stat(&self) -> PoolStat {
        self.driver().pool_stat()
    }

    async fn listen(&self) -> Result<Box<dyn ChangeListener>, StoreError> {
        self.driver().listen().await
    }
}

fn pool_stat<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> PoolStat {
    PoolStat { size: pool.size(), idle: pool.num_idle() as u32, max: pool.options().get_max_connections() }
}

#[async_trait]
impl OpsDriver for PgDriver {
    fn pool_stat(&self) -> PoolStat {
        pool_stat(self.pool())
    }

    async fn listen(&self) -> Result<Box<dyn ChangeListener>, StoreError> {
        // A connection of its own, outside the pool: it is held for as long as
        // the process listens.
        let mut listener = sqlx::postgres::PgListener::connect_with(self.pool()).await?;
        listener.listen(CHANNEL).await?;
        Ok(Box::new(PgChangeListener { listener }))
    }
}

struct PgChangeListener {
    listener: sqlx::postgres::PgListener,
}

#[async_trait]
impl ChangeListener for PgChangeListener {
    async fn next(&mut self) -> Result<Feed, StoreError> {
        // `try_recv` says `None` when the connection was lost; the next call
        // connects and listens again by itself. What was notified meanwhile is
        // gone: a gap.
        match self.listener.try_recv().await? {
            Some(n) => Ok(Feed::Events(ChangeEvent::parse(n.payload()).into_iter().collect())),
            None => Ok(Feed::Gap),
        }
    }
}

#[async_trait]
impl OpsDriver for SqliteDriver {
    fn pool_stat(&self) -> PoolStat {
        pool_stat(self.pool())
    }

    async fn listen(&self) -> Result<Box<dyn ChangeListener>, StoreError> {
        let driver = self.clone();
        let cursor = driver.conn().await?.fetch_one(&LOG_END, vec![]).await?.int("last")?;
        Ok(Box::new(LogListener { driver, cursor, pruned: Instant::now() }))
    }
}

static LOG_END: Sql = Sql::new("select coalesce(max(event_id), 0) as last from event_log");
static LOG_AFTER: Sql =
    Sql::new("select event_id, payload from event_log where event_id > $1 order by event_id limit 500");
/// Listeners read within a fraction of a second; a minute's worth is plenty
/// for one that was busy.
static LOG_PRUNE: Sql = Sql::new("delete from event_log where created_at < {now-$1}");

/// How often the SQLite log is read: well within the second an event may take.
const LOG_POLL: Duration = Duration::from_millis(150);
const LOG_KEEP: Duration = Duration::from_secs(60);

struct LogListener {
    driver: SqliteDriver,
    cursor: i64,
    pruned: Instant,
}

#[async_trait]
impl ChangeListener for LogListener {
    async fn next(&mut self) -> Result<Feed, StoreError> {
        loop {
            // Pruned first, so a log that never runs dry is pruned too.
            if self.pruned.elapsed() > LOG_KEEP {
                self.pruned = Instant::now();
                self.driver.conn().await?.execute(&LOG_PRUNE, args![LOG_KEEP]).await?;
            }
            let rows = self.driver.conn().await?.fetch_all(&LOG_AFTER, args![self.cursor]).await?;
            if let Some(last) = rows.last() {
                self.cursor = last.int("event_id")?;
                let events = rows.iter().filter_map(|r| r.text("payload").ok()).filter_map(|p| ChangeEvent::parse(&p));
                return Ok(Feed::Events(events.collect()));
            }
            tokio::time::sleep(LOG_POLL).await;
        }
    }
}

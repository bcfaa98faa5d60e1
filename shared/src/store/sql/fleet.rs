//! The fleet port: what reconciliation and EC2 state-change events read and
//! write about runners' instances, and the orphans the sweep found.

use std::time::Duration;

use async_trait::async_trait;

use crate::domain::ObservedState;
use crate::store::fleet::{EventOutcome, FleetStore, InstanceEvent, OrphanRecord, Verdict, ends_containers, judge_event};
use crate::store::sql::rows::{self, parsed, runner_columns};
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};
use crate::store::commands::RunnerRecord;
use crate::store::error::StoreError;

static TO_RECONCILE: Sql = Sql::new(concat!(
    "select ",
    runner_columns!(),
    " from runner where instance_id is not null and observed_state <> 'terminated'"
));
static BY_IDS: Sql =
    Sql::new(concat!("select ", runner_columns!(), " from runner where runner_id in (select value from {each $1})"));
static OBSERVE: Sql = Sql::new(
    "update runner set observed_state = $3 where runner_id = $1 and instance_id = $2 and observed_state <> $3",
);
static RUNNER_OF_INSTANCE: Sql = Sql::new(
    "select runner_id, observed_state, observed_at from runner where instance_id = $1 {for_update}",
);
static APPLY_EVENT: Sql = Sql::new("update runner set observed_state = $2, observed_at = $3 where runner_id = $1");
/// Ends a runner's running containers on an instance that stopped or went away.
static KILL_CONTAINERS: Sql = Sql::new(
    "update container set status = 'killed', finished_at = {now} \
     where runner_id = $1 and status = 'running' and (instance_id is null or instance_id = $2)",
);
static FORGET_ORPHANS: Sql = Sql::new(
    "delete from orphan_instance where instance_id not in (select value from {each $1}) and reaped_at is null",
);
static SEEN_ORPHAN: Sql = Sql::new(
    "insert into orphan_instance (instance_id, runner_id, state) values ($1, $2, $3) \
     on conflict (instance_id) do update set state = excluded.state, last_seen_at = {now}",
);
static LIST_ORPHANS: Sql = Sql::new(
    "select instance_id, runner_id, state, first_seen_at, last_seen_at, reaped_at \
     from orphan_instance order by first_seen_at, instance_id",
);
static TRANSITIONAL_RUNNERS: Sql = Sql::new(concat!(
    "select ",
    runner_columns!(),
    " from runner where instance_id is not null and observed_state in ('pending', 'stopping', 'shutting-down') \
     order by runner_id"
));
static ADD_PERIODIC: Sql =
    Sql::new("insert into periodic_task (name, next_run_at) values ($1, {now}) on conflict (name) do nothing");
/// Moves the task's next run forward only if it is due: one caller wins.
static CLAIM_PERIODIC: Sql =
    Sql::new("update periodic_task set next_run_at = {now+$2} where name = $1 and next_run_at <= {now}");
static STUCK_RUNNER: Sql = Sql::new("update runner set last_error = $2 where runner_id = $1");
static LATEST_COMMAND: Sql = Sql::new(
    "select command_id, result from command where runner_id = $1 and status = 'succeeded' order by seq desc limit 1",
);
static SET_RESULT: Sql = Sql::new("update command set result = $2 where command_id = $1");
static REAPED: Sql = Sql::new("update orphan_instance set reaped_at = {now} where instance_id = $1");

fn orphan(r: &impl Row) -> Result<OrphanRecord, StoreError> {
    Ok(OrphanRecord {
        instance_id: r.text("instance_id")?,
        runner_id: r.opt_text("runner_id")?,
        state: r.text("state")?,
        first_seen_at: r.time("first_seen_at")?,
        last_seen_at: r.time("last_seen_at")?,
        reaped_at: r.opt_time("reaped_at")?,
    })
}

#[async_trait]
impl<D: Driver> FleetStore for SqlStore<D> {
    async fn runners_to_reconcile(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        rows::runners(&self.driver.conn().await?.fetch_all(&TO_RECONCILE, vec![]).await?)
    }

    async fn runners_by_ids(&self, runner_ids: &[String]) -> Result<Vec<RunnerRecord>, StoreError> {
        rows::runners(&self.driver.conn().await?.fetch_all(&BY_IDS, args![runner_ids]).await?)
    }

    async fn observe_instance(&self, runner_id: &str, instance_id: &str, state: ObservedState) -> Result<bool, StoreError> {
        let mut tx = self.driver.begin().await?;
        let changed = tx.execute(&OBSERVE, args![runner_id, instance_id, state.as_str()]).await? > 0;
        if ends_containers(state) {
            tx.execute(&KILL_CONTAINERS, args![runner_id, instance_id]).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn apply_instance_event(&self, event: &InstanceEvent) -> Result<EventOutcome, StoreError> {
        let mut tx = self.driver.begin().await?;
        let Some(row) = tx.fetch_optional(&RUNNER_OF_INSTANCE, args![&event.instance_id]).await? else {
            return Ok(EventOutcome::UnknownInstance);
        };
        let runner_id = row.text("runner_id")?;
        let current = parsed("observed_state", row.text("observed_state")?, ObservedState::parse)?;
        let outcome = match judge_event(current, row.opt_time("observed_at")?, event.state, event.at) {
            Verdict::Stale => return Ok(EventOutcome::Stale { runner_id, current }),
            Verdict::Unchanged => EventOutcome::Unchanged { runner_id: runner_id.clone() },
            Verdict::Apply { observed_at } => {
                tx.execute(&APPLY_EVENT, args![&runner_id, event.state.as_str(), observed_at]).await?;
                EventOutcome::Applied { runner_id: runner_id.clone(), from: current }
            }
        };
        if ends_containers(event.state) {
            tx.execute(&KILL_CONTAINERS, args![&runner_id, &event.instance_id]).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn record_orphans(&self, seen: &[(String, Option<String>, ObservedState)]) -> Result<(), StoreError> {
        let mut tx = self.driver.begin().await?;
        let ids: Vec<String> = seen.iter().map(|(i, _, _)| i.clone()).collect();
        tx.execute(&FORGET_ORPHANS, args![ids]).await?;
        for (instance_id, runner_id, state) in seen {
            tx.execute(&SEEN_ORPHAN, args![instance_id, runner_id, state.as_str()]).await?;
        }
        tx.commit().await
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError> {
        self.driver.conn().await?.fetch_all(&LIST_ORPHANS, vec![]).await?.iter().map(orphan).collect()
    }

    async fn transitional_runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        rows::runners(&self.driver.conn().await?.fetch_all(&TRANSITIONAL_RUNNERS, vec![]).await?)
    }

    async fn claim_periodic(&self, name: &str, every: Duration) -> Result<bool, StoreError> {
        let mut conn = self.driver.conn().await?;
        conn.execute(&ADD_PERIODIC, args![name]).await?;
        Ok(conn.execute(&CLAIM_PERIODIC, args![name, every]).await? == 1)
    }

    async fn flag_stuck(&self, runner_id: &str, message: &str) -> Result<(), StoreError> {
        let mut tx = self.driver.begin().await?;
        tx.execute(&STUCK_RUNNER, args![runner_id, message]).await?;
        if let Some(row) = tx.fetch_optional(&LATEST_COMMAND, args![runner_id]).await? {
            let mut result = row.opt_json("result")?.unwrap_or_else(|| serde_json::json!({}));
            if let Some(m) = result.as_object_mut() {
                m.insert("stuck".into(), serde_json::Value::String(message.to_owned()));
            }
            tx.execute(&SET_RESULT, args![row.uuid("command_id")?, result]).await?;
        }
        tx.commit().await
    }

    async fn mark_reaped(&self, instance_id: &str) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&REAPED, args![instance_id]).await?;
        Ok(())
    }
}

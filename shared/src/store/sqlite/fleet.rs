//! SQLite adapter of the fleet store.

use async_trait::async_trait;
use sqlx::Row;

use crate::domain::ObservedState;
use crate::store::fleet::{EventOutcome, FleetStore, InstanceEvent, OrphanRecord, Verdict, ends_containers, judge_event};
use crate::store::sqlite::{NOW, RUNNER_COLUMNS, SqliteStore, json_list, runner_from_row, ts};
use crate::store::{RunnerRecord, StoreError};

#[async_trait]
impl FleetStore for SqliteStore {
    async fn runners_to_reconcile(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {RUNNER_COLUMNS} from runner where instance_id is not null and observed_state <> 'terminated'"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(runner_from_row).collect()
    }

    async fn runners_by_ids(&self, runner_ids: &[String]) -> Result<Vec<RunnerRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "select {RUNNER_COLUMNS} from runner where runner_id in (select value from json_each(?1))"
        )))
        .bind(json_list(runner_ids.iter().cloned()))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(runner_from_row).collect()
    }

    async fn observe_instance(&self, runner_id: &str, instance_id: &str, state: ObservedState) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let changed = sqlx::query(
            "update runner set observed_state = ?3 where runner_id = ?1 and instance_id = ?2 and observed_state <> ?3",
        )
        .bind(runner_id)
        .bind(instance_id)
        .bind(state.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if ends_containers(state) {
            kill_running_containers(&mut tx, runner_id, instance_id).await?;
        }
        tx.commit().await?;
        Ok(changed)
    }

    async fn apply_instance_event(&self, event: &InstanceEvent) -> Result<EventOutcome, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("select runner_id, observed_state, observed_at from runner where instance_id = ?1")
            .bind(&event.instance_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(EventOutcome::UnknownInstance);
        };
        let runner_id: String = row.try_get("runner_id")?;
        let observed: String = row.try_get("observed_state")?;
        let current = ObservedState::parse(&observed)
            .ok_or_else(|| StoreError::Other(format!("unexpected observed_state {observed:?} in database")))?;
        let observed_at = row.try_get("observed_at")?;
        let outcome = match judge_event(current, observed_at, event.state, event.at) {
            Verdict::Stale => return Ok(EventOutcome::Stale { runner_id, current }),
            Verdict::Unchanged => EventOutcome::Unchanged { runner_id: runner_id.clone() },
            Verdict::Apply { observed_at } => {
                sqlx::query("update runner set observed_state = ?2, observed_at = ?3 where runner_id = ?1")
                    .bind(&runner_id)
                    .bind(event.state.as_str())
                    .bind(ts(observed_at))
                    .execute(&mut *tx)
                    .await?;
                EventOutcome::Applied { runner_id: runner_id.clone(), from: current }
            }
        };
        if ends_containers(event.state) {
            kill_running_containers(&mut tx, &runner_id, &event.instance_id).await?;
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn record_orphans(&self, seen: &[(String, Option<String>, ObservedState)]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "delete from orphan_instance where instance_id not in (select value from json_each(?1)) \
             and reaped_at is null",
        )
        .bind(json_list(seen.iter().map(|(i, _, _)| i.clone())))
        .execute(&mut *tx)
        .await?;
        for (instance_id, runner_id, state) in seen {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "insert into orphan_instance (instance_id, runner_id, state) values (?1, ?2, ?3) \
                 on conflict (instance_id) do update set state = excluded.state, last_seen_at = {NOW}"
            )))
            .bind(instance_id)
            .bind(runner_id)
            .bind(state.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanRecord>, StoreError> {
        let rows = sqlx::query(
            "select instance_id, runner_id, state, first_seen_at, last_seen_at, reaped_at \
             from orphan_instance order by first_seen_at, instance_id",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OrphanRecord {
                    instance_id: r.try_get("instance_id")?,
                    runner_id: r.try_get("runner_id")?,
                    state: r.try_get("state")?,
                    first_seen_at: r.try_get("first_seen_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    reaped_at: r.try_get("reaped_at")?,
                })
            })
            .collect()
    }

    async fn mark_reaped(&self, instance_id: &str) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update orphan_instance set reaped_at = {NOW} where instance_id = ?1"
        )))
        .bind(instance_id)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

/// Ends a runner's running containers on an instance that stopped or went away.
async fn kill_running_containers(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    runner_id: &str,
    instance_id: &str,
) -> Result<(), StoreError> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "update container set status = 'killed', finished_at = {NOW} \
         where runner_id = ?1 and status = 'running' and (instance_id is null or instance_id = ?2)"
    )))
    .bind(runner_id)
    .bind(instance_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

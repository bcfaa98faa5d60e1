//! SQLite adapter of the fleet store.

use async_trait::async_trait;
use sqlx::Row;

use crate::domain::ObservedState;
use crate::store::fleet::{FleetStore, OrphanRecord};
use crate::store::sqlite::{NOW, RUNNER_COLUMNS, SqliteStore, json_list, runner_from_row};
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
        if matches!(state, ObservedState::Stopped | ObservedState::ShuttingDown | ObservedState::Terminated) {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "update container set status = 'killed', finished_at = {NOW} \
                 where runner_id = ?1 and status = 'running' and (instance_id is null or instance_id = ?2)"
            )))
            .bind(runner_id)
            .bind(instance_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(changed)
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

//! SQLite adapter of the `containers` port: agent tokens, runner events applied
//! once per event id, and the container records.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use crate::store::StoreError;
use crate::store::containers::{AgentTokenRecord, ContainerQuery, ContainerRecord, ContainerStore, EventKind, RunnerEvent};
use crate::store::sqlite::{NOW, SqliteStore, ts, uuid_from, uuid_text};

const CONTAINER_COLUMNS: &str =
    "container_id, runner_id, instance_id, image_name, status, exit_code, input_url, log_tail, started_at, finished_at";

fn container_from_row(r: &SqliteRow) -> Result<ContainerRecord, StoreError> {
    let container_id: String = r.try_get("container_id")?;
    Ok(ContainerRecord {
        container_id: uuid_from(&container_id)?,
        runner_id: r.try_get("runner_id")?,
        instance_id: r.try_get("instance_id")?,
        image_name: r.try_get("image_name")?,
        status: r.try_get("status")?,
        exit_code: r.try_get("exit_code")?,
        input_url: r.try_get("input_url")?,
        log_tail: r.try_get("log_tail")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

#[async_trait]
impl ContainerStore for SqliteStore {
    async fn insert_agent_token(
        &self,
        token_id: Uuid,
        runner_id: &str,
        command_id: Uuid,
        secret_hash: &[u8],
    ) -> Result<(), StoreError> {
        sqlx::query("insert into agent_token (token_id, runner_id, command_id, secret_hash) values (?1, ?2, ?3, ?4)")
            .bind(uuid_text(token_id))
            .bind(runner_id)
            .bind(uuid_text(command_id))
            .bind(secret_hash)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    async fn revoke_agent_tokens(&self, runner_id: &str, keep_command: Option<Uuid>) -> Result<u64, StoreError> {
        let done = sqlx::query(AssertSqlSafe(format!(
            "update agent_token set revoked_at = {NOW} \
             where runner_id = ?1 and revoked_at is null and (?2 is null or command_id <> ?2)"
        )))
        .bind(runner_id)
        .bind(keep_command.map(uuid_text))
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }

    async fn agent_token(&self, token_id: Uuid) -> Result<Option<AgentTokenRecord>, StoreError> {
        let row = sqlx::query("select token_id, runner_id, secret_hash, revoked_at from agent_token where token_id = ?1")
            .bind(uuid_text(token_id))
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            let token_id: String = r.try_get("token_id")?;
            Ok(AgentTokenRecord {
                token_id: uuid_from(&token_id)?,
                runner_id: r.try_get("runner_id")?,
                secret_hash: r.try_get("secret_hash")?,
                revoked_at: r.try_get("revoked_at")?,
            })
        })
        .transpose()
    }

    async fn record_event(&self, e: &RunnerEvent) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let fresh = sqlx::query(
            "insert into runner_event (event_id, runner_id, kind, container_id) values (?1, ?2, ?3, ?4) \
             on conflict (event_id) do nothing",
        )
        .bind(uuid_text(e.event_id))
        .bind(&e.runner_id)
        .bind(e.kind.as_str())
        .bind(e.container_id.map(uuid_text))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if !fresh {
            tx.rollback().await?;
            return Ok(false);
        }
        // Any event proves the agent is alive.
        sqlx::query(AssertSqlSafe(format!("update runner set last_heartbeat_at = {NOW} where runner_id = ?1")))
            .bind(&e.runner_id)
            .execute(&mut *tx)
            .await?;
        match (e.kind, e.container_id) {
            (EventKind::Heartbeat, _) | (_, None) => {}
            (EventKind::ContainerStarted, Some(container_id)) => {
                // A start after its finish (events reordered) or a repeated start
                // under another event id leaves the existing row alone.
                sqlx::query(
                    "insert into container (container_id, runner_id, instance_id, image_name, input_url, started_at) \
                     select ?1, ?2, coalesce(?3, r.instance_id), coalesce(?4, r.image_name), ?5, ?6 \
                     from runner r where r.runner_id = ?2 \
                     on conflict (container_id) do nothing",
                )
                .bind(uuid_text(container_id))
                .bind(&e.runner_id)
                .bind(&e.instance_id)
                .bind(&e.image_name)
                .bind(&e.input_url)
                .bind(ts(e.at))
                .execute(&mut *tx)
                .await?;
            }
            (EventKind::ContainerFinished, Some(container_id)) => {
                let status = if e.exit_code.is_some() { "exited" } else { "failed" };
                let started = e.at - chrono::Duration::milliseconds(e.duration_ms.unwrap_or(0).max(0));
                // Only a running container is closed: one the control plane already
                // closed as killed keeps that status. A finish whose start was
                // never seen creates the row whole.
                sqlx::query(
                    "insert into container (container_id, runner_id, instance_id, image_name, input_url, status, \
                        exit_code, log_tail, started_at, finished_at) \
                     select ?1, ?2, coalesce(?3, r.instance_id), coalesce(?4, r.image_name), ?5, ?6, ?7, ?8, ?9, ?10 \
                     from runner r where r.runner_id = ?2 \
                     on conflict (container_id) do update set status = excluded.status, \
                        exit_code = excluded.exit_code, log_tail = excluded.log_tail, \
                        finished_at = excluded.finished_at \
                     where container.status = 'running' and container.runner_id = excluded.runner_id",
                )
                .bind(uuid_text(container_id))
                .bind(&e.runner_id)
                .bind(&e.instance_id)
                .bind(&e.image_name)
                .bind(&e.input_url)
                .bind(status)
                .bind(e.exit_code)
                .bind(&e.log_tail)
                .bind(ts(started))
                .bind(ts(e.at))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn containers_revision(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("select coalesce(max(revision), 0) from container").fetch_one(self.pool()).await?)
    }

    async fn list_containers(&self, q: &ContainerQuery) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut sql = format!("select {CONTAINER_COLUMNS} from container where true");
        if q.status.is_some() {
            sql += " and status = ?";
        }
        if q.image_name.is_some() {
            sql += " and image_name = ?";
        }
        if q.runner_id.is_some() {
            sql += " and runner_id = ?";
        }
        if q.since.is_some() {
            sql += " and started_at >= ?";
        }
        if q.until.is_some() {
            sql += " and started_at < ?";
        }
        if q.before.is_some() {
            sql += " and (started_at, container_id) < (?, ?)";
        }
        sql += " order by started_at desc, container_id desc limit ?";
        let mut query = sqlx::query(AssertSqlSafe(sql));
        if let Some(v) = &q.status {
            query = query.bind(v);
        }
        if let Some(v) = &q.image_name {
            query = query.bind(v);
        }
        if let Some(v) = &q.runner_id {
            query = query.bind(v);
        }
        if let Some(v) = q.since {
            query = query.bind(ts(v));
        }
        if let Some(v) = q.until {
            query = query.bind(ts(v));
        }
        if let Some((at, id)) = q.before {
            query = query.bind(ts(at)).bind(uuid_text(id));
        }
        let rows = query.bind(q.limit).fetch_all(self.pool()).await?;
        rows.iter().map(container_from_row).collect()
    }

    async fn runner_containers(&self, runner_ids: &[String], per_runner: i64) -> Result<Vec<ContainerRecord>, StoreError> {
        let ids = serde_json::to_string(runner_ids).map_err(|e| StoreError::Other(format!("runner ids: {e}")))?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "select {CONTAINER_COLUMNS} from (select *, row_number() over \
                (partition by runner_id order by started_at desc, container_id desc) as n \
                from container where runner_id in (select value from json_each(?1))) c \
             where n <= ?2 order by runner_id, started_at desc, container_id desc"
        )))
        .bind(ids)
        .bind(per_runner)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(container_from_row).collect()
    }
}

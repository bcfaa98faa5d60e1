//! The container port: agent tokens, runner events applied once per event id,
//! and the container records they build.

use async_trait::async_trait;
use uuid::Uuid;

use crate::store::error::StoreError;
use crate::store::containers::{AgentTokenRecord, ContainerQuery, ContainerRecord, ContainerStore, EventKind, RunnerEvent};
use crate::store::sql::{Arg, Conn, Driver, Row, Sql, SqlStore};

macro_rules! container_columns {
    () => {
        "container_id, runner_id, instance_id, image_name, status, exit_code, input_url, log_tail, started_at, \
         finished_at"
    };
}

static INSERT_TOKEN: Sql =
    Sql::new("insert into agent_token (token_id, runner_id, command_id, secret_hash) values ($1, $2, $3, $4)");
static REVOKE_TOKENS: Sql = Sql::new(
    "update agent_token set revoked_at = {now} \
     where runner_id = $1 and revoked_at is null and ($2 is null or command_id <> $2)",
);
static TOKEN: Sql =
    Sql::new("select token_id, runner_id, secret_hash, revoked_at from agent_token where token_id = $1");
static INSERT_EVENT: Sql = Sql::new(
    "insert into runner_event (event_id, runner_id, kind, container_id) values ($1, $2, $3, $4) \
     on conflict (event_id) do nothing",
);
static HEARD_FROM: Sql = Sql::new("update runner set last_heartbeat_at = {now} where runner_id = $1");
/// A start after its finish (events reordered) or a repeated start under
/// another event id leaves the existing row alone.
static CONTAINER_STARTED: Sql = Sql::new(
    "insert into container (container_id, runner_id, instance_id, image_name, input_url, started_at) \
     select $1, $2, coalesce($3, r.instance_id), coalesce($4, r.image_name), $5, $6 \
     from runner r where r.runner_id = $2 \
     on conflict (container_id) do nothing",
);
/// Only a running container is closed: one the control plane already closed as
/// killed keeps that status. A finish whose start was never seen creates the
/// row whole.
static CONTAINER_FINISHED: Sql = Sql::new(
    "insert into container (container_id, runner_id, instance_id, image_name, input_url, status, exit_code, \
        log_tail, started_at, finished_at) \
     select $1, $2, coalesce($3, r.instance_id), coalesce($4, r.image_name), $5, $6, $7, $8, $9, $10 \
     from runner r where r.runner_id = $2 \
     on conflict (container_id) do update set status = excluded.status, exit_code = excluded.exit_code, \
        log_tail = excluded.log_tail, finished_at = excluded.finished_at \
     where container.status = 'running' and container.runner_id = excluded.runner_id",
);
static REVISION: Sql = Sql::new("select coalesce(max(revision), 0) as revision from container");
static PER_RUNNER: Sql = Sql::new(concat!(
    "select ",
    container_columns!(),
    " from (select *, row_number() over (partition by runner_id order by started_at desc, container_id desc) as n \
       from container where runner_id in (select value from {each $1})) c \
     where n <= $2 order by runner_id, started_at desc, container_id desc"
));

fn container(r: &impl Row) -> Result<ContainerRecord, StoreError> {
    Ok(ContainerRecord {
        container_id: r.uuid("container_id")?,
        runner_id: r.text("runner_id")?,
        instance_id: r.opt_text("instance_id")?,
        image_name: r.text("image_name")?,
        status: r.text("status")?,
        exit_code: r.opt_i32("exit_code")?,
        input_url: r.opt_text("input_url")?,
        log_tail: r.opt_text("log_tail")?,
        started_at: r.time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

#[async_trait]
impl<D: Driver> ContainerStore for SqlStore<D> {
    async fn insert_agent_token(
        &self,
        token_id: Uuid,
        runner_id: &str,
        command_id: Uuid,
        secret_hash: &[u8],
    ) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&INSERT_TOKEN, args![token_id, runner_id, command_id, secret_hash]).await?;
        Ok(())
    }

    async fn revoke_agent_tokens(&self, runner_id: &str, keep_command: Option<Uuid>) -> Result<u64, StoreError> {
        self.driver.conn().await?.execute(&REVOKE_TOKENS, args![runner_id, keep_command]).await
    }

    async fn agent_token(&self, token_id: Uuid) -> Result<Option<AgentTokenRecord>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&TOKEN, args![token_id]).await?;
        row.map(|r| {
            Ok(AgentTokenRecord {
                token_id: r.uuid("token_id")?,
                runner_id: r.text("runner_id")?,
                secret_hash: r.bytes("secret_hash")?,
                revoked_at: r.opt_time("revoked_at")?,
            })
        })
        .transpose()
    }

    async fn record_event(&self, e: &RunnerEvent) -> Result<bool, StoreError> {
        let mut tx = self.driver.begin().await?;
        let args = args![e.event_id, &e.runner_id, e.kind.as_str(), e.container_id];
        if tx.execute(&INSERT_EVENT, args).await? == 0 {
            return Ok(false);
        }
        // Any event proves the agent is alive.
        tx.execute(&HEARD_FROM, args![&e.runner_id]).await?;
        match (e.kind, e.container_id) {
            (EventKind::Heartbeat, _) | (_, None) => {}
            (EventKind::ContainerStarted, Some(id)) => {
                let args = args![id, &e.runner_id, &e.instance_id, &e.image_name, &e.input_url, e.at];
                tx.execute(&CONTAINER_STARTED, args).await?;
            }
            (EventKind::ContainerFinished, Some(id)) => {
                let status = if e.exit_code.is_some() { "exited" } else { "failed" };
                let started = e.at - chrono::Duration::milliseconds(e.duration_ms.unwrap_or(0).max(0));
                let args = args![
                    id,
                    &e.runner_id,
                    &e.instance_id,
                    &e.image_name,
                    &e.input_url,
                    status,
                    e.exit_code,
                    &e.log_tail,
                    started,
                    e.at,
                ];
                tx.execute(&CONTAINER_FINISHED, args).await?;
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn containers_revision(&self) -> Result<i64, StoreError> {
        self.driver.conn().await?.fetch_one(&REVISION, vec![]).await?.int("revision")
    }

    async fn list_containers(&self, q: &ContainerQuery) -> Result<Vec<ContainerRecord>, StoreError> {
        // Only the filters given, so each combination uses its own index path.
        let mut sql = concat!("select ", container_columns!(), " from container where true").to_owned();
        let mut args = Vec::new();
        let mut filter = |sql: &mut String, condition: &str, values: Vec<Arg>| {
            let mut condition = condition.to_owned();
            for v in values {
                args.push(v);
                condition = condition.replacen('?', &format!("${}", args.len()), 1);
            }
            sql.push_str(" and ");
            sql.push_str(&condition);
        };
        if let Some(v) = &q.status {
            filter(&mut sql, "status = ?", args![v]);
        }
        if let Some(v) = &q.image_name {
            filter(&mut sql, "image_name = ?", args![v]);
        }
        if let Some(v) = &q.runner_id {
            filter(&mut sql, "runner_id = ?", args![v]);
        }
        if let Some(v) = q.since {
            filter(&mut sql, "started_at >= ?", args![v]);
        }
        if let Some(v) = q.until {
            filter(&mut sql, "started_at < ?", args![v]);
        }
        if let Some((at, id)) = q.before {
            filter(&mut sql, "(started_at, container_id) < (?, ?)", args![at, id]);
        }
        args.push(Arg::int(q.limit));
        sql.push_str(&format!(" order by started_at desc, container_id desc limit ${}", args.len()));
        let rows = self.driver.conn().await?.fetch_all(&Sql::dynamic(sql), args).await?;
        rows.iter().map(container).collect()
    }

    async fn runner_containers(&self, runner_ids: &[String], per_runner: i64) -> Result<Vec<ContainerRecord>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&PER_RUNNER, args![runner_ids, per_runner]).await?;
        rows.iter().map(container).collect()
    }
}

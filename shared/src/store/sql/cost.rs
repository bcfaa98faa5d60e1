//! The cost port: runners' state history, budgets and idle candidates.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::cost::{PurchaseOption, StateChange};
use crate::domain::ObservedState;
use crate::store::commands::RunnerRecord;
use crate::store::cost::{BudgetRecord, BudgetScope, CostStore, IdleCandidate};
use crate::store::error::StoreError;
use crate::store::sql::rows::{self, parsed, runner_columns};
use crate::store::sql::{Conn, Driver, Row, Sql, SqlStore};

static CHANGES: Sql = Sql::new(
    "select runner_id, state, instance_type, purchase_option, at from runner_state_change \
     where at < $1 order by runner_id, at, change_id",
);
static CHANGES_OF: Sql = Sql::new(
    "select runner_id, state, instance_type, purchase_option, at from runner_state_change \
     where at < $1 and runner_id in (select value from {each $2}) order by runner_id, at, change_id",
);
static ALL_RUNNERS: Sql = Sql::new(concat!("select ", runner_columns!(), " from runner order by runner_id"));
macro_rules! budget_columns {
    () => {
        "budget_id, scope, subject, monthly_usd, set_by, spent_usd, spent_month, checked_at, created_at, updated_at"
    };
}
/// A budget's spend is kept when its amount changes: the next check recomputes it.
static SET_BUDGET: Sql = Sql::new(concat!(
    "insert into budget (budget_id, scope, subject, monthly_usd, set_by) values ($1, $2, $3, $4, $5) \
     on conflict (scope, subject) do update set monthly_usd = excluded.monthly_usd, set_by = excluded.set_by, \
       updated_at = {now} \
     returning ",
    budget_columns!()
));
static BUDGETS: Sql = Sql::new(concat!("select ", budget_columns!(), " from budget order by scope, subject"));
static RECORD_SPEND: Sql = Sql::new(
    "update budget set spent_usd = $3, spent_month = $2, checked_at = {now} where budget_id = $1",
);
static RECORD_NOTICE: Sql = Sql::new(
    "insert into budget_notice (budget_id, month, level, spent_usd) values ($1, $2, $3, $4) \
     on conflict (budget_id, month, level) do nothing",
);
static NOTICES: Sql = Sql::new("select budget_id, level from budget_notice where month = $1 order by budget_id, level");
static EXCEEDED: Sql = Sql::new(concat!(
    "select ",
    budget_columns!(),
    " from budget where spent_month = $1 and spent_usd >= monthly_usd order by scope, subject"
));
static IDLE: Sql = Sql::new(concat!(
    "select ",
    runner_columns!(),
    ", (select max(c.started_at) from container c where c.runner_id = runner.runner_id) as last_container_at, \
       (select count(*) from container c where c.runner_id = runner.runner_id and c.status = 'running') \
         as running_containers \
     from runner where idle_stop_after_secs is not null and desired_state = 'running' \
       and observed_state = 'running' order by runner_id"
));
static OWNER_EMAIL: Sql = Sql::new("select email from app_user where user_name = $1");

fn budget(r: &impl Row) -> Result<BudgetRecord, StoreError> {
    Ok(BudgetRecord {
        budget_id: r.uuid("budget_id")?,
        scope: parsed("budget scope", r.text("scope")?, BudgetScope::parse)?,
        subject: r.text("subject")?,
        monthly_usd: r.float("monthly_usd")?,
        set_by: r.text("set_by")?,
        spent_usd: r.float("spent_usd")?,
        spent_month: r.opt_text("spent_month")?,
        checked_at: r.opt_time("checked_at")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn change(r: &impl Row) -> Result<StateChange, StoreError> {
    Ok(StateChange {
        runner_id: r.text("runner_id")?,
        state: parsed("state", r.text("state")?, ObservedState::parse)?,
        instance_type: r.text("instance_type")?,
        purchase_option: parsed("purchase_option", r.text("purchase_option")?, PurchaseOption::parse)?,
        at: r.time("at")?,
    })
}

#[async_trait]
impl<D: Driver> CostStore for SqlStore<D> {
    async fn state_changes(
        &self,
        runner_ids: Option<&[String]>,
        before: DateTime<Utc>,
    ) -> Result<Vec<StateChange>, StoreError> {
        let mut conn = self.driver.conn().await?;
        let rows = match runner_ids {
            Some(ids) => conn.fetch_all(&CHANGES_OF, args![before, ids]).await?,
            None => conn.fetch_all(&CHANGES, args![before]).await?,
        };
        rows.iter().map(change).collect()
    }

    async fn all_runners(&self) -> Result<Vec<RunnerRecord>, StoreError> {
        rows::runners(&self.driver.conn().await?.fetch_all(&ALL_RUNNERS, vec![]).await?)
    }

    async fn set_budget(
        &self,
        scope: BudgetScope,
        subject: &str,
        monthly_usd: f64,
        set_by: &str,
    ) -> Result<BudgetRecord, StoreError> {
        let args = args![Uuid::now_v7(), scope.as_str(), subject, monthly_usd, set_by];
        budget(&self.driver.conn().await?.fetch_one(&SET_BUDGET, args).await?)
    }

    async fn list_budgets(&self) -> Result<Vec<BudgetRecord>, StoreError> {
        self.driver.conn().await?.fetch_all(&BUDGETS, vec![]).await?.iter().map(budget).collect()
    }

    async fn record_spend(&self, budget_id: Uuid, month: &str, spent_usd: f64) -> Result<(), StoreError> {
        self.driver.conn().await?.execute(&RECORD_SPEND, args![budget_id, month, spent_usd]).await?;
        Ok(())
    }

    async fn record_notice(&self, budget_id: Uuid, month: &str, level: i32, spent_usd: f64) -> Result<bool, StoreError> {
        Ok(self.driver.conn().await?.execute(&RECORD_NOTICE, args![budget_id, month, level, spent_usd]).await? == 1)
    }

    async fn notices(&self, month: &str) -> Result<Vec<(Uuid, i32)>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&NOTICES, args![month]).await?;
        rows.iter().map(|r| Ok((r.uuid("budget_id")?, r.i32("level")?))).collect()
    }

    async fn exceeded_in(&self, month: &str) -> Result<Vec<BudgetRecord>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&EXCEEDED, args![month]).await?;
        rows.iter().map(budget).collect()
    }

    async fn idle_candidates(&self) -> Result<Vec<IdleCandidate>, StoreError> {
        let rows = self.driver.conn().await?.fetch_all(&IDLE, vec![]).await?;
        rows.iter()
            .map(|r| {
                Ok(IdleCandidate {
                    runner: rows::runner(r)?,
                    last_container_at: r.opt_time("last_container_at")?,
                    running_containers: r.int("running_containers")?,
                })
            })
            .collect()
    }

    async fn owner_email(&self, owner: &str) -> Result<Option<String>, StoreError> {
        let row = self.driver.conn().await?.fetch_optional(&OWNER_EMAIL, args![owner]).await?;
        row.map(|r| r.text("email")).transpose()
    }
}

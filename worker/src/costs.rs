//! The cost keeper: once per interval in the cluster it sums what each budget's
//! runners cost this month, e-mails a budget's owner and the administrators
//! when 80% of it is spent, stops the owner's runners when all of it is, and
//! stops runners that sat idle longer than their limit.
//!
//! Every action is an ordinary command (e-mails on the e-mail queue, stops on
//! the runner queue, visible in `/describe-commands`) with an idempotency key
//! derived from what it answers, so a check that runs again — after a crash
//! between queuing and recording, or on another worker — queues nothing twice.
//! A crossing is recorded only after its commands are queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use geonex_shared::cost::{Cost, PriceTable, cost_of, month_of, running_intervals};
use geonex_shared::dispatch::Dispatcher;
use geonex_shared::domain::{DesiredState, InstanceId, RunnerId, RunnerName};
use geonex_shared::store::cost::{BudgetRecord, BudgetScope};
use geonex_shared::store::email::{CommandOrigin, EmailKind, EmailParams, NewEmailCommand};
use geonex_shared::store::{Database, NewRunnerCommand, RunnerRecord, RunnerRequest};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const TASK: &str = "cost-check";

pub struct CostKeeper {
    db: Arc<dyn Database>,
    dispatcher: Dispatcher,
    prices: Arc<PriceTable>,
    region: String,
    interval: Duration,
    max_attempts: i32,
}

/// What one check did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    pub budgets: usize,
    pub notices: usize,
    pub stops: usize,
    pub idle_stops: usize,
}

/// This month's cost of each runner.
pub fn month_costs(
    changes: &[geonex_shared::cost::StateChange],
    prices: &PriceTable,
    region: &str,
    now: DateTime<Utc>,
) -> HashMap<String, Cost> {
    let (start, _) = month_of(now);
    let mut by_runner: HashMap<String, Cost> = HashMap::new();
    for i in running_intervals(changes, start, now) {
        by_runner.entry(i.runner_id.clone()).or_default().add(cost_of(&i, prices, region));
    }
    by_runner
}

impl CostKeeper {
    pub fn new(
        db: Arc<dyn Database>,
        dispatcher: Dispatcher,
        prices: Arc<PriceTable>,
        region: String,
        interval: Duration,
        max_attempts: i32,
    ) -> Self {
        Self { db, dispatcher, prices, region, interval, max_attempts }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        if self.interval.is_zero() {
            return;
        }
        let every = self.interval.mul_f32(0.9);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval.min(Duration::from_secs(5))) => {}
                _ = shutdown.cancelled() => return,
            }
            match self.db.claim_periodic(TASK, every).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cost check: cannot reach the store");
                    continue;
                }
            }
            match self.check(Utc::now()).await {
                Ok(c) if c.notices + c.stops + c.idle_stops > 0 => {
                    tracing::info!(notices = c.notices, stops = c.stops, idle_stops = c.idle_stops, "cost check");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cost check failed"),
            }
        }
    }

    /// One check of every budget and idle limit.
    pub async fn check(&self, now: DateTime<Utc>) -> Result<Check, String> {
        let mut check = Check::default();
        let budgets = self.db.list_budgets().await.map_err(|e| e.to_string())?;
        if !budgets.is_empty() {
            let runners = self.db.all_runners().await.map_err(|e| e.to_string())?;
            let changes = self.db.state_changes(None, now).await.map_err(|e| e.to_string())?;
            let costs = month_costs(&changes, &self.prices, &self.region, now);
            let (_, month) = month_of(now);
            let notices = self.db.notices(&month).await.map_err(|e| e.to_string())?;
            for b in &budgets {
                check.budgets += 1;
                let governed: Vec<&RunnerRecord> = runners.iter().filter(|r| governs(b, r)).collect();
                let spent: f64 = governed.iter().filter_map(|r| costs.get(&r.runner_id)).map(|c| c.instance_usd).sum();
                self.db.record_spend(b.budget_id, &month, spent).await.map_err(|e| e.to_string())?;
                for level in [80, 100] {
                    let crossed = spent >= b.monthly_usd * f64::from(level) / 100.0;
                    if !crossed {
                        continue;
                    }
                    if level == 100 {
                        check.stops += self.stop_all(b, &governed, &month).await?;
                    }
                    if notices.contains(&(b.budget_id, level)) {
                        continue;
                    }
                    self.notify(b, level, spent, &month).await?;
                    self.db.record_notice(b.budget_id, &month, level, spent).await.map_err(|e| e.to_string())?;
                    check.notices += 1;
                }
            }
        }
        check.idle_stops = self.stop_idle(now).await?;
        Ok(check)
    }

    /// E-mails the budget's owner (if they have an address) and the administrators.
    async fn notify(&self, b: &BudgetRecord, level: i32, spent: f64, month: &str) -> Result<(), String> {
        let owner = match b.scope {
            BudgetScope::User => Some(b.subject.clone()),
            BudgetScope::Image => self.db.get_image(&b.subject).await.map_err(|e| e.to_string())?.map(|i| i.owner),
        };
        let mut to: Vec<String> = Vec::new();
        if let Some(o) = &owner
            && let Some(email) = self.db.owner_email(o).await.map_err(|e| e.to_string())?
        {
            to.push(email);
        }
        for a in self.db.admin_emails().await.map_err(|e| e.to_string())? {
            if !to.contains(&a) {
                to.push(a);
            }
        }
        let kind = if level >= 100 { EmailKind::BudgetExceeded } else { EmailKind::BudgetWarning };
        let message = format!(
            "{level}% of the {} budget of {} (${:.2} a month): ${spent:.2} spent in {month}",
            b.scope.as_str(),
            b.subject,
            b.monthly_usd
        );
        for address in to {
            let cmd = NewEmailCommand {
                command_id: Uuid::now_v7(),
                params: EmailParams {
                    kind,
                    to: address.clone(),
                    image_name: if b.scope == BudgetScope::Image { b.subject.clone() } else { String::new() },
                    user_name: owner.clone().unwrap_or_else(|| "GeoNEX user".into()),
                    reason: Some(message.clone()),
                    description: None,
                    organization: None,
                },
                origin: self.origin(b),
                idempotency_key: Some(format!("budget-{}-{month}-{level}-{address}", b.budget_id)),
            };
            let s = self.db.submit_email(cmd).await.map_err(|e| e.to_string())?;
            if s.created {
                self.dispatcher.publish_in_background(s.command.message());
            }
        }
        Ok(())
    }

    /// Stops every runner the budget governs that is meant to run.
    async fn stop_all(&self, b: &BudgetRecord, governed: &[&RunnerRecord], month: &str) -> Result<usize, String> {
        let mut stopped = 0;
        for r in governed.iter().filter(|r| r.desired_state == DesiredState::Running) {
            // The runner's last change is in the key: a runner started again
            // (a spot relaunch) after this stop is stopped again.
            let key = format!("budget-{}-{month}-{}-{}", b.budget_id, r.runner_id, r.updated_at.timestamp_millis());
            if self.stop(r, "budget", &format!("budget:{}", b.budget_id), key).await? {
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Stops running runners whose containers have not started for longer than
    /// their idle limit, none running.
    async fn stop_idle(&self, now: DateTime<Utc>) -> Result<usize, String> {
        let mut stopped = 0;
        for c in self.db.idle_candidates().await.map_err(|e| e.to_string())? {
            let Some(limit) = c.runner.idle_stop_after_secs else { continue };
            if c.running_containers > 0 {
                continue;
            }
            // Never worked: idle since it became running.
            let since = c.last_container_at.max(c.runner.observed_at).unwrap_or(c.runner.updated_at);
            if (now - since).num_seconds() < limit {
                continue;
            }
            let key = format!("idle-{}-{}", c.runner.runner_id, since.timestamp_millis());
            if self.stop(&c.runner, "idle", "system:idle", key).await? {
                tracing::info!(runner_id = %c.runner.runner_id, idle_since = %since, "stopping an idle runner");
                stopped += 1;
            }
        }
        Ok(stopped)
    }

    /// Submits an ordinary stop command for `runner`; true if it is new.
    async fn stop(&self, runner: &RunnerRecord, reason: &str, requested_by: &str, key: String) -> Result<bool, String> {
        let Some(instance) = runner.instance_id.as_deref() else { return Ok(false) };
        let cmd = NewRunnerCommand {
            command_id: Uuid::now_v7(),
            runner_id: RunnerId::parse(&runner.runner_id).map_err(|e| e.message)?,
            request: RunnerRequest::Stop {
                instance_id: InstanceId::parse(instance).map_err(|e| e.message)?,
                runner_name: RunnerName::parse(&runner.runner_name).ok(),
                reason: Some(reason.into()),
            },
            requested_by: requested_by.into(),
            idempotency_key: Some(key),
            trace_id: format!("{reason}-{}", runner.runner_id),
            max_attempts: self.max_attempts,
        };
        match self.db.submit_runner_command(cmd).await {
            Ok(s) => {
                if s.created {
                    self.dispatcher.publish_in_background(s.command.message());
                }
                Ok(s.created)
            }
            // A runner deleted or changed meanwhile is not stopped by this check.
            Err(geonex_shared::store::SubmitError::Store(e)) => Err(e.to_string()),
            Err(e) => {
                tracing::info!(runner_id = %runner.runner_id, error = %e, "not stopping the runner");
                Ok(false)
            }
        }
    }

    fn origin(&self, b: &BudgetRecord) -> CommandOrigin {
        CommandOrigin {
            requested_by: format!("budget:{}", b.budget_id),
            trace_id: format!("budget-{}", b.budget_id),
            max_attempts: self.max_attempts,
        }
    }
}

/// Whether a budget limits this runner.
fn governs(b: &BudgetRecord, r: &RunnerRecord) -> bool {
    match b.scope {
        BudgetScope::User => r.owner.as_deref() == Some(b.subject.as_str()),
        BudgetScope::Image => r.image_name == b.subject,
    }
}

//! Runner command handlers: start, restart, stop and delete a runner's instance.
//!
//! A handler makes its cloud call and finishes: a start succeeds once the
//! instance is launched (`pending`), a stop once EC2 accepted it (`stopping`);
//! the instance observer follows the instance from there. A step that needs the
//! instance somewhere first (a restart of a running instance waits for it to
//! stop) makes the command wait, holding no worker, and look again later.
//!
//! Every handler looks at the cloud before acting and converges on the command's
//! end state, so a redelivered or rescued command never launches a second
//! instance: an instance an earlier attempt launched is found by its
//! `geonex:runner-id` tag and adopted, and launches carry a client token derived
//! from the command (which EC2 itself also deduplicates on).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use geonex_shared::cost::PurchaseOption;
use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::auth::{TokenKind, mint_token};
use geonex_shared::store::containers::ContainerStore;
use geonex_shared::store::{CommandRecord, RunnerObservation, RunnerParams, RunnerRecord, Store};
use secrecy::ExposeSecret;
use serde_json::json;

use async_trait::async_trait;

use crate::budget::{Budget, Op, Priority, Reservation, Spend};
use crate::cloud::{Cloud, CloudError, InstanceInfo, LaunchSpec, TAG_COMMAND_ID};
use crate::handler::{Handler, Outcome, Step, Wait};
use crate::failpoint;
use crate::fence;
use crate::retry::HandlerError;
use crate::user_data::{UserDataContext, UserDataTemplate};

pub struct RunnerHandler {
    cloud: Arc<dyn Cloud>,
    store: Arc<dyn Store>,
    tokens: Arc<dyn ContainerStore>,
    template: UserDataTemplate,
    agent: AgentEndpoints,
    budget: Budget,
    wait: Duration,
    poll: Duration,
}

/// Where the on-instance agent reports and listens, rendered into the user data.
#[derive(Debug, Clone, Default)]
pub struct AgentEndpoints {
    pub api_url: Option<String>,
    pub queue_url: Option<String>,
}

/// The runner parameters a command applies: its stored params, with the
/// runner row as fallback.
struct Target {
    runner_name: String,
    image_name: String,
    s3_output: String,
    instance_type: String,
}

impl Target {
    fn of(cmd: &CommandRecord, runner: &RunnerRecord) -> Result<Self, HandlerError> {
        let p = RunnerParams::of(cmd).map_err(|e| HandlerError::permanent(e.to_string()))?;
        Ok(Self {
            runner_name: p.runner_name.unwrap_or_else(|| runner.runner_name.clone()),
            image_name: p.image_name.unwrap_or_else(|| runner.image_name.clone()),
            s3_output: p.s3_output.unwrap_or_else(|| runner.s3_output.clone()),
            instance_type: p.instance_type.unwrap_or_else(|| runner.instance_type.clone()),
        })
    }
}

/// Why a runner command stopped short of its end: it waits (for its instance,
/// or for the EC2 budget), or it failed.
enum Halt {
    Wait(Wait),
    Fail(HandlerError),
}

impl From<HandlerError> for Halt {
    fn from(e: HandlerError) -> Self {
        Halt::Fail(e)
    }
}

impl From<CloudError> for Halt {
    fn from(e: CloudError) -> Self {
        Halt::Fail(e.into())
    }
}

type Flow<T> = Result<T, Halt>;

/// Throttled anyway: look again in one to three seconds, spread out.
fn throttle_pause() -> Duration {
    Duration::from_millis(1000 + rand::random_range(0..2000))
}

impl RunnerHandler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cloud: Arc<dyn Cloud>,
        store: Arc<dyn Store>,
        tokens: Arc<dyn ContainerStore>,
        template: UserDataTemplate,
        agent: AgentEndpoints,
        budget: Budget,
        wait: Duration,
        poll: Duration,
    ) -> Self {
        Self { cloud, store, tokens, template, agent, budget, wait, poll }
    }

    pub fn cloud(&self) -> &Arc<dyn Cloud> {
        &self.cloud
    }

    /// Renders the user data with a fresh agent token for the runner. The token is
    /// stored (as its hash) before the user data leaves this process, so an
    /// instance never boots with a token the API does not know. Every attempt
    /// mints its own; older tokens of the same command stay valid because EC2's
    /// client token may hand back an instance an earlier attempt launched.
    async fn user_data(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<String, HandlerError> {
        let t = Target::of(cmd, runner)?;
        let token = mint_token(TokenKind::Agent);
        self.tokens
            .insert_agent_token(token.token_id, &runner.runner_id, cmd.command_id, &token.secret_hash)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        self.template
            .render(&UserDataContext {
                runner_id: &runner.runner_id,
                runner_name: &t.runner_name,
                image_name: &t.image_name,
                s3_output: &t.s3_output,
                command_id: &cmd.command_id.to_string(),
                api_url: self.agent.api_url.as_deref().unwrap_or(""),
                queue_url: self.agent.queue_url.as_deref().unwrap_or(""),
                agent_token: token.text.expose_secret(),
            })
            .map_err(|e| HandlerError::permanent(e.to_string()))
    }

    /// The instance now boots with user data this command rendered: tokens other
    /// commands minted for the runner are no longer in use anywhere.
    async fn retire_tokens(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<(), HandlerError> {
        self.tokens
            .revoke_agent_tokens(&runner.runner_id, Some(cmd.command_id))
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        Ok(())
    }

    /// Takes the budget for `op` (or finds the command's reservation for it),
    /// then makes the call. No token: the command waits for one, holding no
    /// worker. Throttled by EC2 all the same: the bucket's refill shrinks and the
    /// command looks again shortly; neither spends an attempt.
    async fn call<T, F, Fut>(&self, cmd: &CommandRecord, op: Op, call: F) -> Flow<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, CloudError>>,
    {
        self.pay(cmd, &[(op, 1.0)]).await?;
        if op.mutates() {
            fence::confirm().await?;
        }
        match call().await {
            Err(e) if e.is_throttled() => {
                tracing::warn!(op = op.as_str(), "EC2 throttled a call the budget allowed; slowing down");
                self.budget.throttled(op).await;
                Err(Halt::Wait(Wait {
                    waiting_for: format!("EC2 throttling ({})", op.as_str()),
                    after: throttle_pause(),
                    runner: None,
                    reservation: None,
                }))
            }
            other => other.map_err(Halt::from),
        }
    }

    /// Pays every bucket a call needs (RunInstances needs two). If any of them
    /// makes the command wait, it waits for the latest, keeping the reservation
    /// of the first, which is what it will spend when it is back.
    async fn pay(&self, cmd: &CommandRecord, bills: &[(Op, f64)]) -> Flow<()> {
        let held = reservation_of(cmd);
        if let (Some(r), Some((first, _))) = (held, bills.first())
            && r.op == *first
        {
            // Paid for while it waited: only its turn must have come.
            let Some(early) = self.budget.due(&r, priority_of(cmd)).await.map_err(HandlerError::retryable)? else {
                return self.paced(r).await;
            };
            return Err(hold(r, early));
        }
        let priority = priority_of(cmd);
        let mut latest: Option<(Duration, Option<Reservation>)> = None;
        for (i, (op, tokens)) in bills.iter().enumerate() {
            let spent = self.budget.spend(*op, *tokens, priority).await.map_err(HandlerError::retryable)?;
            if let Spend::Later { after, reserved } = spent {
                let reservation = if i == 0 {
                    reserved.map(|(at, ticket)| Reservation { op: *op, at, ticket: Some(ticket) })
                } else {
                    None
                };
                let keep = latest.and_then(|(_, r)| r).or(reservation);
                let after = latest.map_or(after, |(a, _)| a.max(after));
                latest = Some((after, keep));
            }
        }
        match latest {
            None => match bills.first() {
                // Paid now; held by time alone should the pace make it wait.
                Some((op, _)) => self.paced(Reservation { op: *op, at: Utc::now(), ticket: None }).await,
                None => Ok(()),
            },
            Some((after, reservation)) => {
                let what = bills.first().map_or("EC2", |(op, _)| op.as_str());
                Err(Halt::Wait(Wait {
                    waiting_for: format!("the EC2 request budget ({what})"),
                    after,
                    runner: None,
                    reservation: reservation.map(|r| Reservation { at: Utc::now() + chrono::Duration::from_std(after).unwrap_or_default(), ..r }),
                }))
            }
        }
    }

    /// Makes a paid-for call wait for its pace (see [`Budget::pace`]), still
    /// holding `paid`.
    async fn paced(&self, paid: Reservation) -> Flow<()> {
        match self.budget.pace(paid.op).await.map_err(HandlerError::retryable)? {
            Some(after) => Err(hold(paid, after)),
            None => Ok(()),
        }
    }

    /// The runner's live instances: the recorded one first, then any other carrying
    /// the runner's tag (launched by an attempt whose result was never recorded).
    /// Extra instances beyond the first are terminated: a runner has one instance.
    async fn live_instance(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Option<InstanceInfo>> {
        let mut found =
            self.call(cmd, Op::DescribeInstances, || self.cloud.find_runner_instances(&runner.runner_id)).await?;
        if let Some(recorded) = &runner.instance_id
            && !found.iter().any(|i| &i.instance_id == recorded)
            && let Some(i) = self.call(cmd, Op::DescribeInstances, || self.cloud.describe(recorded)).await?
            && !i.state.is_gone()
        {
            found.push(i);
        }
        found.sort_by_key(|i| Some(&i.instance_id) != runner.instance_id.as_ref());
        let mut found = found.into_iter();
        let primary = found.next();
        for extra in found {
            tracing::warn!(instance_id = %extra.instance_id, runner_id = %runner.runner_id,
                command_id = ?extra.tags.get(TAG_COMMAND_ID), "terminating a second instance of one runner");
            self.call(cmd, Op::TerminateInstances, || self.cloud.terminate(&extra.instance_id)).await?;
        }
        Ok(primary)
    }

    /// Launches the runner's instance: its type and purchase option first,
    /// then, on a capacity error, on-demand instead of spot (for
    /// `spot-or-on-demand`) and the fallback types in order. Each try is a
    /// RunInstances of its own, paid for in the budget, with a client token of
    /// its own; the instance that launched is recorded with what it is billed as.
    async fn launch(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Launched> {
        let t = Target::of(cmd, runner)?;
        let mut types = vec![t.instance_type.clone()];
        types.extend(runner.fallback_instance_types.iter().filter(|f| **f != t.instance_type).cloned());
        let markets: &[bool] = match runner.purchase_option {
            PurchaseOption::OnDemand => &[false],
            PurchaseOption::Spot => &[true],
            PurchaseOption::SpotOrOnDemand => &[true, false],
        };
        let mut fallbacks = Vec::new();
        let mut tries = 0;
        for instance_type in &types {
            for &spot in markets {
                // Paid for before the agent token is minted: a command waiting
                // for the budget leaves no token behind.
                self.pay(cmd, &[(Op::RunInstances, 1.0), (Op::RunInstancesResource, 1.0)]).await?;
                let spec = LaunchSpec {
                    runner_id: runner.runner_id.clone(),
                    runner_name: t.runner_name.clone(),
                    command_id: cmd.command_id.to_string(),
                    instance_type: instance_type.clone(),
                    user_data: self.user_data(cmd, runner).await?,
                    client_token: match tries {
                        0 => format!("geonex-{}", cmd.command_id),
                        n => format!("geonex-{}-{n}", cmd.command_id),
                    },
                    spot,
                };
                tries += 1;
                let purchase = if spot { PurchaseOption::Spot } else { PurchaseOption::OnDemand };
                fence::confirm().await?;
                let info = match self.cloud.launch(&spec).await {
                    Ok(info) => info,
                    Err(e) if e.is_throttled() => {
                        self.budget.throttled(Op::RunInstances).await;
                        return Err(Halt::Wait(Wait {
                            waiting_for: "EC2 throttling (RunInstances)".into(),
                            after: throttle_pause(),
                            runner: None,
                            reservation: None,
                        }));
                    }
                    Err(e) if e.is_capacity() => {
                        tracing::warn!(instance_type = %instance_type, purchase = purchase.as_str(), error = %e, "no capacity; trying the next option");
                        fallbacks.push(json!({ "instance_type": instance_type, "purchase_option": purchase, "error": e.message }));
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                failpoint::hit("after-run-instances").await;
                let obs = RunnerObservation { instance_id: Some(info.instance_id.clone()), observed: info.state };
                self.store
                    .record_launch(&runner.runner_id, &obs, instance_type, purchase)
                    .await
                    .map_err(|e| HandlerError::retryable(e.to_string()))?;
                tracing::info!(instance_id = %info.instance_id, instance_type = %instance_type, purchase = purchase.as_str(), "instance launched");
                return Ok(Launched { info, instance_type: instance_type.clone(), purchase, fallbacks });
            }
        }
        // Every type and option is short: a capacity error, retried with backoff.
        let tried: Vec<String> = fallbacks.iter().map(|f| f["error"].as_str().unwrap_or("").to_owned()).collect();
        Err(HandlerError::retryable(format!("no capacity for any option: {}", tried.join("; "))).into())
    }

    /// Looks again later: the instance must get somewhere first. A command that
    /// has waited longer than the instance wait limit fails instead (and is
    /// retried as any failure is).
    fn wait(&self, cmd: &CommandRecord, waiting_for: String, progress: Option<RunnerObservation>) -> Flow<Step> {
        let waited = cmd.started_at.map(|t| Utc::now() - t).unwrap_or_default();
        if waited.to_std().unwrap_or_default() > self.wait {
            return Err(HandlerError::retryable(format!("gave up after {:?}: {waiting_for}", self.wait)).into());
        }
        Err(Halt::Wait(Wait { waiting_for, after: self.poll, runner: progress, reservation: None }))
    }

    async fn start(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Step> {
        // A runner never launched, on this command's first attempt, has no
        // instance to find: an attempt that reached RunInstances and then lost
        // its result makes the next one a second attempt (the claim counts it),
        // and that one looks. Not looking saves a DescribeInstances per start,
        // which a burst of starts would otherwise spend the Describe budget on.
        // (An instance left by an earlier command of the runner that died
        // unrecorded shows as an orphan in the reconciliation sweep.)
        let never_launched =
            cmd.attempts <= 1 && runner.instance_id.is_none() && runner.observed_state == ObservedState::Requested;
        let existing = if never_launched { None } else { self.live_instance(cmd, runner).await? };
        let Some(i) = existing else {
            let l = self.launch(cmd, runner).await?;
            self.retire_tokens(cmd, runner).await?;
            return Ok(done(&l.info.instance_id, l.info.state, l.result(json!({}))));
        };
        match i.state {
            ObservedState::Stopped => {
                self.call(cmd, Op::StartInstances, || self.cloud.start(&i.instance_id)).await?;
                Ok(done(&i.instance_id, ObservedState::Pending, json!({ "instance_id": i.instance_id, "started": true })))
            }
            ObservedState::Stopping => {
                let progress = observation(&i.instance_id, i.state);
                self.wait(cmd, format!("instance {} to stop before starting it again", i.instance_id), Some(progress))
            }
            state => Ok(done(&i.instance_id, state, json!({ "instance_id": i.instance_id, "adopted": true, "state": state }))),
        }
    }

    /// Stop, wait for stopped, new user data, start: each step runs when the
    /// instance allows it, and the command holds no worker in between.
    async fn restart(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Step> {
        let Some(i) = self.live_instance(cmd, runner).await? else {
            // Terminated (or never launched): a fresh instance with the new parameters.
            let l = self.launch(cmd, runner).await?;
            self.retire_tokens(cmd, runner).await?;
            return Ok(done(&l.info.instance_id, l.info.state, l.result(json!({ "replaced": runner.instance_id }))));
        };
        let id = &i.instance_id;
        match i.state {
            ObservedState::Running => {
                self.call(cmd, Op::StopInstances, || self.cloud.stop(id)).await?;
                self.wait(cmd, format!("instance {id} to stop before restarting it"), Some(observation(id, ObservedState::Stopping)))
            }
            ObservedState::Pending => self.wait(cmd, format!("instance {id} to finish booting before restarting it"), None),
            ObservedState::Stopping => {
                self.wait(cmd, format!("instance {id} to stop before restarting it"), Some(observation(id, i.state)))
            }
            _ => {
                // Both calls are paid before the token is minted.
                self.pay(cmd, &[(Op::StartInstances, 1.0), (Op::ModifyInstanceAttribute, 1.0)]).await?;
                let user_data = self.user_data(cmd, runner).await?;
                fence::confirm().await?;
                self.cloud.set_user_data(id, &user_data).await?;
                self.retire_tokens(cmd, runner).await?;
                self.cloud.start(id).await?;
                Ok(done(id, ObservedState::Pending, json!({ "instance_id": id, "restarted": true })))
            }
        }
    }

    async fn stop(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Step> {
        let Some(i) = self.live_instance(cmd, runner).await? else {
            let note = json!({ "instance_id": null, "note": "runner has no live instance" });
            return Ok(Step::Done(Outcome { result: note, runner: Some(RunnerObservation { instance_id: None, observed: no_instance_state(runner) }) }));
        };
        let id = &i.instance_id;
        match i.state {
            ObservedState::Stopping | ObservedState::Stopped => Ok(done(id, i.state, json!({ "instance_id": id, "state": i.state }))),
            _ => match self.call(cmd, Op::StopInstances, || self.cloud.stop(id)).await {
                Ok(()) => Ok(done(id, ObservedState::Stopping, json!({ "instance_id": id, "stopping": true }))),
                // EC2 refuses to stop an instance that is still pending: look again once it runs.
                Err(Halt::Fail(e)) if e.message.contains("IncorrectInstanceState") && i.state == ObservedState::Pending => {
                    self.wait(cmd, format!("instance {id} to finish booting before stopping it"), None)
                }
                Err(halt) => Err(halt),
            },
        }
    }

    async fn delete(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Flow<Step> {
        let Some(i) = self.live_instance(cmd, runner).await? else {
            let note = json!({ "instance_id": runner.instance_id, "note": "no live instance to terminate" });
            return Ok(Step::Done(Outcome { result: note, runner: Some(RunnerObservation { instance_id: None, observed: ObservedState::Terminated }) }));
        };
        self.call(cmd, Op::TerminateInstances, || self.cloud.terminate(&i.instance_id)).await?;
        // No instance of the runner remains to use any of its tokens.
        self.tokens
            .revoke_agent_tokens(&runner.runner_id, None)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        Ok(done(&i.instance_id, ObservedState::ShuttingDown, json!({ "instance_id": i.instance_id, "terminating": true })))
    }
}

/// What a launch made, and the options it tried first.
struct Launched {
    info: InstanceInfo,
    instance_type: String,
    purchase: PurchaseOption,
    fallbacks: Vec<serde_json::Value>,
}

impl Launched {
    /// The command's result: what was launched, and why not what was asked.
    fn result(&self, extra: serde_json::Value) -> serde_json::Value {
        let mut r = json!({
            "instance_id": self.info.instance_id,
            "launched": true,
            "state": self.info.state,
            "instance_type": self.instance_type,
            "purchase_option": self.purchase,
        });
        if !self.fallbacks.is_empty() {
            r["fell_back_from"] = json!(self.fallbacks);
        }
        if let (Some(r), serde_json::Value::Object(extra)) = (r.as_object_mut(), extra) {
            r.extend(extra);
        }
        r
    }
}

/// Stops and deletes save money: they come first within the budget.
fn priority_of(cmd: &CommandRecord) -> Priority {
    match cmd.action {
        Action::StopRunner | Action::DeleteRunner => Priority::High,
        _ => Priority::Normal,
    }
}

/// Waits `after` for the budget, still holding what `paid` paid for.
fn hold(paid: Reservation, after: Duration) -> Halt {
    Halt::Wait(Wait {
        waiting_for: format!("the EC2 request budget ({})", paid.op.as_str()),
        after,
        runner: None,
        reservation: Some(Reservation { at: Utc::now() + chrono::Duration::from_std(after).unwrap_or_default(), ..paid }),
    })
}

/// The EC2 call the command paid for while it waited, if any.
fn reservation_of(cmd: &CommandRecord) -> Option<Reservation> {
    Some(Reservation { op: Op::parse(cmd.budget_op.as_deref()?)?, at: cmd.budget_at?, ticket: cmd.budget_ticket })
}

#[async_trait]
impl Handler for RunnerHandler {
    fn actions(&self) -> &'static [Action] {
        &[Action::StartRunner, Action::RestartRunner, Action::StopRunner, Action::DeleteRunner]
    }

    async fn handle(&self, cmd: &CommandRecord, runner: Option<&RunnerRecord>) -> Result<Step, HandlerError> {
        let Some(runner) = runner else {
            return Err(HandlerError::permanent("the command's runner does not exist"));
        };
        let flow = match cmd.action {
            Action::StartRunner => self.start(cmd, runner).await,
            Action::RestartRunner => self.restart(cmd, runner).await,
            Action::StopRunner => self.stop(cmd, runner).await,
            Action::DeleteRunner => self.delete(cmd, runner).await,
            other => Err(HandlerError::permanent(format!("{other} is not a runner action")).into()),
        };
        match flow {
            Ok(step) => Ok(step),
            Err(Halt::Wait(wait)) => Ok(Step::Wait(wait)),
            Err(Halt::Fail(e)) => Err(e),
        }
    }

    /// A start that never launched anything leaves a runner that failed.
    fn observed_when_dead(&self, cmd: &CommandRecord, runner: Option<&RunnerRecord>) -> Option<ObservedState> {
        match (runner, cmd.action) {
            (Some(r), Action::StartRunner) if r.instance_id.is_none() => Some(ObservedState::Failed),
            _ => None,
        }
    }
}

fn observation(instance_id: &str, observed: ObservedState) -> RunnerObservation {
    RunnerObservation { instance_id: Some(instance_id.to_owned()), observed }
}

/// The command succeeds with the instance in `observed`; the instance observer
/// follows it from there (pending → running, stopping → stopped, …).
fn done(instance_id: &str, observed: ObservedState, result: serde_json::Value) -> Step {
    Step::Done(Outcome { result, runner: Some(observation(instance_id, observed)) })
}

fn no_instance_state(runner: &RunnerRecord) -> ObservedState {
    match runner.observed_state {
        ObservedState::Requested | ObservedState::Failed => runner.observed_state,
        _ => ObservedState::Terminated,
    }
}

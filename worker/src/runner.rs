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

use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::auth::{TokenKind, mint_token};
use geonex_shared::store::containers::ContainerStore;
use geonex_shared::store::{CommandRecord, RunnerObservation, RunnerParams, RunnerRecord, Store};
use secrecy::ExposeSecret;
use serde_json::json;

use async_trait::async_trait;

use crate::cloud::{Cloud, InstanceInfo, LaunchSpec, TAG_COMMAND_ID};
use crate::handler::{Handler, Outcome, Step, Wait};
use crate::failpoint;
use crate::retry::HandlerError;
use crate::user_data::{UserDataContext, UserDataTemplate};

pub struct RunnerHandler {
    cloud: Arc<dyn Cloud>,
    store: Arc<dyn Store>,
    tokens: Arc<dyn ContainerStore>,
    template: UserDataTemplate,
    agent: AgentEndpoints,
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

impl RunnerHandler {
    pub fn new(
        cloud: Arc<dyn Cloud>,
        store: Arc<dyn Store>,
        tokens: Arc<dyn ContainerStore>,
        template: UserDataTemplate,
        agent: AgentEndpoints,
        wait: Duration,
        poll: Duration,
    ) -> Self {
        Self { cloud, store, tokens, template, agent, wait, poll }
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

    /// The runner's live instances: the recorded one first, then any other carrying
    /// the runner's tag (launched by an attempt whose result was never recorded).
    /// Extra instances beyond the first are terminated: a runner has one instance.
    async fn live_instance(&self, runner: &RunnerRecord) -> Result<Option<InstanceInfo>, HandlerError> {
        let mut found = self.cloud.find_runner_instances(&runner.runner_id).await?;
        if let Some(recorded) = &runner.instance_id
            && !found.iter().any(|i| &i.instance_id == recorded)
            && let Some(i) = self.cloud.describe(recorded).await?
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
            self.cloud.terminate(&extra.instance_id).await?;
        }
        Ok(primary)
    }

    async fn launch(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<InstanceInfo, HandlerError> {
        let t = Target::of(cmd, runner)?;
        let spec = LaunchSpec {
            runner_id: runner.runner_id.clone(),
            runner_name: t.runner_name,
            command_id: cmd.command_id.to_string(),
            instance_type: t.instance_type,
            user_data: self.user_data(cmd, runner).await?,
            client_token: format!("geonex-{}", cmd.command_id),
        };
        let launched = self.cloud.launch(&spec).await?;
        failpoint::hit("after-run-instances").await;
        self.store
            .record_instance(
                &runner.runner_id,
                &RunnerObservation { instance_id: Some(launched.instance_id.clone()), observed: launched.state },
            )
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        tracing::info!(instance_id = %launched.instance_id, "instance launched");
        Ok(launched)
    }

    /// Looks again later: the instance must get somewhere first. A command that
    /// has waited longer than the instance wait limit fails instead (and is
    /// retried as any failure is).
    fn wait(&self, cmd: &CommandRecord, waiting_for: String, progress: Option<RunnerObservation>) -> Result<Step, HandlerError> {
        let waited = cmd.started_at.map(|t| chrono::Utc::now() - t).unwrap_or_default();
        if waited.to_std().unwrap_or_default() > self.wait {
            return Err(HandlerError::retryable(format!("gave up after {:?}: {waiting_for}", self.wait)));
        }
        Ok(Step::Wait(Wait { waiting_for, after: self.poll, runner: progress }))
    }

    async fn start(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<Step, HandlerError> {
        let Some(i) = self.live_instance(runner).await? else {
            let i = self.launch(cmd, runner).await?;
            self.retire_tokens(cmd, runner).await?;
            return Ok(done(&i.instance_id, i.state, json!({ "instance_id": i.instance_id, "launched": true, "state": i.state })));
        };
        match i.state {
            ObservedState::Stopped => {
                self.cloud.start(&i.instance_id).await?;
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
    async fn restart(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<Step, HandlerError> {
        let Some(i) = self.live_instance(runner).await? else {
            // Terminated (or never launched): a fresh instance with the new parameters.
            let i = self.launch(cmd, runner).await?;
            self.retire_tokens(cmd, runner).await?;
            let result = json!({ "instance_id": i.instance_id, "launched": true, "replaced": runner.instance_id });
            return Ok(done(&i.instance_id, i.state, result));
        };
        let id = &i.instance_id;
        match i.state {
            ObservedState::Running => {
                self.cloud.stop(id).await?;
                self.wait(cmd, format!("instance {id} to stop before restarting it"), Some(observation(id, ObservedState::Stopping)))
            }
            ObservedState::Pending => self.wait(cmd, format!("instance {id} to finish booting before restarting it"), None),
            ObservedState::Stopping => {
                self.wait(cmd, format!("instance {id} to stop before restarting it"), Some(observation(id, i.state)))
            }
            _ => {
                let user_data = self.user_data(cmd, runner).await?;
                self.cloud.set_user_data(id, &user_data).await?;
                self.retire_tokens(cmd, runner).await?;
                self.cloud.start(id).await?;
                Ok(done(id, ObservedState::Pending, json!({ "instance_id": id, "restarted": true })))
            }
        }
    }

    async fn stop(&self, cmd: &CommandRecord, runner: &RunnerRecord) -> Result<Step, HandlerError> {
        let Some(i) = self.live_instance(runner).await? else {
            let note = json!({ "instance_id": null, "note": "runner has no live instance" });
            return Ok(Step::Done(Outcome { result: note, runner: Some(RunnerObservation { instance_id: None, observed: no_instance_state(runner) }) }));
        };
        let id = &i.instance_id;
        match i.state {
            ObservedState::Stopping | ObservedState::Stopped => Ok(done(id, i.state, json!({ "instance_id": id, "state": i.state }))),
            _ => match self.cloud.stop(id).await {
                Ok(()) => Ok(done(id, ObservedState::Stopping, json!({ "instance_id": id, "stopping": true }))),
                // EC2 refuses to stop an instance that is still pending: look again once it runs.
                Err(e) if e.is_incorrect_state() && i.state == ObservedState::Pending => {
                    self.wait(cmd, format!("instance {id} to finish booting before stopping it"), None)
                }
                Err(e) => Err(e.into()),
            },
        }
    }

    async fn delete(&self, runner: &RunnerRecord) -> Result<Step, HandlerError> {
        let Some(i) = self.live_instance(runner).await? else {
            let note = json!({ "instance_id": runner.instance_id, "note": "no live instance to terminate" });
            return Ok(Step::Done(Outcome { result: note, runner: Some(RunnerObservation { instance_id: None, observed: ObservedState::Terminated }) }));
        };
        self.cloud.terminate(&i.instance_id).await?;
        // No instance of the runner remains to use any of its tokens.
        self.tokens
            .revoke_agent_tokens(&runner.runner_id, None)
            .await
            .map_err(|e| HandlerError::retryable(e.to_string()))?;
        Ok(done(&i.instance_id, ObservedState::ShuttingDown, json!({ "instance_id": i.instance_id, "terminating": true })))
    }
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
        match cmd.action {
            Action::StartRunner => self.start(cmd, runner).await,
            Action::RestartRunner => self.restart(cmd, runner).await,
            Action::StopRunner => self.stop(cmd, runner).await,
            Action::DeleteRunner => self.delete(runner).await,
            other => Err(HandlerError::permanent(format!("{other} is not a runner action"))),
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

//! Spot interruptions: EC2 takes a spot instance back by terminating it. A spot
//! runner that should be running gets a new instance by an ordinary start
//! command (visible in `/describe-commands`, one per interrupted instance),
//! whichever path saw the instance go: the observer, an EC2 event, the sweep.

use geonex_shared::domain::{DesiredState, ImageRef, InstanceType, ObservedState, RunnerId, RunnerName, S3Uri};
use geonex_shared::store::{NewRunnerCommand, RunnerOptions, RunnerRecord, RunnerRequest, Store};
use uuid::Uuid;

/// Who asks for the relaunch, in the command's `requested_by`.
pub const REQUESTER: &str = "system:spot-relaunch";

/// Relaunches interrupted spot runners for whoever sees their instances go.
#[derive(Clone)]
pub struct Relauncher {
    store: std::sync::Arc<dyn Store>,
    max_attempts: i32,
}

impl Relauncher {
    pub fn new(store: std::sync::Arc<dyn Store>, max_attempts: i32) -> Self {
        Self { store, max_attempts }
    }

    /// After `runner`'s instance was seen in `state`.
    pub async fn after(&self, runner: &RunnerRecord, instance_id: &str, state: ObservedState) {
        if interrupted(runner, state) {
            relaunch(self.store.as_ref(), runner, instance_id, self.max_attempts).await;
        }
    }

    /// After an event moved the runner `runner_id` to `state`.
    pub async fn after_event(&self, runner_id: &str, instance_id: &str, state: ObservedState) {
        match self.store.get_runner(runner_id).await {
            Ok(Some(r)) => self.after(&r, instance_id, state).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(runner_id, error = %e, "cannot read the runner of an EC2 event"),
        }
    }
}

/// Whether a runner whose instance just became `state` needs a new one.
pub fn interrupted(runner: &RunnerRecord, state: ObservedState) -> bool {
    state.is_gone()
        && runner.desired_state == DesiredState::Running
        && runner.launched_purchase_option.unwrap_or(runner.purchase_option).is_spot()
}

/// Submits the start that relaunches an interrupted spot runner; the
/// idempotency key makes it one per interrupted instance however many paths
/// report it.
pub async fn relaunch(store: &dyn Store, runner: &RunnerRecord, instance_id: &str, max_attempts: i32) {
    let request = (|| -> Result<RunnerRequest, String> {
        let fallback = runner
            .fallback_instance_types
            .iter()
            .map(|t| InstanceType::parse(t).map_err(|e| e.message))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RunnerRequest::Start {
            instance_type: InstanceType::parse(&runner.instance_type).map_err(|e| e.message)?,
            image_name: ImageRef::parse(&runner.image_name).map_err(|e| e.message)?,
            s3_output: S3Uri::parse(&runner.s3_output).map_err(|e| e.message)?,
            runner_name: RunnerName::parse(&runner.runner_name).map_err(|e| e.message)?,
            options: RunnerOptions {
                purchase_option: runner.purchase_option,
                fallback_instance_types: fallback,
                idle_stop_after_secs: runner.idle_stop_after_secs,
            },
        })
    })();
    let (request, runner_id) = match (request, RunnerId::parse(&runner.runner_id)) {
        (Ok(r), Ok(id)) => (r, id),
        (Err(e), _) | (_, Err(geonex_shared::error::FieldError { message: e, .. })) => {
            tracing::error!(runner_id = %runner.runner_id, error = %e, "cannot relaunch an interrupted spot runner");
            return;
        }
    };
    let cmd = NewRunnerCommand {
        command_id: Uuid::now_v7(),
        runner_id,
        request,
        requested_by: REQUESTER.into(),
        idempotency_key: Some(format!("relaunch-{instance_id}")),
        trace_id: format!("spot-{instance_id}"),
        max_attempts,
    };
    match store.submit_runner_command(cmd).await {
        Ok(s) if s.created => {
            tracing::warn!(runner_id = %runner.runner_id, instance_id, command_id = %s.command.command_id, "spot instance interrupted; relaunching");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(runner_id = %runner.runner_id, error = %e, "could not relaunch an interrupted spot runner"),
    }
}

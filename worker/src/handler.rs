//! The handler port: what a worker runs for each kind of command. The consumer
//! owns claiming, leases, retries and acknowledgement; a handler only does the
//! work and says how it went.

use async_trait::async_trait;
use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::store::{CommandRecord, RunnerObservation, RunnerRecord};

use crate::retry::HandlerError;

/// A successful command's result.
pub struct Outcome {
    /// Stored as the command's `result`.
    pub result: serde_json::Value,
    /// For runner commands: the runner's instance as the cloud now shows it.
    pub runner: Option<RunnerObservation>,
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The actions this handler carries out.
    fn actions(&self) -> &'static [Action];

    /// Carries out one command. `runner` is the command's runner, if it names one.
    /// Must be idempotent: it may run again after a crash at any point.
    async fn handle(&self, command: &CommandRecord, runner: Option<&RunnerRecord>) -> Result<Outcome, HandlerError>;

    /// What the command's runner shows once the command is dead (it failed for
    /// good or ran out of attempts); None leaves its observed state alone.
    fn observed_when_dead(&self, _command: &CommandRecord, _runner: Option<&RunnerRecord>) -> Option<ObservedState> {
        None
    }
}

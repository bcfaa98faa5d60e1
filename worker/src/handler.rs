//! The handler port: what a worker runs for each kind of command. The consumer
//! owns claiming, leases, retries and acknowledgement; a handler only does the
//! work and says how it went.

use std::time::Duration;

use async_trait::async_trait;
use geonex_shared::domain::{Action, ObservedState};
use geonex_shared::store::{CommandRecord, RunnerObservation, RunnerRecord};

use crate::budget::Reservation;
use crate::retry::HandlerError;

/// A successful command's result.
pub struct Outcome {
    /// Stored as the command's `result`.
    pub result: serde_json::Value,
    /// For runner commands: the runner's instance as the cloud now shows it.
    pub runner: Option<RunnerObservation>,
}

/// How a command's handling ended, short of an error.
pub enum Step {
    /// Finished: the command succeeds.
    Done(Outcome),
    /// Its next step depends on something outside it (an instance still
    /// stopping): the command releases its worker and is handled again later,
    /// without spending an attempt.
    Wait(Wait),
}

pub struct Wait {
    /// What it waits for, shown with the command.
    pub waiting_for: String,
    /// When to look again.
    pub after: Duration,
    /// Progress to record on the runner meanwhile (a stop it issued).
    pub runner: Option<RunnerObservation>,
    /// An EC2 call the command paid for in the budget, to make when it is back.
    pub reservation: Option<Reservation>,
}

impl From<Outcome> for Step {
    fn from(o: Outcome) -> Self {
        Step::Done(o)
    }
}

#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The actions this handler carries out.
    fn actions(&self) -> &'static [Action];

    /// Carries out one command. `runner` is the command's runner, if it names one.
    /// Must be idempotent: it may run again after a crash at any point.
    async fn handle(&self, command: &CommandRecord, runner: Option<&RunnerRecord>) -> Result<Step, HandlerError>;

    /// What the command's runner shows once the command is dead (it failed for
    /// good or ran out of attempts); None leaves its observed state alone.
    fn observed_when_dead(&self, _command: &CommandRecord, _runner: Option<&RunnerRecord>) -> Option<ObservedState> {
        None
    }
}

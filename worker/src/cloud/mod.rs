//! The cloud port: the few EC2 operations a runner needs. `ec2.rs` is the AWS SDK
//! adapter (its endpoint can point at an emulator); `sim.rs` a simulated cloud,
//! whose running instances run their agents in this process (`sim_agents.rs`).
//!
//! Instances carry the tags `geonex:runner-id`, `geonex:runner-name`,
//! `geonex:command-id` and `Name`, so the worker can find what an earlier attempt
//! launched before launching again.

pub mod ec2;
pub mod sim;
pub mod sim_agents;
pub mod sim_ec2api;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use geonex_shared::domain::ObservedState;

use crate::retry::{ErrorClass, HandlerError};

pub const TAG_RUNNER_ID: &str = "geonex:runner-id";
pub const TAG_RUNNER_NAME: &str = "geonex:runner-name";
pub const TAG_COMMAND_ID: &str = "geonex:command-id";
/// Which GeoNEX deployment launched an instance: sweeps and the orphan reaper only
/// ever look at their own fleet, so two deployments can share an AWS account.
pub const TAG_FLEET: &str = "geonex:fleet";

/// Instance ids one batched DescribeInstances request may name.
pub const DESCRIBE_BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub runner_id: String,
    pub runner_name: String,
    pub command_id: String,
    pub instance_type: String,
    /// The script itself (adapters encode it as their API requires).
    pub user_data: String,
    /// Makes the launch idempotent where the cloud honours it.
    pub client_token: String,
    /// A spot instance (terminated, not stopped, when EC2 interrupts it).
    pub spot: bool,
}

#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub state: ObservedState,
    pub tags: HashMap<String, String>,
    pub launched_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CloudError {
    pub class: ErrorClass,
    /// The EC2 error code, when the cloud answered with one.
    pub code: Option<String>,
    pub message: String,
}

impl CloudError {
    pub fn new(class: ErrorClass, code: Option<&str>, message: impl Into<String>) -> Self {
        Self { class, code: code.map(str::to_owned), message: message.into() }
    }

    fn code_is(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }

    /// The instance does not exist (any more).
    pub fn is_not_found(&self) -> bool {
        self.code_is("InvalidInstanceID.NotFound")
    }

    /// The instance is not in a state that allows the call (stopping a pending
    /// instance): worth trying again once it has moved on.
    pub fn is_incorrect_state(&self) -> bool {
        self.code_is("IncorrectInstanceState") || self.code_is("IncorrectState")
    }

    /// EC2 has no capacity for the type or market asked: another type or
    /// purchase option may launch.
    pub fn is_capacity(&self) -> bool {
        [
            "InsufficientInstanceCapacity",
            "InsufficientHostCapacity",
            "InsufficientCapacity",
            "SpotMaxPriceTooLow",
            "MaxSpotInstanceCountExceeded",
        ]
        .iter()
        .any(|c| self.code_is(c))
    }

    /// EC2 refused the call for the account's request rate.
    pub fn is_throttled(&self) -> bool {
        self.code_is("RequestLimitExceeded") || self.code_is("Throttling") || self.code_is("ThrottlingException")
    }
}

impl From<CloudError> for HandlerError {
    fn from(e: CloudError) -> Self {
        HandlerError { class: e.class, message: e.message }
    }
}

#[async_trait]
pub trait Cloud: Send + Sync + 'static {
    /// Instances of this fleet tagged with this runner id that are not terminated.
    async fn find_runner_instances(&self, runner_id: &str) -> Result<Vec<InstanceInfo>, CloudError>;
    /// Every instance of this deployment's fleet that is not terminated.
    async fn list_fleet_instances(&self) -> Result<Vec<InstanceInfo>, CloudError>;
    /// One instance, or `None` if the cloud does not know it.
    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, CloudError>;
    /// The instances among `instance_ids` the cloud knows (at most
    /// [`DESCRIBE_BATCH`] per call: one DescribeInstances request each).
    async fn describe_many(&self, instance_ids: &[String]) -> Result<Vec<InstanceInfo>, CloudError>;
    async fn launch(&self, spec: &LaunchSpec) -> Result<InstanceInfo, CloudError>;
    async fn start(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn stop(&self, instance_id: &str) -> Result<(), CloudError>;
    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError>;
    /// Replaces the user data of a stopped instance.
    async fn set_user_data(&self, instance_id: &str, user_data: &str) -> Result<(), CloudError>;
    /// What the adapter is, for logs and `/readyz`.
    fn label(&self) -> String;
    /// The simulated cloud, when this adapter is one: its instances' agents run
    /// in this process, and startup has to run them ([`sim_agents::SimAgents`]).
    fn simulated(self: Arc<Self>) -> Option<Arc<sim::SimCloud>> {
        None
    }
}

/// Counts one EC2 request by operation and outcome: `ok`, EC2's error code,
/// or how the request failed without one (`timeout`, `dispatch_failure`, …).
/// The simulated cloud counts its calls the same way.
pub(crate) fn count_request(op: &'static str, code: &str) {
    ::metrics::counter!(geonex_shared::metrics::EC2_REQUESTS, "operation" => op, "code" => code.to_owned()).increment(1);
}

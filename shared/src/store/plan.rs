//! Whether a runner command fits the runner's current state, and what it changes.
//! Pure logic, called by store adapters inside their transaction.

use crate::domain::DesiredState;
use crate::store::commands::{RunnerOptions, RunnerRecord, RunnerRequest, SubmitError};

/// The runner row a command writes when it is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerChange {
    /// A new runner, nothing launched yet.
    Create {
        runner_name: String,
        instance_type: String,
        image_name: String,
        s3_output: String,
        options: RunnerOptions,
    },
    /// An existing runner gets a new desired state and, for restarts, new parameters.
    Update {
        desired: DesiredState,
        runner_name: Option<String>,
        image_name: Option<String>,
        s3_output: Option<String>,
    },
}

pub fn plan_runner_command(
    runner_id: &str,
    existing: Option<&RunnerRecord>,
    request: &RunnerRequest,
) -> Result<RunnerChange, SubmitError> {
    let Some(runner) = existing else {
        return match request {
            RunnerRequest::Start { instance_type, image_name, s3_output, runner_name, options } => {
                Ok(RunnerChange::Create {
                    runner_name: runner_name.to_string(),
                    instance_type: instance_type.to_string(),
                    image_name: image_name.to_string(),
                    s3_output: s3_output.to_string(),
                    options: options.clone(),
                })
            }
            _ => Err(SubmitError::RunnerNotFound(runner_id.to_owned())),
        };
    };
    if runner.desired_state == DesiredState::Deleted {
        return Err(SubmitError::Conflict {
            code: "runner_deleted",
            message: format!("runner {runner_id} was deleted; choose a new runner_id"),
            field: Some("runner_id"),
        });
    }
    let check_instance = |instance_id: &str| -> Result<(), SubmitError> {
        // A runner whose launch has not happened yet (or failed) has no instance:
        // the command then applies to whatever instance the runner has when it runs.
        match runner.instance_id.as_deref() {
            Some(current) if current != instance_id => Err(SubmitError::Conflict {
                code: "instance_mismatch",
                message: format!("instance {instance_id} does not belong to runner {runner_id} (its instance is {current})"),
                field: Some("instance_id"),
            }),
            _ => Ok(()),
        }
    };
    match request {
        RunnerRequest::Start { instance_type, image_name, s3_output, runner_name, options } => {
            let fallbacks: Vec<String> = options.fallback_instance_types.iter().map(|t| t.to_string()).collect();
            let same = runner.instance_type == instance_type.as_str()
                && runner.image_name == image_name.as_str()
                && runner.s3_output == s3_output.to_string()
                && runner.purchase_option == options.purchase_option
                && runner.fallback_instance_types == fallbacks
                && runner.idle_stop_after_secs == options.idle_stop_after_secs;
            if !same {
                return Err(SubmitError::Conflict {
                    code: "runner_exists",
                    message: format!(
                        "runner {runner_id} already exists with other parameters; use /restart-runner to change them"
                    ),
                    field: Some("runner_id"),
                });
            }
            Ok(RunnerChange::Update {
                desired: DesiredState::Running,
                runner_name: Some(runner_name.to_string()),
                image_name: None,
                s3_output: None,
            })
        }
        RunnerRequest::Restart { instance_id, image_name, s3_output, runner_name } => {
            check_instance(instance_id.as_str())?;
            Ok(RunnerChange::Update {
                desired: DesiredState::Running,
                runner_name: Some(runner_name.to_string()),
                image_name: Some(image_name.to_string()),
                s3_output: Some(s3_output.to_string()),
            })
        }
        RunnerRequest::Stop { instance_id, .. } => {
            check_instance(instance_id.as_str())?;
            if runner.observed_state.is_gone() {
                return Err(SubmitError::Conflict {
                    code: "instance_terminated",
                    message: format!("runner {runner_id}'s instance is terminated; restart it instead"),
                    field: Some("instance_id"),
                });
            }
            Ok(RunnerChange::Update { desired: DesiredState::Stopped, runner_name: None, image_name: None, s3_output: None })
        }
        RunnerRequest::Delete { instance_id, .. } => {
            check_instance(instance_id.as_str())?;
            Ok(RunnerChange::Update { desired: DesiredState::Deleted, runner_name: None, image_name: None, s3_output: None })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::*;
    use chrono::Utc;

    fn runner(instance: Option<&str>, desired: DesiredState) -> RunnerRecord {
        RunnerRecord {
            runner_id: "r1".into(),
            runner_name: "Production".into(),
            instance_type: "m5d.4xlarge".into(),
            image_name: "geonex/fire:1.5".into(),
            s3_output: "s3://geonex/out".into(),
            instance_id: instance.map(String::from),
            desired_state: desired,
            observed_state: ObservedState::Running,
            last_error: None,
            last_heartbeat_at: None,
            observed_at: None,
            owner: None,
            purchase_option: Default::default(),
            fallback_instance_types: Vec::new(),
            idle_stop_after_secs: None,
            launched_instance_type: None,
            launched_purchase_option: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn start(image: &str) -> RunnerRequest {
        RunnerRequest::Start {
            instance_type: InstanceType::parse("m5d.4xlarge").unwrap(),
            image_name: ImageRef::parse(image).unwrap(),
            s3_output: S3Uri::parse("s3://geonex/out").unwrap(),
            runner_name: RunnerName::parse("Production").unwrap(),
            options: Default::default(),
        }
    }

    fn stop(instance: &str) -> RunnerRequest {
        RunnerRequest::Stop { instance_id: InstanceId::parse(instance).unwrap(), runner_name: None, reason: None }
    }

    #[test]
    fn start_creates_a_runner_and_repeats_converge() {
        assert!(matches!(plan_runner_command("r1", None, &start("geonex/fire:1.5")), Ok(RunnerChange::Create { .. })));
        let r = runner(Some("i-0123456789abcdef0"), DesiredState::Running);
        assert!(matches!(
            plan_runner_command("r1", Some(&r), &start("geonex/fire:1.5")),
            Ok(RunnerChange::Update { desired: DesiredState::Running, .. })
        ));
        assert!(matches!(
            plan_runner_command("r1", Some(&r), &start("geonex/fire:2.0")),
            Err(SubmitError::Conflict { code: "runner_exists", .. })
        ));
    }

    #[test]
    fn commands_on_unknown_deleted_or_foreign_instances_are_refused() {
        assert!(matches!(plan_runner_command("r1", None, &stop("i-0123456789abcdef0")), Err(SubmitError::RunnerNotFound(_))));
        let deleted = runner(Some("i-0123456789abcdef0"), DesiredState::Deleted);
        assert!(matches!(
            plan_runner_command("r1", Some(&deleted), &stop("i-0123456789abcdef0")),
            Err(SubmitError::Conflict { code: "runner_deleted", .. })
        ));
        let r = runner(Some("i-0123456789abcdef0"), DesiredState::Running);
        assert!(matches!(
            plan_runner_command("r1", Some(&r), &stop("i-0fffffffffffffff0")),
            Err(SubmitError::Conflict { code: "instance_mismatch", field: Some("instance_id"), .. })
        ));
        assert!(plan_runner_command("r1", Some(&r), &stop("i-0123456789abcdef0")).is_ok());
    }

    #[test]
    fn a_runner_without_an_instance_yet_accepts_any_instance_id() {
        let r = runner(None, DesiredState::Running);
        assert!(plan_runner_command("r1", Some(&r), &stop("i-0123456789abcdef0")).is_ok());
    }
}

//! EC2 adapter of the cloud port (aws-sdk-ec2).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceStateName, MarketType, ResourceType, SecureBlobAttributeValue, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification,
};
use base64::Engine;
use geonex_shared::config::Ec2Settings;
use geonex_shared::domain::ObservedState;

use super::{
    Cloud, CloudError, DESCRIBE_BATCH, InstanceInfo, LaunchSpec, TAG_COMMAND_ID, TAG_FLEET, TAG_RUNNER_ID,
    TAG_RUNNER_NAME,
};
use crate::retry::ErrorClass;
use super::count_request as count;

pub struct Ec2Cloud {
    client: Client,
    settings: Ec2Settings,
    endpoint: Option<String>,
}

impl Ec2Cloud {
    /// Builds the client from the standard AWS configuration chain, with the
    /// endpoint and region overridable from the settings.
    pub async fn new(settings: Ec2Settings) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self::with_config(&config, settings)
    }

    /// Builds the client from an explicit SDK configuration (credentials,
    /// region, endpoint), e.g. one a test assembled.
    pub fn with_config(config: &aws_config::SdkConfig, settings: Ec2Settings) -> Self {
        let endpoint = config.endpoint_url().map(str::to_owned);
        // Bounded calls: a request EC2 never answers fails as a timeout (retried
        // like any) instead of holding its command forever.
        let attempt = settings.attempt_timeout();
        let timeouts = aws_sdk_ec2::config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(attempt)
            .operation_timeout(attempt)
            .build();
        // One request per call: the cluster's EC2 budget paid for one, and its
        // retries (jittered, throttle-aware, without holding a consumer) decide
        // when to try again. The SDK's own attempts would spend tokens of EC2's
        // buckets that the budget never saw, the retry storm it exists to stop.
        let client = Client::from_conf(
            aws_sdk_ec2::config::Builder::from(config)
                .timeout_config(timeouts)
                .retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
                .build(),
        );
        Self { client, settings, endpoint }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

/// Which EC2 error codes are worth retrying. Codes not listed are permanent,
/// except that any 5xx is retryable.
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> ErrorClass {
    const RETRYABLE: &[&str] = &[
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
        "Unavailable",
        "IncorrectInstanceState",
        "IncorrectState",
        "PendingVerification",
        "IdempotentParameterMismatch",
    ];
    if http_status.is_some_and(|s| s >= 500) {
        return ErrorClass::Retryable;
    }
    match code {
        Some(c) if RETRYABLE.contains(&c) => ErrorClass::Retryable,
        _ => ErrorClass::Permanent,
    }
}


/// A request's result, counted, with its error in the cloud port's terms.
fn counted<T, E>(op: &'static str, result: Result<T, SdkError<E, HttpResponse>>) -> Result<T, CloudError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match result {
        Ok(v) => {
            count(op, "ok");
            Ok(v)
        }
        Err(e) => Err(cloud_error(op, e)),
    }
}

/// Counted too: every failed request passes through here.
fn cloud_error<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = match &err {
        SdkError::ServiceError(se) => se.err().code().unwrap_or("unknown").to_owned(),
        SdkError::TimeoutError(_) => "timeout".into(),
        SdkError::DispatchFailure(_) => "dispatch_failure".into(),
        SdkError::ResponseError(_) => "response_error".into(),
        _ => "other".into(),
    };
    // EC2's codes are a fixed vocabulary; anything else is bounded to keep the series few.
    let code = if code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_') { code } else { "other".into() };
    count(op, &code);
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code();
            let message = se.err().message().unwrap_or("");
            let status = Some(se.raw().status().as_u16());
            let class = classify(code, status);
            CloudError::new(class, code, format!("{op}: {}: {message}", code.unwrap_or("error")))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => CloudError::new(
            ErrorClass::Retryable,
            None,
            format!("{op}: {}", aws_sdk_ec2::error::DisplayErrorContext(&err)),
        ),
        _ => CloudError::new(
            ErrorClass::Permanent,
            None,
            format!("{op}: {}", aws_sdk_ec2::error::DisplayErrorContext(&err)),
        ),
    }
}

fn state_of(name: Option<&InstanceStateName>) -> ObservedState {
    match name {
        Some(InstanceStateName::Pending) => ObservedState::Pending,
        Some(InstanceStateName::Running) => ObservedState::Running,
        Some(InstanceStateName::Stopping) => ObservedState::Stopping,
        Some(InstanceStateName::Stopped) => ObservedState::Stopped,
        Some(InstanceStateName::ShuttingDown) => ObservedState::ShuttingDown,
        Some(InstanceStateName::Terminated) => ObservedState::Terminated,
        _ => ObservedState::Pending,
    }
}

fn info(i: &Instance) -> Option<InstanceInfo> {
    Some(InstanceInfo {
        instance_id: i.instance_id()?.to_owned(),
        state: state_of(i.state().and_then(|s| s.name())),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect::<HashMap<_, _>>(),
        launched_at: i.launch_time().and_then(|t| chrono::DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
    })
}

fn live_states() -> Filter {
    Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .values("shutting-down")
        .build()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

#[async_trait]
impl Cloud for Ec2Cloud {
    async fn find_runner_instances(&self, runner_id: &str) -> Result<Vec<InstanceInfo>, CloudError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{TAG_RUNNER_ID}")).values(runner_id).build())
            // Another fleet in the account may use the same runner ids.
            .filters(Filter::builder().name(format!("tag:{TAG_FLEET}")).values(&self.settings.fleet).build())
            .filters(live_states())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = counted("DescribeInstances", page)?;
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(info).filter(|i| !i.state.is_gone()));
            }
        }
        Ok(out)
    }

    async fn list_fleet_instances(&self) -> Result<Vec<InstanceInfo>, CloudError> {
        let mut out = Vec::new();
        let mut pages = self
            .client
            .describe_instances()
            .filters(Filter::builder().name(format!("tag:{TAG_FLEET}")).values(&self.settings.fleet).build())
            .filters(live_states())
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = counted("DescribeInstances", page)?;
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(info));
            }
        }
        Ok(out)
    }

    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, CloudError> {
        match counted("DescribeInstances", self.client.describe_instances().instance_ids(instance_id).send().await) {
            Ok(out) => Ok(out.reservations().iter().flat_map(|r| r.instances()).find_map(info)),
            Err(e) => {
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    async fn describe_many(&self, instance_ids: &[String]) -> Result<Vec<InstanceInfo>, CloudError> {
        let mut out = Vec::with_capacity(instance_ids.len());
        for chunk in instance_ids.chunks(DESCRIBE_BATCH) {
            let mut ids: Vec<String> = chunk.to_vec();
            // EC2 refuses the whole request if one id is unknown, naming the
            // unknown ones: those are gone; ask again for the rest.
            while !ids.is_empty() {
                match counted("DescribeInstances", self.client.describe_instances().set_instance_ids(Some(ids.clone())).send().await) {
                    Ok(page) => {
                        out.extend(page.reservations().iter().flat_map(|r| r.instances()).filter_map(info));
                        break;
                    }
                    Err(e) => {
                        if !e.is_not_found() {
                            return Err(e);
                        }
                        let before = ids.len();
                        ids.retain(|id| !e.message.contains(id.as_str()));
                        if ids.len() == before {
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<InstanceInfo, CloudError> {
        let s = &self.settings;
        let tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag(TAG_RUNNER_ID, &spec.runner_id))
            .tags(tag(TAG_RUNNER_NAME, &spec.runner_name))
            .tags(tag(TAG_COMMAND_ID, &spec.command_id))
            .tags(tag(TAG_FLEET, &s.fleet))
            .tags(tag("Name", &format!("geonex-runner {}", spec.runner_name)))
            .build();
        let mut req = self
            .client
            .run_instances()
            .image_id(&s.ami_id)
            .instance_type(spec.instance_type.as_str().into())
            .min_count(1)
            .max_count(1)
            .client_token(&spec.client_token)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&spec.user_data))
            .tag_specifications(tags);
        if spec.spot {
            // One-time, terminated on interruption: the runner relaunches itself.
            let spot = SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .build();
            req = req.instance_market_options(
                InstanceMarketOptionsRequest::builder().market_type(MarketType::Spot).spot_options(spot).build(),
            );
        }
        if let Some(subnet) = &s.subnet_id {
            req = req.subnet_id(subnet);
        }
        for sg in &s.security_group_ids {
            req = req.security_group_ids(sg);
        }
        if let Some(key) = &s.key_name {
            req = req.key_name(key);
        }
        if let Some(profile) = &s.iam_instance_profile {
            let spec = if profile.starts_with("arn:") {
                IamInstanceProfileSpecification::builder().arn(profile).build()
            } else {
                IamInstanceProfileSpecification::builder().name(profile).build()
            };
            req = req.iam_instance_profile(spec);
        }
        let out = counted("RunInstances", req.send().await)?;
        out.instances()
            .iter()
            .find_map(info)
            .ok_or_else(|| CloudError::new(ErrorClass::Retryable, None, "RunInstances returned no instance"))
    }

    async fn start(&self, instance_id: &str) -> Result<(), CloudError> {
        self.client
            .start_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| cloud_error("StartInstances", e))
            .inspect(|_| count("StartInstances", "ok"))
    }

    async fn stop(&self, instance_id: &str) -> Result<(), CloudError> {
        self.client
            .stop_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| cloud_error("StopInstances", e))
            .inspect(|_| count("StopInstances", "ok"))
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), CloudError> {
        self.client
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| cloud_error("TerminateInstances", e))
            .inspect(|_| count("TerminateInstances", "ok"))
    }

    async fn set_user_data(&self, instance_id: &str, user_data: &str) -> Result<(), CloudError> {
        // EC2 wants the attribute's value base64-encoded, and the SDK encodes the
        // blob once more for the wire: pass the encoded script.
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_data);
        self.client
            .modify_instance_attribute()
            .instance_id(instance_id)
            .user_data(SecureBlobAttributeValue::builder().value(aws_sdk_ec2::primitives::Blob::new(encoded)).build())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| cloud_error("ModifyInstanceAttribute", e))
            .inspect(|_| count("ModifyInstanceAttribute", "ok"))
    }

    fn label(&self) -> String {
        match &self.endpoint {
            Some(url) => format!("aws ec2 (endpoint {url})"),
            None => "aws ec2".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_capacity_and_server_errors_are_retryable_others_permanent() {
        assert_eq!(classify(Some("RequestLimitExceeded"), None), ErrorClass::Retryable);
        assert_eq!(classify(Some("InsufficientInstanceCapacity"), None), ErrorClass::Retryable);
        assert_eq!(classify(Some("Whatever"), Some(503)), ErrorClass::Retryable);
        assert_eq!(classify(Some("InvalidParameterValue"), Some(400)), ErrorClass::Permanent);
        assert_eq!(classify(Some("UnauthorizedOperation"), Some(403)), ErrorClass::Permanent);
        assert_eq!(classify(Some("InvalidAMIID.NotFound"), None), ErrorClass::Permanent);
    }
}

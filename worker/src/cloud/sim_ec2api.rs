//! The simulated cloud served over EC2's own API (the Query protocol: a form
//! POST naming the `Action`, answered in XML), so that several processes can
//! share one simulated cloud through the EC2 adapter, as they would share an
//! AWS account: `geonex sim-cloud`.
//!
//! It answers the calls the EC2 adapter makes: DescribeInstances (instance
//! ids, `tag:` / `instance-state-name` / `instance-id` filters), RunInstances
//! (tags, client token, user data, spot), Start/Stop/TerminateInstances and
//! ModifyInstanceAttribute's user data, and fails as EC2 does: unknown ids
//! with `InvalidInstanceID.NotFound`, an empty bucket (in AWS-rate mode) with
//! `RequestLimitExceeded` and HTTP 503, an unknown action with
//! `InvalidAction`. `GET /calls` gives the simulated cloud's call counts as
//! JSON, for benchmarks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use chrono::SecondsFormat;
use geonex_shared::domain::ObservedState;

use super::sim::{DescribeQuery, SimCloud};
use super::{Cloud, CloudError, InstanceInfo, LaunchSpec, TAG_COMMAND_ID, TAG_RUNNER_ID, TAG_RUNNER_NAME};
use crate::retry::ErrorClass;

/// The EC2 API version whose XML namespace the answers carry.
const XMLNS: &str = "http://ec2.amazonaws.com/doc/2016-11-15/";

/// The HTTP routes: `POST /` for EC2's actions, `GET /calls` for the counts.
pub fn router(sim: Arc<SimCloud>) -> Router {
    Router::new()
        .route("/", post(action))
        .route("/calls", get(|State(sim): State<Arc<SimCloud>>| async move { axum::Json(sim.calls().to_json()) }))
        .with_state(sim)
}

/// A request's form parameters, by name (EC2 numbers list members: `InstanceId.1`, …).
struct Params(HashMap<String, String>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `prefix.1`, `prefix.2`, … up to the first missing one.
    fn list(&self, prefix: &str) -> Vec<String> {
        (1..).map_while(|n| self.0.get(&format!("{prefix}.{n}")).cloned()).collect()
    }

    /// How many `prefix.N.…` members there are.
    fn members(&self, prefix: &str, first: &str) -> usize {
        (1..).take_while(|n| self.0.contains_key(&format!("{prefix}.{n}.{first}"))).count()
    }
}

async fn action(State(sim): State<Arc<SimCloud>>, body: String) -> Response {
    let params = match serde_urlencoded::from_str::<Vec<(String, String)>>(&body) {
        Ok(pairs) => Params(pairs.into_iter().collect()),
        Err(e) => return fault(&client_error("MalformedQueryString", &e.to_string())),
    };
    let name = params.get("Action").unwrap_or_default().to_owned();
    let sim: &SimCloud = &sim;
    let result = match name.as_str() {
        "DescribeInstances" => describe(sim, &params).await,
        "RunInstances" => run(sim, &params).await,
        "StartInstances" => each(&params, |id| async move { sim.start(&id).await }).await,
        "StopInstances" => each(&params, |id| async move { sim.stop(&id).await }).await,
        "TerminateInstances" => each(&params, |id| async move { sim.terminate(&id).await }).await,
        "ModifyInstanceAttribute" => modify(sim, &params).await.map(|()| "<return>true</return>".to_owned()),
        other => Err(client_error("InvalidAction", &format!("The action {other} is not valid for this web service."))),
    };
    match result {
        Ok(inner) => {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{name}Response xmlns=\"{XMLNS}\"><requestId>{}</requestId>{inner}</{name}Response>",
                uuid::Uuid::new_v4()
            );
            ([(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], xml).into_response()
        }
        Err(e) => fault(&e),
    }
}

fn client_error(code: &str, message: &str) -> CloudError {
    CloudError::new(ErrorClass::Permanent, Some(code), message)
}

/// An error as EC2 sends it: throttling 503, the caller's mistakes 400, the rest 500.
fn fault(e: &CloudError) -> Response {
    let code = e.code.as_deref().unwrap_or("InternalError");
    let status = match code {
        "RequestLimitExceeded" => StatusCode::SERVICE_UNAVAILABLE,
        _ if e.class == ErrorClass::Permanent || code == "IncorrectInstanceState" => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // The simulated cloud's messages start with their code; EC2's do not.
    let message = e.message.strip_prefix(&format!("{code}: ")).unwrap_or(&e.message);
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code><Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
        escape(code),
        escape(message),
        uuid::Uuid::new_v4()
    );
    (status, [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")], xml).into_response()
}

async fn describe(sim: &SimCloud, p: &Params) -> Result<String, CloudError> {
    let filters = (1..=p.members("Filter", "Name"))
        .map(|n| (p.get(&format!("Filter.{n}.Name")).unwrap_or_default().to_owned(), p.list(&format!("Filter.{n}.Value"))))
        .collect();
    let query = DescribeQuery {
        instance_ids: p.list("InstanceId"),
        filters,
        paginated: p.get("MaxResults").is_some() || p.get("NextToken").is_some(),
    };
    let found = sim.describe_query(&query).await?;
    // One reservation per instance: each was launched by its own RunInstances.
    let mut xml = String::from("<reservationSet>");
    for i in &found {
        let _ = write!(xml, "<item><reservationId>r-{}</reservationId><ownerId>000000000000</ownerId><instancesSet>", &i.instance_id[2..]);
        instance(&mut xml, sim, i);
        xml.push_str("</instancesSet></item>");
    }
    xml.push_str("</reservationSet>");
    Ok(xml)
}

async fn run(sim: &SimCloud, p: &Params) -> Result<String, CloudError> {
    let mut tags = HashMap::new();
    for n in 1..=p.members("TagSpecification", "ResourceType") {
        if p.get(&format!("TagSpecification.{n}.ResourceType")) != Some("instance") {
            continue;
        }
        for m in 1..=p.members(&format!("TagSpecification.{n}.Tag"), "Key") {
            let key = p.get(&format!("TagSpecification.{n}.Tag.{m}.Key")).unwrap_or_default();
            let value = p.get(&format!("TagSpecification.{n}.Tag.{m}.Value")).unwrap_or_default();
            tags.insert(key.to_owned(), value.to_owned());
        }
    }
    let user_data = match p.get("UserData") {
        Some(b64) => decode(b64)?,
        None => String::new(),
    };
    let tag = |k: &str| tags.get(k).cloned().unwrap_or_default();
    let spec = LaunchSpec {
        runner_id: tag(TAG_RUNNER_ID),
        runner_name: tag(TAG_RUNNER_NAME),
        command_id: tag(TAG_COMMAND_ID),
        instance_type: p.get("InstanceType").unwrap_or("m1.small").to_owned(),
        user_data,
        // Without a token every call launches anew, as on EC2.
        client_token: p.get("ClientToken").map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
        spot: p.get("InstanceMarketOptions.MarketType") == Some("spot"),
    };
    let launched = sim.run_instance(&spec, tags).await?;
    let mut xml = format!("<reservationId>r-{}</reservationId><ownerId>000000000000</ownerId><instancesSet>", &launched.instance_id[2..]);
    instance(&mut xml, sim, &launched);
    xml.push_str("</instancesSet>");
    Ok(xml)
}

/// Start, stop or terminate each instance named, in turn.
async fn each<F, Fut>(p: &Params, call: F) -> Result<String, CloudError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), CloudError>>,
{
    let ids = p.list("InstanceId");
    if ids.is_empty() {
        return Err(client_error("MissingParameter", "The request must contain the parameter InstanceId"));
    }
    let mut xml = String::from("<instancesSet>");
    for id in ids {
        call(id.clone()).await?;
        let _ = write!(xml, "<item><instanceId>{}</instanceId></item>", escape(&id));
    }
    xml.push_str("</instancesSet>");
    Ok(xml)
}

async fn modify(sim: &SimCloud, p: &Params) -> Result<(), CloudError> {
    let id = p.get("InstanceId").ok_or_else(|| client_error("MissingParameter", "The request must contain the parameter InstanceId"))?;
    let value = p
        .get("UserData.Value")
        .ok_or_else(|| client_error("InvalidParameterCombination", "only the userData attribute can be modified here"))?;
    // The wire carries the attribute's value base64-encoded once more.
    let attribute = decode(value)?;
    sim.set_user_data(id, &decode(&attribute)?).await
}

fn decode(b64: &str) -> Result<String, CloudError> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| client_error("InvalidParameterValue", "Invalid BASE64 encoding of user data"))
}

fn instance(xml: &mut String, sim: &SimCloud, i: &InstanceInfo) {
    let code = match i.state {
        ObservedState::Pending | ObservedState::Requested => 0,
        ObservedState::Running => 16,
        ObservedState::ShuttingDown => 32,
        ObservedState::Terminated | ObservedState::Failed => 48,
        ObservedState::Stopping => 64,
        ObservedState::Stopped => 80,
    };
    let instance_type = sim.billing(&i.instance_id).map(|(t, _)| t).unwrap_or_default();
    let _ = write!(
        xml,
        "<item><instanceId>{}</instanceId><imageId>ami-00000000</imageId><instanceType>{}</instanceType><instanceState><code>{code}</code><name>{}</name></instanceState>",
        escape(&i.instance_id),
        escape(&instance_type),
        i.state.as_str()
    );
    if let Some(at) = i.launched_at {
        let _ = write!(xml, "<launchTime>{}</launchTime>", at.to_rfc3339_opts(SecondsFormat::Millis, true));
    }
    xml.push_str("<tagSet>");
    let mut tags: Vec<_> = i.tags.iter().collect();
    tags.sort();
    for (k, v) in tags {
        let _ = write!(xml, "<item><key>{}</key><value>{}</value></item>", escape(k), escape(v));
    }
    xml.push_str("</tagSet></item>");
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

//! The simulated cloud over EC2's API (`geonex sim-cloud`), through the EC2
//! adapter and the AWS SDK as a worker uses them: what moto cannot show,
//! EC2's throttling, and that a throttled call is made once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use geonex_shared::config::{Ec2Settings, SimSettings};
use geonex_shared::domain::ObservedState;
use geonex_worker::cloud::ec2::Ec2Cloud;
use geonex_worker::cloud::sim::SimCloud;
use geonex_worker::cloud::{Cloud, LaunchSpec, TAG_COMMAND_ID, TAG_FLEET, TAG_RUNNER_ID};

use crate::helpers::{ec2_sdk_config_for, eventually};

/// A simulated cloud served on a free port, and an EC2 adapter of fleet `fleet` pointed at it.
async fn serve(settings: SimSettings, fleet: &str) -> (Arc<SimCloud>, Ec2Cloud) {
    let sim = Arc::new(SimCloud::open(None, settings).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = geonex_worker::cloud::sim_ec2api::router(sim.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let settings = Ec2Settings { endpoint_url: Some(url.clone()), fleet: fleet.into(), ..Ec2Settings::default() };
    (sim, Ec2Cloud::with_config(&ec2_sdk_config_for(&url), settings))
}

fn spec(runner: &str, token: &str) -> LaunchSpec {
    LaunchSpec {
        runner_id: runner.into(),
        runner_name: format!("Runner {runner}"),
        command_id: format!("cmd-{token}"),
        instance_type: "m5d.large".into(),
        user_data: "#!/bin/sh\necho 'hello & <goodbye>'\n".into(),
        client_token: token.into(),
        spot: false,
    }
}

async fn state(cloud: &Ec2Cloud, id: &str) -> ObservedState {
    cloud.describe(id).await.unwrap().expect("the instance is known").state
}

/// Waits (a few seconds at most) until the instance shows `want`.
async fn reaches(cloud: &Ec2Cloud, id: &str, want: ObservedState) {
    eventually(&format!("{id} {}", want.as_str()), Duration::from_secs(5), || async { state(cloud, id).await == want }).await;
}

#[tokio::test]
async fn the_ec2_adapter_drives_the_simulated_cloud_over_ec2s_api() {
    // Long enough a boot that the calls before the first stop cannot outlast it.
    let fast = SimSettings { boot_delay_ms: 1_500, stop_delay_ms: 200, agents: false, ..SimSettings::default() };
    let (sim, cloud) = serve(fast, "fleet-a").await;

    // A launch carries its tags, user data and token; the same token launches once.
    let a = cloud.launch(&spec("r1", "tok-1")).await.unwrap();
    assert_eq!(a.state, ObservedState::Pending);
    assert_eq!(a.tags.get(TAG_FLEET).map(String::as_str), Some("fleet-a"));
    assert_eq!(a.tags.get(TAG_COMMAND_ID).map(String::as_str), Some("cmd-tok-1"));
    assert!(a.launched_at.is_some(), "launch time read back");
    assert_eq!(cloud.launch(&spec("r1", "tok-1")).await.unwrap().instance_id, a.instance_id);
    assert_eq!(sim.user_data(&a.instance_id).as_deref(), Some("#!/bin/sh\necho 'hello & <goodbye>'\n"));
    let b = cloud.launch(&spec("r2", "tok-2")).await.unwrap();

    // Filters by runner and fleet, as the adapter lists them.
    let found = cloud.find_runner_instances("r1").await.unwrap();
    assert_eq!(found.iter().map(|i| i.instance_id.as_str()).collect::<Vec<_>>(), vec![a.instance_id.as_str()]);
    assert_eq!(found[0].tags.get(TAG_RUNNER_ID).map(String::as_str), Some("r1"));
    assert_eq!(cloud.list_fleet_instances().await.unwrap().len(), 2);

    // Unknown ids: EC2 refuses the call naming them; the adapter asks again for the rest.
    let ids = vec![a.instance_id.clone(), "i-0123456789abcdef0".into(), b.instance_id.clone()];
    let mut many: Vec<String> = cloud.describe_many(&ids).await.unwrap().into_iter().map(|i| i.instance_id).collect();
    many.sort();
    let mut want = vec![a.instance_id.clone(), b.instance_id.clone()];
    want.sort();
    assert_eq!(many, want);
    assert!(cloud.describe("i-0123456789abcdef0").await.unwrap().is_none());

    // Stop, new user data, start, terminate, with EC2's refusals in between.
    let e = cloud.stop(&a.instance_id).await.unwrap_err();
    assert!(e.is_incorrect_state(), "a pending instance cannot stop: {e:?}");
    reaches(&cloud, &a.instance_id, ObservedState::Running).await;
    cloud.stop(&a.instance_id).await.unwrap();
    assert_eq!(state(&cloud, &a.instance_id).await, ObservedState::Stopping);
    reaches(&cloud, &a.instance_id, ObservedState::Stopped).await;
    cloud.set_user_data(&a.instance_id, "#!/bin/sh\necho again\n").await.unwrap();
    assert_eq!(sim.user_data(&a.instance_id).as_deref(), Some("#!/bin/sh\necho again\n"));
    cloud.start(&a.instance_id).await.unwrap();
    assert_eq!(state(&cloud, &a.instance_id).await, ObservedState::Pending);
    cloud.terminate(&b.instance_id).await.unwrap();
    reaches(&cloud, &b.instance_id, ObservedState::Terminated).await;
    assert!(cloud.find_runner_instances("r2").await.unwrap().is_empty(), "a terminated instance is not live");
    let e = cloud.start(&b.instance_id).await.unwrap_err();
    assert!(e.is_incorrect_state() && !e.is_throttled(), "a terminated instance cannot start: {e:?}");
}

#[tokio::test]
async fn ec2s_buckets_throttle_and_a_throttled_call_is_made_once() {
    let metered = SimSettings { aws_rate_limits: true, agents: false, ..SimSettings::default() };
    let (sim, cloud) = serve(metered, "fleet-t").await;
    // RunInstances: a burst of 5, then RequestLimitExceeded.
    for n in 0..5 {
        cloud.launch(&spec(&format!("r{n}"), &format!("t{n}"))).await.unwrap();
    }
    let e = cloud.launch(&spec("r5", "t5")).await.unwrap_err();
    assert!(e.is_throttled(), "the sixth launch within a second is throttled: {e:?}");
    // The cluster's budget decides when to try again: the SDK did not.
    assert_eq!(sim.calls().throttled.load(Ordering::Relaxed), 1, "one request reached EC2");
    assert_eq!(sim.calls().run.load(Ordering::Relaxed), 5);
    // Other buckets are their own: a listing still answers.
    assert_eq!(cloud.list_fleet_instances().await.unwrap().len(), 5);
    // The bucket refills (2 a second): a refused call takes no token, so asking
    // until one is granted lands the launch.
    eventually("the RunInstances bucket to refill", Duration::from_secs(5), || async {
        cloud.launch(&spec("r5", "t5")).await.is_ok()
    })
    .await;
    assert_eq!(sim.calls().run.load(Ordering::Relaxed), 6);
}

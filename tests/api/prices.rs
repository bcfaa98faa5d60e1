//! `geonex prices refresh`, the real binary: spot prices from moto's EC2 spot
//! price history (moto answers 0.00001 for every type it offers), written as a
//! price file the cost figures then use; types without a price reported and
//! left out; an unreachable Pricing API fails the refresh and writes nothing.
//! (The Pricing API has no emulator: its half is tested by its parser on a
//! recorded answer, in the worker crate.)

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use geonex_shared::cost::{PriceFile, PriceTable, PurchaseOption};

use crate::cost::{billed_history, hours_ago, started, urlencode};
use crate::helpers::{Mode, TestConfig, TestDir, moto_url, spawn_app_with, unique};

/// Moto's spot price for every type it offers.
const MOTO_SPOT: f64 = 0.00001;
/// Credentials that must never show in what the command prints.
const SECRET: &str = "prices-test-secret-key-f3b9";

/// `geonex prices refresh ARGS` against moto's EC2, with nothing of the
/// machine's own AWS configuration.
fn command(dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_geonex"));
    cmd.args(["prices", "refresh"])
        .args(args)
        .env("GEONEX_EC2__ENDPOINT_URL", moto_url())
        .env("GEONEX_EC2__REGION", "us-east-1")
        .env("GEONEX_LOG__FILTER", "error")
        .env("AWS_ACCESS_KEY_ID", "prices-test")
        .env("AWS_SECRET_ACCESS_KEY", SECRET)
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("GEONEX_COST__PRICES_FILE")
        .env_remove("GEONEX_COST__REGION")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: tokio::process::Command) -> (Output, String, String) {
    let out = cmd.output().await.expect("run geonex prices refresh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "the secret key was printed:\n{stderr}\n{stdout}");
    (out, stdout, stderr)
}

async fn refresh(dir: &Path, args: &[&str], extra_env: &[(&str, &str)]) -> (Output, String, String) {
    run(command(dir, args, extra_env)).await
}

fn output_in(dir: &TestDir) -> (PathBuf, String) {
    let path = dir.0.join("prices.toml");
    let arg = path.display().to_string();
    (path, arg)
}

#[tokio::test]
async fn a_spot_refresh_writes_moto_s_spot_prices_which_the_cost_figures_then_use() {
    let dir = TestDir::new("prices");
    let (path, output) = output_in(&dir);
    let (out, stdout, stderr) =
        refresh(&dir.0, &["--output", &output, "--skip-on-demand", "--instance-types", "m5d.large,t3.micro"], &[]).await;
    assert!(out.status.success(), "refresh failed ({}):\n{stderr}\n{stdout}", out.status);
    assert!(stdout.contains("us-east-1: 2 instance type(s), spot only"), "{stdout}");
    assert!(stdout.contains("us-east-1 m5d.large: spot 0.00001 USD/h (median of"), "a progress line a type:\n{stdout}");
    assert!(stdout.contains("us-east-1 t3.micro: spot 0.00001 USD/h"), "{stdout}");
    assert!(stdout.contains("wrote 0 on-demand and 2 spot price(s) for 1 region(s)"), "{stdout}");
    assert!(!stdout.contains("no price"), "{stdout}");

    // Only what was asked, only spot: the on-demand prices stay the shipped ones.
    let written = PriceFile::read(&path).expect("the written file reads as a price file");
    let us = &written.regions["us-east-1"];
    assert_eq!(us.keys().collect::<Vec<_>>(), ["m5d.large", "t3.micro"]);
    assert!(us.values().all(|e| e.on_demand.is_none() && e.spot == Some(MOTO_SPOT)), "{written:?}");
    let table = PriceTable::load(Some(&path)).expect("the price table loads it");
    let shipped = PriceTable::load(None).unwrap();
    for t in ["m5d.large", "t3.micro"] {
        assert_eq!(table.hourly("us-east-1", t, PurchaseOption::Spot), Some(MOTO_SPOT), "{t}");
        let od = table.hourly("us-east-1", t, PurchaseOption::OnDemand);
        assert!(od.is_some() && od == shipped.hourly("us-east-1", t, PurchaseOption::OnDemand), "{t}: {od:?}");
    }
    assert_eq!(table.hourly("us-east-1", "r5.large", PurchaseOption::Spot), shipped.hourly("us-east-1", "r5.large", PurchaseOption::Spot));
    assert!(!dir.0.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")), "no temporary file left");

    // A deployment pointed at the file figures a spot runner's 1000 hours at
    // moto's price, an on-demand runner's at the shipped one.
    let app = spawn_app_with(TestConfig {
        extra_env: vec![("GEONEX_COST__PRICES_FILE".into(), output.clone())],
        ..TestConfig::in_mode(Mode::Embedded)
    })
    .await;
    let (spot, on_demand) = (unique("spot"), unique("od"));
    started(&app, &spot, "&purchase_option=spot").await;
    started(&app, &on_demand, "").await;
    let ran = [("running", hours_ago(1001)), ("stopped", hours_ago(1))];
    billed_history(&app.store, &spot, "spot", &ran).await;
    billed_history(&app.store, &on_demand, "on-demand", &ran).await;
    let since = urlencode(&hours_ago(1002).to_rfc3339());
    let costs = app.get(&format!("/describe-costs?group_by=runner&since={since}")).await;
    assert_eq!(costs.status, 200, "{}", costs.body);
    let cost_of = |runner: &str| {
        costs.body["groups"].as_array().unwrap().iter().find(|g| g["key"] == runner).and_then(|g| g["instance_usd"].as_f64())
    };
    let spot_cost = cost_of(&spot).expect("the spot runner's cost");
    assert!((spot_cost - 1000.0 * MOTO_SPOT).abs() < 1e-6, "1000 h at moto's spot price: {spot_cost} ({})", costs.body);
    let od_cost = cost_of(&on_demand).expect("the on-demand runner's cost");
    let shipped_od = shipped.hourly("us-east-1", "m5d.large", PurchaseOption::OnDemand).unwrap();
    assert!((od_cost - 1000.0 * shipped_od).abs() < 1e-3, "1000 h at the shipped on-demand price: {od_cost} ({})", costs.body);
}

#[tokio::test]
async fn by_default_every_type_the_table_has_is_refreshed_in_each_region_asked() {
    let dir = TestDir::new("prices");
    let (path, output) = output_in(&dir);
    let (out, stdout, stderr) =
        refresh(&dir.0, &["--output", &output, "--skip-on-demand", "--region", "us-east-1", "--region", "eu-west-1"], &[
            // Exact names are refreshed too; patterns add the table's own types.
            ("GEONEX_EC2__ALLOWED_INSTANCE_TYPES", "[m5d.*, m7i.large]"),
        ])
        .await;
    assert!(out.status.success(), "refresh failed ({}):\n{stderr}\n{stdout}", out.status);
    let shipped = PriceTable::load(None).unwrap();
    let table = PriceTable::load(Some(&path)).expect("the price table loads it");
    for region in ["us-east-1", "eu-west-1"] {
        let types = &shipped.regions[region];
        assert!(stdout.contains(&format!("{region}: {} instance type(s), spot only", types.len() + 1)), "{stdout}");
        for (t, price) in types {
            assert_eq!(table.hourly(region, t, PurchaseOption::Spot), Some(MOTO_SPOT), "{region} {t}");
            assert_eq!(table.hourly(region, t, PurchaseOption::OnDemand), Some(price.on_demand), "{region} {t}");
        }
        // m7i.large: a spot price, but no on-demand one anywhere, so not written.
        assert_eq!(table.hourly(region, "m7i.large", PurchaseOption::Spot), None, "{region}");
    }
    assert!(
        stdout.contains("left out, with a spot price but no on-demand one in AWS or the shipped table: eu-west-1 m7i.large, us-east-1 m7i.large"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_type_the_cloud_has_no_price_for_is_reported_and_left_out() {
    let dir = TestDir::new("prices");
    let (path, output) = output_in(&dir);
    // What an operator had already laid over the shipped table: carried over.
    let in_force = dir.0.join("in-force.toml");
    std::fs::write(&in_force, "[regions.\"eu-west-1\"]\n\"m5d.large\" = { on_demand = 0.5 }\n").unwrap();
    let (out, stdout, stderr) = refresh(
        &dir.0,
        &["--output", &output, "--skip-on-demand", "--instance-types", "m5d.large,x9.huge"],
        &[("GEONEX_COST__PRICES_FILE", &in_force.display().to_string())],
    )
    .await;
    assert!(out.status.success(), "refresh failed ({}):\n{stderr}\n{stdout}", out.status);
    assert!(stdout.contains("us-east-1 x9.huge: no spot price"), "{stdout}");
    assert!(stdout.contains("no price from AWS for: us-east-1 x9.huge (spot)"), "{stdout}");
    assert!(stdout.contains("kept 1 other entry of the price file in force"), "{stdout}");
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(!written.contains("x9.huge"), "not written, not as 0:\n{written}");
    let table = PriceTable::load(Some(&path)).expect("the price table loads it");
    assert_eq!(table.hourly("us-east-1", "x9.huge", PurchaseOption::Spot), None);
    assert_eq!(table.hourly("us-east-1", "m5d.large", PurchaseOption::Spot), Some(MOTO_SPOT));
    assert_eq!(table.hourly("eu-west-1", "m5d.large", PurchaseOption::OnDemand), Some(0.5), "the file in force carried over");

    // Nothing priced at all: a failure, and nothing written.
    let (lonely, lonely_arg) = (dir.0.join("none.toml"), dir.0.join("none.toml").display().to_string());
    let (out, stdout, stderr) = refresh(&dir.0, &["--output", &lonely_arg, "--skip-on-demand", "--instance-types", "x9.huge"], &[]).await;
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("no price found for any type asked; nothing was written"), "{stderr}");
    assert!(!lonely.exists());
}

#[tokio::test]
async fn when_the_pricing_api_cannot_be_reached_the_refresh_fails_and_writes_nothing() {
    let dir = TestDir::new("prices");
    let (path, output) = output_in(&dir);
    let before = "[regions.\"us-east-1\"]\n\"m5d.large\" = { spot = 0.05 }\n";
    std::fs::write(&path, before).unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    // Both halves: the spot prices moto gives are not written either.
    let (out, stdout, stderr) =
        refresh(&dir.0, &["--output", &output, "--instance-types", "m5d.large", "--pricing-endpoint", &endpoint], &[]).await;
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains(&format!("the AWS Pricing API (GetProducts at {endpoint}) failed for m5d.large in us-east-1")), "{stderr}");
    assert!(stderr.contains("Nothing was written; the price table in force is unchanged"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "the file is as it was");
    let left: Vec<String> = dir.0.read_dir().unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["prices.toml"]);

    // An endpoint that answers, but is no Pricing API (moto has none): refused.
    let (out, _, stderr) =
        refresh(&dir.0, &["--output", &output, "--instance-types", "m5d.large", "--pricing-endpoint", &moto_url()], &[]).await;
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("the AWS Pricing API (GetProducts at {}) failed", moto_url())), "{stderr}");
    // No credentials at all.
    let mut cmd = command(&dir.0, &["--output", &output, "--skip-spot", "--instance-types", "m5d.large", "--pricing-endpoint", &endpoint], &[]);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        cmd.env_remove(var);
    }
    let (out, _, stderr) = run(cmd).await;
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("GetProducts") && stderr.contains("no credentials"), "{stderr}");
    assert!(stderr.contains("credentials allowed pricing:GetProducts"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before, "the file is still as it was");

    // --skip-spot with --skip-on-demand asks for nothing.
    let (out, _, stderr) = refresh(&dir.0, &["--output", &output, "--skip-spot", "--skip-on-demand"], &[]).await;
    assert!(!out.status.success() && stderr.contains("cannot be used with"), "{stderr}");
}

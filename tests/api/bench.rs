//! `geonex bench pipeline` and `geonex bench launch` at a tiny size against
//! the shared services: they finish and print every figure of their tables;
//! the pipeline bench leaves neither its scratch database nor its scratch
//! vhost behind, the launch bench no runner with two instances or none.

use std::process::Stdio;

use sqlx::Connection;

use crate::helpers::{amqp_url, pg_admin_url};

/// The figures of the table, by the start of their row.
const FIGURES: &[&str] = &[
    "end-to-end start-runner commands/s",
    "start-runner requests accepted/s",
    "end-to-end stop/delete commands/s",
    "/describe-runners 200 requests/s",
    "/describe-runners 200 p99",
    "/describe-runners 304 requests/s",
    "/describe-runners 304 p99",
    "peak RSS of geonex serve with",
    "accept latency p50",
    "accept latency p99",
    "accept latency max",
    "RSS of geonex serve after the run",
    "peak RSS of geonex serve over the run",
    "embedded: end-to-end start-runner commands/s",
];

/// The name the bench's log gives after `what ` (e.g. "scratch database").
fn named<'a>(log: &'a str, what: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(what))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the bench never named its {what}:\n{log}"))
}

/// A figure's value as printed ("1,234/s", "3.21 ms", "56.7 MiB").
fn value(cell: &str) -> f64 {
    let number: String = cell.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ',').filter(|c| *c != ',').collect();
    number.parse().unwrap_or_else(|_| panic!("not a figure: {cell:?}"))
}

/// Runs `geonex bench ARGS…` on the shared services; its stdout and stderr
/// once it has succeeded.
async fn bench(args: &[&str]) -> (String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_geonex"))
        .arg("bench")
        .args(args)
        .args(["--database-url", &pg_admin_url(), "--amqp-url", &amqp_url()])
        .env("GEONEX_LOG__FILTER", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run geonex bench");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "the bench failed ({}):\n{stderr}\n{stdout}", out.status);
    (stdout, stderr)
}

#[tokio::test]
async fn a_small_pipeline_bench_prints_every_figure_and_removes_its_database_and_vhost() {
    let (stdout, stderr) = bench(&[
        "pipeline", "--commands", "200", "--runners", "300", "--concurrency", "16", "--rate", "200", "--rate-secs", "1",
        "--poll-secs", "1",
    ])
    .await;

    let rows = table(&stdout);
    assert_eq!(rows.first().map(|r| r.as_slice()), Some(&["figure", "this project", "baseline (same run)", "ratio"][..]), "{stdout}");
    assert_eq!(rows.len(), 2 + FIGURES.len(), "one row per figure:\n{stdout}");
    // The anchors sit beside the checkout here, so the baselines were measured.
    let anchors = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/anchors/Cargo.toml").is_file();
    for figure in FIGURES {
        let row = rows.iter().find(|r| r[0].starts_with(figure)).unwrap_or_else(|| panic!("no row {figure:?}:\n{stdout}"));
        assert_eq!(row.len(), 4, "{row:?}");
        let v = value(row[1]);
        assert!(v.is_finite() && v >= 0.0, "{row:?}");
        if figure.contains("requests/s") || figure.contains("commands/s") || figure.starts_with("peak RSS") {
            assert!(v > 0.0, "{row:?}");
        }
        if anchors && !figure.starts_with("accept latency p50") && !figure.starts_with("accept latency max") {
            assert!(!row[2].starts_with("n/a") && row[3].ends_with('%'), "no baseline for {figure}: {row:?}\n{stderr}");
        }
    }

    let database = named(&stderr, "scratch database");
    assert!(database.starts_with("geonex_bench_"), "{database}");
    let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.expect("connect");
    let left: i64 = sqlx::query_scalar("select count(*) from pg_database where datname = $1")
        .bind(database)
        .fetch_one(&mut conn)
        .await
        .expect("list databases");
    assert_eq!(left, 0, "the scratch database {database} is still there");

    let vhost = named(&stderr, "scratch vhost");
    assert!(vhost.starts_with("geonex-bench-"), "{vhost}");
    let vhosts = std::process::Command::new("rabbitmqctl").args(["list_vhosts", "--quiet"]).output().expect("rabbitmqctl");
    assert!(vhosts.status.success());
    let vhosts = String::from_utf8_lossy(&vhosts.stdout);
    assert!(!vhosts.lines().any(|l| l.trim() == vhost), "the scratch vhost {vhost} is still there:\n{vhosts}");
}

/// The rows of a printed table, cells trimmed.
fn table(stdout: &str) -> Vec<Vec<&str>> {
    stdout.lines().filter(|l| l.starts_with('|')).map(|l| l.trim_matches('|').split('|').map(str::trim).collect()).collect()
}

/// `geonex bench launch` at a tiny size: every step runs (the third through
/// worker processes sharing `geonex sim-cloud`, one of them killed), every
/// figure is printed, and no runner was left with two instances or none.
#[tokio::test]
async fn a_small_launch_bench_prints_every_figure_and_loses_and_doubles_nothing() {
    let (stdout, stderr) = bench(&[
        "launch", "--burst", "30", "--short-boot-secs", "1", "--long-boot-secs", "3", "--rate-burst", "12", "--workers",
        "2", "--concurrency", "8",
    ])
    .await;
    let rows = table(&stdout);
    let row = |start: &str| {
        rows.iter().find(|r| r[0].starts_with(start)).unwrap_or_else(|| panic!("no row {start:?}:\n{stdout}")).clone()
    };
    for figure in [
        "start-runner commands completed/s, 30 in a burst, boot 1 s",
        "start-runner commands completed/s, 30 in a burst, boot 3 s",
        "all 30 running after, boot 3 s",
        "DescribeInstances calls per transition observed",
        "12 starts launched within EC2's rate limits",
        "RequestLimitExceeded answers during those 12 starts",
        "12 stops issued with the starts",
        "12 starts through 2 workers sharing one budget and the simulated cloud over EC2's API",
        "12 stops issued with them",
    ] {
        let r = row(figure);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(value(r[1]).is_finite(), "{r:?}");
    }
    assert!(value(row("start-runner commands completed/s, 30 in a burst, boot 3 s")[1]) > 0.0);
    assert_eq!(value(row("runners with two instances")[1]), 0.0, "{stdout}");
    assert_eq!(value(row("runners with no instance")[1]), 0.0, "{stdout}");
    assert!(stderr.contains("fleet geonex-bench-"), "the fleet was counted in the simulated cloud:\n{stderr}");
}

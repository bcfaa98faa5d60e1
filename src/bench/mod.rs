//! `geonex bench …`: measurements against real services, printed side by side
//! with a baseline measured in the same run. They are not tests: each run
//! creates its own scratch data and removes it afterwards.

mod baseline;
mod launch;
mod load;
mod pipeline;
mod probe;
mod progress;
pub mod s3usage;
mod scratch;
mod serve;
mod table;

use geonex_shared::config::Settings;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Time a usage scan of a large bucket against `aws s3 ls --recursive --summarize`.
    S3Usage(s3usage::S3UsageBench),
    /// Measure the command pipeline end to end (commands/s, accept latency,
    /// polling, memory) in a scratch database and vhost, beside the anchors.
    Pipeline(pipeline::PipelineBench),
    /// Launch runners where EC2 sets the pace: a burst with a short and a long
    /// boot, a burst within EC2's rate limits, and one through several workers.
    Launch(launch::LaunchBench),
}

/// Runs `measure` in a scratch database, vhost and directory of its own, which
/// are removed afterwards, on an error or on Ctrl-C alike, and prints the
/// table it measured.
async fn in_scratch(
    database_url: &str,
    amqp_url: &str,
    measure: impl AsyncFnOnce(&scratch::ScratchDatabase, &scratch::ScratchVhost, &scratch::ScratchDir) -> anyhow::Result<Vec<table::Row>>,
) -> anyhow::Result<()> {
    let dir = scratch::ScratchDir::create()?;
    let db = scratch::ScratchDatabase::create(database_url).await?;
    eprintln!("scratch database {}", db.name);
    let vhost = match scratch::ScratchVhost::create(amqp_url).await {
        Ok(v) => v,
        Err(e) => {
            db.remove().await;
            return Err(e);
        }
    };
    eprintln!("scratch vhost {}", vhost.name);
    // Interrupted, the measuring future is dropped, which kills the children;
    // the scratch resources are removed either way.
    let result = tokio::select! {
        r = measure(&db, &vhost, &dir) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    db.remove().await;
    vhost.remove().await;
    drop(dir);
    let rows = result?;
    println!();
    print!("{}", table::render(&rows));
    Ok(())
}

pub async fn run(bench: Bench, settings: Settings) -> anyhow::Result<()> {
    match bench {
        Bench::S3Usage(args) => s3usage::run(args, settings).await,
        // Its settings are its arguments: what it starts gets an environment of its own.
        Bench::Pipeline(args) => pipeline::run(args).await,
        Bench::Launch(args) => launch::run(args).await,
    }
}

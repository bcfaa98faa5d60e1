//! `geonex bench …`: measurements against real services, printed side by side
//! with a baseline. They are not tests: each run
//! creates its own scratch data and removes it afterwards.

pub mod s3usage;

use geonex_shared::config::Settings;

#[derive(clap::Subcommand)]
pub enum Bench {
    /// Time a usage scan of a large bucket against `aws s3 ls --recursive --summarize`.
    S3Usage(s3usage::S3UsageBench),
}

pub async fn run(bench: Bench, settings: Settings) -> anyhow::Result<()> {
    match bench {
        Bench::S3Usage(args) => s3usage::run(args, settings).await,
    }
}

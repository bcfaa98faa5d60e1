use clap::Parser;
use geonex::{cli, telemetry};
use geonex_shared::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    let (settings, unknown) = Settings::load()?;
    telemetry::init(&settings.log);
    for var in unknown {
        tracing::warn!(variable = %var, "unknown GEONEX_* environment variable ignored");
    }
    cli::run(cli, settings).await
}

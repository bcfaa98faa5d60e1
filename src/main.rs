use std::process::ExitCode;

use clap::Parser;
use geonex::{cli, telemetry};
use geonex_shared::config::Settings;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let (settings, unknown) = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    telemetry::init(&settings.log);
    for var in unknown {
        tracing::warn!(variable = %var, "unknown GEONEX_* environment variable ignored");
    }
    match cli::run(cli, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: these are operator errors.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

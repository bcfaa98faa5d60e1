//! The `geonex` command line.

use std::io::Write;

use clap::{Parser, Subcommand};
use geonex_shared::config::Settings;
use geonex_shared::domain::Action;
use geonex_shared::store::ReplaySelector;
use uuid::Uuid;

use crate::startup::{Application, Ports, Role};

#[derive(Parser)]
#[command(name = "geonex", version, about = "GeoNEX-core: control plane for GEONEX real-time runners")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the API, the workers and the relay in one process.
    Serve,
    /// Run only the HTTP API.
    Api,
    /// Run only workers and the relay (start several to scale out).
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Move dead commands back to the queue.
    Replay {
        /// Replay every dead command.
        #[arg(long, conflicts_with_all = ["action", "command_id"])]
        all: bool,
        /// Replay the dead commands of one action (e.g. start_runner).
        #[arg(long, conflicts_with = "command_id")]
        action: Option<String>,
        /// Replay one command.
        #[arg(long)]
        command_id: Option<Uuid>,
    },
    /// Measure performance against real services (not a test).
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
pub enum Bench {
    /// Time a usage scan of a large bucket against `aws s3 ls --recursive --summarize`.
    S3Usage(crate::bench::S3UsageBench),
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(settings, Role::Serve).await,
        Command::Api => serve(settings, Role::Api).await,
        Command::Worker => serve(settings, Role::Worker).await,
        Command::Migrate => {
            Ports::connect(&settings).await?;
            println!("database is up to date");
            Ok(())
        }
        Command::Replay { all, action, command_id } => {
            let selector = match (all, action, command_id) {
                (true, _, _) => ReplaySelector::All,
                (_, Some(a), _) => ReplaySelector::Action(
                    Action::parse(&a).ok_or_else(|| anyhow::anyhow!("unknown action {a}"))?,
                ),
                (_, _, Some(id)) => ReplaySelector::Command(id),
                _ => anyhow::bail!("say what to replay: --all, --action ACTION or --command-id ID"),
            };
            replay(settings, selector).await
        }
        Command::Bench(Bench::S3Usage(args)) => crate::bench::run(args, settings).await,
    }
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let listen = settings.listen.clone();
    let app = Application::build(settings, role).await?;
    tracing::info!(summary = app.summary(), role = ?role, "geonex starting");
    if role != Role::Worker {
        tracing::info!(url = %format!("http://{}", listen_display(&listen, app.port())), "API listening");
    }
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        token.cancel();
    });
    app.run_until_stopped().await
}

fn listen_display(listen: &str, port: u16) -> String {
    match listen.rsplit_once(':') {
        Some((host, _)) => format!("{host}:{port}"),
        None => listen.to_owned(),
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn replay(settings: Settings, selector: ReplaySelector) -> anyhow::Result<()> {
    let ports = Ports::connect(&settings).await?;
    let out = ports.store.replay(selector).await?;
    for (id, reason) in &out.skipped {
        println!("skipped {id}: {reason}");
    }
    let total = out.replayed.len();
    let mut published = 0;
    for (i, c) in out.replayed.iter().enumerate() {
        // A publish that fails here is not lost: the command is queued and
        // unpublished, so the relay of any running worker publishes it.
        match ports.queue.publish(&c.message(), None).await {
            Ok(()) => {
                published += 1;
                ports.store.mark_published(&[c.command_id]).await?;
            }
            Err(e) => eprintln!("publish of {} deferred to the relay: {e}", c.command_id),
        }
        if total >= 20 && (i + 1) % (total / 20).max(1) == 0 {
            eprint!("\rreplaying: {}/{total}", i + 1);
            let _ = std::io::stderr().flush();
        }
    }
    if total >= 20 {
        eprintln!();
    }
    println!("replayed {total} command(s), {published} published now");
    for c in &out.replayed {
        println!("{} {}", c.command_id, c.action);
    }
    Ok(())
}

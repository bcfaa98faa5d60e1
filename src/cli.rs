//! The `geonex` command line.

use std::io::Write;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use geonex_shared::config::Settings;
use geonex_shared::domain::Action;
use geonex_shared::store::ReplaySelector;
use uuid::Uuid;

use crate::startup::{Application, Role, broker, open_database};

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
    /// Run a runner's on-instance agent (configured by `GEONEX_AGENT__*`).
    Agent,
    /// Apply database migrations and exit.
    Migrate,
    /// Serve the simulated cloud over EC2's own API on `GEONEX_LISTEN`, so
    /// that several processes share one simulated cloud through their EC2
    /// settings (`GEONEX_CLOUD=aws`, `GEONEX_EC2__ENDPOINT_URL`). Its state
    /// and its instances' agents are those of `GEONEX_DATA_DIR` and
    /// `GEONEX_SIM__*`.
    SimCloud,
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage service-account tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
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
    /// The price table costs are figured with.
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Measure performance against real services (not a test).
    #[command(subcommand)]
    Bench(crate::bench::Bench),
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create {
        #[arg(long)]
        user_name: String,
        /// Give the user the admin role (default: user).
        #[arg(long, conflicts_with = "role")]
        admin: bool,
        /// user, operator or admin.
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum PricesCommand {
    /// Ask AWS for current prices (on-demand from the Pricing API, spot from EC2's
    /// spot price history) and write them as a price file for GEONEX_COST__PRICES_FILE.
    Refresh {
        /// The file to write (replaced atomically; entries of the price file in
        /// force that are not refreshed are carried over).
        #[arg(long)]
        output: PathBuf,
        /// A region to refresh, repeatable (default: the configured price region).
        #[arg(long = "region", value_name = "REGION")]
        regions: Vec<String>,
        /// Comma-separated (default: the allowed instance types named exactly,
        /// plus every type the price table has for the region).
        #[arg(long, value_delimiter = ',')]
        instance_types: Vec<String>,
        /// Refresh spot prices only (the Pricing API is not asked).
        #[arg(long, conflicts_with = "skip_spot")]
        skip_on_demand: bool,
        /// Refresh on-demand prices only (EC2 is not asked).
        #[arg(long)]
        skip_spot: bool,
        /// The Pricing API's endpoint (default: its us-east-1 one).
        #[arg(long, value_name = "URL")]
        pricing_endpoint: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a service-account token (for the dashboard, scripts) and print it once.
    Create {
        /// The account's name, recorded on every command it submits.
        #[arg(long)]
        name: String,
        /// user, operator or admin.
        #[arg(long, default_value = "operator")]
        role: String,
        /// Expire after this many days (default: never).
        #[arg(long)]
        days: Option<u32>,
    },
}

pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve(settings, Role::Serve).await,
        Command::Api => serve(settings, Role::Api).await,
        Command::Worker => serve(settings, Role::Worker).await,
        Command::Agent => {
            let token = tokio_util::sync::CancellationToken::new();
            let stop = token.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("agent stopping: letting running containers finish");
                stop.cancel();
            });
            geonex_worker::agent::run(settings.agent, token).await
        }
        Command::SimCloud => {
            let token = tokio_util::sync::CancellationToken::new();
            let stop = token.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                stop.cancel();
            });
            crate::startup::serve_sim_cloud(&settings, token).await
        }
        Command::Migrate => {
            let (_, label) = open_database(&settings).await?;
            println!("database is up to date: {label}");
            Ok(())
        }
        Command::User { command: UserCommand::Create { user_name, admin, role, email, display_name } } => {
            let role = if admin { "admin".to_owned() } else { role.unwrap_or_else(|| "user".into()) };
            create_user(settings, user_name, role, email, display_name).await
        }
        Command::Token { command: TokenCommand::Create { name, role, days } } => {
            create_token(settings, name, role, days).await
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
        Command::Prices {
            command:
                PricesCommand::Refresh { output, regions, instance_types, skip_on_demand, skip_spot, pricing_endpoint },
        } => {
            let refresh = geonex_worker::pricing::Refresh {
                regions,
                instance_types,
                output,
                on_demand: !skip_on_demand,
                spot: !skip_spot,
                pricing_endpoint,
            };
            geonex_worker::pricing::refresh(&settings, &refresh, &mut std::io::stdout()).await.map(|_| ())
        }
        Command::Bench(bench) => crate::bench::run(bench, settings).await,
    }
}

async fn serve(settings: Settings, role: Role) -> anyhow::Result<()> {
    let listen = settings.listen.clone();
    let app = Application::build(settings, role).await?;
    tracing::info!(summary = app.summary(), role = ?role, "geonex starting");
    if role != Role::Worker {
        tracing::info!(url = %format!("http://{}", listen_display(&listen, app.port())), "API listening");
        tracing::info!("an admin token: geonex token create --name NAME --role admin (or geonex user create --admin)");
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
    let (db, _) = open_database(&settings).await?;
    let out = db.replay(selector).await?;
    for (id, reason) in &out.skipped {
        println!("skipped {id}: {reason}");
    }
    let total = out.replayed.len();
    let queue = broker(&settings);
    let mut published = 0;
    for (i, c) in out.replayed.iter().enumerate() {
        // A command not published here is not lost: it is queued and unpublished,
        // so the relay of any running worker (or of `geonex serve` with its
        // in-process queue) publishes it.
        let Some(queue) = &queue else { continue };
        match queue.publish(&c.message(), None).await {
            Ok(()) => {
                published += 1;
                db.mark_published(&[c.command_id]).await?;
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

async fn create_user(
    settings: Settings,
    user_name: String,
    role: String,
    email: Option<String>,
    display_name: Option<String>,
) -> anyhow::Result<()> {
    use geonex_shared::auth::Password;
    use geonex_shared::domain::{DisplayName, EmailAddress, Role, UserName};
    use geonex_shared::store::users::NewUser;
    let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("role must be user, operator or admin"))?;
    let name = UserName::parse(&user_name)?;
    let email = EmailAddress::parse(&email.unwrap_or_else(|| format!("{user_name}@localhost.localdomain")))?;
    let display = DisplayName::parse(&display_name.unwrap_or_else(|| user_name.clone()))?;
    let mut line = String::new();
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password for {user_name}: ");
        let _ = std::io::stderr().flush();
    }
    std::io::stdin().read_line(&mut line)?;
    let password = Password::parse(line.trim_end_matches(['\n', '\r']))?;
    let hash = tokio::task::spawn_blocking(move || password.hash()).await?.map_err(anyhow::Error::msg)?;
    let (db, _) = open_database(&settings).await?;
    let user = db
        .create_user(NewUser {
            user_id: Uuid::now_v7(),
            user_name: name.into_inner(),
            display_name: display.into_inner(),
            email: email.into_inner(),
            role,
            password_hash: hash,
        })
        .await?;
    println!("created {} ({}) {}", user.user_name, user.role, user.user_id);
    Ok(())
}

async fn create_token(settings: Settings, name: String, role: String, days: Option<u32>) -> anyhow::Result<()> {
    use geonex_shared::auth::{TokenKind, mint_token};
    use geonex_shared::domain::{Role, UserName};
    use geonex_shared::store::users::TokenOwner;
    use secrecy::ExposeSecret;
    let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("role must be user, operator or admin"))?;
    let name = UserName::parse(&name).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    let (db, _) = open_database(&settings).await?;
    let token = mint_token(TokenKind::Api);
    let expires_at = days.map(|d| chrono::Utc::now() + chrono::Duration::days(i64::from(d)));
    let owner = TokenOwner::Service { name: name.into_inner() };
    db.insert_token(token.token_id, &token.secret_hash, &owner, role, expires_at).await?;
    eprintln!("token for {} ({role}); shown once, store it now:", owner.label());
    println!("{}", token.text.expose_secret());
    Ok(())
}

//! Private instances of the services a fault scenario stops: a RabbitMQ node
//! and a PostgreSQL cluster of the scenario's own, on free ports, in a temporary
//! directory. The shared broker and database are never touched.
//!
//! Stopping one returns an [`Outage`] guard: ending it starts the service
//! again, and dropping it unended (a scenario that failed midway) does too, so
//! a scenario always restores what it stopped. Dropping the service itself
//! halts it and removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::unique;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a service's control command to completion, failing the test with its
/// output if it fails.
fn run(mut cmd: Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A service a scenario can stop and start again.
pub trait Restartable: Send + Sync {
    fn halt(&self);
    fn resume(&self);
    fn name(&self) -> &'static str;
}

/// A stopped service. `end` starts it again; so does dropping the guard.
#[must_use = "the service stays down only while the guard lives"]
pub struct Outage<'a> {
    service: &'a dyn Restartable,
    pub since: Instant,
    ended: bool,
}

impl<'a> Outage<'a> {
    pub fn begin(service: &'a dyn Restartable) -> Self {
        service.halt();
        Self { service, since: Instant::now(), ended: false }
    }

    /// Starts the service again; returns when it accepts connections.
    pub fn end(mut self) -> Instant {
        self.ended = true;
        self.service.resume();
        eprintln!("{} was down for {:.1} s", self.service.name(), self.since.elapsed().as_secs_f64());
        Instant::now()
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        if !self.ended {
            eprintln!("restoring {} after a failed scenario", self.service.name());
            self.service.resume();
        }
    }
}

/// Where RabbitMQ's scripts are: `GEONEX_TEST_RABBITMQ_BIN`, else Debian's
/// package directory (whose `/usr/sbin` wrappers would switch to the
/// `rabbitmq` user and its home), else the `PATH`.
fn rabbitmq_bin(program: &str) -> PathBuf {
    let dir = std::env::var("GEONEX_TEST_RABBITMQ_BIN").map(PathBuf::from).unwrap_or_else(|_| "/usr/lib/rabbitmq/bin".into());
    let path = dir.join(program);
    if path.exists() { path } else { program.into() }
}

/// Whether an AMQP connection to `url` opens.
fn amqp_answers(url: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
    rt.block_on(async {
        let props = lapin::ConnectionProperties::default();
        match tokio::time::timeout(Duration::from_secs(2), lapin::Connection::connect(url, props)).await {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "ready".into()).await;
                true
            }
            _ => false,
        }
    })
}

/// A RabbitMQ node of one scenario's own.
pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    pub port: u16,
    dist_port: u16,
}

impl PrivateRabbit {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("geonex-rabbit"));
        std::fs::create_dir_all(&dir).expect("node directory");
        let (port, dist_port) = (free_port(), free_port());
        // Its own configuration, environment file and plugins list, so nothing
        // of the machine's node (its listener, name, management plugin) applies.
        std::fs::write(dir.join("rabbitmq.conf"), format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"))
            .expect("node configuration");
        std::fs::write(dir.join("rabbitmq-env.conf"), "").expect("node environment");
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("node plugins");
        let node = format!("{}@localhost", unique("geonex-fault"));
        let rabbit = Self { dir, node, port, dist_port };
        rabbit.boot();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(rabbitmq_bin(program));
        let d = &self.dir;
        cmd.env("HOME", d) // the Erlang cookie, private to this node and its CLI
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("node.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn boot(&self) {
        let mut cmd = self.command("rabbitmq-server");
        cmd.arg("-detached");
        run(cmd, "rabbitmq-server -detached");
        self.wait_ready();
    }

    /// Until an AMQP connection opens (the node boots in about five seconds).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        // The probe runs on a thread of its own: callers may be inside a runtime.
        loop {
            let url = self.url();
            if std::thread::spawn(move || amqp_answers(&url)).join().unwrap_or(false) {
                return;
            }
            assert!(Instant::now() < deadline, "the private RabbitMQ node {} did not come up; see {}", self.node, self.dir.display());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("node.pid")).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
    }
}

impl Restartable for PrivateRabbit {
    /// Stops the whole node (`rabbitmqctl stop`): every connection is closed
    /// by the broker, as in a real restart.
    fn halt(&self) {
        let mut cmd = self.command("rabbitmqctl");
        cmd.args(["-n", &self.node, "stop"]);
        run(cmd, "rabbitmqctl stop");
    }

    fn resume(&self) {
        self.boot();
    }

    fn name(&self) -> &'static str {
        "the private RabbitMQ node"
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let pid = self.pid();
        let mut cmd = self.command("rabbitmqctl");
        cmd.args(["-n", &self.node, "stop"]);
        let stopped = cmd.stdin(Stdio::null()).status().is_ok_and(|s| s.success());
        if !stopped && let Some(pid) = pid {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// PostgreSQL's programs: `GEONEX_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else the `PATH`.
fn pg_bin(program: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("GEONEX_TEST_PG_BIN") {
        return Path::new(&dir).join(program);
    }
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|v| v.parse::<u32>().ok()).map(|v| (v, e.path())))
        .max_by_key(|(v, _)| *v)
        .map(|(_, p)| p.join("bin").join(program));
    newest.filter(|p| p.exists()).unwrap_or_else(|| program.into())
}

/// A PostgreSQL cluster of one scenario's own (trust authentication).
pub struct PrivatePostgres {
    dir: PathBuf,
    pub port: u16,
    /// The server refuses to run as root: then the cluster belongs to `postgres`.
    as_postgres: bool,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("geonex-pg"));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres = running_as_root();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.arg("postgres:postgres").arg(&dir);
            run(chown, "chown the cluster directory");
        }
        let pg = Self { dir, port: free_port(), as_postgres };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(pg.data()).args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        run(initdb, "initdb");
        pg.ctl(&["start"]);
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(pg_bin(program));
            c
        } else {
            Command::new(pg_bin(program))
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    fn ctl(&self, action: &[&str]) {
        let mut cmd = self.command("pg_ctl");
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200", self.port, self.dir.display());
        cmd.arg("-D").arg(self.data()).arg("-o").arg(options).arg("-l").arg(self.dir.join("server.log")).args(["-w", "-t", "60"]).args(action);
        run(cmd, &format!("pg_ctl {}", action.join(" ")));
    }

    /// `pg_ctl restart -m fast`: every session is terminated, the server is
    /// back a moment later.
    pub fn restart(&self) -> Instant {
        self.ctl(&["-m", "fast", "restart"]);
        Instant::now()
    }
}

impl Restartable for PrivatePostgres {
    fn halt(&self) {
        self.ctl(&["-m", "fast", "stop"]);
    }

    fn resume(&self) {
        self.ctl(&["start"]);
    }

    fn name(&self) -> &'static str {
        "the private PostgreSQL cluster"
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = cmd.stdin(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A real SMTP server per test: aiosmtpd on a free port, writing a private
//! Maildir, refusing (550) the recipients listed in a file. Tests read back
//! what the server actually received.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Python with aiosmtpd: `GEONEX_TEST_SMTPD_PYTHON`, else the virtualenv
/// `.ci/run` makes under `target/`, else `python3`.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GEONEX_TEST_SMTPD_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/smtp-venv/bin/python");
    if venv.exists() { venv } else { "python3".into() }
}

fn scripts() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smtp")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct SmtpServer {
    pub port: u16,
    root: PathBuf,
    child: Option<Child>,
}

impl SmtpServer {
    /// A server that is listening.
    pub async fn start() -> Self {
        let mut s = Self::not_started();
        s.run().await;
        s
    }

    /// A port and a Maildir, with nothing listening yet.
    pub fn not_started() -> Self {
        let root = std::env::temp_dir().join(format!("geonex-smtp-{}", uuid::Uuid::new_v4().simple()));
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join("maildir").join(d)).expect("maildir");
        }
        Self { port: free_port(), root, child: None }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    fn maildir(&self) -> PathBuf {
        self.root.join("maildir")
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn run(&mut self) {
        let child = Command::new(python())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{}", self.port), "-c", "reject_handler.RejectingMailbox"])
            .arg(self.maildir())
            .arg(self.root.join("reject"))
            .env("PYTHONPATH", scripts())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (pip install aiosmtpd, or run .ci/run)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("aiosmtpd exited: {status}");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on {}", self.port);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Makes the server refuse this recipient with 550.
    pub fn reject(&self, address: &str) {
        std::fs::write(self.root.join("reject"), format!("{address}\n")).expect("reject file");
    }

    pub fn accept_all(&self) {
        let _ = std::fs::remove_file(self.root.join("reject"));
    }

    /// Every message received so far, parsed.
    pub fn messages(&self) -> Vec<Value> {
        read_messages(&self.maildir())
    }

    /// Waits until at least `n` messages arrived, and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_for_messages(n, || self.messages()).await
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Where a deployment's mail lands: a real SMTP server in production mode, the
/// file mailer's directory in embedded mode. Either way the test reads back the
/// messages as sent.
pub struct Mailbox {
    smtp: Option<SmtpServer>,
    dir: Option<PathBuf>,
}

impl Mailbox {
    pub async fn start(mode: crate::helpers::Mode) -> Self {
        let smtp = match mode {
            crate::helpers::Mode::Production => Some(SmtpServer::start().await),
            crate::helpers::Mode::Embedded => None,
        };
        Self { smtp, dir: None }
    }

    /// The settings that send this deployment's mail here.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("GEONEX_EMAIL__FROM".into(), "GeoNEX <geonex@geonex.test>".into()),
            ("GEONEX_EMAIL__TIMEOUT_MS".into(), "3000".into()),
        ];
        if let Some(smtp) = &self.smtp {
            env.push(("GEONEX_SMTP_URL".into(), smtp.url()));
        }
        env
    }

    /// Reads the file mailer's outbox of this deployment (embedded mode).
    pub fn attach(&mut self, deployment: &crate::helpers::Deployment) {
        self.dir = Some(deployment.data_dir.0.join("mail"));
    }

    pub fn messages(&self) -> Vec<Value> {
        match (&self.smtp, &self.dir) {
            (Some(smtp), _) => smtp.messages(),
            (None, Some(dir)) if dir.exists() => read_messages(dir),
            (None, Some(_)) => Vec::new(),
            (None, None) => panic!("attach the mailbox to the deployment first"),
        }
    }

    /// Waits until at least `n` messages arrived, and returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        wait_for_messages(n, || self.messages()).await
    }
}

/// Every message in a Maildir or a directory of `.eml` files, parsed.
fn read_messages(dir: &std::path::Path) -> Vec<Value> {
    let out = Command::new(python())
        .arg(scripts().join("read_maildir.py"))
        .arg(dir)
        .output()
        .expect("read the messages");
    assert!(out.status.success(), "read_maildir.py: {}", String::from_utf8_lossy(&out.stderr));
    match serde_json::from_slice(&out.stdout).expect("messages JSON") {
        Value::Array(v) => v,
        other => panic!("unexpected message listing {other}"),
    }
}

/// Polls `messages` until at least `n` arrived, and returns them all.
async fn wait_for_messages(n: usize, messages: impl Fn() -> Vec<Value>) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = messages();
        if m.len() >= n {
            return m;
        }
        assert!(Instant::now() < deadline, "expected {n} messages, got {}: {m:?}", m.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! The scratch resources a bench runs in, created for the run and removed after
//! it: a PostgreSQL database, a RabbitMQ vhost, a temporary directory. The bench
//! never touches anything it did not create: a database or vhost of the chosen
//! name that exists already, or one that is not empty, stops it.

use std::path::PathBuf;

use anyhow::{Context, bail};
use sqlx::Connection;

/// A database created on the server of an admin URL, dropped by `remove`.
pub struct ScratchDatabase {
    pub name: String,
    /// The database's own URL.
    pub url: String,
    admin: String,
}

impl ScratchDatabase {
    pub async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("geonex_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (admin, String::new()),
        };
        // `postgres://host/db` or `postgres://host`: the server is what comes before the database.
        let (scheme, rest) = base.split_once("://").context("--database-url must look like postgres://user@host:port/db")?;
        let server = format!("{scheme}://{}", rest.split('/').next().unwrap_or(rest));
        let db = Self { url: format!("{server}/{name}{query}"), name, admin: admin.to_owned() };
        let mut conn = sqlx::PgConnection::connect(admin).await.context("connecting to PostgreSQL (--database-url)")?;
        // `create database` refuses a name that exists: an existing database is never reused.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {}", db.name)))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the scratch database {}", db.name))?;
        let _ = conn.close().await;
        // A template database with tables in it would hand them to the scratch
        // database: the bench measures an empty one or none.
        let tables = async {
            let mut conn = sqlx::PgConnection::connect(&db.url).await?;
            let n: i64 = sqlx::query_scalar("select count(*) from pg_tables where schemaname not in ('pg_catalog', 'information_schema')")
                .fetch_one(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(n)
        }
        .await;
        match tables {
            Ok(0) => Ok(db),
            Ok(n) => {
                db.remove().await;
                bail!("the new database {} already holds {n} tables (from its template): refusing to run", db.name)
            }
            Err(e) => {
                db.remove().await;
                Err(e).context("checking the scratch database is empty")
            }
        }
    }

    pub async fn remove(&self) {
        let result = async {
            let mut conn = sqlx::PgConnection::connect(&self.admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {} with (force)", self.name)))
                .execute(&mut conn)
                .await?;
            conn.close().await
        }
        .await;
        match result {
            Ok(()) => eprintln!("dropped the scratch database {}", self.name),
            Err(e) => eprintln!("could not drop the scratch database {}: {e}", self.name),
        }
    }
}

/// A RabbitMQ vhost created with `rabbitmqctl` (on the broker's host), deleted
/// by `remove`.
pub struct ScratchVhost {
    pub name: String,
    /// The broker URL with this vhost.
    pub url: String,
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl (the bench creates its vhost with it, on the broker's host)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ScratchVhost {
    /// A new vhost on the broker of `amqp_url`, its user given every permission on it.
    pub async fn create(amqp_url: &str) -> anyhow::Result<Self> {
        let name = format!("geonex-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (scheme, rest) = amqp_url.split_once("://").context("--amqp-url must look like amqp://user:pass@host:port/vhost")?;
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let user = match authority.rsplit_once('@') {
            Some((cred, _)) => cred.split(':').next().unwrap_or("guest").to_owned(),
            None => "guest".to_owned(),
        };
        let existing = rabbitmqctl(&["list_vhosts", "--quiet", "--no-table-headers"]).await?;
        if existing.lines().any(|l| l.trim() == name) {
            bail!("the vhost {name} exists already: refusing to run");
        }
        rabbitmqctl(&["add_vhost", &name]).await?;
        let vhost = Self { url: format!("{scheme}://{authority}/{name}"), name };
        let ready = async {
            rabbitmqctl(&["set_permissions", "-p", &vhost.name, &user, ".*", ".*", ".*"]).await?;
            let queues = rabbitmqctl(&["list_queues", "-p", &vhost.name, "--quiet", "--no-table-headers", "name"]).await?;
            if queues.lines().any(|l| !l.trim().is_empty()) {
                bail!("the new vhost {} already holds queues: refusing to run", vhost.name);
            }
            Ok(())
        }
        .await;
        if let Err(e) = ready {
            vhost.remove().await;
            return Err(e);
        }
        Ok(vhost)
    }

    pub async fn remove(&self) {
        match rabbitmqctl(&["delete_vhost", &self.name]).await {
            Ok(_) => eprintln!("deleted the scratch vhost {}", self.name),
            Err(e) => eprintln!("could not delete the scratch vhost {}: {e:#}", self.name),
        }
    }
}

/// A temporary directory, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("geonex-bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

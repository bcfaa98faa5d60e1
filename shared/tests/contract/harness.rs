//! A fresh, migrated store of each kind per test, removed when the test ends.

use std::path::PathBuf;
use std::time::Duration;

use geonex_shared::store::Store;
use geonex_shared::store::postgres::PgStore;
use geonex_shared::store::sqlite::SqliteStore;
use sqlx::Connection;
use uuid::Uuid;

fn pg_admin_url() -> String {
    std::env::var("GEONEX_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Removes what a test's store lived in.
pub enum Cleanup {
    Database(String),
    Dir(PathBuf),
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        match self {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Database(name) => {
                let name = name.clone();
                // Drop runs outside async context; a short-lived runtime does the cleanup.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                    rt.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.ok()?;
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
                            .execute(&mut conn)
                            .await
                            .ok()
                    })
                })
                .join();
            }
        }
    }
}

pub async fn postgres() -> (PgStore, Cleanup) {
    let name = format!("geonex_contract_{}", Uuid::new_v4().simple());
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("connect to the test Postgres");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut conn).await.expect("create database");
    let cleanup = Cleanup::Database(name.clone());
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
    let store = PgStore::connect(&format!("{base}/{name}"), 4, Duration::from_secs(5)).await.expect("connect");
    store.migrate().await.expect("migrate");
    (store, cleanup)
}

pub async fn sqlite() -> (SqliteStore, Cleanup) {
    let dir = std::env::temp_dir().join(format!("geonex-contract-{}", Uuid::new_v4().simple()));
    let cleanup = Cleanup::Dir(dir.clone());
    let store = SqliteStore::open_in(&dir, 4, Duration::from_secs(10)).await.expect("open");
    store.run_migrations().await.expect("migrate");
    (store, cleanup)
}

/// `contract!(case_a, case_b)`: for each generic `async fn case(store)` in the
/// calling module, a test module `case` with a `postgres` and a `sqlite` test.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test]
                async fn postgres() {
                    let (store, _cleanup) = crate::harness::postgres().await;
                    super::$case(store).await
                }

                #[tokio::test]
                async fn sqlite() {
                    let (store, _cleanup) = crate::harness::sqlite().await;
                    super::$case(store).await
                }
            }
        )*
    };
}

//! PostgreSQL for the tests (feature `postgres`): a fresh database per test on the server that
//! `APEX_TEST_POSTGRES_URL` names (a role allowed to create databases; the password, if any,
//! in `PGPASSWORD`). Without the variable a test is skipped, except under CI (`CI` set), where
//! it fails: CI must run them (`.ci/run` starts a server and sets both).

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The environment variable naming the test server.
pub const URL_ENV: &str = "APEX_TEST_POSTGRES_URL";

/// The server's URL, or `None` (skip) when unset outside CI.
///
/// # Panics
/// When the variable is unset under CI.
pub fn base_url() -> Option<String> {
    match std::env::var(URL_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => panic!(
            "{URL_ENV} is not set under CI: the PostgreSQL tests must run (.ci/run starts a server)"
        ),
        _ => {
            eprintln!(
                "skipped: {URL_ENV} is not set (see apex-connect-core/README.md, \
                 \"Running the PostgreSQL tests locally\")"
            );
            None
        }
    }
}

/// A database made for one test.
#[derive(Debug)]
pub struct TestDb {
    /// Its URL (no password).
    pub url: String,
    name: String,
    admin: String,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A new empty database, or `None` when the tests are skipped.
///
/// # Panics
/// When the server refuses the connection or the `CREATE DATABASE` (a test cannot go on).
pub async fn fresh() -> Option<TestDb> {
    let admin = base_url()?;
    let name = format!(
        "apex_t_{}_{}_{:08x}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst),
        rand::random::<u32>()
    );
    let mut conn = connect(&admin).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create a test database on {URL_ENV}: {e}"));
    conn.close().await.ok();
    let mut url = url::Url::parse(&admin).expect("APEX_TEST_POSTGRES_URL is a URL");
    url.set_path(&name);
    Some(TestDb {
        url: url.to_string(),
        name,
        admin,
    })
}

impl TestDb {
    /// A connection to this database (for a test's own SQL).
    ///
    /// # Panics
    /// When the server refuses it.
    pub async fn connect(&self) -> PgConnection {
        connect(&self.url).await
    }

    /// Drops the database (connections still open are ended).
    ///
    /// # Panics
    /// When the server refuses it.
    pub async fn drop_db(self) {
        let mut conn = connect(&self.admin).await;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
        conn.close().await.ok();
    }
}

async fn connect(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url).expect("APEX_TEST_POSTGRES_URL parses");
    PgConnection::connect_with(&options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {URL_ENV}: {e}"))
}

//! The PostgreSQL databases of test servers: each server gets a fresh one, named
//! `myelin_t_<pid>_<n>_<random>` so that `.ci/run` can drop those a killed test process left
//! behind (their pid is gone), and drops it when it stops unless [`keep_data`] says otherwise.

use std::sync::atomic::{AtomicU32, Ordering};

/// The PostgreSQL server of the tests when `PG_TEST_URL` is not set (CI: trust auth on loopback).
pub const DEFAULT_PG_URL: &str = "postgres://root@127.0.0.1:5432/test";

/// The PostgreSQL URL the tests administer databases through (`PG_TEST_URL`).
pub fn pg_admin_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

/// Whether `TEST_KEEP_DATA` asks to keep test directories and databases for inspection.
pub fn keep_data() -> bool {
    std::env::var_os("TEST_KEEP_DATA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A name no other server of any test process on this machine has: pid, counter, random.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}_{}_{:08x}", std::process::id(), n, nanos)
}

/// Creates a fresh database on the server of [`pg_admin_url`]; its name and URL.
pub async fn create_pg_database() -> (String, String) {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("myelin_t_{}", unique_suffix());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL tests need a server at {admin} (set PG_TEST_URL to use another): {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).expect("PG_TEST_URL is not a URL");
    url.set_path(&format!("/{name}"));
    (name, url.to_string())
}

/// Drops a test database; best effort, callable from `Drop`.
pub fn drop_pg_database(name: String) {
    // Drop runs inside the test's runtime, which cannot be blocked on; use a private one.
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        rt.block_on(async move {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&pg_admin_url()).await.ok()?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                .execute(&mut conn)
                .await
                .ok()?;
            conn.close().await.ok()
        })
    });
    let _ = handle.join();
}

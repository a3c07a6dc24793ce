//! Operating a server over real HTTP on both backends: `/health`, delegation through
//! `/.well-known/matrix/*`, and the Synapse-compatible admin API (`/_synapse/admin/...`).

#[macro_use]
mod common;

use common::{Backend, Resp, TestServer, set_config};
use reqwest::Method;
use serde_json::json;

/// Asserts a Matrix error response.
#[track_caller]
fn assert_error(resp: &Resp, status: u16, errcode: &str) {
    assert_eq!(resp.0, status, "expected {status} {errcode}, got {resp:?}");
    assert_eq!(resp.1["errcode"], errcode, "expected {errcode}, got {resp:?}");
    assert!(resp.1["error"].is_string(), "error responses carry a human-readable `error`: {resp:?}");
}

// ---------------------------------------------------------------------------------------------
// Health

both_backends!(health_answers_ok_while_the_database_answers, |server| async move {
    let res = server.request(Method::GET, "/health").send().await.expect("GET /health");
    assert_eq!(res.status().as_u16(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    assert_eq!(res.text().await.unwrap(), "OK");
});

/// Turns connections to the server's PostgreSQL database on or off and ends the open ones.
async fn pg_connections(server: &TestServer, allow: bool) {
    use sqlx::Connection;
    let url = server.config()["database"]["url"].as_str().unwrap().to_owned();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let mut conn = sqlx::PgConnection::connect(&common::pg_admin_url()).await.expect("admin connection");
    let sql = format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS {allow}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("ALTER DATABASE");
    if !allow {
        let sql = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.expect("terminating connections");
    }
    let _ = conn.close().await;
}

#[tokio::test]
async fn health_is_503_while_the_database_is_down() {
    let server = TestServer::start(Backend::Postgres).await;
    assert_eq!(server.get("/health").await, (200, json!("OK")));
    pg_connections(&server, false).await;
    let started = std::time::Instant::now();
    let (status, _) = server.get("/health").await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "took {:?}", started.elapsed());
    pg_connections(&server, true).await;
    // The pool connects again: healthy without a restart.
    let mut healthy = false;
    for _ in 0..50 {
        if server.get("/health").await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the server did not become healthy again");
}

// ---------------------------------------------------------------------------------------------
// Delegation and discovery

both_backends!(
    well_known_follows_public_baseurl_and_well_known_server,
    with | c | {
        set_config(c, "public_baseurl", "https://matrix.example.org/");
        set_config(c, "well_known.server", "matrix.example.org:443");
    },
    |server| async move {
        let (status, body) = server.get("/.well-known/matrix/client").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["m.homeserver"]["base_url"], "https://matrix.example.org", "{body}");
        let (status, body) = server.get("/.well-known/matrix/server").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, json!({ "m.server": "matrix.example.org:443" }));
        // Nothing configured for support: 404.
        assert_error(&server.get("/.well-known/matrix/support").await, 404, "M_NOT_FOUND");
    }
);

both_backends!(
    well_known_support_lists_the_configured_contacts,
    with | c | {
        let contacts: toml::Value = toml::from_str::<toml::Table>(
            r#"c = [
            { role = "m.role.admin", matrix_id = "@admin:example.org", email_address = "admin@example.org" },
            { role = "m.role.security", email_address = "security@example.org" },
        ]"#,
        )
        .unwrap()["c"]
            .clone();
        set_config(c, "well_known.support_contacts", contacts);
        set_config(c, "well_known.support_page", "https://example.org/support");
    },
    |server| async move {
        let (status, body) = server.get("/.well-known/matrix/support").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({
                "contacts": [
                    { "role": "m.role.admin", "matrix_id": "@admin:example.org", "email_address": "admin@example.org" },
                    { "role": "m.role.security", "email_address": "security@example.org" },
                ],
                "support_page": "https://example.org/support",
            })
        );
    }
);

/// With the server name's port being the HTTPS federation listener, clients are sent to the
/// client listener, not to the federation port (which speaks TLS and may not serve them).
#[tokio::test]
async fn well_known_client_never_points_at_the_federation_port() {
    let fed_port = common::free_port();
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let server = TestServer::start_with(Backend::Sqlite, |c| {
        set_config(c, "server_name", format!("localhost:{fed_port}"));
        set_config(c, "listen.federation", format!("127.0.0.1:{fed_port}"));
        set_config(c, "tls.cert", cert_path.display().to_string());
        set_config(c, "tls.key", key_path.display().to_string());
    })
    .await;
    let (status, body) = server.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200, "{body}");
    let client_port = server.url().rsplit(':').next().unwrap().to_owned();
    assert_eq!(body["m.homeserver"]["base_url"], format!("http://localhost:{client_port}"), "{body}");
    // The federation delegation still names the federation port.
    assert_eq!(server.get("/.well-known/matrix/server").await.1["m.server"], format!("localhost:{fed_port}"));
}

#[test]
fn bad_delegation_settings_stop_start_up_naming_the_key() {
    for (key, value) in [
        ("MYELIN_PUBLIC_BASEURL", "matrix.example.org"),
        ("MYELIN_WELL_KNOWN__SERVER", "https://matrix.example.org"),
        ("MYELIN_WELL_KNOWN__SUPPORT_PAGE", "ftp://example.org"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::myelin_command()
            .args(["generate-config"])
            .current_dir(dir.path())
            .output()
            .expect("running myelin");
        assert!(out.status.success());
        let config = dir.path().join("myelin.toml");
        std::fs::write(&config, &out.stdout).unwrap();
        let out = common::myelin_command()
            .args(["register-user", "--config", config.to_str().unwrap(), "someone", "--password", "pw"])
            .env(key, value)
            .current_dir(dir.path())
            .output()
            .expect("running myelin");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value} was accepted");
        let name = key.trim_start_matches("MYELIN_").replace("__", ".").to_lowercase();
        assert!(stderr.contains(&format!("`{name}`")), "{key}: {stderr}");
    }
}

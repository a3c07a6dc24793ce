//! A real Synapse (1.163, from PyPI) for tests that need one as a peer or as a source of data,
//! in the cached virtualenv `$HOME/.cache/myelin-synapse-venv`: the interop tests of
//! `tests/synapse.rs` and the import tests of `tests/import_synapse.rs`.
//!
//! Test binaries run in parallel processes, and two `pip install`s into one virtualenv break
//! each other, so its creation holds an exclusive `flock` on `myelin-synapse-venv.lock` beside
//! it (besides a mutex for the tests of one binary).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::{Client, PASSWORD, ca, free_port, http_client, send};

/// The virtualenv's directory.
pub fn venv() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".cache/myelin-synapse-venv")
}

/// Whether the Synapse tests are to be skipped (`SKIP_SYNAPSE_TESTS=1`, where PyPI is unreachable).
pub fn skip() -> bool {
    std::env::var_os("SKIP_SYNAPSE_TESTS").is_some_and(|v| v == "1")
}

/// The virtualenv's python, creating the virtualenv unless Synapse 1.163 already imports.
pub fn ensure_synapse() -> PathBuf {
    static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_here = CREATING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = venv();
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).expect("creating ~/.cache");
    }
    let lock = std::fs::File::create(venv.with_extension("lock")).expect("venv lock file");
    // SAFETY: flock(2) on a descriptor we own; released when `lock` is dropped.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock on the venv lock");
    let python = venv.join("bin/python");
    let ok = |py: &Path| {
        Command::new(py)
            .args(["-c", "import synapse, sys; sys.exit(0 if synapse.__version__.startswith('1.163') else 1)"])
            .status()
            .is_ok_and(|s| s.success())
    };
    let has_postgres = |py: &Path| Command::new(py).args(["-c", "import psycopg2"]).status().is_ok_and(|s| s.success());
    let pip = venv.join("bin/pip");
    if python.exists() && ok(&python) {
        // A virtualenv made before the import tests has no PostgreSQL driver: add Synapse's extra.
        if !has_postgres(&python) {
            let status = Command::new(&pip)
                .args(["install", "--quiet", "matrix-synapse[postgres]==1.163.*"])
                .status()
                .expect("pip");
            assert!(status.success(), "pip install matrix-synapse[postgres] failed");
        }
        return python;
    }
    let status = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 -m venv");
    assert!(status.success(), "creating the Synapse virtualenv failed");
    let status = Command::new(&pip).args(["install", "--quiet", "--upgrade", "pip"]).status().expect("pip");
    assert!(status.success(), "upgrading pip failed");
    let status =
        Command::new(&pip).args(["install", "--quiet", "matrix-synapse[postgres]==1.163.*"]).status().expect("pip");
    assert!(status.success(), "pip install matrix-synapse failed");
    assert!(ok(&python) && has_postgres(&python), "Synapse 1.163 does not import after installation");
    python
}

/// A Synapse process on SQLite or PostgreSQL, server name `ip:8448` (federation over TLS from
/// the test CA on `ip:8448`, the client API in plain HTTP on another port of `ip`).
pub struct SynapseServer {
    /// Its PostgreSQL database, dropped with it.
    pg_database: Option<String>,
    /// Its IP address.
    pub ip: String,
    /// Its directory: `homeserver.yaml`, `homeserver.db`, `media/`, `signing.key`, logs.
    pub dir: PathBuf,
    child: Option<Child>,
    /// The plain-HTTP client port.
    pub client_port: u16,
}

impl SynapseServer {
    /// Client API base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }
    /// `ip:8448`.
    pub fn name(&self) -> String {
        format!("{}:8448", self.ip)
    }
    /// Its configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("homeserver.yaml")
    }
    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("homeserver.log")).unwrap_or_default()
    }

    /// Starts Synapse on `ip` on SQLite and waits until it answers.
    pub async fn start(ip: &str) -> Self {
        Self::start_on(ip, super::Backend::Sqlite).await
    }

    /// Starts Synapse on `ip` on `backend` (PostgreSQL: a new database with the `C` collation
    /// Synapse asks for, on the server of `PG_TEST_URL`) and waits until it answers.
    pub async fn start_on(ip: &str, backend: super::Backend) -> Self {
        let python = ensure_synapse();
        let ca = ca();
        let (cert, key) = ca.issue(ip);
        let dir = tempfile::Builder::new().prefix("myelin-synapse-").tempdir().expect("tempdir").keep();
        let client_port = free_port(ip);
        let d = dir.display().to_string();
        let rc = "{per_second: 1000, burst_count: 1000}";
        let (pg_database, database) = match backend {
            super::Backend::Sqlite => (None, format!("name: sqlite3\n  args:\n    database: \"{d}/homeserver.db\"")),
            super::Backend::Postgres => {
                use sqlx::Connection;
                let admin = url::Url::parse(&super::pg_admin_url()).expect("PG_TEST_URL is not a URL");
                let name = format!("myelin_synapse_{}", rand::random::<u64>());
                let mut conn = sqlx::PgConnection::connect(admin.as_str()).await.expect("PostgreSQL");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE \"{name}\" TEMPLATE template0 LC_COLLATE 'C' LC_CTYPE 'C' ENCODING 'UTF8'"
                )))
                .execute(&mut conn)
                .await
                .expect("CREATE DATABASE for Synapse");
                let _ = conn.close().await;
                let host = admin.host_str().unwrap_or("127.0.0.1");
                let port = admin.port().unwrap_or(5432);
                let user = if admin.username().is_empty() { "postgres" } else { admin.username() };
                let password = admin.password().map(|p| format!("\n    password: \"{p}\"")).unwrap_or_default();
                let args = format!(
                    "name: psycopg2\n  args:\n    user: \"{user}\"{password}\n    host: \"{host}\"\n    port: {port}\n    dbname: \"{name}\"\n    cp_min: 1\n    cp_max: 5"
                );
                (Some(name), args)
            }
        };
        let config = format!(
            r#"
server_name: "{ip}:8448"
pid_file: "{d}/homeserver.pid"
listeners:
  - port: 8448
    bind_addresses: ["{ip}"]
    type: http
    tls: true
    resources:
      - names: [client, federation]
        compress: false
  - port: {client_port}
    bind_addresses: ["{ip}"]
    type: http
    tls: false
    resources:
      - names: [client]
        compress: false
tls_certificate_path: "{cert}"
tls_private_key_path: "{key}"
federation_custom_ca_list: ["{ca}"]
database:
  {database}
log_config: "{d}/log.yaml"
media_store_path: "{d}/media"
signing_key_path: "{d}/signing.key"
report_stats: false
enable_registration: true
enable_registration_without_verification: true
registration_shared_secret: "shared-secret-for-tests"
macaroon_secret_key: "macaroon-secret-for-tests"
form_secret: "form-secret-for-tests"
trusted_key_servers: []
suppress_key_server_warning: true
# Loopback peers (other test servers) are allowed; the rest of Synapse's default list stays.
ip_range_blacklist:
  - "10.0.0.0/8"
  - "172.16.0.0/12"
  - "192.168.0.0/16"
  - "100.64.0.0/10"
  - "169.254.0.0/16"
  - "fe80::/10"
  - "fc00::/7"
federation:
  destination_min_retry_interval: 200
  destination_retry_multiplier: 2
  destination_max_retry_interval: 2000
# Synapse lets only admins publish rooms by default.
room_list_publication_rules:
  - action: allow
rc_message: {rc}
rc_registration: {rc}
rc_joins:
  local: {rc}
  remote: {rc}
rc_joins_per_room: {rc}
rc_invites:
  per_room: {rc}
  per_user: {rc}
  per_issuer: {rc}
rc_login:
  address: {rc}
  account: {rc}
  failed_attempts: {rc}
rc_federation:
  window_size: 1000
  sleep_limit: 1000
  sleep_delay: 1
  reject_limit: 10000
  concurrent: 100
presence:
  enabled: true
"#,
            cert = cert.display(),
            key = key.display(),
            ca = ca.pem().display(),
        );
        std::fs::write(dir.join("homeserver.yaml"), config).expect("homeserver.yaml");
        std::fs::write(
            dir.join("log.yaml"),
            format!(
                r#"
version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "{d}/homeserver.log"
    filters: [context]
filters:
  context:
    (): synapse.logging.context.LoggingContextFilter
    request: ""
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: INFO
  handlers: [file]
disable_existing_loggers: false
"#
            ),
        )
        .expect("log.yaml");
        let status = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.join("homeserver.yaml"))
            .arg("--generate-keys")
            .current_dir(&dir)
            .status()
            .expect("generating Synapse keys");
        assert!(status.success(), "synapse --generate-keys failed");
        let child = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(dir.join("homeserver.yaml"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout.log")).expect("stdout"))
            .stderr(std::fs::File::create(dir.join("stderr.log")).expect("stderr"))
            .spawn()
            .expect("starting Synapse");
        let mut s = Self { ip: ip.to_owned(), dir, child: Some(child), client_port, pg_database };
        let http = http_client();
        let start = Instant::now();
        loop {
            if let Some(st) = s.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!(
                    "Synapse exited with {st}:\n{}\n{}",
                    std::fs::read_to_string(s.dir.join("stderr.log")).unwrap_or_default(),
                    s.log()
                );
            }
            if let Ok(r) = http.get(format!("{}/_matrix/client/versions", s.url())).send().await
                && r.status() == 200
            {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "Synapse did not start:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        s
    }

    /// Registers `local` (password [`PASSWORD`]) through User-Interactive Auth; a client of
    /// the new device.
    pub async fn register(&self, local: &str) -> Client {
        let http = http_client();
        let url = format!("{}/_matrix/client/v3/register", self.url());
        let (s, b) = send(http.post(&url).json(&json!({ "username": local, "password": PASSWORD }))).await;
        let session = if s == 401 { b["session"].as_str().map(str::to_owned) } else { None };
        let (s, b) = send(http.post(&url).json(&json!({
            "username": local,
            "password": PASSWORD,
            "auth": { "type": "m.login.dummy", "session": session },
        })))
        .await;
        assert_eq!(s, 200, "Synapse register {local}: {b}");
        Client::from_login(&http, &self.url(), &b, PASSWORD)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Stops Synapse with SIGTERM and waits for it to exit (SIGKILL after 20 s).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SynapseServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("Synapse kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if let Some(name) = self.pg_database.take() {
            super::drop_pg_database(name);
        }
    }
}

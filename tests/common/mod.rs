//! The shared integration-test harness: real `myelin` processes over real HTTP.
//!
//! Every test file does `#[macro_use] mod common;` and then either starts servers itself
//! ([`TestServer::start`], [`TestServer::start_with`]) or lets [`both_backends!`] run one body
//! against embedded SQLite and PostgreSQL.
//!
//! Each [`TestServer`] is the real binary (`CARGO_BIN_EXE_myelin`) with its own temporary data
//! directory, its own loopback port and, on PostgreSQL, its own freshly created database, so
//! tests never see each other's data and can run in parallel (in threads under `cargo test`, in
//! processes under nextest). The server's stdout and stderr go to `server.log` in the temporary
//! directory and are printed when start-up fails.
//!
//! ```ignore
//! #[macro_use]
//! mod common;
//! use common::*;
//!
//! // Defines `send_message::sqlite` and `send_message::postgres`.
//! both_backends!(send_message, |server| async move {
//!     let alice = server.register("alice").await;          // open registration, PASSWORD
//!     let (status, body) = alice.post("/_matrix/client/v3/createRoom", &json!({})).await;
//!     assert_eq!(status, 200, "{body}");
//! });
//!
//! // With a configuration tweak, and process control for durability tests.
//! both_backends!(survives_crash, with |c| set_config(c, "rate_limits.enabled", true), |server| async move {
//!     let mut server = server;
//!     server.kill9();                 // SIGKILL, no shutdown code runs
//!     server.start_again().await;     // same data, same port, same server_name
//!     server.restart().await;         // SIGTERM (asserting exit 0), then start again
//! });
//! ```
//!
//! Environment (deliberately not `MYELIN_*`: the spawned server would read those as
//! configuration, and the harness strips them from the child's environment):
//! - `PG_TEST_URL`: a PostgreSQL URL whose user may create databases
//!   (default `postgres://root@127.0.0.1:5432/test`).
//! - `TEST_KEEP_DATA=1`: keep temporary directories and databases for inspection.

// Each test crate uses a different subset of the helpers (and of those re-exported).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
pub use test_support::http::{Client, PASSWORD, Resp, http_client, init_crypto, send};
pub use test_support::pg::{DEFAULT_PG_URL, create_pg_database, drop_pg_database, keep_data, pg_admin_url};
pub use test_support::{enc, nio_python};

pub mod raw;

/// How long a server may take to answer `/versions` after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which database a [`TestServer`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite in the server's temporary data directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server named by `PG_TEST_URL`.
    Postgres,
}

/// Runs one async test body against both backends: `both_backends!(name, |server| async move
/// { ... })` defines module `name` with `#[tokio::test]`s `sqlite` and `postgres`, each given a
/// fresh [`TestServer`] with the default test configuration. With a configuration tweak:
/// `both_backends!(name, with |c| set_config(c, "registration.mode", "token"), |server| ...)`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, |$server:ident| $body:expr) => {
        $crate::both_backends!($name, with | _config | {}, |$server| $body);
    };
    ($name:ident, with $tweak:expr, |$server:ident| $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let f = |$server: $crate::common::TestServer| $body;
                let server = $crate::common::TestServer::start_with($crate::common::Backend::Sqlite, $tweak).await;
                f(server).await;
            }

            #[tokio::test]
            async fn postgres() {
                let f = |$server: $crate::common::TestServer| $body;
                let server = $crate::common::TestServer::start_with($crate::common::Backend::Postgres, $tweak).await;
                f(server).await;
            }
        }
    };
}

/// `v` with `unsigned.age` removed from every event in it: the age moves with the clock, so
/// two answers about the same events compare equal only without it.
pub fn without_age(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(o) => {
                if let Some(Value::Object(u)) = o.get_mut("unsigned") {
                    u.remove("age");
                }
                o.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A free loopback port. Another process may grab it before the server binds it; start-up
/// retries with a new port when that happens.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
}

/// `Command` for the `myelin` binary with every `MYELIN_*` variable of the test environment
/// removed, so that only the configuration the test writes applies.
pub fn myelin_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_myelin"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MYELIN_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Sets `dotted.key` (e.g. `"registration.mode"`) in a configuration table, creating tables
/// on the way: `TestServer::start_with(b, |c| set_config(c, "rate_limits.enabled", true))`.
pub fn set_config(config: &mut toml::Table, dotted: &str, value: impl Into<toml::Value>) {
    let mut keys: Vec<&str> = dotted.split('.').collect();
    let last = keys.pop().expect("non-empty key");
    let mut table = config;
    for key in keys {
        table = table
            .entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .unwrap_or_else(|| panic!("config key {key} is not a table"));
    }
    table.insert(last.to_owned(), value.into());
}

/// The body of a 200 answer (fails the test otherwise).
#[track_caller]
pub fn ok(resp: &Resp) -> &Value {
    assert_eq!(resp.0, 200, "expected 200, got {resp:?}");
    &resp.1
}

/// Checks a Matrix error answer: the status, the errcode, and the human-readable `error` every
/// error carries.
#[track_caller]
pub fn assert_error(resp: &Resp, status: u16, errcode: &str) {
    assert_eq!(resp.0, status, "expected {status} {errcode}, got {resp:?}");
    assert_eq!(resp.1["errcode"], errcode, "expected {errcode}, got {resp:?}");
    assert!(resp.1["error"].is_string(), "error responses carry a human-readable `error`: {resp:?}");
}

/// Creates a room with the `/createRoom` body `body`; its id.
pub async fn create_room(c: &Client, body: Value) -> String {
    ok(&c.post("/_matrix/client/v3/createRoom", &body).await)["room_id"].as_str().expect("room_id").to_owned()
}

/// A server admin, `root`, made with `myelin register-user --admin` (as an operator does).
pub async fn make_admin(server: &TestServer) -> Client {
    let config = server.config_path().to_str().unwrap().to_owned();
    let (done, _, stderr) =
        server.cli(&["register-user", "--config", &config, "root", "--password", "rootpw", "--admin"]);
    assert!(done, "{stderr}");
    server.login("root", "rootpw").await
}

/// Joins a room (by id or alias) through `POST /join/{roomIdOrAlias}`.
pub async fn join(c: &Client, room: &str) {
    ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), &json!({})).await);
}

/// A running (or stopped) `myelin serve` on its own data.
pub struct TestServer {
    /// Which database it runs on.
    pub backend: Backend,
    dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    config: toml::Table,
    port: u16,
    child: Option<Child>,
    /// Set once the server has answered; from then on its port and name must not change.
    started_once: bool,
    /// Extra environment for the server process (e.g. `MYELIN_*` overrides under test).
    env: Vec<(String, String)>,
    pg_database: Option<String>,
    /// Another process of a server started earlier (same name, database and data directory;
    /// see [`TestServer::start_sibling`]).
    sibling: bool,
    http: reqwest::Client,
}

impl TestServer {
    /// Starts a server with the default test configuration (open registration, no rate limits).
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server after `tweak` has edited the configuration table, e.g.
    /// `cfg["registration"]["mode"] = "token".into()`. The table already holds every section
    /// the harness sets (`listen`, `database`, `registration`, `rate_limits`, `log`).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut toml::Table)) -> Self {
        let mut server = Self::prepare(backend, tweak).await;
        server.start_again().await;
        server
    }

    /// Creates data directory, database and configuration without starting the process; call
    /// [`TestServer::start_again`] to start it.
    pub async fn prepare(backend: Backend, tweak: impl FnOnce(&mut toml::Table)) -> Self {
        let dir = tempfile::Builder::new().prefix("myelin-test-").tempdir().expect("creating temp dir");
        let data_dir = dir.path().join("data");
        let (pg_database, db_url) = match backend {
            Backend::Sqlite => (None, format!("sqlite://{}", data_dir.join("myelin.db").display())),
            Backend::Postgres => {
                let (name, url) = create_pg_database().await;
                (Some(name), url)
            }
        };
        let port = free_port();
        let mut config: toml::Table = toml::from_str(&format!(
            r#"
            server_name = "localhost:{port}"
            data_dir = {data_dir:?}
            [listen]
            client = "127.0.0.1:{port}"
            [database]
            url = {db_url:?}
            max_connections = 8
            [registration]
            mode = "open"
            [rate_limits]
            enabled = false
            [log]
            level = "warn"
            "#,
            data_dir = data_dir.display().to_string(),
        ))
        .expect("harness config is TOML");
        tweak(&mut config);
        let config_path = dir.path().join("myelin.toml");
        let server = Self {
            backend,
            dir: Some(dir),
            config_path,
            config,
            port,
            child: None,
            started_once: false,
            env: Vec::new(),
            pg_database,
            sibling: false,
            http: http_client(),
        };
        server.write_config();
        server
    }

    /// Starts another process of this server: the same configuration (server name, database,
    /// data directory with its signing key and media) on a port of its own, as an operator
    /// scales out on PostgreSQL. Its configuration and `server.log` live in a directory of
    /// its own; the database and data directory belong to `self`, which must outlive it.
    pub async fn start_sibling(&self) -> Self {
        let mut sibling = self.prepare_sibling();
        sibling.start_again().await;
        sibling
    }

    /// [`TestServer::start_sibling`] without starting the process.
    pub fn prepare_sibling(&self) -> Self {
        let dir = tempfile::Builder::new().prefix("myelin-test-").tempdir().expect("creating temp dir");
        let port = free_port();
        let mut config = self.config.clone();
        config["listen"].as_table_mut().expect("[listen]").insert("client".into(), format!("127.0.0.1:{port}").into());
        let config_path = dir.path().join("myelin.toml");
        let server = Self {
            backend: self.backend,
            dir: Some(dir),
            config_path,
            config,
            port,
            child: None,
            started_once: false,
            env: self.env.clone(),
            pg_database: None,
            sibling: true,
            http: http_client(),
        };
        server.write_config();
        server
    }

    fn write_config(&self) {
        std::fs::write(&self.config_path, toml::to_string(&self.config).expect("serialising config"))
            .expect("writing test config");
    }

    /// Sets an environment variable for the server process from its next start on (for
    /// testing `MYELIN_*` overrides; the test process itself never sets them).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The temporary directory holding config, data and `server.log`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// Path of the configuration file the server runs with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The configuration as written (after the test's tweak).
    pub fn config(&self) -> &toml::Table {
        &self.config
    }

    /// Everything the server wrote to stdout and stderr so far (across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    /// The client API base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The configured `server_name`.
    pub fn server_name(&self) -> String {
        self.config["server_name"].as_str().expect("server_name").to_owned()
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    /// A connection to the server's own database (SQLite file or PostgreSQL), for tests that
    /// check what was stored.
    pub async fn database(&self) -> sqlx::AnyConnection {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let url = self.config["database"]["url"].as_str().expect("database.url").to_owned();
        sqlx::AnyConnection::connect(&url).await.expect("connecting to the test database")
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process on the existing data and waits until `/versions` answers 200.
    /// Panics (with the server's log) if it does not within 30 s or exits early.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "server is already running");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir().join("server.log"))
                .expect("opening server.log");
            let log_len = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let child = myelin_command()
                .arg("serve")
                .arg("--config")
                .arg(&self.config_path)
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .current_dir(self.dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawning myelin");
            self.child = Some(child);
            match self.wait_ready().await {
                Ok(()) => return,
                Err(status) => {
                    let log = self.log();
                    let new_output = log.get(log_len..).unwrap_or(&log);
                    // A parallel test may have taken the port between our probe and the bind;
                    // a server that never ran (nothing stored under its name yet) can move.
                    if new_output.contains("binding listen.client") && attempt < 5 && !self.started_once {
                        self.move_to_new_port();
                        continue;
                    }
                    panic!(
                        "myelin did not become ready ({status}); server log:\n{log}",
                        status = status.map_or("timed out after 30 s".to_owned(), |s| format!("exited with {s}")),
                    );
                }
            }
        }
    }

    fn move_to_new_port(&mut self) {
        let port = free_port();
        self.port = port;
        // A sibling serves the name of the server it belongs to.
        if !self.sibling {
            self.config["server_name"] = format!("localhost:{port}").into();
        }
        self.config["listen"]
            .as_table_mut()
            .expect("[listen]")
            .insert("client".into(), format!("127.0.0.1:{port}").into());
        self.write_config();
    }

    async fn wait_ready(&mut self) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/_matrix/client/versions", self.url());
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                self.child = None;
                return Err(Some(status));
            }
            if let Ok(res) = self.http.get(&url).timeout(Duration::from_secs(2)).send().await
                && res.status() == 200
            {
                self.started_once = true;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill9();
                return Err(None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and waits (up to 30 s) for the process to exit; returns its status.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        // SAFETY: plain kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("myelin did not exit within 30 s of SIGTERM; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop (SIGTERM) and start again on the same data and port.
    pub async fn restart(&mut self) {
        let status = self.stop().await;
        assert!(status.success(), "myelin exited with {status} on SIGTERM; log:\n{}", self.log());
        self.start_again().await;
    }

    /// Kills the process with SIGKILL (no shutdown code runs), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A request to `path` (starting with `/`) on this server, without credentials.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url()))
    }

    /// Unauthenticated GET.
    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(reqwest::Method::GET, path)).await
    }

    /// Unauthenticated POST with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        send(self.request(reqwest::Method::POST, path).json(body)).await
    }

    /// Unauthenticated PUT with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Resp {
        send(self.request(reqwest::Method::PUT, path).json(body)).await
    }

    /// Unauthenticated DELETE with a JSON body.
    pub async fn delete(&self, path: &str, body: &Value) -> Resp {
        send(self.request(reqwest::Method::DELETE, path).json(body)).await
    }

    /// Registers `localpart` with password [`PASSWORD`] (open registration, `m.login.dummy`)
    /// and returns the logged-in client. Panics unless the server answers 200.
    pub async fn register(&self, localpart: &str) -> Client {
        test_support::http::register(&self.http, &self.url(), localpart).await
    }

    /// Logs in with `m.id.user` and a password; panics unless the server answers 200.
    pub async fn login(&self, localpart: &str, password: &str) -> Client {
        let (status, body) = self
            .post(
                "/_matrix/client/v3/login",
                &json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": localpart },
                    "password": password,
                }),
            )
            .await;
        assert_eq!(status, 200, "login {localpart}: {body}");
        self.client_from(&body, password)
    }

    /// A [`Client`] from a `/register` or `/login` answer.
    pub fn client_from(&self, body: &Value, password: &str) -> Client {
        Client::from_login(&self.http, &self.url(), body, password)
    }

    /// Runs `myelin <args>` in the server's directory (pass `--config` and
    /// [`TestServer::config_path`] to act on its data; the server may be running) and returns
    /// (exit success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        self.cli_env(args, &[])
    }

    /// [`TestServer::cli`] with extra environment variables for the command.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
        let out = myelin_command()
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir())
            .output()
            .expect("running myelin");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
        if keep_data() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping test data in {}", dir.keep().display());
            }
            if let Some(db) = &self.pg_database {
                eprintln!("keeping PostgreSQL database {db}");
            }
            return;
        }
        if let Some(db) = self.pg_database.take() {
            drop_pg_database(db);
        }
    }
}

/// Runs `tests/nio/<script>` with the venv's Python and `args`; returns exit success, the JSON
/// values it printed on stdout (one per line) and its stderr.
pub async fn run_nio_script(script: &str, args: &[&str]) -> (bool, Vec<Value>, String) {
    let python = nio_python();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nio").join(script);
    let child = tokio::process::Command::new(python)
        .arg(&path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning python");
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within 120 s"))
        .expect("waiting for python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let values = stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{script} printed non-JSON {l:?}: {e}")))
        .collect();
    (out.status.success(), values, String::from_utf8_lossy(&out.stderr).into_owned())
}

//! Harness: a real `myelin` process on loopback and matrix-rust-sdk clients logged in to it.
//!
//! The `myelin` binary is found like federation-tests finds it (`env!("CARGO_BIN_EXE_myelin")`
//! exists only in the root crate): `$CARGO_TARGET_DIR/debug/myelin` (or the workspace
//! `target/`), built once per test process with `cargo build -p myelin` unless it is newer
//! than every source. Each [`TestServer`] has its own temporary directory, SQLite database and
//! port; its output goes to `server.log` there, printed when start-up fails. `TEST_KEEP_DATA=1`
//! keeps the directory; `SDK_LOG` (an `EnvFilter`, e.g. `matrix_sdk=debug`) prints what the
//! SDK logs, which is where it reports responses it could not use.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use matrix_sdk::Client;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::sliding_sync::VersionBuilder;
pub use test_support::myelin_bin;

/// Password of every test user.
pub const PASSWORD: &str = "sdk test password";

/// How long a server may take to answer `/versions` after being spawned.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port. Another process may take it before the server binds it; start-up
/// retries with a new port when that happens.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("binding 127.0.0.1:0").port()
}

fn keep_data() -> bool {
    std::env::var_os("TEST_KEEP_DATA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Prints the SDK's logs to the test's output when `SDK_LOG` is set.
fn init_sdk_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("SDK_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A running `myelin serve` on SQLite in a temporary directory; killed when dropped.
pub struct TestServer {
    dir: Option<tempfile::TempDir>,
    port: u16,
    child: Option<Child>,
}

impl TestServer {
    /// Starts a server with open registration and no rate limits.
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// Starts a server whose configuration file ends with `extra` (TOML: whole sections, e.g.
    /// `"[sessions]\nrefreshable_access_token_lifetime_ms = 2000\n"`).
    pub async fn start_with(extra: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("myelin-sdk-test-").tempdir().expect("creating temp dir");
        let mut server = Self { dir: Some(dir), port: 0, child: None };
        for attempt in 1.. {
            server.port = free_port();
            let data_dir = server.dir().join("data");
            let config = format!(
                "server_name = \"localhost:{port}\"\n\
                 data_dir = {data_dir:?}\n\
                 [listen]\nclient = \"127.0.0.1:{port}\"\n\
                 [database]\nurl = {db:?}\nmax_connections = 8\n\
                 [registration]\nmode = \"open\"\n\
                 [rate_limits]\nenabled = false\n\
                 [log]\nlevel = \"warn\"\n\
                 {extra}",
                port = server.port,
                data_dir = data_dir.display().to_string(),
                db = format!("sqlite://{}", data_dir.join("myelin.db").display()),
            );
            std::fs::write(server.config_path(), config).expect("writing test config");
            match server.spawn().await {
                Ok(()) => break,
                Err((why, log_len)) => {
                    let log = server.log();
                    let new_output = log.get(log_len..).unwrap_or(&log);
                    // A parallel test may have taken the port between our probe and the bind.
                    if new_output.contains("binding listen.client") && attempt < 5 {
                        continue;
                    }
                    panic!("myelin did not become ready ({why}); server log:\n{log}");
                }
            }
        }
        server
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("myelin.toml")
    }

    /// Kills the process (SIGKILL: no shutdown code runs) and starts it again on the same data
    /// and port.
    pub async fn kill_and_restart(&mut self) {
        self.kill();
        if let Err((why, _)) = self.spawn().await {
            panic!("myelin did not come back ({why}); server log:\n{}", self.log());
        }
    }

    /// Spawns the process on the written configuration and waits until it answers; on failure
    /// returns why and where this start's output begins in `server.log`.
    async fn spawn(&mut self) -> Result<(), (String, usize)> {
        let config_path = self.config_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join("server.log"))
            .expect("opening server.log");
        let log_len = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let mut cmd = Command::new(myelin_bin());
        // Only the configuration written here applies, whatever the test environment holds.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MYELIN_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .env_remove("RUST_LOG")
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawning myelin");
        self.child = Some(child);
        self.wait_ready().await.map_err(|why| (why, log_len))
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("try_wait") {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if self.versions_answers().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("timed out after 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `GET /_matrix/client/versions` answers 200 (over a plain socket: the SDK's
    /// client would retry and cache).
    async fn versions_answers(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
            let head = format!(
                "GET /_matrix/client/versions HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            stream.write_all(head.as_bytes()).await.ok()?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).await.ok()?;
            Some(answer.starts_with(b"HTTP/1.1 200"))
        };
        tokio::time::timeout(Duration::from_secs(2), probe).await.ok().flatten().unwrap_or(false)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The temporary directory holding config, data and `server.log`.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// Everything the server wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("server.log")).unwrap_or_default()
    }

    /// The client API base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The configured `server_name`.
    pub fn server_name(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// `@localpart:server_name`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    /// A client builder for this server: in-memory stores and a timeout on every request (so a
    /// hung server fails the test instead of hanging CI).
    pub fn client_builder(&self) -> matrix_sdk::ClientBuilder {
        init_sdk_log();
        Client::builder()
            .homeserver_url(self.url())
            .request_config(RequestConfig::new().timeout(Duration::from_secs(60)).retry_limit(2))
    }

    /// Registers `localpart` (password [`PASSWORD`], `m.login.dummy`) with a fresh client of
    /// its own, which then logs in with the password like an app does.
    pub async fn register(&self, localpart: &str) -> Client {
        let registrar = self.client_builder().build().await.expect("building client");
        let mut request = register::v3::Request::new();
        request.username = Some(localpart.to_owned());
        request.password = Some(PASSWORD.to_owned());
        request.inhibit_login = true;
        request.auth = Some(uiaa::AuthData::Dummy(uiaa::Dummy::new()));
        registrar.matrix_auth().register(request).await.unwrap_or_else(|e| panic!("registering {localpart}: {e}"));
        self.login(localpart).await
    }

    /// A new client (a new device) logged in as `localpart` with the password.
    pub async fn login(&self, localpart: &str) -> Client {
        self.login_with(self.client_builder(), localpart).await
    }

    /// A new client logged in as `localpart` the way Element X logs in: it discovers simplified
    /// sliding sync in `/versions` (`org.matrix.simplified_msc3575`) and refuses the server
    /// without it.
    pub async fn login_element_x(&self, localpart: &str) -> Client {
        let builder = self.client_builder().sliding_sync_version_builder(VersionBuilder::DiscoverNative);
        self.login_with(builder, localpart).await
    }

    async fn login_with(&self, builder: matrix_sdk::ClientBuilder, localpart: &str) -> Client {
        let client = builder.build().await.unwrap_or_else(|e| panic!("building the client of {localpart}: {e:?}"));
        client
            .matrix_auth()
            .login_username(localpart, PASSWORD)
            .initial_device_display_name("sdk-tests")
            .await
            .unwrap_or_else(|e| panic!("logging in {localpart}: {e}"));
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
        if keep_data()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("keeping {}", dir.keep().display());
        }
    }
}

/// One `/sync` round with a short long-poll (the SDK also uploads keys and sends the to-device
/// messages it has queued).
pub async fn sync_once(client: &Client) {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(500)))
        .await
        .unwrap_or_else(|e| panic!("sync of {:?}: {e}", client.user_id()));
}

/// Syncs `client` until `done` holds, failing the test after `limit`.
pub async fn sync_until(client: &Client, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        sync_once(client).await;
    }
}

//! Harness for multi-server tests: a test CA, `myelin` processes with HTTPS federation
//! listeners on loopback addresses, and a small client.
//!
//! Each server is named by its IP literal and port (`127.0.X.Y:8448`), which skips
//! well-known and SRV discovery; its certificate (from the test CA) carries an IP SAN. Each
//! test uses its own `127.0.X.*` addresses so that tests can run in parallel.
//!
//! The `myelin` binary is built once per test process with `cargo build -p myelin` and taken
//! from `$CARGO_TARGET_DIR/debug/myelin` (or the workspace `target/`).

// Each test crate uses a different subset of the helpers (and of those re-exported).
#![allow(dead_code, unused_imports)]

pub mod peer;
pub mod synapse;

/// Runs `$name(backend, net)` on SQLite (servers on `127.0.$net.*`) and on PostgreSQL (on
/// `127.1.$net.*`): module `$name` holds the two `#[tokio::test]`s. Test files that use it
/// declare `#[macro_use] mod common;`.
#[allow(unused_macros)]
macro_rules! both_backends {
    ($name:ident, $net:literal) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite, concat!("127.0.", $net)).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres, concat!("127.1.", $net)).await
            }
        }
    };
}

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
pub use test_support::http::{Client, PASSWORD, Resp, http_client, init_crypto, send, sync_until, wait_until};
pub use test_support::pg::{create_pg_database, drop_pg_database, keep_data, pg_admin_url};
pub use test_support::{enc, myelin_bin, workspace_root};

/// The test CA: certificate PEM path and the issuer to sign server certificates.
pub struct TestCa {
    /// Directory holding ca.pem and the server certificates.
    pub dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// The process-wide test CA (created on first use in a temporary directory).
pub fn ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        init_crypto();
        let dir = tempfile::Builder::new().prefix("myelin-fedtest-ca-").tempdir().expect("tempdir").keep();
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Myelin federation test CA");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-signing CA");
        std::fs::write(dir.join("ca.pem"), cert.pem()).expect("writing ca.pem");
        let issuer = rcgen::Issuer::new(params, key);
        TestCa { dir, issuer }
    })
}

impl TestCa {
    /// Path of the CA certificate.
    pub fn pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Issues a certificate for an IP address; returns (cert path, key path).
    pub fn issue(&self, ip: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("server key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = vec![rcgen::SanType::IpAddress(ip.parse().expect("ip"))];
        params.distinguished_name.push(rcgen::DnType::CommonName, ip);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("signing server cert");
        let cert_path = self.dir.join(format!("{ip}.crt"));
        let key_path = self.dir.join(format!("{ip}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("writing cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("writing key");
        (cert_path, key_path)
    }
}

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).and_then(|l| l.local_addr()).expect("bind").port()
}

/// The database a test server runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the server's data directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server at `PG_TEST_URL` (default
    /// `postgres://root@127.0.0.1:5432/test`), dropped with the server unless
    /// `TEST_KEEP_DATA=1`.
    Postgres,
}

/// A running (or stopped) myelin with federation on `ip:8448`.
pub struct FedServer {
    /// Its IP address.
    pub ip: String,
    /// Client API port (plain HTTP on the same IP).
    pub client_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    http: reqwest::Client,
    /// Extra `MYELIN_*` environment for the process (configuration under test).
    env: Vec<(String, String)>,
    pg_database: Option<String>,
}

impl FedServer {
    /// Starts a server on `ip` (server name `ip:8448`) on SQLite.
    pub async fn start(ip: &str) -> Self {
        Self::start_with(ip, Backend::Sqlite, &[]).await
    }

    /// Starts a server on `ip` (server name `ip:8448`) on `backend`.
    pub async fn start_on(ip: &str, backend: Backend) -> Self {
        Self::start_with(ip, backend, &[]).await
    }

    /// Starts a server on `ip` on SQLite with extra environment, e.g. `MYELIN_LISTEN__…`
    /// overrides.
    pub async fn start_with_env(ip: &str, env: &[(&str, &str)]) -> Self {
        Self::start_with(ip, Backend::Sqlite, env).await
    }

    /// Starts a server on `ip` on `backend` with extra environment.
    pub async fn start_on_with_env(ip: &str, backend: Backend, env: &[(&str, &str)]) -> Self {
        Self::start_with(ip, backend, env).await
    }

    async fn start_with(ip: &str, backend: Backend, env: &[(&str, &str)]) -> Self {
        let mut s = Self::prepare_with(ip, backend, env).await;
        s.start_again().await;
        s
    }

    /// A server on `ip` on `backend`, configured (and its database created) but not started:
    /// for tools that fill its database first (`myelin import-synapse`); start it with
    /// [`FedServer::start_again`].
    pub async fn prepare(ip: &str, backend: Backend) -> Self {
        Self::prepare_with(ip, backend, &[]).await
    }

    async fn prepare_with(ip: &str, backend: Backend, env: &[(&str, &str)]) -> Self {
        let ca = ca();
        let (cert, key) = ca.issue(ip);
        let dir = tempfile::Builder::new().prefix("myelin-fedtest-").tempdir().expect("tempdir").keep();
        let (pg_database, db) = match backend {
            Backend::Sqlite => (None, format!("sqlite://{}", dir.join("data/myelin.db").display())),
            Backend::Postgres => {
                let (name, url) = create_pg_database().await;
                (Some(name), url)
            }
        };
        let client_port = free_port(ip);
        let config = format!(
            r#"
server_name = "{ip}:8448"
data_dir = {data:?}
[listen]
client = "{ip}:{client_port}"
federation = "{ip}:8448"
[tls]
cert = {cert:?}
key = {key:?}
[database]
url = {db:?}
max_connections = 8
[registration]
mode = "open"
[rate_limits]
enabled = false
[federation]
enabled = true
trusted_ca = {ca:?}
allow_private_addresses = true
retry_min_ms = 200
retry_max_ms = 2000
# No notary by default: tests never ask matrix.org. keys.rs sets its own.
trusted_key_servers = []
[log]
level = "info,sqlx=warn,tower_http=warn"
"#,
            data = dir.join("data").display().to_string(),
            cert = cert.display().to_string(),
            key = key.display().to_string(),
            db = db,
            ca = ca.pem().display().to_string(),
        );
        std::fs::write(dir.join("myelin.toml"), config).expect("config");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self { ip: ip.to_owned(), client_port, dir, child: None, http: http_client(), env, pg_database }
    }

    /// `ip:8448`.
    pub fn name(&self) -> String {
        format!("{}:8448", self.ip)
    }

    /// Starts another process of this server (PostgreSQL): the same configuration, database,
    /// signing key and media directory, its client API on a port of its own and no federation
    /// listener (the first process has `ip:8448`); it sends to other servers like any process.
    /// `self` owns the database and data and must outlive it.
    pub async fn start_sibling(&self) -> Self {
        let dir = tempfile::Builder::new().prefix("myelin-fedtest-").tempdir().expect("tempdir").keep();
        let client_port = free_port(&self.ip);
        let mut config: toml::Table =
            toml::from_str(&std::fs::read_to_string(self.config_path()).expect("config")).expect("config is TOML");
        let listen = config["listen"].as_table_mut().expect("[listen]");
        listen.insert("client".into(), format!("{}:{client_port}", self.ip).into());
        listen.remove("federation");
        std::fs::write(dir.join("myelin.toml"), toml::to_string(&config).expect("TOML")).expect("config");
        let mut s = Self {
            ip: self.ip.clone(),
            client_port,
            dir,
            child: None,
            http: http_client(),
            env: self.env.clone(),
            pg_database: None,
        };
        s.start_again().await;
        s
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The PostgreSQL URL of its database, if it runs on PostgreSQL.
    pub fn database_url(&self) -> Option<String> {
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(self.config_path()).ok()?).expect("config is TOML");
        config["database"]["url"].as_str().filter(|u| u.starts_with("postgres")).map(str::to_owned)
    }

    /// `@local:ip:8448`.
    pub fn user_id(&self, local: &str) -> String {
        format!("@{local}:{}", self.name())
    }

    /// Client API base URL.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.client_port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The configuration file (read at each `start_again`).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("myelin.toml")
    }

    /// Starts the process again on the same data and waits until it answers.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log")).expect("log");
        let mut cmd = Command::new(myelin_bin());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MYELIN_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join("myelin.toml"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawning myelin");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().expect("child").try_wait().expect("wait") {
                self.child = None;
                panic!("myelin {} exited with {status}:\n{}", self.ip, self.log());
            }
            if let Ok(r) = self.http.get(format!("{}/_matrix/client/versions", self.url())).send().await
                && r.status() == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "myelin {} did not start:\n{}", self.ip, self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        let mut child = self.child.take().expect("not running");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let _ = child.wait();
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
    }

    /// Registers a user and returns a client for them.
    pub async fn register(&self, local: &str) -> Client {
        test_support::http::register(&self.http, &self.url(), local).await
    }
}

impl Drop for FedServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Keep the data and log of a failed test for inspection; a PostgreSQL database only
        // with `TEST_KEEP_DATA=1` (as the single-server harness), so failures leak none.
        let keep_db = keep_data();
        if std::thread::panicking() {
            eprintln!("server {} kept in {}", self.ip, self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        if let Some(name) = self.pg_database.take() {
            if keep_db {
                eprintln!("keeping PostgreSQL database {name}");
            } else {
                drop_pg_database(name);
            }
        }
    }
}

/// The p-th percentile (0..=100) of durations, in milliseconds.
pub fn percentile(samples: &[Duration], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    if v.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Appends a measured figure to `$CARGO_TARGET_DIR/federation-figures.txt` and prints it.
pub fn report(line: &str) {
    println!("FIGURE {line}");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"));
    let _ = std::fs::create_dir_all(&target);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(target.join("federation-figures.txt"))
    {
        use std::io::Write;
        let _ = writeln!(f, "{line}");
    }
}

/// Whether a sync response shows `user` typing in `room`.
pub fn sees_typing(sync: &Value, room: &str, user: &str) -> bool {
    sync["rooms"]["join"][room]["ephemeral"]["events"].as_array().into_iter().flatten().any(|e| {
        e["type"] == "m.typing" && e["content"]["user_ids"].as_array().into_iter().flatten().any(|u| u == user)
    })
}

/// Whether a sync response shows `user`'s read receipt for `event_id` in `room`.
pub fn sees_receipt(sync: &Value, room: &str, event_id: &str, user: &str) -> bool {
    sync["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["type"] == "m.receipt" && !e["content"][event_id]["m.read"][user].is_null())
}

//! Harness for multi-server tests: a test CA, `myelin` processes with HTTPS federation
//! listeners on loopback addresses, and a small client.
//!
//! Each server is named by its IP literal and port (`127.0.X.Y:8448`), which skips
//! well-known and SRV discovery; its certificate (from the test CA) carries an IP SAN. Each
//! test uses its own `127.0.X.*` addresses so that tests can run in parallel.
//!
//! The `myelin` binary is built once per test process with `cargo build -p myelin` and taken
//! from `$CARGO_TARGET_DIR/debug/myelin` (or the workspace `target/`).

#![allow(dead_code)]

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
pub use test_support::{enc, myelin_bin, workspace_root};

/// Password of every test user.
pub const PASSWORD: &str = "federation test password";

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

/// Installs rustls' ring provider once.
pub fn init_crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An HTTP client for the client API.
pub fn http() -> reqwest::Client {
    init_crypto();
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client")
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

/// The PostgreSQL URL used to create and drop test databases.
fn pg_admin_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/test".to_owned())
}

/// Creates a fresh PostgreSQL database; returns its name and URL.
async fn create_pg_database() -> (String, String) {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let name = format!("myelin_fed_{}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL tests need a server at {admin} (set PG_TEST_URL): {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let _ = conn.close().await;
    let mut url = url::Url::parse(&admin).expect("PG_TEST_URL is not a URL");
    url.set_path(&format!("/{name}"));
    (name, url.to_string())
}

/// Drops a test database; best effort, from Drop (on a private runtime: the test's cannot be
/// blocked on).
fn drop_pg_database(name: String) {
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
        Self { ip: ip.to_owned(), client_port, dir, child: None, http: http(), env, pg_database }
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
            http: http(),
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
        let (status, body) = send(self.http.post(format!("{}/_matrix/client/v3/register", self.url())).json(&json!({
            "username": local,
            "password": PASSWORD,
            "auth": { "type": "m.login.dummy" },
        })))
        .await;
        assert_eq!(status, 200, "register {local}: {body}");
        Client {
            base: self.url(),
            token: body["access_token"].as_str().expect("token").to_owned(),
            user_id: body["user_id"].as_str().expect("user_id").to_owned(),
            http: self.http.clone(),
        }
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
        let keep_db = std::env::var_os("TEST_KEEP_DATA").is_some_and(|v| !v.is_empty() && v != "0");
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

/// Sends a request and returns (status, JSON body).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("HTTP request");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A logged-in user.
#[derive(Clone)]
pub struct Client {
    /// Client API base URL.
    pub base: String,
    /// Access token.
    pub token: String,
    /// Full user id.
    pub user_id: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for an existing session on any homeserver (e.g. Synapse).
    pub fn new(base: String, token: String, user_id: String) -> Self {
        Self { base, token, user_id, http: http() }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token)).await
    }
    /// POST.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body)).await
    }
    /// PUT.
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body)).await
    }

    /// PUT that may fail to get an answer at all (the server is being killed): None then.
    pub async fn try_put(&self, path: &str, body: Value) -> Option<(u16, Value)> {
        let res =
            self.http.put(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.ok()?;
        let status = res.status().as_u16();
        let text = res.text().await.ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    /// Creates a public room; returns its id.
    pub async fn create_public_room(&self) -> String {
        let (s, b) =
            self.post("/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "fed" })).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Creates a private room (`private_chat`: invite only); returns its id.
    pub async fn create_private_room(&self) -> String {
        let (s, b) =
            self.post("/_matrix/client/v3/createRoom", json!({ "preset": "private_chat", "name": "private" })).await;
        assert_eq!(s, 200, "createRoom: {b}");
        b["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Invites `guest`, who sees the invite in `/sync` and joins without naming a server (as a
    /// client accepting an invite does); then waits until this user sees the join.
    pub async fn invite_and_join(&self, guest: &Client, room: &str) {
        let (s, body) = self
            .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(room)), json!({ "user_id": guest.user_id }))
            .await;
        assert_eq!(s, 200, "{} invites {}: {body}", self.user_id, guest.user_id);
        let rid = room.to_owned();
        sync_until(guest, Duration::from_secs(30), "the invite", |s| !s["rooms"]["invite"][&rid].is_null()).await;
        let (s, body) = guest.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
        assert_eq!(s, 200, "{} joins after the invite: {body}", guest.user_id);
        wait_until(Duration::from_secs(30), &format!("{} joined, seen by {}", guest.user_id, self.user_id), || async {
            self.membership(room, &guest.user_id).await.as_deref() == Some("join")
        })
        .await;
    }

    /// Joins through `via`; returns (status, body).
    pub async fn join_via(&self, room: &str, via: &str) -> (u16, Value) {
        self.post(&format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(via)), json!({})).await
    }

    /// Joins `room` through `via` (asserting 200), then waits until `host`, a user of the room's
    /// server, sees the join.
    pub async fn join_via_seen_by(&self, room: &str, via: &str, host: &Client) {
        let (s, body) = self.join_via(room, via).await;
        assert_eq!(s, 200, "{} joining {room} through {via}: {body}", self.user_id);
        let what = format!("{} joined, seen by {}", self.user_id, host.user_id);
        wait_until(Duration::from_secs(30), &what, || async {
            host.membership(room, &self.user_id).await.as_deref() == Some("join")
        })
        .await;
    }

    /// Sends a text message; returns its event id.
    pub async fn say(&self, room: &str, body: &str) -> String {
        let txn = format!("t{}", rand::random::<u64>());
        let (s, b) = self
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
                json!({ "msgtype": "m.text", "body": body }),
            )
            .await;
        assert_eq!(s, 200, "send: {b}");
        b["event_id"].as_str().expect("event_id").to_owned()
    }

    /// The room timeline (oldest first) as seen by this user: up to 1000 events.
    pub async fn timeline(&self, room: &str) -> Vec<Value> {
        let (s, b) = self.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000", enc(room))).await;
        if s != 200 {
            return Vec::new();
        }
        let mut evs: Vec<Value> = b["chunk"].as_array().cloned().unwrap_or_default();
        evs.reverse();
        evs
    }

    /// Bodies of the m.room.message events in the timeline, in order.
    pub async fn messages(&self, room: &str) -> Vec<String> {
        self.timeline(room)
            .await
            .into_iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }

    /// Event ids of the timeline, in order.
    pub async fn event_ids(&self, room: &str) -> Vec<String> {
        self.timeline(room).await.into_iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect()
    }

    /// The membership of `user` in the room's current state, as this user sees it.
    pub async fn membership(&self, room: &str, user: &str) -> Option<String> {
        let (s, b) =
            self.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(room), enc(user))).await;
        if s != 200 {
            return None;
        }
        b["membership"].as_str().map(str::to_owned)
    }

    /// The current state as (type, state_key, event_id) sorted.
    pub async fn state(&self, room: &str) -> Vec<(String, String, String)> {
        let (s, b) = self.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room))).await;
        assert_eq!(s, 200, "state: {b}");
        let mut out: Vec<(String, String, String)> = b
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap_or("").to_owned(),
                    e["state_key"].as_str().unwrap_or("").to_owned(),
                    e["event_id"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        out.sort();
        out
    }
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes; returns the elapsed time.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
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

/// Polls `/sync` until some response satisfies `found`.
pub async fn sync_until(client: &Client, timeout: Duration, what: &str, found: impl Fn(&Value) -> bool) {
    let start = Instant::now();
    let mut since: Option<String> = None;
    loop {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(s)),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let (s, body) = client.get(&path).await;
        assert_eq!(s, 200, "sync: {body}");
        if found(&body) {
            return;
        }
        since = body["next_batch"].as_str().map(str::to_owned);
        assert!(start.elapsed() < timeout, "timed out waiting for {what} on {}", client.user_id);
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

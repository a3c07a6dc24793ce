//! Calls: MatrixRTC transports (Element Call), and `GET /voip/turnServer` against a real TURN
//! server: coturn (Debian's `coturn` package, which `.ci/run` installs) started by the test with
//! a shared secret. Credentials Myelin hands out
//! must let coturn's own client (`turnutils_uclient`) allocate relays and pass data through
//! them; once expired, or with a wrong password, coturn must refuse them.

#[macro_use]
mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SECRET: &str = "a shared secret";

/// A coturn process on loopback, stopped on drop.
struct Coturn {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Coturn {
    fn start() -> Self {
        let turnserver = ["/usr/bin/turnserver", "/usr/sbin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("coturn is not installed (apt-get install coturn; .ci/run installs it)");
        let port = free_port();
        let relay = free_relay_range();
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(turnserver)
            .args(["--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--realm=myelin.test"])
            .arg(format!("--listening-port={port}"))
            // A small relay range of its own, so that parallel tests do not share one.
            .arg(format!("--min-port={relay}"))
            .arg(format!("--max-port={}", relay + 32))
            .args(["--use-auth-secret", &format!("--static-auth-secret={SECRET}")])
            .args(["--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--log-file=stdout", "--simple-log"])
            .arg(format!("--pidfile={}", dir.path().join("turn.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting turnserver");
        Self { child, port, _dir: dir }
    }

    /// Allocates relays with `username`/`password` and sends a few messages through them with
    /// coturn's test client; whether that worked. The client speaks TCP to the server, so
    /// that a loaded machine dropping a datagram is not taken for a refusal; an attempt that
    /// fails is repeated (up to five times, a second apart) for the same reason: a refusal
    /// fails every time. The client's output of the last failed attempt goes to stderr, which
    /// the test harness shows when the test fails.
    fn relays(&self, username: &str, password: &str) -> bool {
        let mut last = String::new();
        for attempt in 0..5 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            let output = Command::new("turnutils_uclient")
                .args(["-t", "-p", &self.port.to_string(), "-u", username, "-w", password])
                .args(["-n", "2", "-m", "1", "-l", "100", "-y", "127.0.0.1"])
                .output()
                .expect("running turnutils_uclient");
            let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
            if output.status.success() && !text.contains("ERROR") && text.contains("tot_recv_msgs=2") {
                return true;
            }
            last = text;
        }
        eprintln!("turnutils_uclient's last failed attempt:\n{last}");
        false
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first of 33 consecutive UDP ports free on loopback, below Linux's ephemeral range
/// (32768 and up), so that no socket of the test's other clients is handed one of coturn's
/// relay ports, and tried at a random place so that the tests running at once (each with its
/// own coturn) do not pick the same range.
fn free_relay_range() -> u16 {
    let free = |p: u16| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..200 {
        let base = 20_000 + (rand::random::<u16>() % 12_000);
        if (base..=base + 32).all(free) {
            return base;
        }
    }
    panic!("no 33 consecutive free UDP ports between 20000 and 32000");
}

fn turn_config(coturn_port: u16, lifetime_ms: i64) -> impl Fn(&mut toml::Table) {
    move |c: &mut toml::Table| {
        set_config(c, "voip.turn_uris", vec![format!("turn:127.0.0.1:{coturn_port}?transport=udp")]);
        set_config(c, "voip.turn_shared_secret", SECRET);
        set_config(c, "voip.turn_user_lifetime_ms", lifetime_ms);
    }
}

async fn wait_for_coturn(coturn: &Coturn) {
    let port = coturn.port;
    assert!(test_support::listening(port, Duration::from_secs(5), || {}), "turnserver did not start on port {port}");
}

fn creds(body: &Value) -> (String, String) {
    (body["username"].as_str().unwrap().to_owned(), body["password"].as_str().unwrap().to_owned())
}

async fn credentials_relay_through_coturn(backend: Backend) {
    let coturn = Coturn::start();
    let server = TestServer::start_with(backend, turn_config(coturn.port, 3_600_000)).await;
    wait_for_coturn(&coturn).await;
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/voip/turnServer").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uris"], json!([format!("turn:127.0.0.1:{}?transport=udp", coturn.port)]));
    assert_eq!(body["ttl"], 3600);
    let (username, password) = creds(&body);
    assert!(username.ends_with(&format!(":{}", alice.user_id)), "{username}");
    assert!(coturn.relays(&username, &password), "coturn refused the credentials Myelin gave");
    assert!(!coturn.relays(&username, "not the password"), "coturn accepted a wrong password");
    let (status, _) = server.get("/_matrix/client/v3/voip/turnServer").await;
    assert_eq!(status, 401, "credentials are for users only");
}

async fn expired_credentials_are_refused(backend: Backend) {
    let coturn = Coturn::start();
    let server = TestServer::start_with(backend, turn_config(coturn.port, 1000)).await;
    wait_for_coturn(&coturn).await;
    let alice = server.register("alice").await;
    let (_, body) = alice.get("/_matrix/client/v3/voip/turnServer").await;
    assert_eq!(body["ttl"], 1);
    let (username, password) = creds(&body);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(!coturn.relays(&username, &password), "coturn accepted expired credentials");
}

#[tokio::test]
async fn turn_credentials_relay_through_coturn_sqlite() {
    credentials_relay_through_coturn(Backend::Sqlite).await;
}

#[tokio::test]
async fn turn_credentials_relay_through_coturn_postgres() {
    credentials_relay_through_coturn(Backend::Postgres).await;
}

#[tokio::test]
async fn expired_turn_credentials_are_refused_sqlite() {
    expired_credentials_are_refused(Backend::Sqlite).await;
}

#[tokio::test]
async fn expired_turn_credentials_are_refused_postgres() {
    expired_credentials_are_refused(Backend::Postgres).await;
}

both_backends!(no_turn_server_configured, |server| async move {
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/voip/turnServer").await;
    assert_eq!((status, body), (200, json!({})));
});

both_backends!(
    static_turn_credentials,
    with | c | {
        set_config(c, "voip.turn_uris", vec!["turns:turn.example.org:5349"]);
        set_config(c, "voip.turn_username", "calls");
        set_config(c, "voip.turn_password", "static");
    },
    |server| async move {
        let alice = server.register("alice").await;
        let (status, body) = alice.get("/_matrix/client/v3/voip/turnServer").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((&body["username"], &body["password"]), (&json!("calls"), &json!("static")));
    }
);

// MatrixRTC (Element Call): the configured transports are advertised in the client
// well-known (`org.matrix.msc4143.rtc_foci`) and served to logged-in clients.
both_backends!(
    matrix_rtc_transports_are_advertised,
    with | c | {
        let mut livekit = toml::Table::new();
        livekit.insert("type".into(), "livekit".into());
        livekit.insert("livekit_service_url".into(), "https://rtc.example.org/livekit/jwt".into());
        set_config(c, "matrix_rtc.transports", vec![toml::Value::Table(livekit)]);
    },
    |server| async move {
        let expected = json!([{ "type": "livekit", "livekit_service_url": "https://rtc.example.org/livekit/jwt" }]);
        let (status, body) = server.get("/.well-known/matrix/client").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["org.matrix.msc4143.rtc_foci"], expected, "{body}");
        let path = "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports";
        assert_eq!(server.get(path).await.0, 401);
        let alice = server.register("alice").await;
        let (status, body) = alice.get(path).await;
        assert_eq!((status, &body["rtc_transports"]), (200, &expected), "{body}");
    }
);

both_backends!(no_matrix_rtc_transports_configured, |server| async move {
    let (_, body) = server.get("/.well-known/matrix/client").await;
    assert!(body.get("org.matrix.msc4143.rtc_foci").is_none(), "{body}");
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/unstable/org.matrix.msc4143/rtc/transports").await;
    assert_eq!((status, body), (200, json!({ "rtc_transports": [] })));
});

//! The reverse-proxy configurations of docs/deployment.md, run for real: the `nginx` and
//! `caddy` blocks are read from that file, their host name, certificate, ports and upstream
//! replaced by the test's, and the proxies from Debian's packages (`apt-get install nginx
//! caddy`; .ci/run does) started with a self-signed certificate. A client then talks to Myelin
//! only through the proxy over TLS: login, whoami, room creation, an initial and a long-polling
//! `/sync` woken by a message, media upload and download of 3 MiB, `.well-known`, and the admin
//! API kept off the public side.

#[macro_use]
mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, PASSWORD, TestServer, set_config};
use serde_json::{Value, json};

/// The first fenced block of `lang` in docs/deployment.md.
fn doc_block(lang: &str) -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deployment.md"))
        .expect("reading docs/deployment.md");
    let start = doc.find(&format!("```{lang}\n")).unwrap_or_else(|| panic!("no ```{lang} block in deployment.md"));
    let rest = &doc[start + lang.len() + 4..];
    rest[..rest.find("\n```").expect("unterminated block")].to_owned()
}

/// A running proxy, stopped (by its pid) when dropped.
struct Proxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SIGTERM, so that nginx's master stops its workers too (SIGKILL would orphan them).
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn base(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    /// Waits until the proxy accepts connections.
    async fn ready(&mut self) {
        let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
        let child = &mut self.child;
        let up = test_support::listening(self.port, Duration::from_secs(20), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("proxy exited with {status}: {}", log());
            }
        });
        assert!(up, "proxy did not start: {}", log());
    }
}

/// A self-signed certificate for `localhost` in `dir`; returns (cert, key, PEM).
fn certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert.cert.pem())
}

/// Replaces `from` (which must occur) with `to`.
#[track_caller]
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the documented configuration no longer contains {from:?}");
    text.replace(from, to)
}

fn nginx(dir: &Path, upstream: &str) -> Proxy {
    let port = common::free_port();
    let (cert, key, _) = certificate(dir);
    let mut site = doc_block("nginx");
    site = replace(&site, "listen 443 ssl http2;", &format!("listen 127.0.0.1:{port} ssl http2;"));
    // IPv6 may not exist where the test runs.
    site = site.lines().filter(|l| !l.contains("[::]")).collect::<Vec<_>>().join("\n");
    site = replace(&site, "server_name matrix.example.org;", "server_name localhost;");
    site = replace(&site, "/etc/letsencrypt/live/matrix.example.org/fullchain.pem", &cert.display().to_string());
    site = replace(&site, "/etc/letsencrypt/live/matrix.example.org/privkey.pem", &key.display().to_string());
    site = replace(&site, "http://127.0.0.1:8008", upstream);
    std::fs::write(dir.join("site.conf"), site).unwrap();
    // What /etc/nginx/nginx.conf provides around a site, with every path in the test's directory.
    // Run as root, nginx's workers would become `nobody`, who cannot enter the test directory.
    let root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
    let d = dir.display();
    let main = format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/site.conf;\n}}\n",
        user = if root { "user root;\n" } else { "" },
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    let log = dir.join("error.log");
    let child = Command::new("nginx")
        .args(["-e", &log.display().to_string(), "-p", &dir.display().to_string(), "-c"])
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx (apt-get install nginx; .ci/run does)");
    Proxy { child, port, log }
}

fn caddy(dir: &Path, upstream: &str) -> Proxy {
    let port = common::free_port();
    let http_port = common::free_port();
    let (cert, key, _) = certificate(dir);
    let mut site = doc_block("caddyfile");
    // The test's certificate instead of one from Let's Encrypt, on the test's ports, and no
    // admin endpoint (several test servers run at once).
    site = replace(
        &site,
        "matrix.example.org {\n",
        &format!("localhost:{port} {{\n\ttls {} {}\n", cert.display(), key.display()),
    );
    site = replace(
        &site,
        "reverse_proxy 127.0.0.1:8008",
        &format!("reverse_proxy {}", upstream.trim_start_matches("http://")),
    );
    let config = format!("{{\n\tadmin off\n\thttp_port {http_port}\n\thttps_port {port}\n}}\n\n{site}\n");
    let path = dir.join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    let log = dir.join("caddy.log");
    let child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting caddy (apt-get install caddy; .ci/run does)");
    Proxy { child, port, log }
}

/// A client that trusts only the test's certificate.
fn tls_client(dir: &Path) -> reqwest::Client {
    common::init_crypto();
    let pem = std::fs::read(dir.join("cert.pem")).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Everything a client does, through the proxy at `base`.
async fn drive(server: &TestServer, http: &reqwest::Client, base: &str) {
    use reqwest::Method;
    server.register("alice").await;
    let login = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": PASSWORD,
    });
    let (status, body) = call(http, Method::POST, &format!("{base}/_matrix/client/v3/login"), None, Some(&login)).await;
    assert_eq!(status, 200, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();
    let t = Some(token.as_str());
    let (status, me) = call(http, Method::GET, &format!("{base}/_matrix/client/v3/account/whoami"), t, None).await;
    assert_eq!((status, &me["user_id"]), (200, &json!(server.user_id("alice"))), "{me}");
    let (_, versions) = call(http, Method::GET, &format!("{base}/_matrix/client/versions"), None, None).await;
    assert!(versions["versions"].is_array(), "{versions}");
    let (status, wk) = call(http, Method::GET, &format!("{base}/.well-known/matrix/client"), None, None).await;
    assert_eq!(status, 200, "{wk}");

    let (status, room) =
        call(http, Method::POST, &format!("{base}/_matrix/client/v3/createRoom"), t, Some(&json!({}))).await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap().to_owned();
    let (status, initial) = call(http, Method::GET, &format!("{base}/_matrix/client/v3/sync"), t, None).await;
    assert_eq!(status, 200, "{initial}");
    assert!(initial["rooms"]["join"][&room_id].is_object(), "{initial}");
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // A long-poll held by the proxy, answered when a message arrives.
    let poll = {
        let (http, url) = (http.clone(), format!("{base}/_matrix/client/v3/sync?since={since}&timeout=20000"));
        let token = token.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = call(&http, Method::GET, &url, Some(&token), None).await;
            (answer, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let send = format!("{base}/_matrix/client/v3/rooms/{}/send/m.room.message/t1", common::enc(&room_id));
    let (status, sent) =
        call(http, Method::PUT, &send, t, Some(&json!({ "msgtype": "m.text", "body": "via the proxy" }))).await;
    assert_eq!(status, 200, "{sent}");
    let ((status, woken), took) = poll.await.unwrap();
    assert_eq!(status, 200, "{woken}");
    assert!(took < Duration::from_secs(15), "the long-poll was not woken: {took:?}");
    let events = woken["rooms"]["join"][&room_id]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(events.iter().any(|e| e["event_id"] == sent["event_id"]), "{woken}");

    // Media larger than the proxies' default body limits (nginx: 1 MiB).
    let bytes: Vec<u8> = (0..3 * 1024 * 1024).map(|_| rand::random::<u8>()).collect();
    let started = Instant::now();
    let res = http
        .post(format!("{base}/_matrix/media/v3/upload?filename=big.bin"))
        .bearer_auth(&token)
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200, "upload through the proxy");
    let mxc = res.json::<Value>().await.unwrap()["content_uri"].as_str().unwrap().to_owned();
    let res = http
        .get(format!("{base}/_matrix/client/v1/media/download/{}", mxc.trim_start_matches("mxc://")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(res.bytes().await.unwrap() == bytes, "downloaded bytes differ");
    eprintln!("3 MiB up and down through {base}: {:?}", started.elapsed());

    // The admin API is not forwarded (reach it on the loopback listener).
    let (status, _) = call(http, Method::GET, &format!("{base}/_synapse/admin/v1/server_version"), t, None).await;
    assert_eq!(status, 404);
    let (status, _) =
        call(http, Method::GET, &format!("{}/_synapse/admin/v1/server_version", server.url()), t, None).await;
    assert_eq!(status, 403, "reachable directly (alice is no admin)");
}

async fn proxied_server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        set_config(c, "listen.trusted_proxies", toml::Value::Array(vec!["127.0.0.1".into()]));
    })
    .await
}

#[tokio::test]
async fn nginx_from_the_deployment_guide() {
    let server = proxied_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = nginx(dir.path(), &server.url());
    proxy.ready().await;
    drive(&server, &tls_client(dir.path()), &proxy.base()).await;
}

#[tokio::test]
async fn caddy_from_the_deployment_guide() {
    let server = proxied_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = caddy(dir.path(), &server.url());
    proxy.ready().await;
    drive(&server, &tls_client(dir.path()), &proxy.base()).await;
}

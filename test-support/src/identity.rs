//! The identity server of the third-party invite tests (`tests/nio/identity_server.py`, run by
//! the matrix-nio virtualenv's Python), and the `/_test/...` calls a test drives it with.

use std::path::Path;
use std::process::Child;
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{Resp, http_client};

/// The access token the identity server accepts.
pub const IS_TOKEN: &str = "identity-access-token";

/// A running identity server, killed when dropped.
pub struct IdentityServer {
    child: Child,
    /// Its loopback port.
    pub port: u16,
    http: reqwest::Client,
}

impl IdentityServer {
    /// Starts one on loopback `port`, accepting [`IS_TOKEN`].
    pub fn start(port: u16) -> Self {
        let child = spawn(&crate::nio_python(), port, IS_TOKEN);
        Self { child, port, http: http_client() }
    }

    /// Its server name, as `id_server` names it (`127.0.0.1:port`).
    pub fn name(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let res = self.http.post(format!("http://{}{path}", self.name())).json(&body).send().await.expect("IS request");
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.expect("IS answer")
    }

    /// Every store-invite request it received (with its Authorization header).
    pub async fn invites(&self) -> Vec<Value> {
        let res = self.http.get(format!("http://{}/_test/invites", self.name())).send().await.expect("IS request");
        let body: Value = res.json().await.expect("IS answer");
        body["invites"].as_array().cloned().unwrap_or_default()
    }

    /// Binds `address` to `mxid`; the identity server calls `/3pid/onbind` on `hs` and this is
    /// what the homeserver answered (and the body that was sent).
    pub async fn bind(&self, hs: &str, address: &str, mxid: &str) -> (Resp, Value) {
        let out = self.post("/_test/bind", json!({ "hs": hs, "address": address, "mxid": mxid })).await;
        ((out["status"].as_u64().unwrap() as u16, out["body"].clone()), out["sent"].clone())
    }

    /// Sends an onbind body of the test's making to `hs`; the homeserver's answer.
    pub async fn onbind(&self, hs: &str, body: Value) -> Resp {
        let out = self.post("/_test/onbind", json!({ "hs": hs, "body": body })).await;
        (out["status"].as_u64().unwrap() as u16, out["body"].clone())
    }

    /// `object` signed with the identity server's key.
    pub async fn sign(&self, object: Value) -> Value {
        self.post("/_test/sign", json!({ "object": object })).await
    }

    /// `{"refuse", "revoked"}`: refuse every request with 500 / call the key revoked.
    pub async fn configure(&self, config: Value) {
        self.post("/_test/config", config).await;
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the identity server the third-party invite tests talk to (`tests/nio/identity_server.py`,
/// run by `python` from the test virtualenv) on loopback `port`, accepting `token` as its access
/// token, and waits until it listens.
fn spawn(python: &Path, port: u16, token: &str) -> Child {
    let child = std::process::Command::new(python)
        .arg(crate::workspace_root().join("tests/nio/identity_server.py"))
        .arg(port.to_string())
        .arg(token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("starting the identity server");
    assert!(crate::listening(port, Duration::from_secs(20), || {}), "the identity server did not start listening");
    child
}

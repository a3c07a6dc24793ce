//! Email addresses on accounts over real HTTP and real SMTP, on both backends: a local
//! `aiosmtpd` server (from the test virtualenv) receives the verification mails into a
//! maildir; the test reads each mail, follows its link, and completes registration with an
//! email address, a password reset by email and adding an address to an account. Without
//! `[email]`, the endpoints answer the spec's errors.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Resp, TestServer, assert_error, free_port, ok, send, set_config};
use reqwest::Method;
use serde_json::{Value, json};

/// An `aiosmtpd` server on 127.0.0.1 writing every mail it receives into a maildir.
struct SmtpSink {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let maildir = dir.path().join("mail");
        let port = free_port();
        let child = Command::new(common::nio_python())
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting aiosmtpd");
        assert!(test_support::listening(port, Duration::from_secs(20), || {}), "aiosmtpd did not start listening");
        Self { child, port, maildir, _dir: dir }
    }

    fn mails(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.maildir.join("new"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files.iter().map(|p| std::fs::read_to_string(p).expect("mail")).collect()
    }

    /// Waits for the `n`th mail (counting from 1) and returns it.
    async fn mail(&self, n: usize) -> String {
        let started = Instant::now();
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails[n - 1].clone();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "mail {n} did not arrive ({} so far)", mails.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The verification link of a mail as a path on `server` (the mail's host is `public_baseurl`).
fn link_of(mail: &str) -> String {
    // Quoted-printable soft line breaks and `=` escapes, in case the mail was encoded.
    let text = mail.replace("=\r\n", "").replace("=\n", "").replace("=3D", "=");
    let start = text.find("http://").expect("a link in the mail");
    let link: String = text[start..].chars().take_while(|c| !c.is_whitespace()).collect();
    let path_start = link["http://".len()..].find('/').expect("a path") + "http://".len();
    link[path_start..].to_owned()
}

fn param(path: &str, name: &str) -> String {
    let query = path.split_once('?').expect("query").1;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).expect(name).1.into_owned()
}

fn with_smtp(config: &mut toml::Table, port: u16) {
    let client = config["listen"]["client"].as_str().unwrap().to_owned();
    set_config(config, "public_baseurl", format!("http://{client}"));
    set_config(config, "email.smtp_host", "127.0.0.1");
    set_config(config, "email.smtp_port", i64::from(port));
    set_config(config, "email.notif_from", "Myelin <noreply@localhost>");
}

async fn start_with_smtp(backend: common::Backend) -> (TestServer, SmtpSink) {
    let sink = SmtpSink::start();
    let port = sink.port;
    let server = TestServer::start_with(backend, |c| with_smtp(c, port)).await;
    (server, sink)
}

async fn request_token(server: &TestServer, path: &str, email: &str, secret: &str, attempt: u64) -> Resp {
    server
        .post(
            &format!("/_matrix/client/v3/{path}/email/requestToken"),
            &json!({ "client_secret": secret, "email": email, "send_attempt": attempt }),
        )
        .await
}

fn email_auth(sid: &str, secret: &str, session: &str) -> Value {
    json!({ "type": "m.login.email.identity", "threepid_creds": { "sid": sid, "client_secret": secret }, "session": session })
}

async fn registration_and_password_reset_by_email(backend: common::Backend) {
    let (server, sink) = start_with_smtp(backend).await;

    // Registration with an email address.
    let sid = ok(&request_token(&server, "register", "Carol@Example.org", "secret1", 1).await)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The same attempt again: the same session, no second mail.
    let again = ok(&request_token(&server, "register", "carol@example.org", "secret1", 1).await).clone();
    assert_eq!(again["sid"], sid.as_str());
    assert!(again["submit_url"].as_str().unwrap().ends_with("/_matrix/client/unstable/email/submit_token"), "{again}");
    let mail = sink.mail(1).await;
    assert!(mail.contains("carol@example.org"), "{mail}");
    assert!(mail.contains("noreply@localhost"), "{mail}");
    let link = link_of(&mail);
    assert_eq!(param(&link, "sid"), sid);

    let srv = &server;
    let register = |auth: Option<Value>| {
        let mut body = json!({ "username": "carol", "password": "first password" });
        if let Some(auth) = auth {
            body["auth"] = auth;
        }
        async move { srv.post("/_matrix/client/v3/register", &body).await }
    };
    let (status, uia) = register(None).await;
    assert_eq!(status, 401, "{uia}");
    let flows = uia["flows"].as_array().unwrap();
    assert!(flows.iter().any(|f| f["stages"] == json!(["m.login.email.identity"])), "{uia}");
    let session = uia["session"].as_str().unwrap().to_owned();
    // Before the link is followed, the stage is not complete.
    let (status, early) = register(Some(email_auth(&sid, "secret1", &session))).await;
    assert_eq!(status, 401, "{early}");
    assert!(early["completed"].as_array().unwrap().is_empty(), "{early}");
    // The link, once.
    let followed = server.request(Method::GET, &link).send().await.unwrap();
    assert_eq!(followed.status().as_u16(), 200);
    assert!(followed.text().await.unwrap().contains("verified"));
    let twice = server.request(Method::GET, &link).send().await.unwrap();
    assert_eq!(twice.status().as_u16(), 400, "a link works once");
    let carol = server.client_from(ok(&register(Some(email_auth(&sid, "secret1", &session))).await), "first password");
    let listed = ok(&carol.get("/_matrix/client/v3/account/3pid").await).clone();
    assert_eq!(listed["threepids"][0]["address"], "carol@example.org", "{listed}");
    assert_eq!(listed["threepids"][0]["medium"], "email");
    assert!(listed["threepids"][0]["validated_at"].is_i64() && listed["threepids"][0]["added_at"].is_i64());

    // The address is taken now; an unknown one cannot reset anything.
    assert_error(
        &request_token(&server, "register", "carol@example.org", "secret2", 1).await,
        400,
        "M_THREEPID_IN_USE",
    );
    assert_error(
        &request_token(&server, "account/password", "nobody@example.org", "s", 1).await,
        400,
        "M_THREEPID_NOT_FOUND",
    );
    assert_error(&request_token(&server, "register", "not an address", "s", 1).await, 400, "M_INVALID_PARAM");

    // Password reset by email.
    let sid = ok(&request_token(&server, "account/password", "carol@example.org", "reset1", 1).await)["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = link_of(&sink.mail(2).await);
    let reset = |auth: Option<Value>| {
        let mut body = json!({ "new_password": "second password" });
        if let Some(auth) = auth {
            body["auth"] = auth;
        }
        send(server.request(Method::POST, "/_matrix/client/v3/account/password").json(&body))
    };
    let (status, uia) = reset(None).await;
    assert_eq!(status, 401, "{uia}");
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.email.identity"] }]), "{uia}");
    let session = uia["session"].as_str().unwrap().to_owned();
    assert_eq!(server.request(Method::GET, &link).send().await.unwrap().status().as_u16(), 200);
    ok(&reset(Some(email_auth(&sid, "reset1", &session))).await);
    // The old password and the old devices are gone; the new password works.
    assert_error(&carol.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");
    let old = server
        .post(
            "/_matrix/client/v3/login",
            &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "carol" }, "password": "first password" }),
        )
        .await;
    assert_error(&old, 403, "M_FORBIDDEN");
    server.login("carol", "second password").await;
    // The session served once.
    let (_, uia) = reset(None).await;
    let session = uia["session"].as_str().unwrap().to_owned();
    let (status, body) = reset(Some(email_auth(&sid, "reset1", &session))).await;
    assert!(status == 400 || status == 401, "a used session does not reset again: {status} {body}");
    assert_ne!(status, 200);
    assert_eq!(sink.mails().len(), 2, "one mail per session and attempt");
}

async fn adding_and_removing_an_address(backend: common::Backend) {
    let (server, sink) = start_with_smtp(backend).await;
    let dave = server.register("dave").await;
    let caps = ok(&dave.get("/_matrix/client/v3/capabilities").await).clone();
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], true, "{caps}");
    let body = ok(&request_token(&server, "account/3pid", "dave@example.org", "add1", 1).await).clone();
    let sid = body["sid"].as_str().unwrap().to_owned();
    let link = link_of(&sink.mail(1).await);
    let registering = |auth: Option<Value>| {
        let mut body = json!({ "username": "eve", "password": "pw" });
        if let Some(auth) = auth {
            body["auth"] = auth;
        }
        let srv = &server;
        async move { srv.post("/_matrix/client/v3/register", &body).await }
    };
    // A higher send_attempt sends the mail again, with a new token; the old one stops working.
    ok(&request_token(&server, "account/3pid", "dave@example.org", "add1", 2).await);
    let resent = link_of(&sink.mail(2).await);
    assert_ne!(param(&link, "token"), param(&resent, "token"));
    // The `submit_url` route, with the token of the second mail.
    let srv = &server;
    let submit = |token: String| {
        let body = json!({ "sid": sid, "client_secret": "add1", "token": token });
        async move { srv.post("/_matrix/client/unstable/email/submit_token", &body).await }
    };
    assert_eq!(ok(&submit(param(&link, "token")).await)["success"], false);
    assert_eq!(ok(&submit(param(&resent, "token")).await)["success"], true);
    // A session for adding an address does not register an account.
    let (_, uia) = registering(None).await;
    let session = uia["session"].as_str().unwrap().to_owned();
    let (status, body) = registering(Some(email_auth(&sid, "add1", &session))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["completed"].as_array().unwrap().is_empty(), "{body}");

    let add = json!({ "sid": sid, "client_secret": "add1" });
    let done = dave.with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", add.clone()).await;
    ok(&done);
    let listed = ok(&dave.get("/_matrix/client/v3/account/3pid").await).clone();
    assert_eq!(listed["threepids"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["threepids"][0]["address"], "dave@example.org");
    // The session is used up.
    let again = dave.with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", add).await;
    assert_error(&again, 400, "M_THREEPID_AUTH_FAILED");

    let delete = json!({ "medium": "email", "address": "Dave@example.org" });
    assert_eq!(
        ok(&dave.post("/_matrix/client/v3/account/3pid/delete", &delete).await)["id_server_unbind_result"],
        "no-support"
    );
    assert_eq!(ok(&dave.get("/_matrix/client/v3/account/3pid").await)["threepids"], json!([]));
    // Free again: another account may take it.
    ok(&request_token(&server, "account/3pid", "dave@example.org", "add2", 1).await);
}

both_backends!(without_smtp_the_email_endpoints_answer_the_spec_errors, |server| async move {
    let erin = server.register("erin").await;
    for path in ["register", "account/password", "account/3pid"] {
        assert_error(&request_token(&server, path, "erin@example.org", "s1", 1).await, 400, "M_THREEPID_DENIED");
    }
    let add = json!({ "sid": "abc", "client_secret": "s1" });
    let resp = erin.with_password_uia(Method::POST, "/_matrix/client/v3/account/3pid/add", add).await;
    assert_error(&resp, 400, "M_THREEPID_DENIED");
    let bind = json!({ "client_secret": "s1", "id_server": "id.example.org", "id_access_token": "t", "sid": "abc" });
    assert_error(&erin.post("/_matrix/client/v3/account/3pid/bind", &bind).await, 400, "M_SERVER_NOT_TRUSTED");
    let unbind = json!({ "medium": "email", "address": "erin@example.org" });
    assert_eq!(
        ok(&erin.post("/_matrix/client/v3/account/3pid/unbind", &unbind).await)["id_server_unbind_result"],
        "no-support"
    );
    let named = json!({ "medium": "email", "address": "erin@example.org", "id_server": "id.example.org" });
    assert_error(&erin.post("/_matrix/client/v3/account/3pid/unbind", &named).await, 400, "M_SERVER_NOT_TRUSTED");
    assert_eq!(ok(&erin.get("/_matrix/client/v3/account/3pid").await)["threepids"], json!([]));
    let caps = ok(&erin.get("/_matrix/client/v3/capabilities").await).clone();
    assert_eq!(caps["capabilities"]["m.3pid_changes"]["enabled"], false, "{caps}");
    let link = server
        .request(Method::GET, "/_matrix/client/unstable/email/submit_token?sid=a&client_secret=b&token=c")
        .send()
        .await
        .unwrap();
    assert_eq!(link.status().as_u16(), 400);
    // A password reset needs email: without a token, it is an unauthenticated request.
    let reset =
        send(server.request(Method::POST, "/_matrix/client/v3/account/password").json(&json!({ "new_password": "x" })))
            .await;
    assert_error(&reset, 401, "M_MISSING_TOKEN");
    // Registration offers no email stage.
    let (status, uia) =
        server.post("/_matrix/client/v3/register", &json!({ "username": "frank", "password": "p" })).await;
    assert_eq!(status, 401);
    assert_eq!(uia["flows"], json!([{ "stages": ["m.login.dummy"] }]), "{uia}");
});

mod registration_and_password_reset {
    use super::*;
    #[tokio::test]
    async fn sqlite() {
        registration_and_password_reset_by_email(common::Backend::Sqlite).await;
    }
    #[tokio::test]
    async fn postgres() {
        registration_and_password_reset_by_email(common::Backend::Postgres).await;
    }
}

mod adding_and_removing {
    use super::*;
    #[tokio::test]
    async fn sqlite() {
        adding_and_removing_an_address(common::Backend::Sqlite).await;
    }
    #[tokio::test]
    async fn postgres() {
        adding_and_removing_an_address(common::Backend::Postgres).await;
    }
}

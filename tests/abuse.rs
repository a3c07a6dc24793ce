//! Brute force and mass registration: the login, failed-password and registration limits
//! (`[rate_limits]`, Synapse's `rc_login` and `rc_registration`), and `X-Forwarded-For`, which
//! counts only from a trusted proxy.
//!
//! The harness turns rate limits off; each test here turns them on with small buckets whose
//! refill is slow enough (0.001/s) that nothing refills while it runs.

#[macro_use]
mod common;

use std::net::IpAddr;

use common::*;
use serde_json::{Value, json};

const SLOW: f64 = 0.001;

fn limits(config: &mut toml::Table) {
    set_config(config, "rate_limits.enabled", true);
    set_config(config, "rate_limits.per_second", 1000.0);
    set_config(config, "rate_limits.burst", 1000);
    for (name, burst) in
        [("login_address", 1000), ("login_account", 1000), ("failed_logins", 3), ("registration", 1000)]
    {
        set_config(config, &format!("rate_limits.{name}.per_second"), SLOW);
        set_config(config, &format!("rate_limits.{name}.burst"), burst);
    }
}

/// A client whose connections come from `source` (any 127.0.0.0/8 address is loopback).
fn client_from(source: &str) -> reqwest::Client {
    init_crypto();
    reqwest::Client::builder().local_address(source.parse::<IpAddr>().unwrap()).build().unwrap()
}

async fn login(http: &reqwest::Client, server: &TestServer, user: &str, password: &str, forwarded: &[&str]) -> Resp {
    let mut req = http.post(format!("{}/_matrix/client/v3/login", server.url())).json(&json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    }));
    for value in forwarded {
        req = req.header("X-Forwarded-For", *value);
    }
    send(req).await
}

fn limited(resp: &Resp) -> bool {
    resp.0 == 429
        && resp.1["errcode"] == "M_LIMIT_EXCEEDED"
        && resp.1["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0)
}

// Three wrong passwords, then the account takes no more guesses (not even the right password)
// from any address; other accounts are unaffected. The same bucket counts wrong passwords in
// User-Interactive Auth.
both_backends!(failed_passwords_are_limited_per_account, with limits, |server| async move {
    server.register("alice").await;
    server.register("bob").await;
    let (here, there) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    for _ in 0..3 {
        let resp = login(&here, &server, "alice", "wrong", &[]).await;
        assert_eq!(resp.0, 403, "{resp:?}");
    }
    let resp = login(&there, &server, "alice", "wrong", &[]).await;
    assert!(limited(&resp), "a fourth guess from another address: {resp:?}");
    let resp = login(&here, &server, "alice", PASSWORD, &[]).await;
    assert!(limited(&resp), "the right password while limited: {resp:?}");
    let resp = login(&here, &server, "bob", PASSWORD, &[]).await;
    assert_eq!(resp.0, 200, "another account: {resp:?}");

    // UIA: changing bob's password with wrong old passwords.
    let bob = server.login("bob", PASSWORD).await;
    let change = |password: &str| {
        json!({ "new_password": "a new passphrase", "auth": {
            "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": password,
        }})
    };
    for _ in 0..3 {
        let (status, body) = bob.post("/_matrix/client/v3/account/password", &change("wrong")).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    }
    let resp = bob.post("/_matrix/client/v3/account/password", &change("wrong")).await;
    assert!(limited(&resp), "a fourth wrong password in UIA: {resp:?}");
    let resp = bob.post("/_matrix/client/v3/account/password", &change(PASSWORD)).await;
    assert!(limited(&resp), "the right password in UIA while limited: {resp:?}");
});

// Login attempts per address and per account, successful ones included.
both_backends!(
    logins_are_limited_per_address_and_account,
    with | c | {
        limits(c);
        set_config(c, "rate_limits.login_address.burst", 3);
        set_config(c, "rate_limits.login_account.burst", 5);
    },
    |server| async move {
        for user in ["carol", "dave"] {
            server.register(user).await;
        }
        let (first, second, third) = (client_from("127.0.0.1"), client_from("127.0.0.2"), client_from("127.0.0.3"));
        for _ in 0..3 {
            assert_eq!(login(&first, &server, "carol", PASSWORD, &[]).await.0, 200);
        }
        let resp = login(&first, &server, "dave", PASSWORD, &[]).await;
        assert!(limited(&resp), "a fourth login from one address: {resp:?}");
        // Another address may still log in, until the account's own limit (5) is reached.
        for _ in 0..2 {
            assert_eq!(login(&second, &server, "carol", PASSWORD, &[]).await.0, 200);
        }
        let resp = login(&third, &server, "carol", PASSWORD, &[]).await;
        assert!(limited(&resp), "a sixth login of one account: {resp:?}");
        assert_eq!(login(&third, &server, "dave", PASSWORD, &[]).await.0, 200);
    }
);

// Registrations per address: the fourth is refused at its first step, and the limit counts only
// completed registrations (a first UIA step takes nothing).
both_backends!(
    registrations_are_limited_per_address,
    with | c | {
        limits(c);
        set_config(c, "rate_limits.registration.burst", 3);
    },
    |server| async move {
        let register = |user: &str, auth: Option<Value>| {
            let mut body = json!({ "username": user, "password": PASSWORD });
            if let Some(auth) = auth {
                body["auth"] = auth;
            }
            body
        };
        for i in 0..5 {
            let (status, body) =
                server.post("/_matrix/client/v3/register", &register(&format!("probe{i}"), None)).await;
            assert_eq!(status, 401, "first UIA step: {body}");
        }
        for i in 0..3 {
            let auth = Some(json!({ "type": "m.login.dummy" }));
            let (status, body) = server.post("/_matrix/client/v3/register", &register(&format!("user{i}"), auth)).await;
            assert_eq!(status, 200, "{body}");
        }
        let resp = server.post("/_matrix/client/v3/register", &register("user3", None)).await;
        assert!(limited(&resp), "a fourth registration: {resp:?}");
        let (status, _) = server.get("/_matrix/client/v3/register/available?username=user3").await;
        assert_eq!(status, 200, "user3 does not exist");
    }
);

// `X-Forwarded-For` names the client only when the peer is a trusted proxy; a client cannot
// escape the address limit by sending the header itself, nor by prepending entries to it.
both_backends!(
    forwarded_for_counts_only_from_trusted_proxies,
    with | c | {
        limits(c);
        set_config(c, "rate_limits.login_address.burst", 2);
        set_config(c, "listen.trusted_proxies", vec!["127.0.0.2"]);
    },
    |server| async move {
        server.register("erin").await;
        let (client, proxy) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
        for i in 0..2 {
            let spoofed = format!("10.0.0.{i}");
            assert_eq!(login(&client, &server, "erin", PASSWORD, &[&spoofed]).await.0, 200);
        }
        let resp = login(&client, &server, "erin", PASSWORD, &["10.0.0.99"]).await;
        assert!(limited(&resp), "X-Forwarded-For from an untrusted peer: {resp:?}");

        // Through the trusted proxy each forwarded client has its own bucket.
        for _ in 0..2 {
            assert_eq!(login(&proxy, &server, "erin", PASSWORD, &["10.0.1.1"]).await.0, 200);
        }
        let resp = login(&proxy, &server, "erin", PASSWORD, &["10.0.1.1"]).await;
        assert!(limited(&resp), "a third login of 10.0.1.1: {resp:?}");
        // Entries left of the proxy's own are the client's to choose: the rightmost one counts.
        let resp = login(&proxy, &server, "erin", PASSWORD, &["10.0.2.2, 10.0.1.1"]).await;
        assert!(limited(&resp), "a prepended address: {resp:?}");
        assert_eq!(login(&proxy, &server, "erin", PASSWORD, &["10.0.1.2"]).await.0, 200);
    }
);

//! Refresh tokens (`POST /refresh`, `refresh_token: true` at login and registration, expiring
//! access tokens with soft logout, rotation) and login tokens (`/login/get_token` behind
//! User-Interactive Auth, single-use `m.login.token` logins).

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Access tokens of refreshable sessions live 1.5 s here.
fn short_lived(config: &mut toml::Table) {
    set_config(config, "sessions.refreshable_access_token_lifetime_ms", 1500);
}

async fn whoami(server: &TestServer, token: &str) -> Resp {
    send(
        server
            .request(reqwest::Method::GET, "/_matrix/client/v3/account/whoami")
            .header("Authorization", format!("Bearer {token}")),
    )
    .await
}

async fn refresh(server: &TestServer, refresh_token: &str) -> Resp {
    server.post("/_matrix/client/v3/refresh", &json!({ "refresh_token": refresh_token })).await
}

fn str_of<'a>(body: &'a Value, key: &str) -> &'a str {
    body[key].as_str().unwrap_or_else(|| panic!("no {key} in {body}"))
}

both_backends!(refresh_tokens_rotate_and_access_tokens_expire, with short_lived, |server| async move {
    server.register("alice").await;

    // Without refresh_token, nothing changes: no expiry.
    let (status, plain) = server
        .post(
            "/_matrix/client/v3/login",
            &json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": PASSWORD }),
        )
        .await;
    assert_eq!(status, 200, "{plain}");
    assert!(plain.get("refresh_token").is_none() && plain.get("expires_in_ms").is_none(), "{plain}");

    let (status, login) = server
        .post(
            "/_matrix/client/v3/login",
            &json!({
                "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
                "password": PASSWORD, "refresh_token": true, "device_id": "PHONE",
            }),
        )
        .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["expires_in_ms"], 1500, "{login}");
    let (access1, refresh1) = (str_of(&login, "access_token").to_owned(), str_of(&login, "refresh_token").to_owned());
    assert_eq!(whoami(&server, &access1).await.0, 200);

    // The access token expires: soft logout.
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let (status, body) = whoami(&server, &access1).await;
    assert_eq!((status, &body["errcode"], &body["soft_logout"]), (401, &json!("M_UNKNOWN_TOKEN"), &json!(true)));
    assert_eq!(whoami(&server, str_of(&plain, "access_token")).await.0, 200, "the other session does not expire");

    // A refresh gives a new pair. The answer may have been lost: the old refresh token still
    // works until its successor is used, and that retry replaces the first answer's tokens.
    let (status, first) = refresh(&server, &refresh1).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["expires_in_ms"], 1500);
    let (status, retry) = refresh(&server, &refresh1).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!(whoami(&server, str_of(&first, "access_token")).await.0, 401, "the lost answer's access token");
    assert_eq!(refresh(&server, str_of(&first, "refresh_token")).await.0, 401, "the lost answer's refresh token");

    // The new access token works on the same device; once used, the old refresh token is spent.
    let (status, me) = whoami(&server, str_of(&retry, "access_token")).await;
    assert_eq!((status, me["device_id"].as_str()), (200, Some("PHONE")), "{me}");
    let (status, body) = refresh(&server, &refresh1).await;
    assert_eq!((status, &body["errcode"]), (401, &json!("M_UNKNOWN_TOKEN")), "{body}");

    // Using the successor refresh token also spends its predecessor.
    let (status, next) = refresh(&server, str_of(&retry, "refresh_token")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(refresh(&server, str_of(&retry, "refresh_token")).await.0, 200, "until its successor is used");
    let (status, last) = refresh(&server, str_of(&retry, "refresh_token")).await;
    assert_eq!(status, 200, "{last}");
    assert_eq!(refresh(&server, str_of(&last, "refresh_token")).await.0, 200);
    assert_eq!(refresh(&server, str_of(&retry, "refresh_token")).await.0, 401);

    // Garbage and logged-out sessions.
    assert_eq!(refresh(&server, "mylr_nonsense").await.0, 401);
    let (status, reg) = server
        .post(
            "/_matrix/client/v3/register",
            &json!({ "username": "bob", "password": PASSWORD, "auth": { "type": "m.login.dummy" }, "refresh_token": true }),
        )
        .await;
    assert_eq!(status, 200, "{reg}");
    assert_eq!(reg["expires_in_ms"], 1500, "{reg}");
    let bob_refresh = str_of(&reg, "refresh_token").to_owned();
    let logout = server
        .request(reqwest::Method::POST, "/_matrix/client/v3/logout")
        .header("Authorization", format!("Bearer {}", str_of(&reg, "access_token")))
        .json(&json!({}));
    assert_eq!(send(logout).await.0, 200);
    assert_eq!(refresh(&server, &bob_refresh).await.0, 401, "a logged-out device's refresh token");
});

both_backends!(login_tokens_sign_in_another_device_once, |server| async move {
    let alice = server.register("alice").await;
    let (status, caps) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!((status, &caps["capabilities"]["m.get_login_token"]["enabled"]), (200, &json!(true)));
    let (_, flows) = server.get("/_matrix/client/v3/login").await;
    assert!(
        flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{flows}"
    );

    // The password is asked for again.
    let (status, uia) = alice.post("/_matrix/client/v1/login/get_token", &json!({})).await;
    assert_eq!(status, 401, "{uia}");
    let session = str_of(&uia, "session").to_owned();
    let auth = |password: &str| {
        json!({ "auth": { "type": "m.login.password", "session": session,
            "identifier": { "type": "m.id.user", "user": "alice" }, "password": password } })
    };
    let (status, _) = alice.post("/_matrix/client/v1/login/get_token", &auth("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = alice.post("/_matrix/client/v1/login/get_token", &auth(PASSWORD)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in_ms"], 120_000, "{body}");
    let token = str_of(&body, "login_token").to_owned();

    let server = &server;
    let login = |token: String| async move {
        server.post("/_matrix/client/v3/login", &json!({ "type": "m.login.token", "token": token })).await
    };
    let (status, new) = login(token.clone()).await;
    assert_eq!(status, 200, "{new}");
    assert_eq!(new["user_id"], alice.user_id.as_str());
    assert_ne!(new["device_id"], alice.device_id.as_str());
    assert_eq!(whoami(server, str_of(&new, "access_token")).await.0, 200);

    let (status, again) = login(token).await;
    assert_eq!((status, &again["errcode"]), (403, &json!("M_FORBIDDEN")), "a second use: {again}");
    let (status, _) = login("myll_made_up".into()).await;
    assert_eq!(status, 403);
});

both_backends!(
    login_tokens_expire,
    with | c | {
        set_config(c, "sessions.login_token_lifetime_ms", 500);
    },
    |server| async move {
        let alice = server.register("alice").await;
        let (_, uia) = alice.post("/_matrix/client/v1/login/get_token", &json!({})).await;
        let auth = json!({ "auth": { "type": "m.login.password", "session": uia["session"],
        "identifier": { "type": "m.id.user", "user": "alice" }, "password": PASSWORD } });
        let (status, body) = alice.post("/_matrix/client/v1/login/get_token", &auth).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (status, _) = server
            .post("/_matrix/client/v3/login", &json!({ "type": "m.login.token", "token": body["login_token"] }))
            .await;
        assert_eq!(status, 403, "an expired login token");
    }
);

both_backends!(
    login_tokens_disabled,
    with | c | set_config(c, "sessions.login_via_existing_session", false),
    |server| async move {
        let alice = server.register("alice").await;
        let (_, caps) = alice.get("/_matrix/client/v3/capabilities").await;
        assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], false);
        let (status, body) = alice.post("/_matrix/client/v1/login/get_token", &json!({})).await;
        assert_eq!((status, &body["errcode"]), (404, &json!("M_UNRECOGNIZED")), "{body}");
    }
);

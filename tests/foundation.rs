//! The foundation over real HTTP on both backends: discovery, registration, login, sessions,
//! account and device management, every errcode of the HTTP contract, and the command line.

#[macro_use]
mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Backend, Client, PASSWORD, Resp, TestServer, assert_error, raw, send, set_config};
use reqwest::Method;
use serde_json::{Value, json};

const REGISTER: &str = "/_matrix/client/v3/register";
const LOGIN: &str = "/_matrix/client/v3/login";
const WHOAMI: &str = "/_matrix/client/v3/account/whoami";
const DEVICES: &str = "/_matrix/client/v3/devices";

/// Whether `token` is currently accepted.
async fn token_works(server: &TestServer, token: &str) -> bool {
    let resp = send(server.request(Method::GET, WHOAMI).bearer_auth(token)).await;
    match resp.0 {
        200 => true,
        401 => {
            assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
            false
        }
        _ => panic!("whoami: {resp:?}"),
    }
}

async fn password_login(server: &TestServer, body: Value) -> Resp {
    server.post(LOGIN, &body).await
}

fn login_body(user: &str, password: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    })
}

// ---------------------------------------------------------------------------------------------
// Discovery

both_backends!(versions, |server| async move {
    let (status, body) = server.get("/_matrix/client/versions").await;
    assert_eq!(status, 200, "{body}");
    let versions = body["versions"].as_array().expect("versions array");
    assert!(!versions.is_empty());
    for v in versions {
        let v = v.as_str().expect("version strings");
        assert!(v.starts_with('v') || v.starts_with('r'), "{v}");
    }
    assert!(versions.contains(&json!("v1.1")), "{body}");
    // Through v1.17; v1.18 needs invite blocking (docs/spec-coverage.md, "Advertised versions").
    for v in ["v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17"] {
        assert!(versions.contains(&json!(v)), "{v}: {body}");
    }
    assert!(!versions.contains(&json!("v1.18")), "{body}");
    assert!(body["unstable_features"].is_object(), "{body}");
    // Authentication is optional here (spec v1.10+): a valid token is fine, an invalid one is
    // refused as everywhere else (as Synapse does), so clients learn of a lost session.
    let alice = server.register("alice").await;
    assert_eq!(alice.get("/_matrix/client/versions").await.0, 200);
    let resp = send(server.request(Method::GET, "/_matrix/client/versions").bearer_auth("not-a-token")).await;
    assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
});

both_backends!(capabilities, |server| async move {
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/capabilities").await;
    assert_eq!(status, 200, "{body}");
    let caps = &body["capabilities"];
    assert_eq!(caps["m.change_password"]["enabled"], true, "{body}");
    let default = caps["m.room_versions"]["default"].as_str().expect("default");
    assert_eq!(caps["m.room_versions"]["available"][default], "stable", "{body}");
    // Capabilities need a token.
    assert_error(&server.get("/_matrix/client/v3/capabilities").await, 401, "M_MISSING_TOKEN");
});

both_backends!(well_known, |server| async move {
    let name = server.server_name();
    let (status, body) = server.get("/.well-known/matrix/client").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["m.homeserver"]["base_url"], format!("http://{name}"), "{body}");
    let (status, body) = server.get("/.well-known/matrix/server").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["m.server"], name, "{body}");
});

// ---------------------------------------------------------------------------------------------
// Registration

both_backends!(register_dummy_in_first_request, |server| async move {
    // matrix-nio sends m.login.dummy without a session in its first and only request.
    let (status, body) = server
        .post(
            REGISTER,
            &json!({
                "username": "nio",
                "password": PASSWORD,
                "initial_device_display_name": "laptop",
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], server.user_id("nio"));
    assert!(body["device_id"].is_string(), "{body}");
    let token = body["access_token"].as_str().expect("access_token");
    // At least 256 bits of secret: 43+ base64 characters.
    assert!(token.len() >= 43, "short token {token}");
    let client = server.client_from(&body, PASSWORD);
    let (status, who) = client.get(WHOAMI).await;
    assert_eq!(status, 200, "{who}");
    assert_eq!(who["user_id"], server.user_id("nio"));
    assert_eq!(who["device_id"], body["device_id"]);
    let (_, dev) = client.get(&format!("{DEVICES}/{}", client.device_id)).await;
    assert_eq!(dev["display_name"], "laptop", "{dev}");
});

both_backends!(register_uia_flow, |server| async move {
    let body = json!({ "username": "bob", "password": PASSWORD });
    let (status, challenge) = server.post(REGISTER, &body).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"], json!([{ "stages": ["m.login.dummy"] }]), "{challenge}");
    assert!(challenge["params"].is_object(), "{challenge}");
    let session = challenge["session"].as_str().expect("session").to_owned();
    // The challenge must not have created the account.
    let (status, avail) = server.get("/_matrix/client/v3/register/available?username=bob").await;
    assert_eq!(status, 200, "{avail}");

    let mut body = body;
    body["auth"] = json!({ "type": "m.login.dummy", "session": session });
    let (status, done) = server.post(REGISTER, &body).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["user_id"], server.user_id("bob"));
    server.login("bob", PASSWORD).await;

    // An unknown session is refused rather than silently restarted.
    let (status, again) = server
        .post(
            REGISTER,
            &json!({
                "username": "bob2",
                "password": PASSWORD,
                "auth": { "type": "m.login.dummy", "session": "no-such-session" },
            }),
        )
        .await;
    assert!(status == 400 || status == 401, "{status} {again}");
    assert!(again["access_token"].is_null(), "{again}");
});

both_backends!(
    register_token_mode,
    with | c | {
        set_config(c, "registration.mode", "token");
        set_config(c, "registration.tokens", toml::Value::Array(vec!["let-me-in".into()]));
    },
    |server| async move {
        let body = json!({ "username": "carol", "password": PASSWORD });
        let (status, challenge) = server.post(REGISTER, &body).await;
        assert_eq!(status, 401, "{challenge}");
        assert_eq!(challenge["flows"], json!([{ "stages": ["m.login.registration_token"] }]), "{challenge}");
        let session = challenge["session"].as_str().unwrap().to_owned();

        // Dummy auth does not satisfy the token flow.
        let mut dummy = body.clone();
        dummy["auth"] = json!({ "type": "m.login.dummy", "session": session });
        let (status, resp) = server.post(REGISTER, &dummy).await;
        assert!(status == 400 || status == 401, "{status} {resp}");
        assert!(resp["access_token"].is_null(), "{resp}");

        // A wrong token: 401 with the UIA body and an errcode, same session.
        let mut wrong = body.clone();
        wrong["auth"] = json!({
            "type": "m.login.registration_token", "token": "guess", "session": session,
        });
        let (status, resp) = server.post(REGISTER, &wrong).await;
        assert_eq!(status, 401, "{resp}");
        assert_eq!(resp["errcode"], "M_FORBIDDEN", "{resp}");
        assert_eq!(resp["session"], session.as_str(), "{resp}");

        let mut right = body.clone();
        right["auth"] = json!({
            "type": "m.login.registration_token", "token": "let-me-in", "session": session,
        });
        let (status, resp) = server.post(REGISTER, &right).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["user_id"], server.user_id("carol"));

        // The token also works in a first request without a session.
        let (status, resp) = server
            .post(
                REGISTER,
                &json!({
                    "username": "dave", "password": PASSWORD,
                    "auth": { "type": "m.login.registration_token", "token": "let-me-in" },
                }),
            )
            .await;
        assert_eq!(status, 200, "{resp}");
    }
);

both_backends!(register_disabled, with | c | set_config(c, "registration.mode", "disabled"), |server| async move {
    let resp = server
        .post(REGISTER, &json!({ "username": "eve", "password": PASSWORD, "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_error(&resp, 403, "M_FORBIDDEN");
    let resp = server.post(REGISTER, &json!({ "username": "eve", "password": PASSWORD })).await;
    assert_error(&resp, 403, "M_FORBIDDEN");
});

both_backends!(register_user_in_use, |server| async move {
    server.register("frank").await;
    for name in ["frank", "Frank"] {
        let resp = server
            .post(REGISTER, &json!({ "username": name, "password": PASSWORD, "auth": { "type": "m.login.dummy" } }))
            .await;
        assert_error(&resp, 400, "M_USER_IN_USE");
    }
    // A taken name is reported at the first UIA step, before any auth.
    let resp = server.post(REGISTER, &json!({ "username": "frank", "password": PASSWORD })).await;
    assert_error(&resp, 400, "M_USER_IN_USE");
});

both_backends!(register_invalid_username, |server| async move {
    let long = "a".repeat(260);
    for name in ["has space", "_reserved", "12345", "snowman☃", "a:b", "", long.as_str()] {
        let resp = server
            .post(REGISTER, &json!({ "username": name, "password": PASSWORD, "auth": { "type": "m.login.dummy" } }))
            .await;
        assert_error(&resp, 400, "M_INVALID_USERNAME");
    }
    // Every character the grammar allows.
    server.register("a.b_c=d-e/f+9").await;
});

both_backends!(register_inhibit_login, |server| async move {
    let (status, body) = server
        .post(
            REGISTER,
            &json!({
                "username": "grace", "password": PASSWORD, "inhibit_login": true,
                "auth": { "type": "m.login.dummy" },
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], server.user_id("grace"));
    assert!(body.get("access_token").is_none(), "{body}");
    assert!(body.get("device_id").is_none(), "{body}");
    let grace = server.login("grace", PASSWORD).await;
    let (_, devices) = grace.get(DEVICES).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
});

both_backends!(register_guest_forbidden, |server| async move {
    let resp = send(server.request(Method::POST, &format!("{REGISTER}?kind=guest")).json(&json!({}))).await;
    assert_error(&resp, 403, "M_GUEST_ACCESS_FORBIDDEN");
});

both_backends!(register_available, |server| async move {
    let path = |name: &str| format!("/_matrix/client/v3/register/available?username={name}");
    let (status, body) = server.get(&path("henry")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], true, "{body}");
    server.register("henry").await;
    assert_error(&server.get(&path("henry")).await, 400, "M_USER_IN_USE");
    assert_error(&server.get(&path("_henry")).await, 400, "M_INVALID_USERNAME");
    assert_error(&server.get("/_matrix/client/v3/register/available").await, 400, "M_MISSING_PARAM");
});

// ---------------------------------------------------------------------------------------------
// Login and logout

both_backends!(login_types, |server| async move {
    let (status, body) = server.get(LOGIN).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["flows"].as_array().unwrap().contains(&json!({ "type": "m.login.password" })), "{body}");
});

both_backends!(login_identifiers, |server| async move {
    server.register("ivy").await;
    let full = server.user_id("ivy");
    let bodies = [
        login_body("ivy", PASSWORD),
        login_body("IVY", PASSWORD),
        login_body(&full, PASSWORD),
        // The deprecated top-level `user` field, still sent by older clients.
        json!({ "type": "m.login.password", "user": "ivy", "password": PASSWORD }),
        json!({ "type": "m.login.password", "user": full, "password": PASSWORD }),
    ];
    let mut devices = Vec::new();
    for body in bodies {
        let (status, resp) = password_login(&server, body.clone()).await;
        assert_eq!(status, 200, "{body} -> {resp}");
        assert_eq!(resp["user_id"], full, "{resp}");
        assert!(token_works(&server, resp["access_token"].as_str().unwrap()).await);
        devices.push(resp["device_id"].as_str().unwrap().to_owned());
    }
    devices.sort();
    devices.dedup();
    assert_eq!(devices.len(), 5, "each login without device_id is a new device");
});

both_backends!(login_failures, |server| async move {
    server.register("jack").await;
    assert_error(&password_login(&server, login_body("jack", "wrong")).await, 403, "M_FORBIDDEN");
    assert_error(&password_login(&server, login_body("nobody", PASSWORD)).await, 403, "M_FORBIDDEN");
    // A user of another server cannot log in here.
    assert_error(&password_login(&server, login_body("@jack:elsewhere.example", PASSWORD)).await, 403, "M_FORBIDDEN");
    // An unknown login token is refused as the spec says; an unknown login type is a bad request.
    assert_error(
        &password_login(&server, json!({ "type": "m.login.token", "token": "abc" })).await,
        403,
        "M_FORBIDDEN",
    );
    let (status, resp) = password_login(&server, json!({ "type": "org.example.unknown", "x": 1 })).await;
    assert_eq!(status, 400, "{resp}");
});

both_backends!(login_device_id_reuse, |server| async move {
    server.register("kate").await;
    let mut body = login_body("kate", PASSWORD);
    body["device_id"] = json!("KATEPHONE");
    body["initial_device_display_name"] = json!("phone");
    let (status, first) = password_login(&server, body.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["device_id"], "KATEPHONE");
    let first_token = first["access_token"].as_str().unwrap().to_owned();

    let (status, second) = password_login(&server, body).await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["device_id"], "KATEPHONE");
    let second_token = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(first_token, second_token);

    // Reusing the device id replaces the device's session.
    assert!(!token_works(&server, &first_token).await);
    assert!(token_works(&server, &second_token).await);
    let kate = server.client_from(&second, PASSWORD);
    let (_, devices) = kate.get(DEVICES).await;
    let ids: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert_eq!(ids.iter().filter(|d| **d == "KATEPHONE").count(), 1, "{devices}");
});

both_backends!(whoami, |server| async move {
    let leo = server.register("leo").await;
    let (status, body) = leo.get(WHOAMI).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], leo.user_id);
    assert_eq!(body["device_id"], leo.device_id);
    // `is_guest` defaults to false when absent.
    assert!(matches!(body.get("is_guest"), None | Some(Value::Bool(false))), "{body}");
});

both_backends!(logout, |server| async move {
    let phone = server.register("mia").await;
    let laptop = server.login("mia", PASSWORD).await;
    let (status, body) = phone.post("/_matrix/client/v3/logout", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &phone.access_token).await);
    assert!(token_works(&server, &laptop.access_token).await);
    let (_, devices) = laptop.get(DEVICES).await;
    let devices = devices["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0]["device_id"], laptop.device_id);
    // The logged-out token cannot log out again.
    assert_error(&phone.post("/_matrix/client/v3/logout", &json!({})).await, 401, "M_UNKNOWN_TOKEN");
});

both_backends!(logout_all, |server| async move {
    let a = server.register("ned").await;
    let b = server.login("ned", PASSWORD).await;
    let other = server.register("olga").await;
    let (status, body) = a.post("/_matrix/client/v3/logout/all", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &a.access_token).await);
    assert!(!token_works(&server, &b.access_token).await);
    assert!(token_works(&server, &other.access_token).await);
    // The account itself survives.
    let c = server.login("ned", PASSWORD).await;
    let (_, devices) = c.get(DEVICES).await;
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
});

// ---------------------------------------------------------------------------------------------
// Account management

both_backends!(change_password, |server| async move {
    let main = server.register("pam").await;
    let other = server.login("pam", PASSWORD).await;

    // A wrong password at the UIA stage is a 401 with an errcode, and changes nothing.
    let (status, challenge) =
        main.post("/_matrix/client/v3/account/password", &json!({ "new_password": "new-secret" })).await;
    assert_eq!(status, 401, "{challenge}");
    assert_eq!(challenge["flows"], json!([{ "stages": ["m.login.password"] }]), "{challenge}");
    let session = challenge["session"].as_str().unwrap();
    let mut auth = main.password_auth(session);
    auth["password"] = json!("wrong");
    let (status, resp) =
        main.post("/_matrix/client/v3/account/password", &json!({ "new_password": "new-secret", "auth": auth })).await;
    assert_eq!(status, 401, "{resp}");
    assert_eq!(resp["errcode"], "M_FORBIDDEN", "{resp}");
    server.login("pam", PASSWORD).await;

    let (status, body) = main
        .with_password_uia(Method::POST, "/_matrix/client/v3/account/password", json!({ "new_password": "new-secret" }))
        .await;
    assert_eq!(status, 200, "{body}");
    // Other devices are logged out by default; the device that asked stays.
    assert!(token_works(&server, &main.access_token).await);
    assert!(!token_works(&server, &other.access_token).await);
    assert_error(&password_login(&server, login_body("pam", PASSWORD)).await, 403, "M_FORBIDDEN");
    let renewed = server.login("pam", "new-secret").await;

    // With logout_devices = false the other sessions survive.
    let mut renewed = renewed;
    renewed.password = "new-secret".into();
    let (status, body) = renewed
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/account/password",
            json!({ "new_password": "third", "logout_devices": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(token_works(&server, &main.access_token).await);
    server.login("pam", "third").await;
});

both_backends!(deactivate, |server| async move {
    let quinn = server.register("quinn").await;
    let other = server.login("quinn", PASSWORD).await;
    let (status, body) =
        quinn.with_password_uia(Method::POST, "/_matrix/client/v3/account/deactivate", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &quinn.access_token).await);
    assert!(!token_works(&server, &other.access_token).await);
    let (status, resp) = password_login(&server, login_body("quinn", PASSWORD)).await;
    assert_eq!(status, 403, "{resp}");
    // The name stays taken so that nobody can impersonate the old account.
    let resp = server
        .post(REGISTER, &json!({ "username": "quinn", "password": PASSWORD, "auth": { "type": "m.login.dummy" } }))
        .await;
    assert_error(&resp, 400, "M_USER_IN_USE");
});

// ---------------------------------------------------------------------------------------------
// Devices

fn device_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

both_backends!(devices, |server| async move {
    let main = server.register("rose").await;
    let (status, second) = password_login(&server, {
        let mut b = login_body("rose", PASSWORD);
        b["initial_device_display_name"] = json!("phone");
        b
    })
    .await;
    assert_eq!(status, 200, "{second}");
    let second = server.client_from(&second, PASSWORD);

    let (status, list) = main.get(DEVICES).await;
    assert_eq!(status, 200, "{list}");
    let mut expected = vec![main.device_id.clone(), second.device_id.clone()];
    expected.sort();
    assert_eq!(device_ids(&list), expected);
    for d in list["devices"].as_array().unwrap() {
        assert!(d["last_seen_ts"].is_i64(), "{d}");
    }

    let path = format!("{DEVICES}/{}", second.device_id);
    let (status, dev) = main.get(&path).await;
    assert_eq!(status, 200, "{dev}");
    assert_eq!(dev["device_id"], second.device_id);
    assert_eq!(dev["display_name"], "phone");

    let (status, body) = main.put(&path, &json!({ "display_name": "old phone" })).await;
    assert_eq!(status, 200, "{body}");
    let (_, dev) = main.get(&path).await;
    assert_eq!(dev["display_name"], "old phone", "{dev}");

    assert_error(&main.get(&format!("{DEVICES}/NOSUCHDEVICE")).await, 404, "M_NOT_FOUND");
    assert_error(
        &main.put(&format!("{DEVICES}/NOSUCHDEVICE"), &json!({ "display_name": "x" })).await,
        404,
        "M_NOT_FOUND",
    );
    // Another user's device is not ours to see.
    let other = server.register("sam").await;
    assert_error(&other.get(&format!("{DEVICES}/{}", main.device_id)).await, 404, "M_NOT_FOUND");

    // Deleting a device needs UIA and ends its session.
    let (status, body) = main.with_password_uia(Method::DELETE, &path, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &second.access_token).await);
    let (_, list) = main.get(DEVICES).await;
    assert_eq!(device_ids(&list), vec![main.device_id.clone()]);
    assert_error(&main.get(&path).await, 404, "M_NOT_FOUND");
});

both_backends!(delete_devices, |server| async move {
    let main = server.register("tom").await;
    let a = server.login("tom", PASSWORD).await;
    let b = server.login("tom", PASSWORD).await;
    let (status, body) = main
        .with_password_uia(
            Method::POST,
            "/_matrix/client/v3/delete_devices",
            json!({ "devices": [a.device_id, b.device_id] }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &a.access_token).await);
    assert!(!token_works(&server, &b.access_token).await);
    assert!(token_works(&server, &main.access_token).await);
    let (_, list) = main.get(DEVICES).await;
    assert_eq!(device_ids(&list), vec![main.device_id.clone()]);
});

// ---------------------------------------------------------------------------------------------
// The HTTP contract

both_backends!(unknown_path_and_method, |server| async move {
    let resp = server.get("/_matrix/client/v3/no/such/endpoint").await;
    assert_error(&resp, 404, "M_UNRECOGNIZED");
    let resp = server.get("/nothing-here").await;
    assert_error(&resp, 404, "M_UNRECOGNIZED");
    let resp = server.put("/_matrix/client/versions", &json!({})).await;
    assert_error(&resp, 405, "M_UNRECOGNIZED");
    let resp = server.delete(LOGIN, &json!({})).await;
    assert_error(&resp, 405, "M_UNRECOGNIZED");
});

both_backends!(not_json, |server| async move {
    let resp =
        send(server.request(Method::POST, LOGIN).header("content-type", "application/json").body("{not json")).await;
    assert_error(&resp, 400, "M_NOT_JSON");
    let alice = server.register("alice").await;
    let resp = send(
        alice
            .request(Method::PUT, &format!("{DEVICES}/{}", alice.device_id))
            .header("content-type", "application/json")
            .body("[1, 2"),
    )
    .await;
    assert_error(&resp, 400, "M_NOT_JSON");
});

both_backends!(bad_json, |server| async move {
    let resp = server.post(LOGIN, &json!({ "type": "m.login.password", "identifier": 5 })).await;
    assert_error(&resp, 400, "M_BAD_JSON");
    let alice = server.register("alice").await;
    let resp =
        alice.put(&format!("{DEVICES}/{}", alice.device_id), &json!({ "display_name": ["not", "a", "string"] })).await;
    assert_error(&resp, 400, "M_BAD_JSON");
    let resp = alice.post("/_matrix/client/v3/delete_devices", &json!({ "devices": "not a list" })).await;
    assert_error(&resp, 400, "M_BAD_JSON");
});

both_backends!(missing_and_unknown_token, |server| async move {
    assert_error(&server.get(WHOAMI).await, 401, "M_MISSING_TOKEN");
    assert_error(&server.get(DEVICES).await, 401, "M_MISSING_TOKEN");
    let resp = send(server.request(Method::GET, WHOAMI).bearer_auth("myl_bogus")).await;
    assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(resp.1["soft_logout"], false, "{resp:?}");
    let resp = server.get(&format!("{WHOAMI}?access_token=myl_bogus")).await;
    assert_error(&resp, 401, "M_UNKNOWN_TOKEN");
    assert_eq!(resp.1["soft_logout"], false, "{resp:?}");
});

both_backends!(access_token_query_parameter, |server| async move {
    let alice = server.register("alice").await;
    let (status, body) = server.get(&format!("{WHOAMI}?access_token={}", alice.access_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], alice.user_id);
    // The query parameter also works on POST, as matrix-nio uses it.
    let (status, body) =
        server.post(&format!("/_matrix/client/v3/logout?access_token={}", alice.access_token), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(!token_works(&server, &alice.access_token).await);
});

both_backends!(too_large, |server| async move {
    const MIB: usize = 1024 * 1024;
    let server = &server;
    // Declared too large: refused from the headers alone.
    let head = format!(
        "POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        9 * MIB
    );
    let resp = raw::request(server, &head, Vec::new()).await.resp();
    assert_error(&resp, 413, "M_TOO_LARGE");

    // Streamed without a length: refused once the limit is crossed.
    let body = raw::chunked(&vec![vec![b' '; MIB]; 9]);
    let head = format!(
        "POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let resp = raw::request(server, &head, body).await.resp();
    assert_error(&resp, 413, "M_TOO_LARGE");

    // Just under the limit is read and processed normally.
    let big = "x".repeat(7 * MIB);
    let resp = server.post(LOGIN, &login_body("nobody", &big)).await;
    assert_error(&resp, 403, "M_FORBIDDEN");
});

both_backends!(
    rate_limited,
    with | c | {
        set_config(c, "rate_limits.enabled", true);
        set_config(c, "rate_limits.burst", 3);
        set_config(c, "rate_limits.per_second", 0.1);
    },
    |server| async move {
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..6 {
            let resp = password_login(&server, login_body("nobody", "wrong")).await;
            statuses.push(resp.0);
            if resp.0 == 429 {
                limited = Some(resp);
            }
        }
        assert_eq!(statuses, [403, 403, 403, 429, 429, 429]);
        let resp = limited.unwrap();
        assert_error(&resp, 429, "M_LIMIT_EXCEEDED");
        let retry = resp.1["retry_after_ms"].as_u64().expect("retry_after_ms");
        assert!(retry > 0 && retry <= 10_000, "{resp:?}");
        // Endpoints that ruma does not mark as rate-limited stay available.
        assert_eq!(server.get("/_matrix/client/versions").await.0, 200);
    }
);

both_backends!(cors, |server| async move {
    let check = |res: &reqwest::Response| {
        let h = res.headers();
        assert_eq!(h["access-control-allow-origin"], "*", "{h:?}");
        let methods = h["access-control-allow-methods"].to_str().unwrap();
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        let headers = h["access-control-allow-headers"].to_str().unwrap().to_lowercase();
        for name in ["authorization", "content-type"] {
            assert!(headers.contains(name), "{headers}");
        }
    };
    // Preflight, on an endpoint that has no OPTIONS route of its own.
    let res = server
        .request(Method::OPTIONS, WHOAMI)
        .header("origin", "https://app.element.io")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    check(&res);
    // Any OPTIONS succeeds, on paths no route knows too.
    let res = server.request(Method::OPTIONS, "/no/such/path").send().await.unwrap();
    assert_eq!(res.status(), 200);
    check(&res);
    // On successes and on errors alike.
    for path in ["/_matrix/client/versions", WHOAMI, "/no/such/path"] {
        let res = server.request(Method::GET, path).header("origin", "https://app.element.io").send().await.unwrap();
        check(&res);
    }
});

// ---------------------------------------------------------------------------------------------
// Command line, process lifecycle and durability

/// Runs `cmd` to completion, killing it (and failing) after 20 s: a bad config must exit, not
/// start serving.
fn run_to_exit(mut cmd: std::process::Command) -> (bool, String, String) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning myelin");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("myelin kept running; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_config_parses() {
    let (ok, stdout, stderr) = run_to_exit({
        let mut c = common::myelin_command();
        c.arg("generate-config");
        c
    });
    assert!(ok, "{stderr}");
    let parsed: toml::Table = toml::from_str(&stdout).expect("generated config is TOML");
    assert_eq!(parsed["server_name"].as_str(), Some("localhost:8008"));
    assert_eq!(parsed["listen"]["client"].as_str(), Some("127.0.0.1:8008"));
    assert_eq!(parsed["registration"]["mode"].as_str(), Some("disabled"));
    assert_eq!(parsed["rate_limits"]["enabled"].as_bool(), Some(true));
}

/// A fresh directory with nothing in it: `myelin serve` alone creates config, key and database
/// under ./myelin-data and serves; `register-user` then password login works (the README's
/// first steps). The port is moved off 8008 through the environment.
#[tokio::test]
async fn first_start_without_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut child = common::myelin_command()
        .arg("serve")
        .env("MYELIN_LISTEN__CLIENT", format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = common::http_client();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("myelin exited with {status}: {err}");
        }
        if let Ok(res) = http.get(format!("{url}/_matrix/client/versions")).send().await
            && res.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let data = dir.path().join("myelin-data");
    for file in ["myelin.toml", "signing.key", "myelin.db"] {
        assert!(data.join(file).exists(), "{file} missing in {data:?}");
    }
    // The written config is the commented default one.
    let written = std::fs::read_to_string(data.join("myelin.toml")).unwrap();
    assert!(written.contains("# "), "{written}");

    let (ok, stdout, stderr) = run_to_exit({
        let mut c = common::myelin_command();
        c.args(["register-user", "admin", "--password", "s3cret", "--admin"]).current_dir(dir.path());
        c
    });
    assert!(ok, "register-user failed: {stderr}");
    assert!(stdout.contains("@admin:localhost:8008"), "{stdout}");
    let resp = send(http.post(format!("{url}{LOGIN}")).json(&login_body("admin", "s3cret"))).await;
    assert_eq!(resp.0, 200, "{resp:?}");
    // Registration is disabled by default.
    let resp = send(http.post(format!("{url}{REGISTER}")).json(&json!({
        "username": "x", "password": "y", "auth": { "type": "m.login.dummy" },
    })))
    .await;
    assert_error(&resp, 403, "M_FORBIDDEN");

    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}

both_backends!(register_user_cli, with | c | set_config(c, "registration.mode", "disabled"), |server| async move {
    let config = server.config_path().to_str().unwrap().to_owned();
    let (ok, stdout, stderr) = server.cli(&["register-user", "--config", &config, "Uma", "--password", "pw1"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&server.user_id("uma")), "{stdout}");
    server.login("uma", "pw1").await;

    // The password may come from the environment instead of the command line.
    let (ok, _, stderr) = server.cli_env(&["register-user", "--config", &config, "vic"], &[("MYELIN_PASSWORD", "pw2")]);
    assert!(ok, "{stderr}");
    server.login("vic", "pw2").await;

    let (ok, _, stderr) = server.cli(&["register-user", "--config", &config, "uma", "--password", "x"]);
    assert!(!ok, "registering a taken name must fail");
    assert!(stderr.to_lowercase().contains("taken"), "{stderr}");
    let (ok, _, stderr) = server.cli(&["register-user", "--config", &config, "_bad", "--password", "x"]);
    assert!(!ok);
    assert!(stderr.contains("_"), "{stderr}");
    let (ok, _, stderr) = server.cli(&["register-user", "--config", &config, "nopass"]);
    assert!(!ok);
    assert!(stderr.contains("--password"), "{stderr}");
});

/// Starts `myelin serve` on a config file with `contents` (plus `env`) and expects a non-zero
/// exit whose message contains every string of `expect`.
fn assert_bad_config(contents: &str, env: &[(&str, &str)], expect: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("myelin.toml");
    std::fs::write(&path, contents).unwrap();
    let (ok, _, stderr) = run_to_exit({
        let mut c = common::myelin_command();
        c.arg("serve").arg("--config").arg(&path).envs(env.iter().copied()).current_dir(dir.path());
        c
    });
    assert!(!ok, "config {contents:?} {env:?} was accepted");
    for e in expect {
        assert!(stderr.contains(e), "message for {contents:?} {env:?} lacks {e:?}: {stderr}");
    }
}

#[test]
fn bad_config_names_the_key() {
    // Every case would otherwise be valid: listen on a free port in the temp dir.
    let base = |extra: &str| {
        format!("data_dir = \"data\"\n{extra}\n[listen]\nclient = \"127.0.0.1:{}\"\n", common::free_port())
    };
    assert_bad_config(&base("[registration]\nmode = \"sometimes\""), &[], &["registration.mode", "myelin.toml"]);
    assert_bad_config(&base("[database]\nurll = \"x\""), &[], &["urll"]);
    assert_bad_config(&base("colour = \"blue\""), &[], &["colour"]);
    assert_bad_config(&base("server_name = \"bad name!\""), &[], &["server_name"]);
    assert_bad_config(&base("[database]\nurl = \"mysql://x\""), &[], &["database.url"]);
    assert_bad_config(&base("[rate_limits]\nburst = -1"), &[], &["rate_limits.burst"]);
    assert_bad_config("[listen]\nclient = \"not an address\"\n", &[], &["listen.client"]);
    assert_bad_config(&base("[log]\nformat = \"xml\""), &[], &["log.format"]);
    assert_bad_config(&base("server_name = "), &[], &["myelin.toml", "line 2"]);
    // The same through the environment.
    assert_bad_config(
        &base(""),
        &[("MYELIN_RATE_LIMITS__BURST", "lots")],
        &["rate_limits.burst", "MYELIN_RATE_LIMITS__BURST"],
    );
    // A misspelt variable is an error, not silently ignored.
    assert_bad_config(&base(""), &[("MYELIN_DATABASE_URL", "postgres://x")], &["database_url"]);
    assert_bad_config(&base(""), &[("MYELIN_REGISTRATION__MODE", "sometimes")], &["registration.mode"]);

    // A missing file and an unknown flag.
    let (ok, _, stderr) = run_to_exit({
        let mut c = common::myelin_command();
        c.args(["serve", "--config", "/nonexistent/myelin.toml"]);
        c
    });
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/myelin.toml"), "{stderr}");
    let (ok, _, stderr) = run_to_exit({
        let mut c = common::myelin_command();
        c.args(["serve", "--bogus"]);
        c
    });
    assert!(!ok);
    assert!(stderr.contains("--bogus"), "{stderr}");
}

#[tokio::test]
async fn env_overrides_config_file() {
    let mut server = TestServer::prepare(Backend::Sqlite, |_| {}).await;
    server.set_env("MYELIN_REGISTRATION__MODE", "disabled");
    server.start_again().await;
    let resp =
        server.post(REGISTER, &json!({ "username": "x", "password": "y", "auth": { "type": "m.login.dummy" } })).await;
    assert_error(&resp, 403, "M_FORBIDDEN");

    // Lists are written TOML-style in the environment (as docs/configuration.md shows).
    let mut server = TestServer::prepare(Backend::Sqlite, |_| {}).await;
    server.set_env("MYELIN_REGISTRATION__MODE", "token");
    server.set_env("MYELIN_REGISTRATION__TOKENS", r#"["first", "second one"]"#);
    // A value that looks like a number still fills a string key.
    server.set_env("MYELIN_ROOMS__DEFAULT_VERSION", "11");
    server.start_again().await;
    let mut clients = Vec::new();
    for (name, token) in [("a", "first"), ("b", "second one")] {
        let body = json!({
            "username": name, "password": "y",
            "auth": { "type": "m.login.registration_token", "token": token },
        });
        let (status, resp) = server.post(REGISTER, &body).await;
        assert_eq!(status, 200, "{resp}");
        clients.push(server.client_from(&resp, "y"));
    }
    let (_, caps) = clients[0].get("/_matrix/client/v3/capabilities").await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "11", "{caps}");
}

both_backends!(sigterm_graceful_shutdown, |server| async move {
    let mut server = server;
    let alice = server.register("alice").await;
    let status = server.stop().await;
    assert!(status.success(), "exit status {status}; log:\n{}", server.log());
    // Restart on the same data: the account and the session are still there.
    server.start_again().await;
    assert!(token_works(&server, &alice.access_token).await);
    server.login("alice", PASSWORD).await;
});

both_backends!(kill9_keeps_committed_data, |server| async move {
    let mut server = server;
    let alice = server.register("alice").await;
    let laptop = server.login("alice", PASSWORD).await;
    let (status, _) =
        laptop.put(&format!("{DEVICES}/{}", laptop.device_id), &json!({ "display_name": "laptop" })).await;
    assert_eq!(status, 200);
    // Everything answered before the crash was committed and must survive it.
    server.kill9();
    server.start_again().await;
    assert!(token_works(&server, &alice.access_token).await);
    assert!(token_works(&server, &laptop.access_token).await);
    let (_, dev) = laptop.get(&format!("{DEVICES}/{}", laptop.device_id)).await;
    assert_eq!(dev["display_name"], "laptop", "{dev}");
    server.restart().await;
    let again: Client = server.login("alice", PASSWORD).await;
    assert!(token_works(&server, &again.access_token).await);
});

// Clients check a registration token before asking for the rest of the form.
both_backends!(
    registration_token_validity,
    with | c | {
        set_config(c, "registration.mode", "token");
        set_config(c, "registration.tokens", toml::Value::Array(vec!["let-me-in".into()]));
    },
    |server| async move {
        let path = "/_matrix/client/v1/register/m.login.registration_token/validity";
        assert_eq!(server.get(&format!("{path}?token=let-me-in")).await, (200, json!({ "valid": true })));
        assert_eq!(server.get(&format!("{path}?token=let-me-out")).await, (200, json!({ "valid": false })));
        let (status, body) = server.get(path).await;
        assert_eq!((status, &body["errcode"]), (400, &json!("M_MISSING_PARAM")), "{body}");
    }
);

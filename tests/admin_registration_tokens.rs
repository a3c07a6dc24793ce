//! Registration tokens made with Synapse's admin API (`/_synapse/admin/v1/registration_tokens`)
//! over real HTTP on both backends, and their use by registration in `token` mode next to the
//! tokens of the configuration.

#[macro_use]
mod common;

use common::{PASSWORD, Resp, TestServer, assert_error, make_admin, ok, send, set_config};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "/_synapse/admin/v1/registration_tokens";
const REGISTER: &str = "/_matrix/client/v3/register";
const VALIDITY: &str = "/_matrix/client/v1/register/m.login.registration_token/validity";

/// Registers `name` with `token` in one request; returns the status.
async fn register_with(server: &TestServer, name: &str, token: &str) -> Resp {
    let body = json!({
        "username": name, "password": PASSWORD,
        "auth": { "type": "m.login.registration_token", "token": token },
    });
    server.post(REGISTER, &body).await
}

async fn valid(server: &TestServer, token: &str) -> bool {
    let (status, body) = server.get(&format!("{VALIDITY}?token={token}")).await;
    assert_eq!(status, 200, "{body}");
    body["valid"].as_bool().unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

both_backends!(registration_tokens_are_for_server_admins_only, |server| async move {
    let alice = server.register("alice").await;
    for (method, path) in [
        (Method::GET, A.to_owned()),
        (Method::POST, format!("{A}/new")),
        (Method::GET, format!("{A}/abc")),
        (Method::PUT, format!("{A}/abc")),
        (Method::DELETE, format!("{A}/abc")),
    ] {
        let anonymous = send(server.request(method.clone(), &path).json(&json!({}))).await;
        assert_error(&anonymous, 401, "M_MISSING_TOKEN");
        let user = send(alice.request(method.clone(), &path).json(&json!({ "token": "abc" }))).await;
        assert_error(&user, 403, "M_FORBIDDEN");
    }
});

both_backends!(
    admin_made_tokens_limit_registrations_beside_configured_ones,
    with | c | {
        set_config(c, "registration.mode", "token");
        set_config(c, "registration.tokens", toml::Value::Array(vec!["configured".into()]));
    },
    |server| async move {
        let admin = make_admin(&server).await;
        assert_eq!(ok(&admin.get(A).await), &json!({ "registration_tokens": [] }));

        // A named token with two uses.
        let made =
            ok(&admin.post(&format!("{A}/new"), &json!({ "token": "two-uses", "uses_allowed": 2 })).await).clone();
        assert_eq!(
            made,
            json!({ "token": "two-uses", "uses_allowed": 2, "pending": 0, "completed": 0, "expiry_time": null })
        );
        assert!(valid(&server, "two-uses").await);
        assert_eq!(register_with(&server, "u1", "two-uses").await.0, 200);
        assert_eq!(register_with(&server, "u2", "two-uses").await.0, 200);
        let after = ok(&admin.get(&format!("{A}/two-uses")).await).clone();
        assert_eq!((&after["completed"], &after["pending"]), (&json!(2), &json!(0)), "{after}");
        // Used up: refused by the stage and by the validity check.
        let refused = register_with(&server, "u3", "two-uses").await;
        assert_eq!((refused.0, &refused.1["errcode"]), (401, &json!("M_FORBIDDEN")), "{refused:?}");
        assert!(!valid(&server, "two-uses").await);
        // The configured token keeps working, without limit.
        assert!(valid(&server, "configured").await);
        assert_eq!(register_with(&server, "u4", "configured").await.0, 200);

        // A random token of a given length; unlimited until updated.
        let random = ok(&admin.post(&format!("{A}/new"), &json!({ "length": 24 })).await).clone();
        let token = random["token"].as_str().unwrap().to_owned();
        assert_eq!(token.len(), 24, "{random}");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{token}");
        assert_eq!(random["uses_allowed"], Value::Null);
        let default = ok(&admin.post(&format!("{A}/new"), &json!({})).await).clone();
        assert_eq!(default["token"].as_str().unwrap().len(), 16, "{default}");

        // Update: a use limit already reached, then an expiry in the past (via a short one).
        let updated = ok(&admin.put(&format!("{A}/{token}"), &json!({ "uses_allowed": 0 })).await).clone();
        assert_eq!(updated["uses_allowed"], 0);
        assert!(!valid(&server, &token).await);
        assert_eq!(register_with(&server, "u5", &token).await.0, 401);
        let soon = now_ms() + 1500;
        let updated =
            ok(&admin.put(&format!("{A}/{token}"), &json!({ "uses_allowed": null, "expiry_time": soon })).await)
                .clone();
        assert_eq!((&updated["uses_allowed"], &updated["expiry_time"]), (&Value::Null, &json!(soon)));
        assert!(valid(&server, &token).await);
        tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
        assert!(!valid(&server, &token).await);
        assert_eq!(register_with(&server, "u6", &token).await.0, 401);

        // The list and its `valid` filter.
        let names = |body: &Value| -> Vec<String> {
            let mut v: Vec<String> = body["registration_tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["token"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        };
        let all = ok(&admin.get(A).await).clone();
        assert_eq!(names(&all).len(), 3, "{all}");
        let valid_only = ok(&admin.get(&format!("{A}?valid=true")).await).clone();
        assert_eq!(names(&valid_only), [default["token"].as_str().unwrap().to_owned()]);
        let invalid_only = ok(&admin.get(&format!("{A}?valid=false")).await).clone();
        let mut expected = vec![token.clone(), "two-uses".to_owned()];
        expected.sort();
        assert_eq!(names(&invalid_only), expected);

        // Delete.
        assert_eq!(ok(&admin.delete(&format!("{A}/two-uses"), &json!({})).await), &json!({}));
        assert_error(&admin.get(&format!("{A}/two-uses")).await, 404, "M_NOT_FOUND");
        assert_error(&admin.delete(&format!("{A}/two-uses"), &json!({})).await, 404, "M_NOT_FOUND");
        assert_error(&admin.put(&format!("{A}/two-uses"), &json!({ "uses_allowed": 1 })).await, 404, "M_NOT_FOUND");

        // Bad input.
        for body in [
            json!({ "token": "has space" }),
            json!({ "token": "x".repeat(65) }),
            json!({ "token": "" }),
            json!({ "token": 5 }),
            json!({ "uses_allowed": -1 }),
            json!({ "uses_allowed": "2" }),
            json!({ "expiry_time": 1 }),
            json!({ "length": 0 }),
            json!({ "length": 65 }),
        ] {
            assert_error(&admin.post(&format!("{A}/new"), &body).await, 400, "M_INVALID_PARAM");
        }
        let again = admin.post(&format!("{A}/new"), &json!({ "token": default["token"] })).await;
        assert_error(&again, 400, "M_INVALID_PARAM");
    }
);

// Token mode no longer needs configured tokens: the admin API can provide all of them.
both_backends!(
    token_mode_without_configured_tokens,
    with | c | set_config(c, "registration.mode", "token"),
    |server| async move {
        let admin = make_admin(&server).await;
        assert_eq!(register_with(&server, "early", "anything").await.0, 401);
        ok(&admin.post(&format!("{A}/new"), &json!({ "token": "welcome", "uses_allowed": 1 })).await);
        let (status, body) = register_with(&server, "first", "welcome").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["user_id"], server.user_id("first"));
        assert_eq!(register_with(&server, "second", "welcome").await.0, 401);
    }
);

//! The last per-user admin endpoints over HTTP on both backends: a user's account data and
//! rate-limit overrides (`/_synapse/admin/v1/users/{userId}/accountdata`, `/override_ratelimit`).

#[macro_use]
mod common;

use common::{Client, TestServer, assert_error, create_room, enc, ok, set_config};
use serde_json::json;

const A: &str = "/_synapse/admin";

async fn make_admin(server: &TestServer) -> Client {
    let config = server.config_path().to_str().unwrap().to_owned();
    let (done, _, stderr) =
        server.cli(&["register-user", "--config", &config, "root", "--password", "rootpw", "--admin"]);
    assert!(done, "{stderr}");
    server.login("root", "rootpw").await
}

both_backends!(account_data_lists_global_and_room_entries, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({})).await;
    let me = enc(&alice.user_id);
    ok(&alice.put(&format!("/_matrix/client/v3/user/{me}/account_data/org.example.global"), &json!({"a": 1})).await);
    ok(&alice
        .put(
            &format!("/_matrix/client/v3/user/{me}/rooms/{}/account_data/org.example.room", enc(&room)),
            &json!({"b": 2}),
        )
        .await);
    let body = ok(&admin.get(&format!("{A}/v1/users/{me}/accountdata")).await).clone();
    assert_eq!(body["account_data"]["global"]["org.example.global"], json!({"a": 1}), "{body}");
    assert_eq!(body["account_data"]["rooms"][&room]["org.example.room"], json!({"b": 2}), "{body}");
    assert!(body["account_data"]["rooms"][&room].get("org.example.global").is_none(), "{body}");

    assert_error(&alice.get(&format!("{A}/v1/users/{me}/accountdata")).await, 403, "M_FORBIDDEN");
    let nobody = enc(&server.user_id("nobody"));
    assert_error(&admin.get(&format!("{A}/v1/users/{nobody}/accountdata")).await, 404, "M_NOT_FOUND");
    assert_error(
        &admin.get(&format!("{A}/v1/users/{}/accountdata", enc("@x:elsewhere.test"))).await,
        400,
        "M_INVALID_PARAM",
    );
});

/// The request limit: a burst of 5, refilled far too slowly for a test to see.
fn tight_limits(config: &mut toml::Table) {
    set_config(config, "rate_limits.enabled", true);
    set_config(config, "rate_limits.per_second", 0.001);
    set_config(config, "rate_limits.burst", 5);
}

/// Makes `n` rate-limited requests (typing notifications: Myelin limits the writes ruma marks
/// rate-limited, and message sends are not among them); the statuses.
async fn limited_requests(c: &Client, room: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room), enc(&c.user_id));
    for _ in 0..n {
        statuses.push(c.put(&path, &json!({"typing": true, "timeout": 1000})).await.0);
    }
    statuses
}

both_backends!(override_ratelimit_lets_a_user_exceed_the_normal_request_rate, with tight_limits, |server| async move {
    let admin = make_admin(&server).await;
    let bob = server.register("bob").await;
    let me = enc(&bob.user_id);
    let path = format!("{A}/v1/users/{me}/override_ratelimit");
    assert_eq!(ok(&admin.get(&path).await), &json!({}));

    let room = create_room(&bob, json!({})).await;
    // A burst of five (createRoom is not limited), then limited.
    assert_eq!(limited_requests(&bob, &room, 6).await, [200, 200, 200, 200, 200, 429]);

    // 0/0: no limit at all.
    let set = ok(&admin.post(&path, &json!({"messages_per_second": 0, "burst_count": 0})).await).clone();
    assert_eq!(set, json!({"messages_per_second": 0, "burst_count": 0}));
    assert_eq!(ok(&admin.get(&path).await), &set);
    assert!(limited_requests(&bob, &room, 20).await.iter().all(|s| *s == 200));

    // An override with a burst of its own: 10 at once, then limited.
    ok(&admin.post(&path, &json!({"messages_per_second": 1, "burst_count": 10})).await);
    let statuses = limited_requests(&bob, &room, 12).await;
    assert!(statuses[..10].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[11], 429, "{statuses:?}");

    // Deleted: the configured limit again, whose bucket is still empty.
    assert_eq!(ok(&admin.delete(&path, &json!({})).await), &json!({}));
    assert_eq!(ok(&admin.get(&path).await), &json!({}));
    assert_eq!(limited_requests(&bob, &room, 1).await, [429]);

    // Bad input and callers.
    assert_error(&admin.post(&path, &json!({"messages_per_second": -1})).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.post(&path, &json!({"burst_count": "many"})).await, 400, "M_INVALID_PARAM");
    assert_error(&bob.get(&path).await, 403, "M_FORBIDDEN");
    let nobody = enc(&server.user_id("nobody"));
    assert_error(&admin.get(&format!("{A}/v1/users/{nobody}/override_ratelimit")).await, 404, "M_NOT_FOUND");
});

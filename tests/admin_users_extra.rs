//! The last per-user admin endpoints over HTTP on both backends: a user's account data and
//! rate-limit overrides (`/_synapse/admin/v1/users/{userId}/accountdata`, `/override_ratelimit`).

#[macro_use]
mod common;

use common::{Client, assert_error, create_room, enc, make_admin, ok, set_config};
use serde_json::json;

const A: &str = "/_synapse/admin";

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

/// The bodies of the messages `c` sees in `room`, newest first.
async fn bodies(c: &Client, room: &str) -> Vec<String> {
    let page = ok(&c.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(room))).await).clone();
    page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn say(c: &Client, room: &str, body: &str) -> common::Resp {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{body}", enc(room));
    c.put(&path, &json!({"msgtype": "m.text", "body": body})).await
}

/// The rooms `user` has a membership in, as the admin API lists them.
async fn memberships(admin: &Client, user: &str) -> serde_json::Value {
    ok(&admin.get(&format!("{A}/v1/users/{}/memberships", enc(user))).await)["memberships"].clone()
}

both_backends!(a_shadow_ban_takes_effect_at_the_next_send, |server| async move {
    // Each send asks whether the sender is shadow-banned and the answer is cached: a ban set
    // (or lifted) through the admin API must still count from the very next send.
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    common::join(&mallory, &room).await;
    ok(&say(&mallory, &room, "before").await);
    assert_eq!(bodies(&alice, &room).await, ["before"]);
    let ban = format!("{A}/v1/users/{}/shadow_ban", enc(&mallory.user_id));
    ok(&admin.post(&ban, &json!({})).await);
    ok(&say(&mallory, &room, "during").await);
    assert_eq!(bodies(&alice, &room).await, ["before"]);
    ok(&admin.delete(&ban, &json!({})).await);
    ok(&say(&mallory, &room, "after").await);
    assert_eq!(bodies(&alice, &room).await, ["after", "before"]);
});

both_backends!(a_shadow_banned_user_is_answered_but_nobody_sees_what_they_do, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let mallory = server.register("mallory").await;
    let room = create_room(&alice, json!({"preset": "public_chat"})).await;
    common::join(&mallory, &room).await;
    let user_path = format!("{A}/v2/users/{}", enc(&mallory.user_id));
    assert_eq!(ok(&admin.get(&user_path).await)["shadow_banned"], false);

    let ban = format!("{A}/v1/users/{}/shadow_ban", enc(&mallory.user_id));
    assert_eq!(ok(&admin.post(&ban, &json!({})).await), &json!({}));
    assert_eq!(ok(&admin.get(&user_path).await)["shadow_banned"], true);
    let listed = ok(&admin.get(&format!("{A}/v2/users?name=mallory")).await).clone();
    assert_eq!(listed["users"][0]["shadow_banned"], true, "{listed}");
    let sorted = ok(&admin.get(&format!("{A}/v2/users?order_by=shadow_banned&dir=b")).await).clone();
    assert_eq!(sorted["users"][0]["name"], mallory.user_id, "{sorted}");

    // A message: 200 with an event id that exists nowhere.
    let sent = say(&mallory, &room, "spam").await;
    let fake = ok(&sent)["event_id"].as_str().unwrap().to_owned();
    assert!(fake.starts_with('$'), "{fake}");
    ok(&say(&alice, &room, "hello").await);
    assert_eq!(bodies(&alice, &room).await, ["hello"]);
    let fetched = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&fake))).await;
    assert_error(&fetched, 404, "M_NOT_FOUND");

    // State: answered, not applied.
    let own = create_room(&mallory, json!({"invite": [carol.user_id]})).await;
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&own));
    assert!(ok(&mallory.put(&topic, &json!({"topic": "buy now"})).await)["event_id"].is_string());
    assert_error(&mallory.get(&topic).await, 404, "M_NOT_FOUND");
    // createRoom worked, its invite and a later one were dropped.
    let invite = json!({"user_id": carol.user_id});
    ok(&mallory.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), &invite).await);
    ok(&mallory.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&own)), &invite).await);
    let carols = memberships(&admin, &carol.user_id).await;
    assert!(carols.get(&own).is_none() && carols.get(&room).is_none(), "{carols}");
    assert_eq!(memberships(&admin, &mallory.user_id).await[&own], "join");

    // Typing: answered, not shown.
    let typing = |c: &Client| format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&c.user_id));
    ok(&mallory.put(&typing(&mallory), &json!({"typing": true, "timeout": 30000})).await);
    ok(&alice.put(&typing(&alice), &json!({"typing": true, "timeout": 30000})).await);
    let sync = ok(&alice.get("/_matrix/client/v3/sync").await).clone();
    let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
    let typers: Vec<&serde_json::Value> =
        ephemeral.as_array().unwrap().iter().filter(|e| e["type"] == "m.typing").collect();
    assert_eq!(typers.len(), 1, "{ephemeral}");
    assert_eq!(typers[0]["content"]["user_ids"], json!([alice.user_id]), "{ephemeral}");

    // Lifted: seen again.
    assert_eq!(ok(&admin.delete(&ban, &json!({})).await), &json!({}));
    assert_eq!(ok(&admin.get(&user_path).await)["shadow_banned"], false);
    ok(&say(&mallory, &room, "sorry").await);
    assert_eq!(bodies(&alice, &room).await, ["sorry", "hello"]);

    assert_error(&mallory.post(&ban, &json!({})).await, 403, "M_FORBIDDEN");
    let nobody = format!("{A}/v1/users/{}/shadow_ban", enc(&server.user_id("nobody")));
    assert_error(&admin.post(&nobody, &json!({})).await, 404, "M_NOT_FOUND");
    let remote = format!("{A}/v1/users/{}/shadow_ban", enc("@x:elsewhere.test"));
    assert_error(&admin.post(&remote, &json!({})).await, 400, "M_INVALID_PARAM");
});

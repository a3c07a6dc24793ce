//! Push rules over real HTTP on both backends.

#[macro_use]
mod common;

use common::enc;
use serde_json::json;

both_backends!(push_rules_crud_and_sync, |server| async move {
    let alice = server.register("alice").await;
    let (status, all) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, 200, "{all}");
    let overrides = all["global"]["override"].as_array().expect("override rules");
    assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"), "{all}");
    assert!(all["global"]["underride"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.message"));

    let base = "/_matrix/client/v3/pushrules/global/content/cats";
    let (status, body) = alice.put(base, &json!({ "pattern": "cat*", "actions": ["notify"] })).await;
    assert_eq!(status, 200, "{body}");
    let (status, rule) = alice.get(base).await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["pattern"], "cat*");
    assert_eq!(rule["default"], false);
    assert_eq!(alice.put(&format!("{base}/enabled"), &json!({ "enabled": false })).await.0, 200);
    assert_eq!(alice.get(&format!("{base}/enabled")).await.1["enabled"], false);
    assert_eq!(alice.put(&format!("{base}/actions"), &json!({ "actions": [] })).await.0, 200);
    assert_eq!(alice.get(&format!("{base}/actions")).await.1["actions"], json!([]));
    // Server-default rules can be toggled but not removed; unknown rules are 404.
    let master = "/_matrix/client/v3/pushrules/global/override/.m.rule.master";
    assert_eq!(alice.put(&format!("{master}/enabled"), &json!({ "enabled": true })).await.0, 200);
    assert_eq!(alice.get(&format!("{master}/enabled")).await.1["enabled"], true);
    assert_ne!(alice.delete(master, &json!({})).await.0, 200);
    let (status, body) = alice.get("/_matrix/client/v3/pushrules/global/room/!nope:x").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    assert_eq!(
        alice
            .put("/_matrix/client/v3/pushrules/global/content/.bad", &json!({ "pattern": "x", "actions": [] }))
            .await
            .0,
        400
    );
    // The ruleset reaches clients through /sync account data.
    let (status, sync) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(status, 200, "{sync}");
    let events = sync["account_data"]["events"].as_array().expect("account data");
    let rules = events.iter().find(|e| e["type"] == "m.push_rules").expect("m.push_rules in sync");
    assert!(rules["content"]["global"]["content"].as_array().unwrap().iter().any(|r| r["rule_id"] == "cats"));
    assert_eq!(alice.delete(base, &json!({})).await.0, 200);
    assert_eq!(alice.get(base).await.0, 404);
});

/// A push gateway on loopback: records every notification and answers with the status and
/// body queued for it (200 `{"rejected": []}` once the queue is empty).
struct Gateway {
    url: String,
    received: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    answers: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(u16, serde_json::Value)>>>,
}

impl Gateway {
    async fn start() -> Self {
        use axum::routing::post;
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let answers: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<(u16, serde_json::Value)>>> =
            Default::default();
        let queued = answers.clone();
        let app = axum::Router::new().route(
            "/_matrix/push/v1/notify",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                let queued = queued.clone();
                async move {
                    let _ = tx.send(body);
                    let (status, answer) =
                        queued.lock().unwrap().pop_front().unwrap_or((200, json!({ "rejected": [] })));
                    (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(answer))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/_matrix/push/v1/notify", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, received, answers }
    }

    async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(std::time::Duration::from_secs(20), self.received.recv())
            .await
            .expect("no notification within 20 s")
            .expect("gateway stopped")
    }

    /// Nothing arrives for a while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(std::time::Duration::from_millis(1500), self.received.recv()).await;
        assert!(got.is_err(), "unexpected notification: {got:?}");
    }
}

/// Sends a text message; returns its event id.
async fn send(c: &common::Client, room: &str, txn: &str, text: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    let (status, body) = c.put(&path, &json!({ "msgtype": "m.text", "body": text })).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

both_backends!(
    pushers_receive_notifications_through_retries,
    with | c | common::set_config(c, "push.gateway_ip_allowlist", toml::Value::Array(vec!["127.0.0.0/8".into()])),
    |server| async move {
        let mut gateway = Gateway::start().await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let pusher = json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": "key-1", "app_display_name": "Example",
            "device_display_name": "Phone", "lang": "en", "data": { "url": gateway.url, "extra": "kept" },
        });
        let set = "/_matrix/client/v3/pushers/set";
        let (status, body) = alice.post(set, &pusher).await;
        assert_eq!(status, 200, "{body}");
        let (status, listed) = alice.get("/_matrix/client/v3/pushers").await;
        assert_eq!(status, 200, "{listed}");
        assert_eq!(listed["pushers"][0]["pushkey"], "key-1");
        assert_eq!(listed["pushers"][0]["data"]["url"], gateway.url);
        // Setting it again replaces it.
        let mut renamed = pusher.clone();
        renamed["device_display_name"] = json!("Tablet");
        assert_eq!(alice.post(set, &renamed).await.0, 200);
        let listed = alice.get("/_matrix/client/v3/pushers").await.1;
        assert_eq!(listed["pushers"].as_array().map(Vec::len), Some(1), "{listed}");
        assert_eq!(listed["pushers"][0]["device_display_name"], "Tablet");

        // Bob writes to Alice in a room of two: one notification, with the message.
        let (status, room) =
            alice.post("/_matrix/client/v3/createRoom", &json!({ "invite": [bob.user_id], "is_direct": true })).await;
        assert_eq!(status, 200, "{room}");
        let room = room["room_id"].as_str().unwrap().to_owned();
        assert_eq!(bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await.0, 200);
        let first = send(&bob, &room, "b1", "hello alice").await;
        let n = gateway.next().await["notification"].clone();
        assert_eq!(n["event_id"], first.as_str(), "{n}");
        assert_eq!(n["room_id"], room.as_str());
        assert_eq!(n["type"], "m.room.message");
        assert_eq!(n["sender"], bob.user_id.as_str());
        assert_eq!(n["content"]["body"], "hello alice");
        assert_eq!(n["counts"]["unread"], 1);
        let device = &n["devices"][0];
        assert_eq!((device["app_id"].as_str(), device["pushkey"].as_str()), (Some("org.example.app"), Some("key-1")));
        assert_eq!(device["data"], json!({ "extra": "kept" }), "the URL is not sent to the gateway");
        assert_eq!(device["tweaks"]["sound"], "default", "a room of two is a one-to-one room: {n}");

        // Alice's own messages are not pushed to her.
        send(&alice, &room, "a1", "my own").await;
        gateway.quiet().await;

        // The gateway fails once (503): the same notification comes again, then no more.
        gateway.answers.lock().unwrap().push_back((503, json!({})));
        let second = send(&bob, &room, "b2", "are you there").await;
        assert_eq!(gateway.next().await["notification"]["event_id"], second.as_str());
        assert_eq!(gateway.next().await["notification"]["event_id"], second.as_str(), "retried after the 503");
        gateway.quiet().await;

        // An invite is pushed to the invited user, and nothing else of a room she is not in.
        let (status, other) = bob.post("/_matrix/client/v3/createRoom", &json!({ "invite": [alice.user_id] })).await;
        assert_eq!(status, 200, "{other}");
        let n = gateway.next().await["notification"].clone();
        assert_eq!(
            (n["type"].as_str(), n["room_id"].as_str()),
            (Some("m.room.member"), other["room_id"].as_str()),
            "{n}"
        );
        assert_eq!(n["user_is_target"], true);
        assert_eq!(n["content"]["membership"], "invite");
        send(&bob, other["room_id"].as_str().unwrap(), "b9", "before you join").await;
        gateway.quiet().await;

        // The gateway rejects the pushkey: the pusher is removed.
        gateway.answers.lock().unwrap().push_back((200, json!({ "rejected": ["key-1"] })));
        send(&bob, &room, "b3", "anyone?").await;
        gateway.next().await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(alice.get("/_matrix/client/v3/pushers").await.1["pushers"], json!([]));

        // Validation, deletion with kind null, and removal on logout.
        let mut bad = pusher.clone();
        bad["data"]["url"] = json!("http://127.0.0.1:1/elsewhere");
        assert_eq!(alice.post(set, &bad).await.1["errcode"], "M_INVALID_PARAM");
        bad["kind"] = json!("email");
        assert_eq!(alice.post(set, &bad).await.0, 400);
        assert_eq!(alice.post(set, &pusher).await.0, 200);
        let mut delete = pusher.clone();
        delete["kind"] = serde_json::Value::Null;
        assert_eq!(alice.post(set, &delete).await.0, 200);
        assert_eq!(alice.get("/_matrix/client/v3/pushers").await.1["pushers"], json!([]));
        assert_eq!(alice.post(set, &pusher).await.0, 200);
        assert_eq!(alice.post("/_matrix/client/v3/logout", &json!({})).await.0, 200);
        let again = server.login("alice", &alice.password).await;
        assert_eq!(again.get("/_matrix/client/v3/pushers").await.1["pushers"], json!([]));
    }
);

// In a room of several members a message is stored once for the members who hear it the same
// way (migration 23): the pusher still gets exactly the user's own notifications.
both_backends!(
    pushers_in_a_room_of_many_members,
    with | c | common::set_config(c, "push.gateway_ip_allowlist", toml::Value::Array(vec!["127.0.0.0/8".into()])),
    |server| async move {
        let mut gateway = Gateway::start().await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let dave = server.register("dave").await;
        let (status, room) = bob.post("/_matrix/client/v3/createRoom", &json!({ "preset": "public_chat" })).await;
        assert_eq!(status, 200, "{room}");
        let room = room["room_id"].as_str().unwrap().to_owned();
        for c in [&alice, &carol, &dave] {
            assert_eq!(c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await.0, 200);
        }
        let pusher = json!({
            "kind": "http", "app_id": "org.example.app", "pushkey": "key-many", "app_display_name": "Example",
            "device_display_name": "Phone", "lang": "en", "data": { "url": gateway.url },
        });
        assert_eq!(alice.post("/_matrix/client/v3/pushers/set", &pusher).await.0, 200);

        let first = send(&bob, &room, "m1", "hello all").await;
        let n = gateway.next().await["notification"].clone();
        assert_eq!((n["event_id"].as_str(), n["room_id"].as_str()), (Some(first.as_str()), Some(room.as_str())), "{n}");
        assert!(n["devices"][0]["tweaks"].get("highlight").is_none(), "{n}");
        assert_eq!(n["counts"]["unread"], 1, "{n}");
        // A mention of Alice highlights for her alone.
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/m2", enc(&room));
        let body = json!({ "msgtype": "m.text", "body": "alice!", "m.mentions": { "user_ids": [alice.user_id] } });
        let (status, sent) = carol.put(&path, &body).await;
        assert_eq!(status, 200, "{sent}");
        let n = gateway.next().await["notification"].clone();
        assert_eq!(n["event_id"], sent["event_id"], "{n}");
        assert_eq!(n["devices"][0]["tweaks"]["highlight"], true, "{n}");
        // Neither her own message nor one in a room she muted is pushed.
        send(&alice, &room, "a1", "mine").await;
        let mute = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
        assert_eq!(alice.put(&mute, &json!({ "actions": [] })).await.0, 200);
        send(&dave, &room, "d1", "muted for her").await;
        gateway.quiet().await;
        assert_eq!(alice.delete(&mute, json!({})).await.0, 200);
        let last = send(&dave, &room, "d2", "after unmuting").await;
        assert_eq!(gateway.next().await["notification"]["event_id"], last.as_str());
        gateway.quiet().await;
    }
);

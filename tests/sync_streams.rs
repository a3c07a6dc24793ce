//! What `/sync` carries besides room events, over real HTTP on both backends: typing (with
//! expiry), receipts (public, private, threaded) and read markers, account data and tags,
//! presence, to-device messages (idempotent, redelivered until acknowledged), and the E2EE
//! fields.

#[macro_use]
mod common;

mod sync_util;

use std::time::{Duration, Instant};

use common::Client;
use serde_json::{Value, json};
use sync_util::*;

/// Two users in one public room, each with a sync token after the set-up.
async fn pair(server: &common::TestServer) -> (Client, Client, String, String, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    let ta = next_batch(&sync(&alice, None, None, 0).await);
    let tb = next_batch(&sync(&bob, None, None, 0).await);
    (alice, bob, room, ta, tb)
}

/// The room's ephemeral events of one type.
fn ephemeral<'a>(body: &'a Value, room: &str, kind: &str) -> Vec<&'a Value> {
    body["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// Long-polls from `token` until a response has an ephemeral event of `kind` in `room`.
async fn sync_until_ephemeral(c: &Client, room: &str, kind: &str, token: String, secs: u64) -> Value {
    sync_until(c, token, secs, |b| !ephemeral(b, room, kind).is_empty()).await.0
}

// ---------------------------------------------------------------------------------------------
// Typing

both_backends!(typing_reaches_members_and_expires, |server| async move {
    let (alice, bob, room, _, tb) = pair(&server).await;
    let path = format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id);
    let (status, body) = alice.put(&path, &json!({ "typing": true, "timeout": 1500 })).await;
    assert_eq!(status, 200, "{body}");
    let body = sync_until_ephemeral(&bob, &room, "m.typing", tb, 20).await;
    let typing = ephemeral(&body, &room, "m.typing");
    assert_eq!(typing[0]["content"]["user_ids"], json!([alice.user_id]), "{body}");

    // The expiry wakes the long-poll with an empty list, well before the poll's own timeout.
    let started = Instant::now();
    let token = next_batch(&body);
    let body = sync(&bob, Some(&token), None, 20_000).await;
    let typing = ephemeral(&body, &room, "m.typing");
    assert_eq!(typing.len(), 1, "{body}");
    assert_eq!(typing[0]["content"]["user_ids"], json!([]), "{body}");
    assert!(started.elapsed() < Duration::from_secs(15), "expiry did not wake the long-poll");

    // Stopping explicitly, and the checks.
    alice.put(&path, &json!({ "typing": true, "timeout": 30000 })).await;
    alice.put(&path, &json!({ "typing": false })).await;
    let (status, body) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
            &json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "typing for another user");
    let carol = server.register("carol").await;
    let (status, _) = carol
        .put(
            &format!("/_matrix/client/v3/rooms/{room}/typing/{}", carol.user_id),
            &json!({ "typing": true, "timeout": 1000 }),
        )
        .await;
    assert_eq!(status, 403, "typing in a room one is not in");
    let (status, body) = alice.put(&path, &json!({ "timeout": 100 })).await;
    assert_eq!(status, 400, "typing is required: {body}");
});

// ---------------------------------------------------------------------------------------------
// Receipts and read markers

both_backends!(receipts_public_private_threaded, |server| async move {
    let (alice, bob, room, ta, tb) = pair(&server).await;
    let first = send_text(&alice, &room, "r1", "first").await;
    let second = send_text(&alice, &room, "r2", "second").await;
    let receipt = |kind: &str, ev: &str| format!("/_matrix/client/v3/rooms/{room}/receipt/{kind}/{ev}");

    let (status, body) = bob.post(&receipt("m.read", &second), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let body = sync_until_ephemeral(&alice, &room, "m.receipt", ta.clone(), 20).await;
    let r = ephemeral(&body, &room, "m.receipt")[0];
    assert!(r["content"][&second]["m.read"][&bob.user_id]["ts"].is_i64(), "{r}");

    // A receipt never moves back to an earlier event.
    bob.post(&receipt("m.read", &first), &json!({})).await;
    let body = sync(&alice, Some(&ta), None, 0).await;
    let r = ephemeral(&body, &room, "m.receipt")[0];
    assert!(r["content"].get(&first).is_none(), "the receipt moved back: {r}");

    // Private receipts reach only their owner.
    let third = send_text(&alice, &room, "r3", "third").await;
    let before = next_batch(&sync(&alice, None, None, 0).await);
    let (status, body) = bob.post(&receipt("m.read.private", &third), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let mine = sync(&bob, Some(&tb), None, 0).await;
    let r: Vec<&Value> = ephemeral(&mine, &room, "m.receipt");
    assert!(r.iter().any(|r| r["content"][&third]["m.read.private"][&bob.user_id].is_object()), "{mine}");
    let theirs = sync(&alice, Some(&before), None, 0).await;
    assert!(ephemeral(&theirs, &room, "m.receipt").is_empty(), "alice saw a private receipt: {theirs}");

    // Threaded receipts carry their thread id.
    let (status, body) = bob.post(&receipt("m.read", &third), &json!({ "thread_id": "main" })).await;
    assert_eq!(status, 200, "{body}");
    let body = sync(&alice, Some(&before), None, 0).await;
    let r = ephemeral(&body, &room, "m.receipt")[0];
    assert_eq!(r["content"][&third]["m.read"][&bob.user_id]["thread_id"], "main", "{r}");
    let (status, _) = bob.post(&receipt("m.read", &third), &json!({ "thread_id": "not an id" })).await;
    assert_eq!(status, 400);
    let (status, _) = bob.post(&receipt("m.read", "$nope"), &json!({})).await;
    assert_eq!(status, 404, "receipt for an unknown event");

    // The fully-read marker is room account data, set by /receipt or /read_markers.
    let (status, body) = bob.post(&receipt("m.fully_read", &first), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob
        .post(
            &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            &json!({ "m.fully_read": third, "m.read": third }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let body = sync(&bob, Some(&tb), None, 0).await;
    let data = &body["rooms"]["join"][&room]["account_data"]["events"];
    let fully_read = data.as_array().unwrap().iter().find(|e| e["type"] == "m.fully_read").expect("m.fully_read");
    assert_eq!(fully_read["content"]["event_id"], third, "{data}");
    // Unread counts follow the read receipt.
    let unread = &body["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(unread["notification_count"], 0, "{unread}");
    send_text(&alice, &room, "r4", "unread").await;
    let body = sync(&bob, Some(&next_batch(&body)), None, 0).await;
    assert_eq!(body["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 1, "{body}");
});

// ---------------------------------------------------------------------------------------------
// Account data and tags

both_backends!(account_data_and_tags, |server| async move {
    let (alice, bob, room, ta, _) = pair(&server).await;
    let me = alice.user_id.clone();
    let global = format!("/_matrix/client/v3/user/{me}/account_data/org.example.settings");
    let (status, body) = alice.get(&global).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));
    let poll = {
        let (alice, ta) = (alice.clone(), ta.clone());
        tokio::spawn(async move { sync_until(&alice, ta, 20, |b| b.get("account_data").is_some()).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = alice.put(&global, &json!({ "theme": "dark" })).await;
    assert_eq!(status, 200, "{body}");
    let body = poll.await.unwrap();
    let events = body["account_data"]["events"].as_array().expect("global account data woke the poll");
    assert_eq!(events[0], json!({ "type": "org.example.settings", "content": { "theme": "dark" } }));
    assert_eq!(alice.get(&global).await, (200, json!({ "theme": "dark" })));

    let room_data = format!("/_matrix/client/v3/user/{me}/rooms/{room}/account_data/org.example.room");
    assert_eq!(alice.put(&room_data, &json!({ "pinned": true })).await.0, 200);
    assert_eq!(alice.get(&room_data).await, (200, json!({ "pinned": true })));
    let (status, body) =
        alice.put(&format!("/_matrix/client/v3/user/{me}/account_data/m.fully_read"), &json!({})).await;
    assert_eq!((status, body["errcode"].as_str()), (405, Some("M_BAD_JSON")), "{body}");
    let (status, _) = bob.put(&global, &json!({ "theme": "light" })).await;
    assert_eq!(status, 403, "account data of another user");
    let (status, _) = bob.get(&global).await;
    assert_eq!(status, 403);

    let tags = format!("/_matrix/client/v3/user/{me}/rooms/{room}/tags");
    assert_eq!(alice.put(&format!("{tags}/m.favourite"), &json!({ "order": 0.25 })).await.0, 200);
    assert_eq!(alice.put(&format!("{tags}/u.work"), &json!({})).await.0, 200);
    assert_eq!(alice.get(&tags).await, (200, json!({ "tags": { "m.favourite": { "order": 0.25 }, "u.work": {} } })));
    assert_eq!(alice.delete(&format!("{tags}/u.work"), &json!({})).await.0, 200);
    let (status, _) = alice.put(&format!("{tags}/bad"), &json!({ "order": "high" })).await;
    assert_eq!(status, 400, "order must be a number");

    let body = sync(&alice, Some(&ta), None, 0).await;
    let data = body["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap().clone();
    let tag = data.iter().find(|e| e["type"] == "m.tag").expect("m.tag in sync");
    assert_eq!(tag["content"], json!({ "tags": { "m.favourite": { "order": 0.25 } } }));
    assert!(data.iter().any(|e| e["type"] == "org.example.room" && e["content"]["pinned"] == true), "{data:?}");
    // An account data filter applies to the top level.
    let filtered =
        sync(&alice, Some(&ta), Some(json!({ "account_data": { "not_types": ["org.example.*"] } })), 0).await;
    assert!(filtered.get("account_data").is_none(), "{filtered}");
});

// ---------------------------------------------------------------------------------------------
// Presence

both_backends!(presence_set_get_and_synced_to_room_mates, |server| async move {
    let (alice, bob, _room, _, _) = pair(&server).await;
    let tb = next_batch(&sync(&bob, None, None, 0).await);
    let status_path = format!("/_matrix/client/v3/presence/{}/status", alice.user_id);
    let (status, body) = alice.put(&status_path, &json!({ "presence": "unavailable", "status_msg": "lunch" })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = bob.get(&status_path).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["presence"].as_str(), body["status_msg"].as_str()), (Some("unavailable"), Some("lunch")));
    assert!(body["last_active_ago"].is_i64(), "{body}");

    // Bob's sync carries it (set_presence=offline: bob's own syncing changes nothing).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut token = tb;
    let event = loop {
        let path = format!("/_matrix/client/v3/sync?since={token}&timeout=5000&set_presence=offline");
        let (status, body) = bob.get(&path).await;
        assert_eq!(status, 200, "{body}");
        let found = body["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["sender"] == alice.user_id && e["content"]["presence"] == "unavailable")
            .cloned();
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no presence for alice in bob's sync");
        token = next_batch(&body);
    };
    assert_eq!(event["type"], "m.presence");
    assert_eq!(event["content"]["status_msg"], "lunch");

    // Syncing marks a user online (set_presence defaults to online).
    sync(&alice, None, None, 0).await;
    let (_, body) = bob.get(&status_path).await;
    assert_eq!(body["presence"], "online", "{body}");

    let (status, _) = bob.put(&status_path, &json!({ "presence": "online" })).await;
    assert_eq!(status, 403, "presence of another user");
    let stranger = server.register("stranger").await;
    let (status, _) = stranger.get(&status_path).await;
    assert_eq!(status, 403, "presence of someone sharing no room");
    let (status, _) = alice.put(&status_path, &json!({ "presence": "sleeping" })).await;
    assert_eq!(status, 400);
    // The presence filter can exclude it.
    let body = sync(&bob, None, Some(json!({ "presence": { "not_types": ["m.presence"] } })), 0).await;
    assert!(body.get("presence").is_none(), "{body}");
});

// ---------------------------------------------------------------------------------------------
// To-device

both_backends!(to_device_delivered_until_acknowledged, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob2 = server.login("bob", common::PASSWORD).await;
    let t1 = next_batch(&sync(&bob, None, None, 0).await);
    let t2 = next_batch(&sync(&bob2, None, None, 0).await);

    let poll = {
        let (bob, t1) = (bob.clone(), t1.clone());
        tokio::spawn(async move { sync_until(&bob, t1, 20, |b| b.get("to_device").is_some()).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let path = "/_matrix/client/v3/sendToDevice/org.example.ping/txn1";
    let msg = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "n": 1 } } } });
    assert_eq!(alice.put(path, &msg).await.0, 200);
    // A retry with the same transaction id is not delivered again.
    assert_eq!(alice.put(path, &msg).await.0, 200);
    let (body, t1) = poll.await.unwrap();
    let events = body["to_device"]["events"].as_array().expect("to_device woke the poll").clone();
    assert_eq!(events, vec![json!({ "sender": alice.user_id, "type": "org.example.ping", "content": { "n": 1 } })]);

    // The client lost that response and syncs with the token it had: the message comes again.
    let again = sync(&bob, Some(&t1), None, 0).await;
    assert_eq!(again["to_device"]["events"].as_array().map(Vec::len), Some(1), "{again}");
    // With the new token it is acknowledged and gone.
    let next = next_batch(&again);
    let after = sync(&bob, Some(&next), None, 0).await;
    assert!(after.get("to_device").is_none(), "{after}");
    let old = sync(&bob, Some(&t1), None, 0).await;
    assert!(old.get("to_device").is_none(), "deleted once acknowledged: {old}");

    // `*` reaches every device of the user; the other device did not get the first message.
    let star = json!({ "messages": { bob.user_id.clone(): { "*": { "n": 2 } } } });
    assert_eq!(alice.put("/_matrix/client/v3/sendToDevice/org.example.ping/txn2", &star).await.0, 200);
    for (c, t) in [(&bob, &next), (&bob2, &t2)] {
        let body = sync(c, Some(t), None, 0).await;
        let contents: Vec<&Value> =
            body["to_device"]["events"].as_array().unwrap().iter().map(|e| &e["content"]).collect();
        assert_eq!(contents, vec![&json!({ "n": 2 })], "{body}");
    }
    let (status, _) = alice
        .put("/_matrix/client/v3/sendToDevice/org.example.ping/txn3", &json!({ "messages": { "not a user": {} } }))
        .await;
    assert_eq!(status, 400);
});

both_backends!(to_device_batches_of_100, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let token = next_batch(&sync(&bob, None, None, 0).await);
    for i in 0..150 {
        let msg = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "i": i } } } });
        assert_eq!(alice.put(&format!("/_matrix/client/v3/sendToDevice/m.test/t{i}"), &msg).await.0, 200);
    }
    let first = sync(&bob, Some(&token), None, 0).await;
    let second = sync(&bob, Some(&next_batch(&first)), None, 0).await;
    let mut got: Vec<i64> = Vec::new();
    for body in [&first, &second] {
        got.extend(body["to_device"]["events"].as_array().unwrap().iter().map(|e| e["content"]["i"].as_i64().unwrap()));
    }
    assert_eq!(first["to_device"]["events"].as_array().unwrap().len(), 100);
    assert_eq!(got, (0..150).collect::<Vec<i64>>(), "every message once, in order");
});

// ---------------------------------------------------------------------------------------------
// E2EE fields

both_backends!(device_lists_and_key_counts_in_sync, |server| async move {
    let (alice, bob, _room, ta, _) = pair(&server).await;
    let body = sync(&alice, Some(&ta), None, 0).await;
    assert!(body["device_one_time_keys_count"].is_object(), "{body}");
    let poll = {
        let (alice, ta) = (alice.clone(), next_batch(&body));
        tokio::spawn(async move { sync(&alice, Some(&ta), None, 20_000).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A new device of a room-mate changes their device list.
    server.login("bob", common::PASSWORD).await;
    let body = poll.await.unwrap();
    let changed = body["device_lists"]["changed"].as_array().expect("device_lists woke the poll");
    assert!(changed.contains(&json!(bob.user_id)), "{body}");

    // One-time key counts of the syncing device.
    let keys = json!({ "one_time_keys": {
        "signed_curve25519:AAAA1": { "key": "k1", "signatures": {} },
        "signed_curve25519:AAAA2": { "key": "k2", "signatures": {} },
    }});
    let (status, res) = alice.post("/_matrix/client/v3/keys/upload", &keys).await;
    assert_eq!(status, 200, "{res}");
    let body = sync(&alice, None, None, 0).await;
    assert_eq!(body["device_one_time_keys_count"]["signed_curve25519"], 2, "{body}");
    assert!(body.get("device_lists").is_none(), "device_lists only in incremental syncs: {body}");
});

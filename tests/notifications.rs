//! Notification counts from push rules, `/notifications` and the default push rules, over real
//! HTTP on both backends.

#[macro_use]
mod common;

use common::enc;

use serde_json::{Value, json};

/// A public room created by `owner` and joined by `others`.
async fn room(owner: &common::Client, others: &[&common::Client]) -> String {
    let (status, body) = owner.post("/_matrix/client/v3/createRoom", &json!({ "preset": "public_chat" })).await;
    assert_eq!(status, 200, "{body}");
    let room = body["room_id"].as_str().unwrap().to_owned();
    for c in others {
        let (status, body) = c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    room
}

async fn send(c: &common::Client, room: &str, content: Value) -> String {
    let txn = format!("t{}", rand_suffix());
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    let (status, body) = c.put(&path, &content).await;
    assert_eq!(status, 200, "{body}");
    body["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn text(c: &common::Client, room: &str, body: &str) -> String {
    send(c, room, json!({ "msgtype": "m.text", "body": body })).await
}

/// The room's entry in an initial sync of `c` with `filter`.
async fn sync_room(c: &common::Client, room: &str, filter: &Value) -> Value {
    let (status, body) = c.get(&format!("/_matrix/client/v3/sync?filter={}", enc(&filter.to_string()))).await;
    assert_eq!(status, 200, "{body}");
    body["rooms"]["join"][room].clone()
}

/// `(notification_count, highlight_count)` of the room for `c`.
async fn counts(c: &common::Client, room: &str) -> (i64, i64) {
    let entry = sync_room(c, room, &json!({ "room": { "timeline": { "limit": 1 } } })).await;
    let n = &entry["unread_notifications"];
    (
        n["notification_count"].as_i64().expect("notification_count"),
        n["highlight_count"].as_i64().expect("highlight_count"),
    )
}

async fn receipt(c: &common::Client, room: &str, kind: &str, event: &str, body: Value) {
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/{kind}/{}", enc(room), enc(event));
    let (status, answer) = c.post(&path, &body).await;
    assert_eq!(status, 200, "{answer}");
}

both_backends!(mentions_highlight_and_receipts_reset_counts, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room(&alice, &[&bob]).await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
    text(&bob, &room, "hello").await;
    assert_eq!(counts(&alice, &room).await, (1, 0));
    // A mention (m.mentions) highlights.
    let alice_id = server.user_id("alice");
    let mention =
        send(&bob, &room, json!({ "msgtype": "m.text", "body": "look", "m.mentions": { "user_ids": [alice_id] } }))
            .await;
    assert_eq!(counts(&alice, &room).await, (2, 1));
    // The sender's own messages never count for them.
    assert_eq!(counts(&bob, &room).await, (0, 0));
    // A redacted message no longer counts (nor is listed in /notifications).
    let spam = text(&bob, &room, "spam").await;
    assert_eq!(counts(&alice, &room).await, (3, 1));
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&spam));
    let (status, body) = bob.put(&path, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(counts(&alice, &room).await, (2, 1));
    let (_, listed) = alice.get("/_matrix/client/v3/notifications").await;
    assert!(!listed.to_string().contains(&spam), "{listed}");
    // A notice does not notify (.m.rule.suppress_notices).
    send(&bob, &room, json!({ "msgtype": "m.notice", "body": "bot says" })).await;
    assert_eq!(counts(&alice, &room).await, (2, 1));
    // A private read receipt on the mention resets both.
    receipt(&alice, &room, "m.read.private", &mention, json!({})).await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
    let later = text(&bob, &room, "more").await;
    assert_eq!(counts(&alice, &room).await, (1, 0));
    receipt(&alice, &room, "m.read", &later, json!({})).await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
    // An incremental sync reports the change too.
    let (_, first) = alice.get("/_matrix/client/v3/sync").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();
    send(
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "again", "m.mentions": { "user_ids": [server.user_id("alice")] } }),
    )
    .await;
    let (status, next) = alice.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0")).await;
    assert_eq!(status, 200, "{next}");
    let n = &next["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!((n["notification_count"].as_i64(), n["highlight_count"].as_i64()), (Some(1), Some(1)), "{next}");
    // Each later sync adds what came since (counts carried forward from the previous one).
    let mut since = next["next_batch"].as_str().unwrap().to_owned();
    let mut last = String::new();
    for expected in 2..5 {
        last = text(&bob, &room, "and again").await;
        let (status, next) = alice.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=5000")).await;
        assert_eq!(status, 200, "{next}");
        let n = &next["rooms"]["join"][&room]["unread_notifications"];
        assert_eq!(
            (n["notification_count"].as_i64(), n["highlight_count"].as_i64()),
            (Some(expected), Some(1)),
            "{next}"
        );
        since = next["next_batch"].as_str().unwrap().to_owned();
    }
    // A redaction takes its target's count away in the next incremental sync too.
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/r2", enc(&room), enc(&last));
    assert_eq!(bob.put(&path, &json!({})).await.0, 200);
    let (_, next) = alice.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=5000")).await;
    assert_eq!(next["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 3, "{next}");
    let since = next["next_batch"].as_str().unwrap().to_owned();
    // Alice's own message counts nothing and keeps the count.
    text(&alice, &room, "mine").await;
    let (_, next) = alice.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=5000")).await;
    assert_eq!(next["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 3, "{next}");
});

both_backends!(display_name_user_name_and_keyword_rules_highlight, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room(&alice, &[&bob]).await;
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&server.user_id("alice")));
    let (status, body) = alice.put(&path, &json!({ "displayname": "Wonderland Queen" })).await;
    assert_eq!(status, 200, "{body}");
    let read_all = |last: String| {
        let alice = &alice;
        let room = room.clone();
        async move { receipt(alice, &room, "m.read", &last, json!({})).await }
    };
    // Without m.mentions, the display name highlights (.m.rule.contains_display_name) ...
    let last = text(&bob, &room, "ask the wonderland queen").await;
    assert_eq!(counts(&alice, &room).await, (1, 1));
    read_all(last).await;
    // ... and so does the user name (.m.rule.contains_user_name).
    let last = text(&bob, &room, "hey alice, lunch?").await;
    assert_eq!(counts(&alice, &room).await, (1, 1));
    read_all(last).await;
    // With m.mentions the legacy rules stay out: only mentions listed there highlight.
    let last =
        send(&bob, &room, json!({ "msgtype": "m.text", "body": "alice, Wonderland Queen", "m.mentions": {} })).await;
    assert_eq!(counts(&alice, &room).await, (1, 0));
    read_all(last).await;
    // A keyword rule of the user's own.
    let rule = "/_matrix/client/v3/pushrules/global/content/cats";
    let actions = json!({ "pattern": "cats", "actions": ["notify", { "set_tweak": "highlight" }] });
    let (status, body) = alice.put(rule, &actions).await;
    assert_eq!(status, 200, "{body}");
    let last = text(&bob, &room, "I like cats").await;
    assert_eq!(counts(&alice, &room).await, (1, 1));
    read_all(last).await;
    // A room muted with a room rule counts nothing.
    let mute = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
    let (status, body) = alice.put(&mute, &json!({ "actions": [] })).await;
    assert_eq!(status, 200, "{body}");
    text(&bob, &room, "anyone?").await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
});

both_backends!(room_mentions_need_the_power_to_notify_the_room, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = room(&alice, &[&bob, &carol]).await;
    // Bob has power 0; `notifications.room` defaults to 50.
    let last = text(&bob, &room, "@room lunch").await;
    assert_eq!(counts(&carol, &room).await, (1, 0));
    receipt(&carol, &room, "m.read", &last, json!({})).await;
    let last = send(&bob, &room, json!({ "msgtype": "m.text", "body": "all", "m.mentions": { "room": true } })).await;
    assert_eq!(counts(&carol, &room).await, (1, 0));
    receipt(&carol, &room, "m.read", &last, json!({})).await;
    // Alice created the room (power 100).
    let last = text(&alice, &room, "@room meeting now").await;
    assert_eq!(counts(&carol, &room).await, (1, 1));
    receipt(&carol, &room, "m.read", &last, json!({})).await;
    send(&alice, &room, json!({ "msgtype": "m.text", "body": "all", "m.mentions": { "room": true } })).await;
    assert_eq!(counts(&carol, &room).await, (1, 1));
});

both_backends!(thread_counts_and_threaded_receipts, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room(&alice, &[&bob]).await;
    let root = text(&bob, &room, "root").await;
    let in_thread = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    send(&bob, &room, in_thread("one")).await;
    let mention = json!({ "user_ids": [server.user_id("alice")] });
    let mut two = in_thread("two");
    two["m.mentions"] = mention;
    let last_in_thread = send(&bob, &room, two).await;
    // Without the filter flag: the whole room.
    assert_eq!(counts(&alice, &room).await, (3, 1));
    let threaded = json!({ "room": { "timeline": { "limit": 1, "unread_thread_notifications": true } } });
    let entry = sync_room(&alice, &room, &threaded).await;
    assert_eq!(entry["unread_notifications"], json!({ "notification_count": 1, "highlight_count": 0 }), "{entry}");
    assert_eq!(
        entry["unread_thread_notifications"],
        json!({ root.clone(): { "notification_count": 2, "highlight_count": 1 } }),
        "{entry}"
    );
    // A receipt in the thread clears the thread only.
    receipt(&alice, &room, "m.read", &last_in_thread, json!({ "thread_id": root })).await;
    let entry = sync_room(&alice, &room, &threaded).await;
    assert_eq!(entry["unread_notifications"]["notification_count"], 1, "{entry}");
    assert!(entry.get("unread_thread_notifications").is_none(), "{entry}");
    assert_eq!(counts(&alice, &room).await, (1, 0));
    // A main-timeline receipt clears the main timeline; a new thread reply counts again.
    receipt(&alice, &room, "m.read", &root, json!({ "thread_id": "main" })).await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
    send(&bob, &room, in_thread("three")).await;
    let entry = sync_room(&alice, &room, &threaded).await;
    assert_eq!(entry["unread_notifications"]["notification_count"], 0, "{entry}");
    assert_eq!(entry["unread_thread_notifications"][&root]["notification_count"], 1, "{entry}");
    // An unthreaded receipt covers every thread.
    let last = text(&bob, &room, "main again").await;
    assert_eq!(counts(&alice, &room).await, (2, 0));
    receipt(&alice, &room, "m.read", &last, json!({})).await;
    assert_eq!(counts(&alice, &room).await, (0, 0));
});

// An initial sync (and a sliding sync window) counts all its rooms in one statement; on
// PostgreSQL that statement differs from SQLite's and from the one-room count. After a restart
// nothing is carried forward from earlier syncs, so the counts below come from it.
both_backends!(counts_of_many_rooms_at_once_match_each_room, |server| async move {
    let mut server = server;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mention = json!({ "user_ids": [server.user_id("alice")] });
    // A: two messages and a mention; an unthreaded receipt on the first message.
    let a = room(&alice, &[&bob]).await;
    let first = text(&bob, &a, "one").await;
    text(&bob, &a, "two").await;
    send(&bob, &a, json!({ "msgtype": "m.text", "body": "three", "m.mentions": mention })).await;
    receipt(&alice, &a, "m.read", &first, json!({})).await;
    // B: a thread root and two replies (one a mention); a main-timeline receipt on the root.
    let b = room(&alice, &[&bob]).await;
    let root = text(&bob, &b, "root").await;
    let reply = |body: &str| json!({ "msgtype": "m.text", "body": body, "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    send(&bob, &b, reply("r1")).await;
    let mut r2 = reply("r2");
    r2["m.mentions"] = mention.clone();
    send(&bob, &b, r2).await;
    receipt(&alice, &b, "m.read", &root, json!({ "thread_id": "main" })).await;
    // C: nothing unread.
    let c = room(&alice, &[&bob]).await;
    server.restart().await;

    let threaded = json!({ "room": { "timeline": { "limit": 1, "unread_thread_notifications": true } } });
    let (status, body) = alice.get(&format!("/_matrix/client/v3/sync?filter={}", enc(&threaded.to_string()))).await;
    assert_eq!(status, 200, "{body}");
    let joined = &body["rooms"]["join"];
    let counts = |n: i64, h: i64| json!({ "notification_count": n, "highlight_count": h });
    assert_eq!(joined[&a]["unread_notifications"], counts(2, 1), "{body}");
    assert!(joined[&a].get("unread_thread_notifications").is_none(), "{body}");
    assert_eq!(joined[&b]["unread_notifications"], counts(0, 0), "{body}");
    assert_eq!(joined[&b]["unread_thread_notifications"], json!({ root.clone(): counts(2, 1) }), "{body}");
    assert_eq!(joined[&c]["unread_notifications"], counts(0, 0), "{body}");

    server.restart().await;
    let request = json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 1 } } });
    let (status, body) =
        alice.post("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0", &request).await;
    assert_eq!(status, 200, "{body}");
    let rooms = &body["rooms"];
    let pair = |r: &str| (rooms[r]["notification_count"].as_i64(), rooms[r]["highlight_count"].as_i64());
    assert_eq!(pair(&a), (Some(2), Some(1)), "{body}");
    assert_eq!(pair(&b), (Some(2), Some(1)), "{body}");
    assert_eq!(pair(&c), (Some(0), Some(0)), "{body}");
});

both_backends!(notifications_endpoint_pages_and_filters_highlights, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = room(&alice, &[&bob]).await;
    let (status, empty) = alice.get("/_matrix/client/v3/notifications").await;
    assert_eq!(status, 200, "{empty}");
    assert_eq!(empty["notifications"], json!([]), "{empty}");
    let mut sent = Vec::new();
    for i in 0..4 {
        sent.push(text(&bob, &room, &format!("message {i}")).await);
    }
    let mention = send(
        &bob,
        &room,
        json!({ "msgtype": "m.text", "body": "you there?", "m.mentions": { "user_ids": [server.user_id("alice")] } }),
    )
    .await;
    sent.push(mention.clone());
    receipt(&alice, &room, "m.read", &sent[1], json!({})).await;
    // Newest first, two at a time.
    let mut seen = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let path = match &from {
            None => "/_matrix/client/v3/notifications?limit=2".to_owned(),
            Some(f) => format!("/_matrix/client/v3/notifications?limit=2&from={}", enc(f)),
        };
        let (status, page) = alice.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let list = page["notifications"].as_array().unwrap();
        assert!(list.len() <= 2, "{page}");
        for n in list {
            assert_eq!(n["room_id"], room.as_str(), "{n}");
            assert!(n["ts"].as_i64().is_some(), "{n}");
            assert!(n["actions"].as_array().unwrap().iter().any(|a| a == "notify"), "{n}");
            assert_eq!(n["event"]["sender"], server.user_id("bob").as_str(), "{n}");
            seen.push((n["event"]["event_id"].as_str().unwrap().to_owned(), n["read"].as_bool().unwrap()));
        }
        match page["next_token"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    let expected: Vec<(String, bool)> = sent.iter().rev().map(|e| (e.clone(), false)).collect();
    let mut expected = expected;
    // The receipt on the second message covers the first two.
    let n = expected.len();
    expected[n - 1].1 = true;
    expected[n - 2].1 = true;
    assert_eq!(seen, expected);
    // Highlights only.
    let (status, page) = alice.get("/_matrix/client/v3/notifications?only=highlight").await;
    assert_eq!(status, 200, "{page}");
    let list = page["notifications"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{page}");
    assert_eq!(list[0]["event"]["event_id"], mention.as_str());
    assert!(list[0]["actions"].as_array().unwrap().iter().any(|a| a["set_tweak"] == "highlight"), "{page}");
    // A bad token is a Matrix error.
    let (status, body) = alice.get("/_matrix/client/v3/notifications?from=nonsense").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
});

both_backends!(default_push_rules_are_the_spec_list, |server| async move {
    let alice = server.register("alice").await;
    let (status, all) = alice.get("/_matrix/client/v3/pushrules/").await;
    assert_eq!(status, 200, "{all}");
    let ids = |kind: &str| -> Vec<String> {
        all["global"][kind].as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(
        ids("override"),
        [
            ".m.rule.master",
            ".m.rule.suppress_notices",
            ".m.rule.invite_for_me",
            ".m.rule.member_event",
            ".m.rule.is_user_mention",
            ".m.rule.contains_display_name",
            ".m.rule.is_room_mention",
            ".m.rule.roomnotif",
            ".m.rule.tombstone",
            ".m.rule.reaction",
            ".m.rule.room.server_acl",
            ".m.rule.suppress_edits",
        ]
    );
    assert_eq!(ids("content"), [".m.rule.contains_user_name"]);
    let content = &all["global"]["content"][0];
    assert_eq!(content["pattern"], "alice");
    assert_eq!(content["default"], true);
    assert_eq!(
        ids("underride"),
        [
            ".m.rule.call",
            ".m.rule.encrypted_room_one_to_one",
            ".m.rule.room_one_to_one",
            ".m.rule.message",
            ".m.rule.encrypted"
        ]
    );
    let (status, rule) = alice.get("/_matrix/client/v3/pushrules/global/override/.m.rule.roomnotif").await;
    assert_eq!(status, 200, "{rule}");
    assert_eq!(rule["conditions"][1], json!({ "kind": "sender_notification_permission", "key": "room" }));
    // A disabled default rule stays listed (and stops highlighting).
    let path = "/_matrix/client/v3/pushrules/global/content/.m.rule.contains_user_name/enabled";
    assert_eq!(alice.put(path, &json!({ "enabled": false })).await.0, 200);
    assert_eq!(alice.get(path).await.1["enabled"], false);
    let bob = server.register("bob").await;
    let room = room(&alice, &[&bob]).await;
    // (Her display name is her user name until she sets another.)
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&server.user_id("alice")));
    assert_eq!(alice.put(&path, &json!({ "displayname": "Wonder" })).await.0, 200);
    text(&bob, &room, "alice?").await;
    assert_eq!(counts(&alice, &room).await, (1, 0));
});

/// The event ids `c`'s `/notifications` lists (newest first), highlights only when asked.
async fn listed(c: &common::Client, only_highlight: bool) -> Vec<String> {
    let path = if only_highlight {
        "/_matrix/client/v3/notifications?only=highlight"
    } else {
        "/_matrix/client/v3/notifications"
    };
    let (status, page) = c.get(path).await;
    assert_eq!(status, 200, "{page}");
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// How many `event_push_actions` rows the event has, read from the server's database.
async fn stored_rows(server: &common::TestServer, event: &str) -> i64 {
    let mut conn = server.database().await;
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM event_push_actions WHERE event_id = $1")
        .bind(event)
        .fetch_one(&mut conn)
        .await
        .expect("counting push action rows");
    n
}

// In a room of several members a message most of them hear the same way is stored once for
// all of them (migration 23); each member's counts and notifications must still be their own.
both_backends!(counts_in_a_room_of_many_members_are_each_members_own, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let erin = server.register("erin").await;
    let room = room(&alice, &[&bob, &carol, &dave, &erin]).await;
    // Dave mutes the room.
    let mute = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
    assert_eq!(dave.put(&mute, &json!({ "actions": [] })).await.0, 200);
    // Bob's incremental sync starts here: its counts are carried forward from the events.
    let (_, first) = bob.get("/_matrix/client/v3/sync").await;
    let since = first["next_batch"].as_str().unwrap().to_owned();

    let hello = text(&alice, &room, "hello everyone").await;
    let mention = send(
        &alice,
        &room,
        json!({ "msgtype": "m.text", "body": "carol?", "m.mentions": { "user_ids": [carol.user_id] } }),
    )
    .await;
    for (who, expected) in [(&bob, (2, 0)), (&carol, (2, 1)), (&dave, (0, 0)), (&erin, (2, 0)), (&alice, (0, 0))] {
        assert_eq!(counts(who, &room).await, expected, "{}", who.user_id);
    }
    // One row for the four members who hear it alike, one for Dave's silence; the mention adds
    // Carol's highlight.
    assert_eq!(stored_rows(&server, &hello).await, 2);
    assert_eq!(stored_rows(&server, &mention).await, 3);
    let (status, next) = bob.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=5000")).await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2, "{next}");
    let since = next["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(listed(&bob, false).await, [mention.as_str(), hello.as_str()]);
    assert_eq!(listed(&carol, true).await, [mention.as_str()]);
    assert_eq!(listed(&dave, false).await, Vec::<String>::new());
    assert_eq!(listed(&alice, false).await, Vec::<String>::new());

    // Someone who joins later does not count what came before.
    let frank = server.register("frank").await;
    assert_eq!(frank.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await.0, 200);
    assert_eq!(counts(&frank, &room).await, (0, 0));
    // Bob's message counts for everyone but him (and muted Dave), Alice and Frank included.
    let from_bob = text(&bob, &room, "hi all").await;
    for (who, expected) in [(&alice, (1, 0)), (&bob, (2, 0)), (&carol, (3, 1)), (&dave, (0, 0)), (&frank, (1, 0))] {
        assert_eq!(counts(who, &room).await, expected, "{}", who.user_id);
    }
    assert_eq!(listed(&frank, false).await, [from_bob.as_str()]);
    assert_eq!(listed(&alice, false).await, [from_bob.as_str()]);
    let (_, next) = bob.get(&format!("/_matrix/client/v3/sync?since={since}&timeout=0")).await;
    assert_eq!(next["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 2, "{next}");

    // A redaction takes a shared message away from every count and list.
    let path = format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&hello));
    assert_eq!(alice.put(&path, &json!({})).await.0, 200);
    for (who, expected) in [(&bob, (1, 0)), (&carol, (2, 1)), (&erin, (2, 0)), (&frank, (1, 0))] {
        assert_eq!(counts(who, &room).await, expected, "{}", who.user_id);
    }
    assert_eq!(listed(&bob, false).await, [mention.as_str()]);
    assert_eq!(listed(&erin, false).await, [from_bob.as_str(), mention.as_str()]);

    // @room from the room's creator highlights for everyone; a receipt clears only its reader.
    let everyone = text(&alice, &room, "@room meeting now").await;
    for (who, expected) in [(&bob, (2, 1)), (&carol, (3, 2)), (&erin, (3, 1)), (&frank, (2, 1))] {
        assert_eq!(counts(who, &room).await, expected, "{}", who.user_id);
    }
    assert_eq!(listed(&erin, true).await, [everyone.as_str()]);
    receipt(&erin, &room, "m.read", &everyone, json!({})).await;
    assert_eq!(counts(&erin, &room).await, (0, 0));
    assert_eq!(counts(&frank, &room).await, (2, 1));

    // Someone who leaves and comes back counts only what came after.
    assert_eq!(frank.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), &json!({})).await.0, 200);
    text(&alice, &room, "while frank was away").await;
    assert_eq!(frank.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await.0, 200);
    assert_eq!(counts(&frank, &room).await, (0, 0));
    let back = text(&alice, &room, "welcome back").await;
    assert_eq!(counts(&frank, &room).await, (1, 0));
    assert_eq!(listed(&frank, false).await.first(), Some(&back));
});

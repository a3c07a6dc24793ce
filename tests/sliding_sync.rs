//! Simplified sliding sync (MSC4186, the unstable `org.matrix.simplified_msc3575` path that
//! Element X and matrix-rust-sdk use) over real HTTP on both backends: lists, ranges and their
//! order by `bump_stamp`, room fields, `required_state` (wildcards, `$LAZY`, `$ME`), filters,
//! room subscriptions, incremental responses, the long-poll, `M_UNKNOWN_POS` (also across a
//! restart), invites, leaves, state changes and every extension. Each response is also read
//! with ruma's `v5::Response`, the type matrix-rust-sdk deserialises.

#[macro_use]
mod common;

mod sync_util;

use std::time::{Duration, Instant};

use common::{Client, TestServer, without_age};
use ruma::api::client::sync::sync_events::v5;
use serde_json::{Value, json};
use sync_util::*;

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request: status and body.
async fn try_ss(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> (u16, Value) {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={}", enc(p)));
    }
    c.post(&path, body).await
}

/// One sliding sync request that must succeed; checks that ruma reads the response.
async fn ss(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let (status, res) = try_ss(c, pos, timeout_ms, body).await;
    assert_eq!(status, 200, "sliding sync: {res}");
    check_shape(&res);
    res
}

/// Reads the response's parts with ruma's types (those matrix-rust-sdk deserialises).
fn check_shape(res: &Value) {
    assert!(res["pos"].is_string(), "{res}");
    let lists: Result<std::collections::BTreeMap<String, v5::response::List>, _> =
        serde_json::from_value(res.get("lists").cloned().unwrap_or(json!({})));
    assert!(lists.is_ok(), "lists: {lists:?} in {res}");
    let rooms: Result<std::collections::BTreeMap<ruma::OwnedRoomId, v5::response::Room>, _> =
        serde_json::from_value(res.get("rooms").cloned().unwrap_or(json!({})));
    assert!(rooms.is_ok(), "rooms: {:?} in {res}", rooms.err());
    let ext: Result<v5::response::Extensions, _> =
        serde_json::from_value(res.get("extensions").cloned().unwrap_or(json!({})));
    assert!(ext.is_ok(), "extensions: {:?} in {res}", ext.err());
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().unwrap_or_else(|| panic!("no pos in {body}")).to_owned()
}

/// Room ids of a response, ordered by `bump_stamp`, newest first.
fn by_bump(body: &Value) -> Vec<String> {
    let mut rooms: Vec<(i64, String)> = body["rooms"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, r)| (r["bump_stamp"].as_i64().unwrap_or_else(|| panic!("no bump_stamp: {r}")), id.clone()))
        .collect();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|r| r.1).collect()
}

fn room_ids(body: &Value) -> Vec<String> {
    let mut ids: Vec<String> = body["rooms"].as_object().into_iter().flatten().map(|(id, _)| id.clone()).collect();
    ids.sort();
    ids
}

fn timeline(body: &Value, room: &str) -> Vec<String> {
    event_ids(&body["rooms"][room]["timeline"])
}

/// `(type, state_key)` of a room's `required_state`.
fn state_keys(body: &Value, room: &str) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = body["rooms"][room]["required_state"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()))
        .collect();
    keys.sort();
    keys
}

fn list(ranges: Value, limit: u64, required_state: Value) -> Value {
    json!({ "ranges": ranges, "timeline_limit": limit, "required_state": required_state })
}

fn pair(t: &str, k: &str) -> (String, String) {
    (t.to_owned(), k.to_owned())
}

// ---------------------------------------------------------------------------------------------

both_backends!(lists_windows_order_and_room_fields, |server| async move {
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = create_room(&alice, json!({ "name": format!("Room {i}") })).await;
        send_text(&alice, &room, &format!("t{i}"), "hello").await;
        rooms.push(room);
    }
    // Newest activity first: rooms[2], rooms[1], rooms[0].
    let req = json!({ "lists": { "all": list(json!([[0, 1]]), 2,
        json!([["m.room.name", ""], ["m.room.member", "$ME"], ["m.room.create", "*"]])) } });
    let body = ss(&alice, None, 0, &req).await;
    assert_eq!(body["lists"]["all"]["count"], 3, "{body}");
    assert_eq!(by_bump(&body), vec![rooms[2].clone(), rooms[1].clone()], "{body}");
    let r = &body["rooms"][&rooms[2]];
    assert_eq!(r["initial"], true, "{r}");
    assert_eq!(r["name"], "Room 2", "{r}");
    assert_eq!(r["joined_count"], 1, "{r}");
    assert_eq!(r["invited_count"], 0, "{r}");
    assert_eq!(r["notification_count"], 0, "{r}");
    assert_eq!(r["highlight_count"], 0, "{r}");
    assert_eq!(r["is_dm"], false, "{r}");
    assert_eq!(timeline(&body, &rooms[2]).len(), 2, "{r}");
    assert_eq!(r["limited"], true, "{r}");
    assert!(r["prev_batch"].is_string(), "{r}");
    assert_eq!(
        state_keys(&body, &rooms[2]),
        vec![pair("m.room.create", ""), pair("m.room.member", &alice.user_id), pair("m.room.name", "")],
        "{r}"
    );
    // prev_batch continues the timeline backwards with /messages.
    let (status, page) = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
            rooms[2],
            enc(r["prev_batch"].as_str().unwrap())
        ))
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(!page["chunk"].as_array().unwrap().is_empty(), "{page}");
    let p1 = pos(&body);

    // A message to the oldest room moves it to the top: it enters the window, the one that
    // leaves is not sent again, the one that stays has nothing new.
    let newest = send_text(&alice, &rooms[0], "t9", "bump").await;
    let body = ss(&alice, Some(&p1), 0, &req).await;
    assert_eq!(body["lists"]["all"]["count"], 3, "{body}");
    assert_eq!(room_ids(&body), vec![rooms[0].clone()], "{body}");
    let r = &body["rooms"][&rooms[0]];
    assert_eq!(r["initial"], true, "{r}");
    assert_eq!(timeline(&body, &rooms[0]).last(), Some(&newest), "{r}");
    let bump0 = r["bump_stamp"].as_i64().unwrap();
    assert_ne!(pos(&body), p1);

    // A state event that is not a bump type leaves the order alone but is sent.
    let p2 = pos(&body);
    put_state(&alice, &rooms[2], "m.room.name", "", json!({ "name": "Renamed" })).await;
    // Out of the window: not sent.
    put_state(&alice, &rooms[1], "m.room.name", "", json!({ "name": "Unseen" })).await;
    let body = ss(&alice, Some(&p2), 0, &req).await;
    assert_eq!(room_ids(&body), vec![rooms[2].clone()], "{body}");
    let r = &body["rooms"][&rooms[2]];
    assert!(r.get("initial").is_none(), "{r}");
    assert_eq!(r["name"], "Renamed", "{r}");
    assert_eq!(state_keys(&body, &rooms[2]), vec![pair("m.room.name", "")], "{r}");
    assert_eq!(r["num_live"], 1, "{r}");
    assert!(r["bump_stamp"].as_i64().unwrap() < bump0, "{body}");

    // Ranges past the end and several ranges.
    let req2 = json!({ "lists": { "a": list(json!([[0, 0], [2, 10]]), 1, json!([])) } });
    let body = ss(&alice, None, 0, &req2).await;
    assert_eq!(body["lists"]["a"]["count"], 3, "{body}");
    assert_eq!(by_bump(&body), vec![rooms[0].clone(), rooms[1].clone()], "{body}");
});

both_backends!(incremental_and_long_poll, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    send_text(&bob, &room, "b0", "first").await;
    let req = json!({ "lists": { "all": list(json!([[0, 10]]), 5, json!([["m.room.member", "$LAZY"]])) } });
    let body = ss(&alice, None, 0, &req).await;
    let p1 = pos(&body);
    // Lazy members: bob and alice sent events in the timeline window.
    assert_eq!(body["rooms"][&room]["joined_count"], 2, "{body}");

    // Nothing new: the poll waits out its timeout and keeps its position.
    let started = Instant::now();
    let body = ss(&alice, Some(&p1), 700, &req).await;
    assert!(started.elapsed() >= Duration::from_millis(600), "returned early: {body}");
    assert!(body.get("rooms").is_none(), "{body}");
    assert_eq!(pos(&body), p1);

    // A message wakes the poll at once with only the new event.
    let poll = {
        let (alice, req, p1) = (alice.clone(), req.clone(), p1.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            (ss(&alice, Some(&p1), 20_000, &req).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ev = send_text(&bob, &room, "b1", "wake up").await;
    let (body, took) = poll.await.unwrap();
    assert!(took < Duration::from_secs(10), "woken after {took:?}");
    let r = &body["rooms"][&room];
    assert_eq!(timeline(&body, &room), vec![ev], "{body}");
    assert!(r.get("initial").is_none(), "{r}");
    assert_eq!(r["num_live"], 1, "{r}");
    assert_eq!(r["notification_count"], 2, "{r}");
    assert_eq!(state_keys(&body, &room), vec![pair("m.room.member", &bob.user_id)], "{r}");

    // A read receipt resets the count: the room is sent with its new count.
    let p2 = pos(&body);
    let ev2 = send_text(&bob, &room, "b2", "more").await;
    let (status, _) = alice.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{ev2}"), &json!({})).await;
    assert_eq!(status, 200);
    let body = ss(&alice, Some(&p2), 0, &req).await;
    assert_eq!(body["rooms"][&room]["notification_count"], 0, "{body}");
    let p3 = pos(&body);
    let body = ss(&alice, Some(&p3), 0, &req).await;
    assert!(body.get("rooms").is_none(), "nothing new: {body}");

    // A profile change is a new member event but not a new membership: the room stays
    // incremental.
    let (status, _) = alice
        .put(&format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id), &json!({ "displayname": "Alice" }))
        .await;
    assert_eq!(status, 200);
    let body = ss(&alice, Some(&p3), 0, &req).await;
    let r = &body["rooms"][&room];
    assert!(r.get("initial").is_none(), "{body}");
    assert_eq!(timeline(&body, &room).len(), 1, "{body}");
    assert_eq!(r["joined_count"], 2, "{r}");
});

both_backends!(unknown_pos_and_restart, |server| async move {
    let mut server = server;
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({})).await;
    let req = json!({ "conn_id": "main", "lists": { "all": list(json!([[0, 10]]), 1, json!([])) } });
    let (status, body) = try_ss(&alice, Some("12345"), 0, &req).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    let (status, body) = try_ss(&alice, Some("not a number"), 0, &req).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");
    let (status, body) = try_ss(&alice, None, 0, &json!({ "conn_id": "x".repeat(300) })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = try_ss(&alice, None, 0, &json!({ "lists": { "a": { "ranges": "no" } } })).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");

    let mut with_txn = req.clone();
    with_txn["txn_id"] = json!("t-1");
    let body = ss(&alice, None, 0, &with_txn).await;
    assert_eq!(body["txn_id"], "t-1", "{body}");
    let p1 = pos(&ss(&alice, None, 0, &req).await);
    let m1 = send_text(&alice, &room, "m1", "one").await;
    let body = ss(&alice, Some(&p1), 0, &req).await;
    assert_eq!(timeline(&body, &room), vec![m1.clone()]);
    let p2 = pos(&body);
    // The answer may have been lost: the previous position is answered the same way again.
    let body = ss(&alice, Some(&p1), 0, &req).await;
    assert_eq!(timeline(&body, &room), vec![m1.clone()]);
    let p2b = pos(&body);
    // Then the position answered first is gone.
    let (status, body) = try_ss(&alice, Some(&p2), 0, &req).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{body}");

    // Other connections of the same device are independent.
    let other = json!({ "conn_id": "other", "lists": { "all": list(json!([[0, 10]]), 1, json!([])) } });
    let o1 = pos(&ss(&alice, None, 0, &other).await);
    let (status, _) = try_ss(&alice, Some(&o1), 0, &req).await;
    assert_eq!(status, 400, "a position of another connection");

    // Positions survive a restart and carry on where they were.
    server.restart().await;
    let m2 = send_text(&alice, &room, "m2", "two").await;
    let body = ss(&alice, Some(&p2b), 0, &req).await;
    assert_eq!(timeline(&body, &room), vec![m2], "{body}");
    assert!(body["rooms"][&room].get("initial").is_none(), "{body}");
    let p3 = pos(&body);
    let (status, body) = try_ss(&alice, Some(&p1), 0, &req).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "stale after restart: {body}");
    let body = ss(&alice, Some(&o1), 0, &other).await;
    assert!(body["pos"].is_string());

    // A request without a position starts the connection afresh.
    let body = ss(&alice, None, 0, &req).await;
    assert_eq!(body["rooms"][&room]["initial"], true, "{body}");
    let (status, _) = try_ss(&alice, Some(&p3), 0, &req).await;
    assert_eq!(status, 400, "the reset connection's position");

    // A device keeps ten connections: starting more drops the least recently used.
    let c0 = json!({ "conn_id": "c0" });
    let c0_pos = pos(&ss(&alice, None, 0, &c0).await);
    // Its last use strictly before the others' (uses are ordered by milliseconds).
    tokio::time::sleep(Duration::from_millis(10)).await;
    for i in 1..=10 {
        ss(&alice, None, 0, &json!({ "conn_id": format!("c{i}") })).await;
    }
    let (status, body) = try_ss(&alice, Some(&c0_pos), 0, &c0).await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "evicted: {body}");
});

both_backends!(filters, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let plain = create_room(&alice, json!({})).await;
    let encrypted = create_room(
        &alice,
        json!({ "initial_state": [
        { "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }
    ] }),
    )
    .await;
    let space = create_room(&alice, json!({ "creation_content": { "type": "m.space" } })).await;
    let dm = create_room(&alice, json!({})).await;
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", alice.user_id),
            &json!({ bob.user_id.clone(): [dm] }),
        )
        .await;
    assert_eq!(status, 200);
    // An invite marked as direct.
    let invite = create_room(&bob, json!({ "invite": [alice.user_id], "is_direct": true })).await;

    let l = |filters: Value| json!({ "ranges": [[0, 20]], "timeline_limit": 0, "filters": filters });
    let req = json!({ "lists": {
        "all": l(json!({})),
        "dms": l(json!({ "is_dm": true })),
        "not_dms": l(json!({ "is_dm": false })),
        "encrypted": l(json!({ "is_encrypted": true })),
        "invites": l(json!({ "is_invite": true })),
        "spaces": l(json!({ "room_types": ["m.space"] })),
        "rooms": l(json!({ "room_types": [null] })),
        "no_spaces": l(json!({ "not_room_types": ["m.space"] })),
    } });
    let body = ss(&alice, None, 0, &req).await;
    let count = |name: &str| body["lists"][name]["count"].as_u64().unwrap();
    assert_eq!(count("all"), 5, "{body}");
    assert_eq!(count("dms"), 2, "{body}");
    assert_eq!(count("not_dms"), 3, "{body}");
    assert_eq!(count("encrypted"), 1, "{body}");
    assert_eq!(count("invites"), 1, "{body}");
    assert_eq!(count("spaces"), 1, "{body}");
    assert_eq!(count("rooms"), 4, "{body}");
    assert_eq!(count("no_spaces"), 4, "{body}");
    assert_eq!(body["rooms"][&dm]["is_dm"], true, "{body}");
    assert_eq!(body["rooms"][&invite]["is_dm"], true, "{body}");
    assert_eq!(body["rooms"][&plain]["is_dm"], false, "{body}");
    let _ = (encrypted, space);

    // Encryption turned on, and a room marked direct, change the counts of a live connection.
    put_state(&alice, &plain, "m.room.encryption", "", json!({ "algorithm": "m.megolm.v1.aes-sha2" })).await;
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", alice.user_id),
            &json!({ bob.user_id.clone(): [dm, plain] }),
        )
        .await;
    assert_eq!(status, 200);
    let body = ss(&alice, Some(&pos(&body)), 0, &req).await;
    let count = |name: &str| body["lists"][name]["count"].as_u64().unwrap();
    assert_eq!(count("encrypted"), 2, "{body}");
    assert_eq!(count("dms"), 3, "{body}");
});

both_backends!(invites_joins_leaves_and_subscriptions, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&bob, json!({ "name": "Bob's", "invite": [alice.user_id] })).await;
    let req = json!({ "lists": { "all": list(json!([[0, 10]]), 3, json!([["*", "*"]])) } });
    let body = ss(&alice, None, 0, &req).await;
    let r = &body["rooms"][&room];
    assert_eq!(r["initial"], true, "{r}");
    let invite_state = r["invite_state"].as_array().unwrap_or_else(|| panic!("no invite_state: {r}"));
    assert!(invite_state.iter().any(|e| e["type"] == "m.room.name"), "{r}");
    assert!(invite_state.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id), "{r}");
    assert!(r.get("timeline").is_none(), "{r}");
    let p1 = pos(&body);

    // Joining sends the room afresh, with its timeline and full state.
    join(&alice, &room).await;
    let body = ss(&alice, Some(&p1), 0, &req).await;
    let r = &body["rooms"][&room];
    assert_eq!(r["initial"], true, "{r}");
    assert!(r.get("invite_state").is_none(), "{r}");
    assert_eq!(r["joined_count"], 2, "{r}");
    assert!(state_keys(&body, &room).contains(&pair("m.room.member", &alice.user_id)), "{r}");
    assert!(state_keys(&body, &room).contains(&pair("m.room.create", "")), "{r}");
    // A named room needs no heroes.
    assert!(r.get("heroes").is_none(), "{r}");
    let p2 = pos(&body);

    // Being kicked: the room is sent once more with the kick, then leaves the list.
    let (status, _) =
        bob.post(&format!("/_matrix/client/v3/rooms/{room}/kick"), &json!({ "user_id": alice.user_id })).await;
    assert_eq!(status, 200);
    let after_kick = send_text(&bob, &room, "after", "not for alice").await;
    let body = ss(&alice, Some(&p2), 0, &req).await;
    let tl = timeline(&body, &room);
    assert!(!tl.is_empty() && !tl.contains(&after_kick), "{body}");
    let last = body["rooms"][&room]["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"]["membership"], "leave", "{body}");
    assert_eq!(body["lists"]["all"]["count"], 1, "{body}");
    let body = ss(&alice, Some(&pos(&body)), 0, &req).await;
    assert_eq!(body["lists"]["all"]["count"], 0, "{body}");
    assert!(body.get("rooms").is_none(), "{body}");

    // Subscriptions: a room outside every list, with its own config; rooms the user has no
    // membership in are left out.
    let other = create_room(&alice, json!({ "name": "Other" })).await;
    let ids = send_texts(&alice, &other, "o", 4).await;
    let req = json!({
        "lists": { "none": list(json!([[0, 0]]), 1, json!([])) },
        "room_subscriptions": {
            other.clone(): { "timeline_limit": 1, "required_state": [["m.room.name", ""]] },
            room.clone(): { "timeline_limit": 1 },
            "!unknown:localhost": { "timeline_limit": 1 },
        },
    });
    // `room` (left) is held as of the leave; the list holds only `other`.
    let body = ss(&alice, None, 0, &req).await;
    assert_eq!(timeline(&body, &other), vec![ids[3].clone()], "{body}");
    assert_eq!(state_keys(&body, &other), vec![pair("m.room.name", "")], "{body}");
    assert!(body["rooms"].get("!unknown:localhost").is_none(), "{body}");
    // A larger timeline limit sends the timeline again (expanded).
    let req2 = json!({ "room_subscriptions": { other.clone(): { "timeline_limit": 3 } } });
    let body = ss(&alice, Some(&pos(&body)), 0, &req2).await;
    assert_eq!(timeline(&body, &other), ids[1..].to_vec(), "{body}");
    assert_eq!(body["rooms"][&other]["unstable_expanded_timeline"], true, "{body}");
});

both_backends!(required_state_lazy_and_wildcards, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat", "topic": "t" })).await;
    join(&bob, &room).await;
    join(&carol, &room).await;
    send_text(&bob, &room, "b", "from bob").await;
    let lazy = json!({ "lists": { "l": list(json!([[0, 0]]), 1,
        json!([["m.room.member", "$LAZY"], ["m.room.member", "$ME"], ["m.room.topic", "*"]])) } });
    let body = ss(&alice, None, 0, &lazy).await;
    assert_eq!(
        state_keys(&body, &room),
        vec![pair("m.room.member", &alice.user_id), pair("m.room.member", &bob.user_id), pair("m.room.topic", "")],
        "{body}"
    );
    // No name: the heroes name the room, with their profiles.
    let heroes = body["rooms"][&room]["heroes"].as_array().unwrap_or_else(|| panic!("no heroes: {body}"));
    let hero_ids: Vec<&Value> = heroes.iter().map(|h| &h["user_id"]).collect();
    assert_eq!(hero_ids, vec![&json!(bob.user_id), &json!(carol.user_id)], "{body}");
    assert_eq!(heroes[0]["displayname"], "bob", "{body}");
    let p1 = pos(&body);
    send_text(&carol, &room, "c", "from carol").await;
    let body = ss(&alice, Some(&p1), 0, &lazy).await;
    assert_eq!(state_keys(&body, &room), vec![pair("m.room.member", &carol.user_id)], "{body}");

    // Every member, and every state event.
    let members = json!({ "lists": { "l": list(json!([[0, 0]]), 1, json!([["m.room.member", "*"]])) } });
    let body = ss(&alice, None, 0, &members).await;
    assert_eq!(state_keys(&body, &room).len(), 3, "{body}");
    let all = json!({ "lists": { "l": list(json!([[0, 0]]), 1, json!([["*", "*"]])) } });
    let body = ss(&alice, None, 0, &all).await;
    let keys = state_keys(&body, &room);
    assert!(keys.contains(&pair("m.room.create", "")) && keys.contains(&pair("m.room.power_levels", "")), "{body}");
    // Widening required_state on a connection sends the state it now asks for.
    let p = pos(&ss(&alice, None, 0, &lazy).await);
    let body = ss(&alice, Some(&p), 0, &all).await;
    assert!(state_keys(&body, &room).contains(&pair("m.room.create", "")), "{body}");
    assert!(body["rooms"][&room].get("initial").is_none(), "{body}");
});

both_backends!(extensions, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let quiet = create_room(&alice, json!({})).await;
    join(&bob, &room).await;
    let msg = send_text(&bob, &room, "m", "hi").await;
    let keys = json!({ "one_time_keys": { "signed_curve25519:AAAA1": { "key": "k1", "signatures": {} } } });
    assert_eq!(alice.post("/_matrix/client/v3/keys/upload", &keys).await.0, 200);
    let (status, _) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{msg}"), &json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = alice
        .put(&format!("/_matrix/client/v3/user/{}/account_data/org.example.global", alice.user_id), &json!({ "a": 1 }))
        .await;
    assert_eq!(status, 200);
    let (status, _) = alice
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{room}/account_data/org.example.room", alice.user_id),
            &json!({ "b": 2 }),
        )
        .await;
    assert_eq!(status, 200);
    let td = json!({ "messages": { alice.user_id.clone(): { alice.device_id.clone(): { "n": 1 } } } });
    assert_eq!(bob.put("/_matrix/client/v3/sendToDevice/org.example.ping/t1", &td).await.0, 200);

    let ext = |since: Option<&str>| {
        let mut to_device = json!({ "enabled": true });
        if let Some(s) = since {
            to_device["since"] = json!(s);
        }
        json!({
            "lists": { "all": list(json!([[0, 10]]), 1, json!([])) },
            "extensions": {
                "to_device": to_device,
                "e2ee": { "enabled": true },
                "account_data": { "enabled": true },
                "receipts": { "enabled": true },
                "typing": { "enabled": true, "rooms": [quiet.clone()], "lists": [] },
            },
        })
    };
    let body = ss(&alice, None, 0, &ext(None)).await;
    let e = &body["extensions"];
    assert_eq!(e["to_device"]["events"][0]["content"]["n"], 1, "{e}");
    assert_eq!(e["to_device"]["events"][0]["sender"], bob.user_id, "{e}");
    let next = e["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(e["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 1, "{e}");
    assert!(e["e2ee"].get("device_lists").is_none(), "{e}");
    assert!(e["account_data"]["global"].as_array().unwrap().iter().any(|x| x["type"] == "org.example.global"), "{e}");
    assert_eq!(e["account_data"]["rooms"][&room][0]["content"]["b"], 2, "{e}");
    assert!(e["receipts"]["rooms"][&room]["content"][&msg]["m.read"][&bob.user_id].is_object(), "{e}");

    // Not acknowledged yet: delivered again; acknowledged with `since`: gone for good.
    let body = ss(&alice, None, 0, &ext(None)).await;
    assert_eq!(body["extensions"]["to_device"]["events"].as_array().map(Vec::len), Some(1), "{body}");
    let p1 = pos(&body);
    let body = ss(&alice, Some(&p1), 0, &ext(Some(&next))).await;
    assert!(body["extensions"]["to_device"].get("events").is_none_or(|e| e == &json!([])), "{body}");
    let body = ss(&alice, None, 0, &ext(None)).await;
    assert!(body["extensions"]["to_device"].get("events").is_none_or(|e| e == &json!([])), "acked: {body}");
    let p2 = pos(&body);
    let next = body["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();

    // Typing is scoped to `quiet`: bob typing in `room` is not sent; in `quiet` it is.
    let typing = |r: &str, u: &str| format!("/_matrix/client/v3/rooms/{r}/typing/{u}");
    assert_eq!(bob.put(&typing(&room, &bob.user_id), &json!({ "typing": true, "timeout": 30000 })).await.0, 200);
    let body = ss(&alice, Some(&p2), 500, &ext(Some(&next))).await;
    assert!(body["extensions"].get("typing").is_none(), "{body}");
    let p3 = pos(&body);
    assert_eq!(bob.post(&format!("/_matrix/client/v3/rooms/{quiet}/join"), &json!({})).await.0, 403);
    let (status, _) =
        alice.post(&format!("/_matrix/client/v3/rooms/{quiet}/invite"), &json!({ "user_id": bob.user_id })).await;
    assert_eq!(status, 200);
    join(&bob, &quiet).await;
    let body = ss(&alice, Some(&p3), 0, &ext(Some(&next))).await;
    let p4 = pos(&body);
    let poll = {
        let (alice, req, p4) = (alice.clone(), ext(Some(&next)), p4.clone());
        tokio::spawn(async move { ss(&alice, Some(&p4), 20_000, &req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.put(&typing(&quiet, &bob.user_id), &json!({ "typing": true, "timeout": 30000 })).await.0, 200);
    let body = poll.await.unwrap();
    assert_eq!(body["extensions"]["typing"]["rooms"][&quiet]["content"]["user_ids"], json!([bob.user_id]), "{body}");
    assert!(body["extensions"]["typing"]["rooms"].get(&room).is_none(), "{body}");

    // A new device of a room-mate shows in device_lists and wakes the poll.
    let p5 = pos(&body);
    let poll = {
        let (alice, req, p5) = (alice.clone(), ext(Some(&next)), p5.clone());
        tokio::spawn(async move { ss(&alice, Some(&p5), 20_000, &req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.login("bob", common::PASSWORD).await;
    let body = poll.await.unwrap();
    let changed = body["extensions"]["e2ee"]["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    assert!(changed.contains(&json!(bob.user_id)), "{body}");
});

/// Keeps the type imported for the helpers' signatures.
#[allow(dead_code)]
fn _server(_: &TestServer) {}

// Extension settings are sticky (MSC4186, as Synapse): matrix-rust-sdk sends
// `to_device.enabled` once, on a connection of its own (`conn_id: "encryption"`), and then only
// `since` once the server echoed its `txn_id`. A to-device message sent during the long-poll
// must wake it and be in the answer. Before, the server read `enabled` from each request only:
// the SDK's long-poll waited out its timeout and room keys never arrived (found by sdk-tests).
both_backends!(extension_settings_are_sticky, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let first = json!({
        "conn_id": "encryption",
        "txn_id": "t1",
        "extensions": { "to_device": { "enabled": true }, "e2ee": { "enabled": true } },
    });
    let body = ss(&alice, None, 0, &first).await;
    assert_eq!(body["txn_id"], "t1", "{body}");
    let since = body["extensions"]["to_device"]["next_batch"].as_str().expect("to_device answered").to_owned();
    let p = pos(&body);

    let poll = {
        let (alice, p, since) = (alice.clone(), p.clone(), since.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body = json!({ "conn_id": "encryption", "extensions": { "to_device": { "since": since } } });
            (ss(&alice, Some(&p), 10_000, &body).await, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let td = json!({ "messages": { alice.user_id.clone(): { alice.device_id.clone(): { "key": "k" } } } });
    assert_eq!(bob.put("/_matrix/client/v3/sendToDevice/m.room_key/k1", &td).await.0, 200);
    let (body, took) = poll.await.expect("long-poll");
    assert!(took < std::time::Duration::from_secs(8), "woken by the to-device message, not the timeout ({took:?})");
    assert_eq!(body["extensions"]["to_device"]["events"][0]["content"]["key"], "k", "{body}");
    assert!(body["extensions"]["e2ee"].is_object(), "e2ee stays enabled: {body}");
    // `since` itself is not sticky: the next request without one starts from the beginning of
    // the unacknowledged messages, i.e. the message is still there.
    let p2 = pos(&body);
    let body = ss(&alice, Some(&p2), 0, &json!({ "conn_id": "encryption" })).await;
    assert_eq!(body["extensions"]["to_device"]["events"][0]["content"]["key"], "k", "{body}");
});

both_backends!(window_of_many_rooms_answers_each_room_as_alone, |server| async move {
    // A window of many fresh rooms reads what they need (timelines, state groups, summaries,
    // unread counts, required state) in batched statements for all of them; a window of one
    // room reads only that room's. Each room must come out the same both ways: nothing of one
    // room may leak into another's entry, and nothing may be missed.
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let mut rooms = Vec::new();
    for i in 0..9usize {
        // Odd rooms have no name: their heroes name them.
        let mut body = json!({ "preset": "public_chat" });
        if i % 2 == 0 {
            body["name"] = json!(format!("room {i}"));
        }
        let room = create_room(&alice, body).await;
        if i % 2 == 1 || i == 4 {
            join(&bob, &room).await;
        }
        if i % 3 == 0 {
            join(&carol, &room).await;
        }
        if i == 4 {
            put_state(&alice, &room, "m.room.encryption", "", json!({ "algorithm": "m.megolm.v1.aes-sha2" })).await;
        }
        if i == 5 {
            put_state(&alice, &room, "m.room.avatar", "", json!({ "url": "mxc://localhost/a" })).await;
        }
        // Rooms of different lengths: some hold more than a timeline.
        send_texts(&alice, &room, &format!("a{i}"), i).await;
        if i % 2 == 1 {
            let sent = send_texts(&bob, &room, &format!("b{i}"), 3).await;
            if i == 3 {
                // Alice read up to the first: two stay unread.
                let (status, res) = alice
                    .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", sent[0]), &json!({}))
                    .await;
                assert_eq!(status, 200, "{res}");
            }
        }
        if i == 6 {
            put_state(&alice, &room, "m.room.topic", "", json!({ "topic": "late" })).await;
            send_text(&carol, &room, "c6", "from carol").await;
        }
        rooms.push(room);
    }
    // An invite (marked direct) among the joined rooms.
    let invited = create_room(&bob, json!({ "name": "invite", "invite": [alice.user_id], "is_direct": true })).await;
    rooms.push(invited.clone());
    let element_x = json!([
        ["m.room.encryption", ""],
        ["m.room.member", "$LAZY"],
        ["m.room.member", "$ME"],
        ["m.room.name", ""],
        ["m.room.topic", ""],
        ["m.room.avatar", ""],
        ["m.room.create", ""],
        ["m.room.join_rules", ""],
        ["m.room.history_visibility", ""],
    ]);
    let n = rooms.len() as u64;
    for (limit, required) in [(1, element_x), (4, json!([["*", "*"]])), (0, json!([["m.room.member", "*"]]))] {
        let all =
            ss(&alice, None, 0, &json!({ "lists": { "l": list(json!([[0, n - 1]]), limit, required.clone()) } })).await;
        assert_eq!(room_ids(&all).len(), rooms.len(), "{all}");
        for i in 0..n {
            let one =
                ss(&alice, None, 0, &json!({ "lists": { "l": list(json!([[i, i]]), limit, required.clone()) } })).await;
            let ids = room_ids(&one);
            assert_eq!(ids.len(), 1, "{one}");
            let room = &ids[0];
            assert_eq!(
                without_age(all["rooms"][room].clone()),
                without_age(one["rooms"][room].clone()),
                "room {room} differs between the window of all rooms and the window of it alone \
                 (timeline_limit {limit}, required_state {required})"
            );
        }
        assert_eq!(all["rooms"][&rooms[3]]["notification_count"], 2, "{all}");
        assert_eq!(all["rooms"][&invited]["is_dm"], true, "{all}");
    }
});

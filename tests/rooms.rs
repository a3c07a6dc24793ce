//! Rooms over real HTTP on both backends: creation, membership, sending (idempotent), state,
//! history (`/messages`, `/context`, `/event`), visibility, aliases and the directory,
//! profiles, relations, upgrades, and the ordering and durability invariants.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::{Client, Resp, assert_error, create_room, enc, ok};
use serde_json::{Value, json};

const CREATE: &str = "/_matrix/client/v3/createRoom";

async fn send_text(c: &Client, room: &str, txn: &str, body: &str) -> Resp {
    c.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
        &json!({ "msgtype": "m.text", "body": body }),
    )
    .await
}

async fn send_ok(c: &Client, room: &str, txn: &str, body: &str) -> String {
    let resp = send_text(c, room, txn, body).await;
    ok(&resp)["event_id"].as_str().unwrap().to_owned()
}

/// Every event of the room in `dir` order, paging with `limit`.
async fn all_messages(c: &Client, room: &str, dir: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit={limit}", enc(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let resp = c.get(&path).await;
        let body = ok(&resp).clone();
        out.extend(body["chunk"].as_array().unwrap().iter().cloned());
        match body["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => return out,
        }
    }
}

fn ids(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

fn bodies(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(create_room_presets_and_state, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Lobby", "topic": "Say hi", "room_alias_name": "lobby", "visibility": "public" }),
    )
    .await;
    let r = enc(&room);
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.name")).await;
    assert_eq!(ok(&name)["name"], "Lobby");
    let name_slash = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.name/")).await;
    assert_eq!(ok(&name_slash)["name"], "Lobby");
    let topic = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.topic/")).await;
    assert_eq!(ok(&topic)["topic"], "Say hi");
    let rules = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.join_rules")).await;
    assert_eq!(ok(&rules)["join_rule"], "public");
    let create = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.create")).await;
    assert_eq!(ok(&create)["room_version"], "12");
    let all = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state")).await;
    let types: HashSet<String> =
        ok(&all).as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
        "m.room.canonical_alias",
    ] {
        assert!(types.contains(t), "missing {t} in {types:?}");
    }
    // The alias resolves, and the room is in the directory without a token.
    let alias = server
        .get(&format!("/_matrix/client/v3/directory/room/{}", enc(&format!("#lobby:{}", server.server_name()))))
        .await;
    assert_eq!(ok(&alias)["room_id"], room.as_str());
    let public = server.get("/_matrix/client/v3/publicRooms").await;
    let chunk = ok(&public)["chunk"].as_array().unwrap().clone();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["room_id"], room.as_str());
    assert_eq!(chunk[0]["name"], "Lobby");
    assert_eq!(chunk[0]["num_joined_members"], 1);
    let filtered = server
        .post("/_matrix/client/v3/publicRooms", &json!({ "filter": { "generic_search_term": "nothing-like-it" } }))
        .await;
    assert_eq!(ok(&filtered)["chunk"].as_array().unwrap().len(), 0);

    // Errors.
    assert_error(&alice.post(CREATE, &json!({ "room_alias_name": "lobby" })).await, 400, "M_ROOM_IN_USE");
    assert_error(&alice.post(CREATE, &json!({ "room_version": "1" })).await, 400, "M_UNSUPPORTED_ROOM_VERSION");
    assert_error(
        &alice
            .post(CREATE, &json!({ "initial_state": [{ "type": "m.room.create", "state_key": "", "content": {} }] }))
            .await,
        400,
        "M_INVALID_ROOM_STATE",
    );
    assert_error(
        &alice.post(CREATE, &json!({ "power_level_content_override": { "users": { alice.user_id.clone(): 0 }, "users_default": 0, "state_default": 50 }, "name": "x" })).await,
        400,
        "M_INVALID_ROOM_STATE",
    );
});

both_backends!(every_room_version_works, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for v in ["6", "7", "8", "9", "10", "11", "12"] {
        let room = create_room(&alice, json!({ "room_version": v, "invite": [bob.user_id] })).await;
        let r = enc(&room);
        ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/join"), &json!({})).await);
        let ev = send_ok(&bob, &room, &format!("t{v}"), "hello").await;
        // Alice (room creator, PL 100 or infinite) redacts Bob's message.
        let red = alice
            .put(&format!("/_matrix/client/v3/rooms/{r}/redact/{}/r{v}", enc(&ev)), &json!({ "reason": "test" }))
            .await;
        let red_id = ok(&red)["event_id"].as_str().unwrap().to_owned();
        let got = bob.get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&ev))).await;
        assert_eq!(ok(&got)["content"], json!({}), "v{v}: the redacted event has empty content");
        assert_eq!(got.1["unsigned"]["redacted_because"]["event_id"], red_id.as_str(), "v{v}: {}", got.1);
        assert_eq!(got.1["unsigned"]["redacted_because"]["content"]["reason"], "test");
        let create = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.create")).await;
        assert_eq!(ok(&create)["room_version"], v);
        // A member without power cannot redact someone else's event.
        let ev2 = send_ok(&alice, &room, &format!("a{v}"), "from alice").await;
        assert_error(
            &bob.put(&format!("/_matrix/client/v3/rooms/{r}/redact/{}/x{v}", enc(&ev2)), &json!({})).await,
            403,
            "M_FORBIDDEN",
        );
    }
});

both_backends!(membership_flow, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice, json!({ "preset": "private_chat", "name": "Private" })).await;
    let r = enc(&room);
    // Invite-only: Bob cannot join uninvited.
    assert_error(&bob.post(&format!("/_matrix/client/v3/join/{r}"), &json!({})).await, 403, "M_FORBIDDEN");
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/invite"), &json!({ "user_id": bob.user_id })).await);
    ok(&bob.post(&format!("/_matrix/client/v3/join/{r}"), &json!({})).await);
    let joined = bob.get("/_matrix/client/v3/joined_rooms").await;
    assert_eq!(ok(&joined)["joined_rooms"], json!([room]));
    let members = alice.get(&format!("/_matrix/client/v3/rooms/{r}/joined_members")).await;
    let joined_members = ok(&members)["joined"].as_object().unwrap().clone();
    assert!(joined_members.contains_key(&bob.user_id) && joined_members.contains_key(&alice.user_id));
    // Bob (PL 0) cannot kick Alice.
    let kick = bob.post(&format!("/_matrix/client/v3/rooms/{r}/kick"), &json!({ "user_id": alice.user_id })).await;
    assert_error(&kick, 403, "M_FORBIDDEN");
    // Alice kicks Bob, then bans him; he cannot rejoin until unbanned and re-invited.
    ok(&alice
        .post(&format!("/_matrix/client/v3/rooms/{r}/kick"), &json!({ "user_id": bob.user_id, "reason": "bye" }))
        .await);
    let m = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.member/{}", enc(&bob.user_id))).await;
    assert_eq!(ok(&m)["membership"], "leave");
    assert_eq!(m.1["reason"], "bye");
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/ban"), &json!({ "user_id": bob.user_id })).await);
    assert_error(
        &alice.post(&format!("/_matrix/client/v3/rooms/{r}/invite"), &json!({ "user_id": bob.user_id })).await,
        403,
        "M_FORBIDDEN",
    );
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/unban"), &json!({ "user_id": bob.user_id })).await);
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/invite"), &json!({ "user_id": bob.user_id })).await);
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/join"), &json!({})).await);
    // Membership filters on /members.
    let all = alice.get(&format!("/_matrix/client/v3/rooms/{r}/members")).await;
    assert_eq!(ok(&all)["chunk"].as_array().unwrap().len(), 2);
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/invite"), &json!({ "user_id": carol.user_id })).await);
    let invited = alice.get(&format!("/_matrix/client/v3/rooms/{r}/members?membership=invite")).await;
    let chunk = ok(&invited)["chunk"].as_array().unwrap().clone();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["state_key"], carol.user_id.as_str());
    let not_join = alice.get(&format!("/_matrix/client/v3/rooms/{r}/members?not_membership=join")).await;
    assert_eq!(ok(&not_join)["chunk"].as_array().unwrap().len(), 1);
    // Carol rejects the invite by leaving; leave and forget.
    ok(&carol.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), &json!({})).await);
    assert_error(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), &json!({})).await, 400, "M_UNKNOWN");
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), &json!({})).await);
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), &json!({})).await);
    assert_eq!(ok(&bob.get("/_matrix/client/v3/joined_rooms").await)["joined_rooms"], json!([]));
    // Knocking needs a knock join rule.
    let knock_room = create_room(&alice, json!({ "room_version": "12", "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }] })).await;
    ok(&carol.post(&format!("/_matrix/client/v3/knock/{}", enc(&knock_room)), &json!({ "reason": "let me in" })).await);
    let m = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&knock_room), enc(&carol.user_id)))
        .await;
    assert_eq!(ok(&m)["membership"], "knock");
    assert_error(&carol.post(&format!("/_matrix/client/v3/knock/{r}"), &json!({})).await, 403, "M_FORBIDDEN");
    // Unknown room.
    assert_error(&bob.post("/_matrix/client/v3/join/!nope:localhost", &json!({})).await, 404, "M_NOT_FOUND");
});

both_backends!(send_is_idempotent_and_validated, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({})).await;
    let first = send_ok(&alice, &room, "same-txn", "once").await;
    let again = send_ok(&alice, &room, "same-txn", "once").await;
    assert_eq!(first, again, "a retried PUT with the same txnId returns the same event");
    // Another device of the same user has its own txn namespace.
    let other = server.login("alice", &alice.password).await;
    let other_id = send_ok(&other, &room, "same-txn", "other device").await;
    assert_ne!(first, other_id);
    // The event exists once, with transaction_id only for the sending device.
    let msgs = all_messages(&alice, &room, "f", 100).await;
    assert_eq!(bodies(&msgs), vec!["once", "other device"]);
    let mine = msgs.iter().find(|e| e["event_id"] == first.as_str()).unwrap();
    assert_eq!(mine["unsigned"]["transaction_id"], "same-txn");
    let theirs = msgs.iter().find(|e| e["event_id"] == other_id.as_str()).unwrap();
    assert!(theirs["unsigned"].get("transaction_id").is_none(), "transaction_id leaks to another device: {theirs}");
    // Floats and big integers are not canonical JSON.
    let r = enc(&room);
    assert_error(
        &alice
            .put(&format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/f1"), &json!({ "body": "x", "n": 1.5 }))
            .await,
        400,
        "M_BAD_JSON",
    );
    assert_error(
        &alice
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/f2"),
                &json!({ "body": "x", "n": 9007199254740993u64 }),
            )
            .await,
        400,
        "M_BAD_JSON",
    );
    // PDUs over 64 KiB.
    let big = "x".repeat(70_000);
    assert_error(
        &alice.put(&format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/big"), &json!({ "body": big })).await,
        413,
        "M_TOO_LARGE",
    );
    // Non-members cannot send; the failed sends stored nothing.
    let bob = server.register("bob").await;
    assert_error(&send_text(&bob, &room, "b1", "intruder").await, 403, "M_FORBIDDEN");
    assert_eq!(bodies(&all_messages(&alice, &room, "f", 100).await).len(), 2);
    // After a restart, the txn mapping survives.
    let mut server = server;
    server.restart().await;
    let after = send_ok(&alice, &room, "same-txn", "once").await;
    assert_eq!(after, first, "txn ids survive restarts");
    assert_eq!(bodies(&all_messages(&alice, &room, "f", 100).await).len(), 2);
});

both_backends!(messages_pagination_and_visibility, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    // Joined-only history: Bob must not see what was said before he joined.
    ok(&alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/state/m.room.history_visibility"),
            &json!({ "history_visibility": "joined" }),
        )
        .await);
    for i in 0..5 {
        send_ok(&alice, &room, &format!("pre{i}"), &format!("before {i}")).await;
    }
    ok(&bob.post(&format!("/_matrix/client/v3/join/{r}"), &json!({})).await);
    for i in 0..25 {
        send_ok(&alice, &room, &format!("post{i}"), &format!("after {i}")).await;
    }
    let fwd = all_messages(&alice, &room, "f", 7).await;
    let back = all_messages(&alice, &room, "b", 4).await;
    let mut rev = ids(&back);
    rev.reverse();
    assert_eq!(ids(&fwd), rev, "dir=b is exactly the reverse of dir=f");
    assert_eq!(bodies(&fwd).len(), 30);
    let bob_view = bodies(&all_messages(&bob, &room, "b", 10).await);
    assert_eq!(bob_view.len(), 25, "Bob sees only messages after his join: {bob_view:?}");
    assert!(bob_view.iter().all(|b| b.starts_with("after")));
    // /event of a hidden event is 404 for Bob.
    let hidden =
        fwd.iter().find(|e| e["content"]["body"] == "before 0").unwrap()["event_id"].as_str().unwrap().to_owned();
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&hidden))).await, 404, "M_NOT_FOUND");
    // Filters: only m.room.message from alice, limited.
    let filter = enc(&json!({ "types": ["m.room.message"], "senders": [alice.user_id] }).to_string());
    let page = alice.get(&format!("/_matrix/client/v3/rooms/{r}/messages?dir=b&limit=3&filter={filter}")).await;
    let chunk = ok(&page)["chunk"].as_array().unwrap().clone();
    assert_eq!(bodies(&chunk), vec!["after 24", "after 23", "after 22"]);
    // /context around a message.
    let mid = fwd.iter().find(|e| e["content"]["body"] == "after 10").unwrap()["event_id"].as_str().unwrap().to_owned();
    let ctx = alice.get(&format!("/_matrix/client/v3/rooms/{r}/context/{}?limit=4", enc(&mid))).await;
    let ctx = ok(&ctx).clone();
    assert_eq!(ctx["event"]["event_id"], mid.as_str());
    assert_eq!(bodies(ctx["events_before"].as_array().unwrap()), vec!["after 9", "after 8"]);
    assert_eq!(bodies(ctx["events_after"].as_array().unwrap()), vec!["after 11", "after 12"]);
    // Paging on from the context's end token continues without a gap.
    let next = alice
        .get(&format!("/_matrix/client/v3/rooms/{r}/messages?dir=f&limit=2&from={}", enc(ctx["end"].as_str().unwrap())))
        .await;
    assert_eq!(bodies(ok(&next)["chunk"].as_array().unwrap()), vec!["after 13", "after 14"]);
    // A user who left sees history only up to the leave.
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/leave"), &json!({})).await);
    send_ok(&alice, &room, "late", "after leave").await;
    let bob_after = bodies(&all_messages(&bob, &room, "b", 50).await);
    assert!(!bob_after.contains(&"after leave".to_owned()), "left user sees later messages: {bob_after:?}");
    // Outsiders get 403.
    let carol = server.register("carol").await;
    assert_error(&carol.get(&format!("/_matrix/client/v3/rooms/{r}/messages?dir=b")).await, 403, "M_FORBIDDEN");
});

both_backends!(concurrent_senders_one_order, |server| async move {
    let room_owner = server.register("owner").await;
    let room = create_room(&room_owner, json!({ "preset": "public_chat" })).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let c = server.register(&format!("sender{i}")).await;
        ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().cloned().enumerate() {
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            for n in 0..15 {
                sent.push(send_ok(&c, &room, &format!("c{i}-{n}"), &format!("{i}:{n}")).await);
            }
            sent
        }));
    }
    let mut acknowledged = HashSet::new();
    let mut per_sender: Vec<Vec<String>> = Vec::new();
    for t in tasks {
        let sent = t.await.unwrap();
        acknowledged.extend(sent.iter().cloned());
        per_sender.push(sent);
    }
    // Two readers page in different sizes and directions and see one order.
    let a = ids(&all_messages(&room_owner, &room, "f", 13).await);
    let b = ids(&all_messages(&clients[3], &room, "f", 50).await);
    let mut c = ids(&all_messages(&clients[5], &room, "b", 9).await);
    c.reverse();
    assert_eq!(a, b);
    assert_eq!(a, c);
    let set: HashSet<&String> = a.iter().collect();
    assert_eq!(set.len(), a.len(), "no event appears twice");
    for id in &acknowledged {
        assert!(set.contains(id), "acknowledged event {id} missing");
    }
    // Each sender's messages appear in the order they were acknowledged.
    for sent in per_sender {
        let positions: Vec<usize> = sent.iter().map(|id| a.iter().position(|x| x == id).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "sender order broken: {positions:?}");
    }
});

both_backends!(kill9_loses_no_acknowledged_event, |server| async move {
    let mut server = server;
    let owner = server.register("owner").await;
    let room = create_room(&owner, json!({ "preset": "public_chat" })).await;
    let mut clients = Vec::new();
    for i in 0..4 {
        let c = server.register(&format!("k{i}")).await;
        ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
        clients.push(c);
    }
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut tasks = Vec::new();
    for (i, c) in clients.iter().cloned().enumerate() {
        let room = room.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let txn = format!("k{i}-{n}");
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room));
                let res = c
                    .request(reqwest::Method::PUT, &path)
                    .json(&json!({ "msgtype": "m.text", "body": txn }))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => {
                        let body: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(id) = body["event_id"].as_str() {
                            acked.lock().unwrap().push((txn.clone(), id.to_owned()));
                        }
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    server.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    server.start_again().await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 4, "the test sent too little before the kill: {}", acked.len());
    let a = all_messages(&owner, &room, "f", 40).await;
    let mut b = ids(&all_messages(&clients[0], &room, "b", 17).await);
    b.reverse();
    assert_eq!(ids(&a), b, "one order after restart");
    let stored: Vec<String> = ids(&a);
    let set: HashSet<&String> = stored.iter().collect();
    assert_eq!(set.len(), stored.len(), "duplicates after restart");
    for (txn, id) in &acked {
        assert!(set.contains(id), "acknowledged {txn} ({id}) lost after kill -9");
    }
    // Retrying an acknowledged txn returns the same id and stores nothing new.
    let (txn, id) = &acked[0];
    let i: usize = txn[1..2].parse().unwrap();
    let again = send_ok(&clients[i], &room, txn, txn).await;
    assert_eq!(&again, id);
    let bodies_after = bodies(&all_messages(&owner, &room, "f", 100).await);
    let unique: HashSet<&String> = bodies_after.iter().collect();
    assert_eq!(unique.len(), bodies_after.len(), "each txn stored once");
});

both_backends!(aliases_directory_and_profiles, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    let alias = format!("#extra:{}", server.server_name());
    let a = enc(&alias);
    ok(&alice.put(&format!("/_matrix/client/v3/directory/room/{a}"), &json!({ "room_id": room })).await);
    // Only members may alias a room (tests/confidentiality.rs has the rest).
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/directory/room/{a}"), &json!({ "room_id": room })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(ok(&alice.get(&format!("/_matrix/client/v3/rooms/{r}/aliases")).await)["aliases"], json!([alias]));
    // Canonical alias must point at the room.
    assert_error(
        &alice
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/state/m.room.canonical_alias"),
                &json!({ "alias": format!("#missing:{}", server.server_name()) }),
            )
            .await,
        400,
        "M_BAD_ALIAS",
    );
    ok(&alice
        .put(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.canonical_alias"), &json!({ "alias": alias }))
        .await);
    // Bob joins by alias; he (PL 0) may not delete Alice's alias or publish the room.
    ok(&bob.post(&format!("/_matrix/client/v3/join/{a}"), &json!({})).await);
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/directory/room/{a}"), &json!({ "room_id": room })).await,
        409,
        "M_UNKNOWN",
    );
    assert_error(&bob.delete(&format!("/_matrix/client/v3/directory/room/{a}"), &json!({})).await, 403, "M_FORBIDDEN");
    assert_error(
        &bob.put(&format!("/_matrix/client/v3/directory/list/room/{r}"), &json!({ "visibility": "public" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_eq!(ok(&server.get(&format!("/_matrix/client/v3/directory/list/room/{r}")).await)["visibility"], "private");
    ok(&alice.put(&format!("/_matrix/client/v3/directory/list/room/{r}"), &json!({ "visibility": "public" })).await);
    assert_eq!(ok(&server.get(&format!("/_matrix/client/v3/directory/list/room/{r}")).await)["visibility"], "public");
    assert_eq!(ok(&server.get("/_matrix/client/v3/publicRooms?limit=1").await)["chunk"].as_array().unwrap().len(), 1);
    ok(&alice.delete(&format!("/_matrix/client/v3/directory/room/{a}"), &json!({})).await);
    assert_error(&server.get(&format!("/_matrix/client/v3/directory/room/{a}")).await, 404, "M_NOT_FOUND");

    // Profiles propagate into member events.
    let u = enc(&bob.user_id);
    ok(&bob.put(&format!("/_matrix/client/v3/profile/{u}/displayname"), &json!({ "displayname": "Bobby" })).await);
    ok(&bob.put(&format!("/_matrix/client/v3/profile/{u}/avatar_url"), &json!({ "avatar_url": "mxc://x/y" })).await);
    assert_eq!(ok(&server.get(&format!("/_matrix/client/v3/profile/{u}/displayname")).await)["displayname"], "Bobby");
    let profile = server.get(&format!("/_matrix/client/v3/profile/{u}")).await;
    assert_eq!(ok(&profile)["avatar_url"], "mxc://x/y");
    let member = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.member/{u}")).await;
    assert_eq!(ok(&member)["displayname"], "Bobby");
    assert_eq!(member.1["avatar_url"], "mxc://x/y");
    assert_error(
        &alice.put(&format!("/_matrix/client/v3/profile/{u}/displayname"), &json!({ "displayname": "Hacked" })).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(
        &server.get(&format!("/_matrix/client/v3/profile/{}", enc(&format!("@nobody:{}", server.server_name())))).await,
        404,
        "M_NOT_FOUND",
    );
});

both_backends!(relations_threads_timestamps_upgrade, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Old" })).await;
    let r = enc(&room);
    let root = send_ok(&alice, &room, "root", "thread root").await;
    let mut replies = Vec::new();
    for i in 0..3 {
        let resp = alice
            .put(
                &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/reply{i}"),
                &json!({ "msgtype": "m.text", "body": format!("reply {i}"), "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
            )
            .await;
        replies.push(ok(&resp)["event_id"].as_str().unwrap().to_owned());
    }
    let react = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.reaction/react1"),
            &json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": root, "key": "👍" } }),
        )
        .await;
    let react = ok(&react)["event_id"].as_str().unwrap().to_owned();
    let edit = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/edit1"),
            &json!({ "msgtype": "m.text", "body": "* edited", "m.new_content": { "msgtype": "m.text", "body": "edited" }, "m.relates_to": { "rel_type": "m.replace", "event_id": root } }),
        )
        .await;
    let edit = ok(&edit)["event_id"].as_str().unwrap().to_owned();
    let all = alice.get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}", enc(&root))).await;
    assert_eq!(ok(&all)["chunk"].as_array().unwrap().len(), 5);
    let threads_only =
        alice.get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}/m.thread?limit=2", enc(&root))).await;
    let page1 = ok(&threads_only).clone();
    assert_eq!(ids(page1["chunk"].as_array().unwrap()), vec![replies[2].clone(), replies[1].clone()]);
    let next = page1["next_batch"].as_str().expect("next_batch");
    let page2 = alice
        .get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}/m.thread?limit=2&from={}", enc(&root), enc(next)))
        .await;
    assert_eq!(ids(ok(&page2)["chunk"].as_array().unwrap()), vec![replies[0].clone()]);
    let reactions =
        alice.get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}/m.annotation/m.reaction", enc(&root))).await;
    assert_eq!(ids(ok(&reactions)["chunk"].as_array().unwrap()), vec![react]);
    let edits = alice.get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}/m.replace", enc(&root))).await;
    assert_eq!(ids(ok(&edits)["chunk"].as_array().unwrap()), vec![edit]);
    let threads = alice.get(&format!("/_matrix/client/v1/rooms/{r}/threads")).await;
    let chunk = ok(&threads)["chunk"].as_array().unwrap().clone();
    assert_eq!(chunk.len(), 1);
    assert_eq!(chunk[0]["event_id"], root.as_str());
    assert_eq!(chunk[0]["unsigned"]["m.relations"]["m.thread"]["count"], 3);
    assert_eq!(chunk[0]["unsigned"]["m.relations"]["m.thread"]["latest_event"]["event_id"], replies[2].as_str());

    // timestamp_to_event
    let root_ev = alice.get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&root))).await;
    let ts = ok(&root_ev)["origin_server_ts"].as_i64().unwrap();
    let found = alice.get(&format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts={ts}&dir=f")).await;
    assert_eq!(ok(&found)["origin_server_ts"].as_i64().unwrap(), ts);
    let none = alice.get(&format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts={}&dir=f", ts + 3_600_000)).await;
    assert_error(&none, 404, "M_NOT_FOUND");

    // Upgrade to v11: tombstone, copied state, new room joined by the upgrader.
    let up = alice.post(&format!("/_matrix/client/v3/rooms/{r}/upgrade"), &json!({ "new_version": "11" })).await;
    let new_room = ok(&up)["replacement_room"].as_str().unwrap().to_owned();
    let tomb = alice.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.tombstone")).await;
    assert_eq!(ok(&tomb)["replacement_room"], new_room.as_str());
    let n = enc(&new_room);
    assert_eq!(ok(&alice.get(&format!("/_matrix/client/v3/rooms/{n}/state/m.room.name")).await)["name"], "Old");
    let create = alice.get(&format!("/_matrix/client/v3/rooms/{n}/state/m.room.create")).await;
    assert_eq!(ok(&create)["predecessor"]["room_id"], room.as_str());
    assert_eq!(create.1["room_version"], "11");
    let bob = server.register("bob").await;
    assert_error(
        &bob.post(&format!("/_matrix/client/v3/rooms/{n}/upgrade"), &json!({ "new_version": "12" })).await,
        403,
        "M_FORBIDDEN",
    );
});

both_backends!(space_hierarchy, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let space = create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Space", "creation_content": { "type": "m.space" } }),
    )
    .await;
    let public_child = create_room(&alice, json!({ "preset": "public_chat", "name": "Public child" })).await;
    let private_child = create_room(&alice, json!({ "preset": "private_chat", "name": "Private child" })).await;
    let grandchild = create_room(&alice, json!({ "preset": "public_chat", "name": "Grandchild" })).await;
    let server_name = server.server_name();
    for (parent, child, suggested) in
        [(&space, &public_child, true), (&space, &private_child, false), (&public_child, &grandchild, false)]
    {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(parent), enc(child));
        ok(&alice.put(&path, &json!({ "via": [server_name], "suggested": suggested })).await);
    }
    let h = |c: Client, q: &'static str| {
        let space = space.clone();
        async move { c.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy{q}", enc(&space))).await }
    };
    let all = h(alice.clone(), "").await;
    let names: Vec<&str> = ok(&all)["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["Space", "Public child", "Private child", "Grandchild"]);
    assert_eq!(all.1["rooms"][0]["room_type"], "m.space");
    assert_eq!(all.1["rooms"][0]["children_state"].as_array().unwrap().len(), 2);
    // Bob may not preview the invite-only child.
    let bobs = h(bob.clone(), "").await;
    let names: Vec<&str> = ok(&bobs)["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["Space", "Public child", "Grandchild"]);
    let shallow = h(alice.clone(), "?max_depth=1&suggested_only=true").await;
    let names: Vec<&str> =
        ok(&shallow)["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["Space", "Public child"]);
    let page = h(alice.clone(), "?limit=2").await;
    assert_eq!(ok(&page)["rooms"].as_array().unwrap().len(), 2);
    let next = page.1["next_batch"].as_str().unwrap().to_owned();
    let rest = alice.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy?limit=2&from={next}", enc(&space))).await;
    assert_eq!(ok(&rest)["rooms"].as_array().unwrap().len(), 2);
    assert!(rest.1.get("next_batch").is_none());
});

both_backends!(concurrent_writes_of_every_kind_succeed, |server| async move {
    // Registrations, logins, profile changes, room creation and sends all write; on SQLite they
    // share one writer, and none may fail with "database is locked" under concurrency.
    let owner = server.register("owner").await;
    let room = create_room(&owner, json!({ "preset": "public_chat" })).await;
    let server = std::sync::Arc::new(server);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let server = server.clone();
        let room = room.clone();
        let owner = owner.clone();
        tasks.push(tokio::spawn(async move {
            let c = server.register(&format!("w{i}")).await;
            ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
            let u = enc(&c.user_id);
            ok(&c
                .put(
                    &format!("/_matrix/client/v3/profile/{u}/displayname"),
                    &json!({ "displayname": format!("W {i}") }),
                )
                .await);
            for n in 0..5 {
                send_ok(&c, &room, &format!("w{i}-{n}"), "hi").await;
                send_ok(&owner, &room, &format!("o{i}-{n}"), "hello").await;
            }
            create_room(&c, json!({ "name": format!("room {i}") })).await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let msgs = all_messages(&owner, &room, "f", 100).await;
    assert_eq!(bodies(&msgs).len(), 24 * 10);
});

/// Runs a `/search` of room events; returns the `room_events` object.
async fn search(c: &Client, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(t) => format!("/_matrix/client/v3/search?next_batch={}", enc(t)),
        None => "/_matrix/client/v3/search".to_owned(),
    };
    let resp = c.post(&path, &json!({ "search_categories": { "room_events": criteria } })).await;
    ok(&resp)["search_categories"]["room_events"].clone()
}

fn found_bodies(room_events: &Value) -> Vec<String> {
    room_events["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"]["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

both_backends!(search_finds_words_in_joined_rooms_only, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Lunch club" })).await;
    let other = create_room(&bob, json!({})).await;
    send_ok(&alice, &room, "1", "Lunch at noon?").await;
    send_ok(&alice, &room, "2", "dinner later").await;
    send_ok(&alice, &room, "3", "LUNCHBOX forgotten").await;
    let redacted = send_ok(&alice, &room, "4", "lunch secret").await;
    ok(&alice.put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&redacted)), &json!({})).await);
    send_ok(&bob, &other, "1", "lunch in bob's private room").await;

    // Word prefixes, case-insensitive, newest first; redacted events and rooms Alice is not in
    // are not searched.
    let body = json!(["content.body"]);
    let found = search(&alice, json!({ "search_term": "lunch", "order_by": "recent", "keys": body }), None).await;
    assert_eq!(found_bodies(&found), vec!["LUNCHBOX forgotten", "Lunch at noon?"]);
    assert!(found["highlights"].as_array().unwrap().contains(&json!("lunch")));
    assert!(found["count"].as_i64().unwrap() >= 2);
    assert!(found.get("next_batch").is_none());
    assert_eq!(found["results"][0]["result"]["room_id"], room);
    assert!(found_bodies(&search(&alice, json!({ "search_term": "unch" }), None).await).is_empty());
    assert_eq!(
        found_bodies(&search(&alice, json!({ "search_term": "lunch noon" }), None).await),
        vec!["Lunch at noon?"]
    );
    // By rank, the message that is mostly the word comes first.
    let ranked = search(&alice, json!({ "search_term": "lunch", "keys": body }), None).await;
    assert_eq!(found_bodies(&ranked), vec!["LUNCHBOX forgotten", "Lunch at noon?"]);
    assert!(ranked["results"][0]["rank"].as_f64().unwrap() > ranked["results"][1]["rank"].as_f64().unwrap());

    // Room names and topics are searched too by default, and only them when asked.
    let all = search(&alice, json!({ "search_term": "lunch", "order_by": "recent" }), None).await;
    assert_eq!(all["results"].as_array().unwrap().len(), 3);
    assert_eq!(all["results"][2]["result"]["type"], "m.room.name");
    let names = search(&alice, json!({ "search_term": "club", "keys": ["content.name"] }), None).await;
    assert_eq!(names["results"][0]["result"]["type"], "m.room.name");
    assert!(
        found_bodies(&search(&alice, json!({ "search_term": "lunch", "keys": ["content.name"] }), None).await).len()
            == 1
    );
    assert_error(
        &alice
            .post(
                "/_matrix/client/v3/search",
                &json!({ "search_categories": { "room_events": { "search_term": "x", "keys": ["content.nope"] } } }),
            )
            .await,
        400,
        "M_INVALID_PARAM",
    );

    // Paging with a filter limit of 1: each page one result, then none left.
    let first = search(
        &alice,
        json!({ "search_term": "lunch", "order_by": "recent", "keys": body, "filter": { "limit": 1 } }),
        None,
    )
    .await;
    assert_eq!(found_bodies(&first), vec!["LUNCHBOX forgotten"]);
    let token = first["next_batch"].as_str().expect("next_batch").to_owned();
    let second = search(
        &alice,
        json!({ "search_term": "lunch", "order_by": "recent", "keys": body, "filter": { "limit": 1 } }),
        Some(&token),
    )
    .await;
    assert_eq!(found_bodies(&second), vec!["Lunch at noon?"]);
    let resp = alice
        .post(
            "/_matrix/client/v3/search?next_batch=bogus",
            &json!({ "search_categories": { "room_events": { "search_term": "x" } } }),
        )
        .await;
    assert_error(&resp, 400, "M_INVALID_PARAM");

    // Context with profiles, and the rooms' state.
    let with_context = search(
        &alice,
        json!({ "search_term": "noon", "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true }, "include_state": true }),
        None,
    )
    .await;
    let context = &with_context["results"][0]["context"];
    assert_eq!(context["events_after"][0]["content"]["body"], "dinner later");
    assert_eq!(context["events_before"].as_array().unwrap().len(), 1);
    assert!(context["start"].is_string() && context["end"].is_string());
    assert!(context["profile_info"].get(&alice.user_id).is_some(), "{context}");
    assert!(with_context["state"][&room].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));

    // Bob finds only his own room's message; no category, no results.
    assert_eq!(
        found_bodies(&search(&bob, json!({ "search_term": "lunch" }), None).await),
        vec!["lunch in bob's private room"]
    );
    assert_eq!(
        ok(&bob.post("/_matrix/client/v3/search", &json!({ "search_categories": {} })).await),
        &json!({ "search_categories": {} })
    );
});

both_backends!(room_summary_for_members_and_open_rooms, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let public = create_room(
        &alice,
        json!({ "preset": "public_chat", "name": "Open", "topic": "all welcome", "room_alias_name": "open" }),
    )
    .await;
    let path = |id: &str| format!("/_matrix/client/v1/room_summary/{}", enc(id));
    // Anyone, even without an access token, by id or alias.
    let summary = ok(&bob.get(&path(&public)).await).clone();
    assert_eq!(summary["room_id"], public.as_str());
    assert_eq!(summary["name"], "Open");
    assert_eq!(summary["topic"], "all welcome");
    assert_eq!(summary["join_rule"], "public");
    assert_eq!(summary["num_joined_members"], 1);
    assert!(summary["room_version"].is_string());
    assert!(summary.get("membership").is_none(), "bob has no membership: {summary}");
    let alias = format!("#open:{}", server.server_name());
    assert_eq!(ok(&server.get(&path(&alias)).await)["room_id"], public.as_str());

    // A private, encrypted room: its members see it, with their membership; others do not.
    let private = create_room(
        &alice,
        json!({ "preset": "private_chat", "initial_state": [
            { "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }
        ] }),
    )
    .await;
    let mine = ok(&alice.get(&path(&private)).await).clone();
    assert_eq!(mine["membership"], "join");
    assert_eq!(mine["encryption"], "m.megolm.v1.aes-sha2");
    assert_eq!(mine["join_rule"], "invite");
    assert_error(&bob.get(&path(&private)).await, 404, "M_NOT_FOUND");
    assert_error(&server.get(&path(&private)).await, 404, "M_NOT_FOUND");
    // Invited, Bob may look.
    ok(&alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)), &json!({ "user_id": bob.user_id }))
        .await);
    assert_eq!(ok(&bob.get(&path(&private)).await)["membership"], "invite");
    // Unknown rooms and aliases.
    assert_error(&bob.get(&path("!unknown:nowhere.example")).await, 404, "M_NOT_FOUND");
    assert_error(&bob.get(&path(&format!("#nope:{}", server.server_name()))).await, 404, "M_NOT_FOUND");
});

both_backends!(redaction_sent_through_send_in_every_room_version, |server| async move {
    // Spec v1.18 (MSC4169): `PUT /send/m.room.redaction` with `content.redacts`, also in rooms
    // whose redactions name their target at the top level (versions before 11).
    let alice = server.register("alice").await;
    for version in ["10", "11"] {
        let room = create_room(&alice, json!({ "room_version": version })).await;
        let target = send_ok(&alice, &room, &format!("m{version}"), "secret").await;
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/r{version}", enc(&room));
        let (status, body) = alice.put(&path, &json!({ "redacts": target, "reason": "oops" })).await;
        assert_eq!(status, 200, "{body}");
        let (status, ev) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&target))).await;
        assert_eq!(status, 200, "{ev}");
        assert_eq!(ev["content"], json!({}), "room version {version}: {ev}");
        // Other servers of a version 10 room find the target at the top level only.
        let redaction = body["event_id"].as_str().unwrap();
        let (_, red) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(redaction))).await;
        if version == "10" {
            assert_eq!(red["redacts"], target.as_str(), "{red}");
        }
        assert_eq!(red["content"]["redacts"], target.as_str(), "{red}");
        let bad = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/bad{version}", enc(&room));
        let (status, body) = alice.put(&bad, &json!({ "redacts": 42 })).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
    }
});

/// The room's state groups: `(snapshots, largest chain length)`, read from the database.
async fn state_group_shape(server: &common::TestServer, room: &str) -> (i64, i64) {
    let mut conn = server.database().await;
    sqlx::query_as(
        "SELECT SUM(CASE WHEN prev_group IS NULL THEN 1 ELSE 0 END), MAX(chain_length) \
         FROM state_groups WHERE room_id = $1",
    )
    .bind(room)
    .fetch_one(&mut conn)
    .await
    .expect("reading the room's state groups")
}

/// The state after `event` as `/context` gives it: `(type, state_key) -> content`.
async fn state_at(c: &Client, room: &str, event: &str) -> std::collections::HashMap<(String, String), Value> {
    let resp = c.get(&format!("/_matrix/client/v3/rooms/{}/context/{}?limit=0", enc(room), enc(event))).await;
    ok(&resp)["state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key = (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned());
            (key, e["content"].clone())
        })
        .collect()
}

// A state group is a delta on the one before it until its chain holds as many entries as the
// room's state; then it is a snapshot. Many changes in a room with a large state must write few
// snapshots, and the state at any event must still read back whole, also from a cold cache.
both_backends!(long_delta_chains_read_back_whole, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let put = |kind: &str, key: &str| format!("/_matrix/client/v3/rooms/{}/state/{kind}/{key}", enc(&room));
    // 70 state entries beside the room's own, so the chain may grow to about 77.
    let mut early = String::new();
    for i in 0..70 {
        ok(&alice.put(&put("org.example.marker", &format!("k{i}")), &json!({ "n": i })).await);
        if i == 10 {
            early = send_ok(&alice, &room, "early", "after eleven markers").await;
        }
    }
    let mut middle = String::new();
    for i in 0..150 {
        ok(&alice.put(&put("m.room.topic", ""), &json!({ "topic": format!("topic {i}") })).await);
        if i == 40 {
            middle = send_ok(&alice, &room, "middle", "after topic 40").await;
        }
    }
    let (snapshots, longest) = state_group_shape(&server, &room).await;
    // A fixed chain of 50 wrote a snapshot every 50 of the 226 state events (5 snapshots).
    assert!(snapshots <= 3, "{snapshots} snapshots for 226 state events");
    assert!(longest > 50 && longest <= 80, "longest chain {longest}");

    let mut server = server;
    server.restart().await;
    let at_early = state_at(&alice, &room, &early).await;
    let markers = |s: &std::collections::HashMap<(String, String), Value>| {
        s.iter().filter(|((t, _), _)| t == "org.example.marker").count()
    };
    assert_eq!(markers(&at_early), 11);
    assert_eq!(at_early[&("org.example.marker".to_owned(), "k10".to_owned())]["n"], 10);
    assert!(!at_early.contains_key(&("m.room.topic".to_owned(), String::new())));
    let at_middle = state_at(&alice, &room, &middle).await;
    assert_eq!(markers(&at_middle), 70);
    assert_eq!(at_middle[&("m.room.topic".to_owned(), String::new())]["topic"], "topic 40");
    assert_eq!(at_middle[&("m.room.member".to_owned(), alice.user_id.clone())]["membership"], "join");
    let now = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room))).await;
    let now = ok(&now).as_array().unwrap().clone();
    assert_eq!(now.iter().filter(|e| e["type"] == "org.example.marker").count(), 70);
    let topic = now.iter().find(|e| e["type"] == "m.room.topic").unwrap();
    assert_eq!(topic["content"]["topic"], "topic 149");
});

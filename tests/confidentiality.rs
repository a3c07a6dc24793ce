//! Confidentiality of room reads over real HTTP on both backends: what a user who may not see
//! part of a room's history (joined after it, left, was banned, forgot the room, or was never
//! in it) can learn through `/search` counts, `/threads`, lazy-loaded members, `/members?at=`,
//! the history endpoints of a forgotten room, and room aliases (issue 17, items 6-9).

#[macro_use]
mod common;

use common::{Client, assert_error, create_room, enc, join, ok};
use serde_json::{Value, json};

async fn send(c: &Client, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    ok(&c.put(&path, &content).await)["event_id"].as_str().unwrap().to_owned()
}

async fn say(c: &Client, room: &str, txn: &str, body: &str) -> String {
    send(c, room, txn, json!({ "msgtype": "m.text", "body": body })).await
}

async fn reply_in_thread(c: &Client, room: &str, txn: &str, root: &str, body: &str) -> String {
    let rel = json!({ "rel_type": "m.thread", "event_id": root });
    send(c, room, txn, json!({ "msgtype": "m.text", "body": body, "m.relates_to": rel })).await
}

async fn leave(c: &Client, room: &str) {
    ok(&c.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room)), &json!({})).await);
}

async fn set_visibility(c: &Client, room: &str, visibility: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility", enc(room));
    ok(&c.put(&path, &json!({ "history_visibility": visibility })).await);
}

/// `/search` of message bodies for `term`: (count, bodies found).
async fn search(c: &Client, term: &str) -> (i64, Vec<String>) {
    let criteria = json!({ "search_term": term, "keys": ["content.body"], "order_by": "recent" });
    let resp = c.post("/_matrix/client/v3/search", &json!({ "search_categories": { "room_events": criteria } })).await;
    let found = &ok(&resp)["search_categories"]["room_events"];
    let bodies = found["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"]["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect();
    (found["count"].as_i64().expect("count"), bodies)
}

both_backends!(search_count_reveals_nothing_of_invisible_messages, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    set_visibility(&alice, &room, "joined").await;
    // Sent before Bob joined a `joined`-visibility room: never his to see.
    say(&alice, &room, "t1", "the vault code is zebra42").await;
    join(&bob, &room).await;
    say(&alice, &room, "t2", "welcome bob").await;
    // Sent while Bob was away.
    leave(&bob, &room).await;
    say(&alice, &room, "t3", "launch codes orchid").await;
    join(&bob, &room).await;

    // Growing a prefix one letter at a time must tell nothing: every probe of an invisible
    // word counts exactly as a word nobody wrote.
    for probe in ["z", "ze", "zeb", "zebra", "zebra42", "vault", "code", "l", "la", "launch", "orc", "orchid"] {
        let (count, bodies) = search(&bob, probe).await;
        assert_eq!((count, bodies.len()), (0, 0), "probe {probe:?} revealed something: {bodies:?}");
    }
    assert_eq!(search(&bob, "qqqq").await, (0, vec![]));
    // What Bob may see is found and counted.
    assert_eq!(search(&bob, "welc").await, (1, vec!["welcome bob".to_owned()]));
    say(&alice, &room, "t4", "orchid again").await;
    assert_eq!(search(&bob, "orchid").await, (1, vec!["orchid again".to_owned()]));
    // Alice, there all along, finds all of it.
    assert_eq!(search(&alice, "orchid").await.0, 2);
    assert_eq!(search(&alice, "zebra").await.0, 1);
});

/// `/messages` of `room` for `c`, newest first, lazy-loading members: (chunk, state).
async fn messages_lazy(c: &Client, room: &str) -> (Vec<Value>, Vec<Value>) {
    let filter = enc(&json!({ "lazy_load_members": true }).to_string());
    let resp = c.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50&filter={filter}", enc(room))).await;
    let body = ok(&resp);
    (body["chunk"].as_array().unwrap().clone(), body["state"].as_array().unwrap().clone())
}

fn display_name_of(state: &[Value], user: &str) -> Option<String> {
    state
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == user)
        .map(|e| e["content"]["displayname"].as_str().unwrap_or_default().to_owned())
}

both_backends!(banned_user_sees_nothing_after_the_ban, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    join(&bob, &room).await;
    join(&carol, &room).await;
    let carol_msg = say(&carol, &room, "c1", "hi from carol").await;
    let root = say(&alice, &room, "a1", "thread root").await;
    let before_ban = reply_in_thread(&alice, &room, "a2", &root, "reply before the ban").await;
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/ban"), &json!({ "user_id": bob.user_id })).await);

    // After the ban: a reply to the old thread, a new thread, and Carol renames herself.
    let after_ban = reply_in_thread(&alice, &room, "a3", &root, "secret reply after the ban").await;
    reply_in_thread(&alice, &room, "a4", &root, "another secret reply").await;
    let new_root = say(&alice, &room, "a5", "secret new thread").await;
    reply_in_thread(&alice, &room, "a6", &new_root, "secret reply in the new thread").await;
    let carol_u = enc(&carol.user_id);
    ok(&carol
        .put(&format!("/_matrix/client/v3/profile/{carol_u}/displayname"), &json!({ "displayname": "Secret Name" }))
        .await);

    // /threads: the old thread as it was at the ban, not the new one.
    let threads = ok(&bob.get(&format!("/_matrix/client/v1/rooms/{r}/threads")).await).clone();
    let chunk = threads["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 1, "{threads}");
    assert_eq!(chunk[0]["event_id"], root.as_str());
    let summary = &chunk[0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["latest_event"]["event_id"], before_ban.as_str(), "{summary}");
    assert_eq!(summary["count"], 1, "{summary}");
    // Alice sees both threads, the new one first, with every reply.
    let threads = ok(&alice.get(&format!("/_matrix/client/v1/rooms/{r}/threads")).await).clone();
    let chunk = threads["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2, "{threads}");
    assert_eq!(chunk[0]["event_id"], new_root.as_str());
    assert_eq!(chunk[1]["unsigned"]["m.relations"]["m.thread"]["count"], 3);
    // Paging Alice's threads one at a time gives the same two.
    let first = ok(&alice.get(&format!("/_matrix/client/v1/rooms/{r}/threads?limit=1")).await).clone();
    assert_eq!(first["chunk"][0]["event_id"], new_root.as_str());
    let next = enc(first["next_batch"].as_str().expect("next_batch"));
    let second = ok(&alice.get(&format!("/_matrix/client/v1/rooms/{r}/threads?limit=1&from={next}")).await).clone();
    assert_eq!(second["chunk"][0]["event_id"], root.as_str());

    // /relations, /event and /context stop at the ban too.
    let rel = ok(&bob.get(&format!("/_matrix/client/v1/rooms/{r}/relations/{}", enc(&root))).await).clone();
    let rel_ids: Vec<&str> = rel["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    assert_eq!(rel_ids, vec![before_ban.as_str()]);
    assert_error(
        &bob.get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&after_ban))).await,
        404,
        "M_NOT_FOUND",
    );

    // Lazy-loaded members are those of the returned events, not today's: Carol's name as she
    // wrote, never the name she chose after Bob's ban.
    let (chunk, state) = messages_lazy(&bob, &room).await;
    assert!(chunk.iter().all(|e| e["content"]["body"] != "secret reply after the ban"));
    assert_eq!(display_name_of(&state, &carol.user_id).as_deref(), Some("carol"), "{state:?}");
    let filter = enc(&json!({ "lazy_load_members": true }).to_string());
    let ctx =
        bob.get(&format!("/_matrix/client/v3/rooms/{r}/context/{}?limit=10&filter={filter}", enc(&carol_msg))).await;
    let ctx = ok(&ctx);
    let state = ctx["state"].as_array().unwrap();
    assert_eq!(display_name_of(state, &carol.user_id).as_deref(), Some("carol"), "{state:?}");
    assert!(ctx["events_after"].as_array().unwrap().iter().all(|e| e["event_id"] != after_ban.as_str()));
    // Alice, still joined, gets the name as of the newest events she reads.
    let (_, state) = messages_lazy(&alice, &room).await;
    assert_eq!(display_name_of(&state, &carol.user_id).as_deref(), Some("Secret Name"), "{state:?}");

    // /members?at= a position after the ban is not Bob's to see; without `at` he gets the
    // members as of his ban.
    let sync = ok(&alice.get("/_matrix/client/v3/sync").await).clone();
    let now = enc(sync["next_batch"].as_str().unwrap());
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/members?at={now}")).await, 403, "M_FORBIDDEN");
    let members = ok(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/members")).await).clone();
    let carol_member = members["chunk"].as_array().unwrap().iter().find(|e| e["state_key"] == carol.user_id.as_str());
    assert_eq!(carol_member.unwrap()["content"]["displayname"], "carol");
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/joined_members")).await, 403, "M_FORBIDDEN");
});

both_backends!(members_at_a_token_before_a_joined_visibility_join_are_hidden, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    set_visibility(&alice, &room, "joined").await;
    join(&carol, &room).await;
    let early = ok(&alice.get("/_matrix/client/v3/sync").await)["next_batch"].as_str().unwrap().to_owned();
    leave(&carol, &room).await;
    join(&bob, &room).await;
    let late = ok(&bob.get("/_matrix/client/v3/sync").await)["next_batch"].as_str().unwrap().to_owned();
    // Before Bob's join: not his to see.
    assert_error(
        &bob.get(&format!("/_matrix/client/v3/rooms/{r}/members?at={}", enc(&early))).await,
        403,
        "M_FORBIDDEN",
    );
    // Alice was there: she sees Carol joined at that point.
    let then = ok(&alice.get(&format!("/_matrix/client/v3/rooms/{r}/members?at={}", enc(&early))).await).clone();
    let carol_then = then["chunk"].as_array().unwrap().iter().find(|e| e["state_key"] == carol.user_id.as_str());
    assert_eq!(carol_then.unwrap()["content"]["membership"], "join");
    // After his join Bob reads the members as of his token.
    let now = ok(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/members?at={}", enc(&late))).await).clone();
    assert!(now["chunk"].as_array().unwrap().iter().any(|e| e["state_key"] == bob.user_id.as_str()));
});

both_backends!(forgotten_rooms_are_unreadable_until_rejoined, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    join(&bob, &room).await;
    let root = say(&alice, &room, "a1", "hello").await;
    reply_in_thread(&bob, &room, "b1", &root, "a reply").await;
    let e = enc(&root);
    let reads = [
        format!("/_matrix/client/v3/rooms/{r}/messages?dir=b"),
        format!("/_matrix/client/v3/rooms/{r}/event/{e}"),
        format!("/_matrix/client/v3/rooms/{r}/context/{e}"),
        format!("/_matrix/client/v1/rooms/{r}/relations/{e}"),
        format!("/_matrix/client/v1/rooms/{r}/threads"),
        format!("/_matrix/client/v3/rooms/{r}/members"),
        format!("/_matrix/client/v1/rooms/{r}/timestamp_to_event?ts=0&dir=f"),
    ];
    leave(&bob, &room).await;
    // Departed, not forgotten: history up to the leave is readable.
    for path in &reads {
        ok(&bob.get(path).await);
    }
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), &json!({})).await);
    for path in &reads {
        assert_error(&bob.get(path).await, 403, "M_FORBIDDEN");
    }
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/state")).await, 403, "M_FORBIDDEN");
    assert_error(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/state/m.room.create")).await, 403, "M_FORBIDDEN");
    // Gone from /sync, even when asking for left rooms, and from search.
    let filter = enc(&json!({ "room": { "include_leave": true } }).to_string());
    let sync = ok(&bob.get(&format!("/_matrix/client/v3/sync?filter={filter}")).await).clone();
    assert!(sync["rooms"]["leave"].get(&room).is_none(), "{sync}");
    assert!(sync["rooms"]["join"].get(&room).is_none(), "{sync}");
    assert_eq!(search(&bob, "hello").await, (0, vec![]));

    // Rejoining clears the flag; leaving again without forgetting keeps history readable.
    join(&bob, &room).await;
    for path in &reads {
        ok(&bob.get(path).await);
    }
    assert_eq!(search(&bob, "hello").await, (1, vec!["hello".to_owned()]));
    leave(&bob, &room).await;
    for path in &reads {
        ok(&bob.get(path).await);
    }
});

both_backends!(world_readable_rooms_stay_readable_after_forget, |server| async move {
    // Forgetting makes a user a stranger to the room, no less: a world-readable room is
    // readable by anyone (as in Synapse).
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let r = enc(&room);
    set_visibility(&alice, &room, "world_readable").await;
    join(&bob, &room).await;
    let ev = say(&alice, &room, "a1", "for all to read").await;
    leave(&bob, &room).await;
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/forget"), &json!({})).await);
    ok(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/event/{}", enc(&ev))).await);
    ok(&bob.get(&format!("/_matrix/client/v3/rooms/{r}/messages?dir=b")).await);
});

both_backends!(only_members_and_admins_create_aliases, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let config = server.config_path().to_str().unwrap().to_owned();
    let (done, _, stderr) =
        server.cli(&["register-user", "--config", &config, "root", "--password", "rootpw", "--admin"]);
    assert!(done, "{stderr}");
    let admin = server.login("root", "rootpw").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let alias = |name: &str| enc(&format!("#{name}:{}", server.server_name()));

    // A stranger may neither name the room nor learn whether a room id exists.
    let put = |c: &Client, name: &str, room: &str| {
        let (c, path, room) =
            (c.clone(), format!("/_matrix/client/v3/directory/room/{}", alias(name)), room.to_owned());
        async move { c.put(&path, &json!({ "room_id": room })).await }
    };
    assert_error(&put(&bob, "squat", &room).await, 403, "M_FORBIDDEN");
    let unknown = format!("!nosuchroom:{}", server.server_name());
    assert_error(&put(&bob, "probe", &unknown).await, 403, "M_FORBIDDEN");
    assert_error(
        &server.get(&format!("/_matrix/client/v3/directory/room/{}", alias("squat"))).await,
        404,
        "M_NOT_FOUND",
    );
    // An invited user is not joined yet.
    let r = enc(&room);
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{r}/invite"), &json!({ "user_id": bob.user_id })).await);
    assert_error(&put(&bob, "squat", &room).await, 403, "M_FORBIDDEN");
    // Members may; so may a server admin, who alone is told of unknown rooms.
    ok(&put(&alice, "mine", &room).await);
    join(&bob, &room).await;
    ok(&put(&bob, "bobs", &room).await);
    ok(&put(&admin, "admins", &room).await);
    assert_error(&put(&admin, "nowhere", &unknown).await, 404, "M_NOT_FOUND");
    let got = ok(&server.get(&format!("/_matrix/client/v3/directory/room/{}", alias("admins"))).await).clone();
    assert_eq!(got["room_id"], room.as_str());
});

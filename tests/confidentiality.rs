//! Confidentiality of room reads over real HTTP on both backends: what a user who may not see
//! part of a room's history (joined after it, left, was banned, forgot the room, or was never
//! in it) can learn through `/search` counts, `/threads`, lazy-loaded members, `/members?at=`,
//! the history endpoints of a forgotten room, and room aliases (issue 17, items 6-9).

#[macro_use]
mod common;

use common::{Client, Resp};
use serde_json::{Value, json};

#[track_caller]
fn ok(resp: &Resp) -> &Value {
    assert_eq!(resp.0, 200, "expected 200, got {resp:?}");
    &resp.1
}

#[track_caller]
fn assert_error(resp: &Resp, status: u16, errcode: &str) {
    assert_eq!(resp.0, status, "expected {status} {errcode}, got {resp:?}");
    assert_eq!(resp.1["errcode"], errcode, "expected {errcode}, got {resp:?}");
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

async fn create_room(c: &Client, body: Value) -> String {
    ok(&c.post("/_matrix/client/v3/createRoom", &body).await)["room_id"].as_str().expect("room_id").to_owned()
}

async fn send(c: &Client, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    ok(&c.put(&path, &content).await)["event_id"].as_str().unwrap().to_owned()
}

async fn say(c: &Client, room: &str, txn: &str, body: &str) -> String {
    send(c, room, txn, json!({ "msgtype": "m.text", "body": body })).await
}

async fn join(c: &Client, room: &str) {
    ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), &json!({})).await);
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

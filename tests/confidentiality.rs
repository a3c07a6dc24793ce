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

async fn join(c: &Client, room: &str) {
    ok(&c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), &json!({})).await);
}

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

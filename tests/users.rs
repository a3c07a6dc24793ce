//! Finding and reporting users: the user directory, mutual rooms, reports of rooms, events and
//! users, profile field deletion and the (empty) third-party identifier list.

#[macro_use]
mod common;

use common::{Client, assert_error, create_room, enc, join, ok};
use serde_json::json;

async fn set_name(c: &Client, name: &str) {
    let path = format!("/_matrix/client/v3/profile/{}/displayname", enc(&c.user_id));
    ok(&c.put(&path, &json!({ "displayname": name })).await);
}

/// The user ids a search finds, in order, and `limited`.
async fn search(c: &Client, term: &str, limit: Option<u64>) -> (Vec<String>, bool) {
    let mut body = json!({ "search_term": term });
    if let Some(l) = limit {
        body["limit"] = json!(l);
    }
    let answer = ok(&c.post("/_matrix/client/v3/user_directory/search", &body).await).clone();
    let ids = answer["results"].as_array().expect("results").iter().map(|r| r["user_id"].as_str().unwrap().to_owned());
    (ids.collect(), answer["limited"].as_bool().expect("limited"))
}

both_backends!(user_directory_finds_room_mates_and_public_room_members, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;
    let eve = server.register("eve").await;
    set_name(&bob, "Bobby Tables").await;
    set_name(&carol, "Carol Smith").await;
    set_name(&dave, "Dave Smithers").await;

    // Bob shares a private room with Alice; Carol is in a public room; Dave in a private room
    // of his own; Eve in no room.
    let private = create_room(&alice, json!({ "preset": "private_chat", "invite": [bob.user_id] })).await;
    join(&bob, &private).await;
    create_room(&carol, json!({ "preset": "public_chat" })).await;
    create_room(&dave, json!({ "preset": "private_chat" })).await;

    assert_eq!(search(&alice, "bob", None).await, (vec![bob.user_id.clone()], false));
    // A prefix of a word of the display name, case-insensitive, and several words.
    assert_eq!(search(&alice, "TAB", None).await.0, vec![bob.user_id.clone()]);
    assert_eq!(search(&alice, "bobby tab", None).await.0, vec![bob.user_id.clone()]);
    assert!(search(&alice, "obby", None).await.0.is_empty(), "not a prefix of a word");
    // Carol is found through her public room; Dave and Eve are not visible to Alice.
    assert_eq!(search(&alice, "smi", None).await.0, vec![carol.user_id.clone()]);
    assert!(search(&alice, "dave", None).await.0.is_empty());
    assert!(search(&alice, "eve", None).await.0.is_empty());
    // The searcher is not in their own results; the server name is a word of every user id.
    let everyone = search(&alice, server.server_name().split(':').next().unwrap(), None).await.0;
    assert_eq!(everyone.len(), 2, "{everyone:?}");
    assert!(everyone.contains(&bob.user_id) && everyone.contains(&carol.user_id));
    // Exact words rank before prefixes, and `limit` with `limited`.
    assert_eq!(search(&alice, "carol", Some(1)).await, (vec![carol.user_id.clone()], false));
    let (first, limited) = search(&alice, server.server_name().split(':').next().unwrap(), Some(1)).await;
    assert_eq!(first.len(), 1);
    assert!(limited);

    // The result carries the display name.
    let answer =
        ok(&alice.post("/_matrix/client/v3/user_directory/search", &json!({ "search_term": "bobby" })).await).clone();
    assert_eq!(answer["results"][0]["display_name"], "Bobby Tables");

    // Once Dave joins Carol's public room, anyone can find him.
    let carols =
        ok(&carol.get("/_matrix/client/v3/joined_rooms").await)["joined_rooms"][0].as_str().unwrap().to_owned();
    join(&dave, &carols).await;
    assert_eq!(search(&eve, "smith", None).await.0.len(), 2);

    // Malformed requests.
    assert_error(&alice.post("/_matrix/client/v3/user_directory/search", &json!({})).await, 400, "M_BAD_JSON");
    let resp = server.post("/_matrix/client/v3/user_directory/search", &json!({ "search_term": "bob" })).await;
    assert_error(&resp, 401, "M_MISSING_TOKEN");
});

both_backends!(mutual_rooms_are_paged_and_counted, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let mut shared = Vec::new();
    for _ in 0..3 {
        let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
        join(&bob, &room).await;
        shared.push(room);
    }
    create_room(&alice, json!({})).await;
    shared.sort();
    let path = |user: &str| format!("/_matrix/client/v1/mutual_rooms?user_id={}", enc(user));
    let answer = ok(&alice.get(&path(&bob.user_id)).await).clone();
    assert_eq!(answer["count"], 3);
    assert_eq!(answer["joined"], json!(shared));
    assert!(answer.get("next_batch").is_none());
    // Bob leaves one: it is no longer shared.
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&shared[0])), &json!({})).await);
    let answer = ok(&bob.get(&path(&alice.user_id)).await).clone();
    assert_eq!(answer["joined"], json!(shared[1..]));
    // Nobody shared, an unknown user, oneself, a bad token.
    assert_eq!(ok(&alice.get(&path(&carol.user_id)).await)["count"], 0);
    assert_eq!(ok(&alice.get(&path("@nobody:nowhere.example")).await)["joined"], json!([]));
    assert_error(&alice.get(&path(&alice.user_id)).await, 400, "M_INVALID_PARAM");
    let resp = alice.get(&format!("{}&from=garbage", path(&bob.user_id))).await;
    assert_error(&resp, 400, "M_INVALID_PARAM");
});

both_backends!(reports_of_events_rooms_and_users, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let r = enc(&room);
    let sent = ok(&alice
        .put(
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/t1"),
            &json!({ "msgtype": "m.text", "body": "spam" }),
        )
        .await)
    .clone();
    let event = enc(sent["event_id"].as_str().unwrap());

    // An event: by a member, with or without a reason.
    let report = format!("/_matrix/client/v3/rooms/{r}/report/{event}");
    assert_eq!(ok(&alice.post(&report, &json!({ "reason": "spam" })).await), &json!({}));
    ok(&alice.post(&report, &json!({})).await);
    // Not a member, an unknown event, a reason too long.
    assert_error(&bob.post(&report, &json!({ "reason": "x" })).await, 404, "M_NOT_FOUND");
    let missing = format!("/_matrix/client/v3/rooms/{r}/report/{}", enc("$nope"));
    assert_error(&alice.post(&missing, &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&alice.post(&report, &json!({ "reason": "x".repeat(20_000) })).await, 400, "M_INVALID_PARAM");

    // A room, by anyone; an unknown room is 404. A missing reason is taken as empty (Matrix 1.13
    // had it optional; ruma accepts both).
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/report"), &json!({ "reason": "" })).await);
    let unknown = format!("/_matrix/client/v3/rooms/{}/report", enc("!unknown:nowhere.example"));
    assert_error(&bob.post(&unknown, &json!({ "reason": "x" })).await, 404, "M_NOT_FOUND");
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{r}/report"), &json!({})).await);

    // A user, local and known; an unknown one is 404.
    ok(&bob
        .post(&format!("/_matrix/client/v3/users/{}/report", enc(&alice.user_id)), &json!({ "reason": "rude" }))
        .await);
    let nobody = format!("/_matrix/client/v3/users/{}/report", enc("@nobody:nowhere.example"));
    assert_error(&bob.post(&nobody, &json!({ "reason": "x" })).await, 404, "M_NOT_FOUND");
});

both_backends!(profile_field_deletion_and_threepids, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    set_name(&alice, "Alice").await;
    let field = format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id));
    assert_eq!(ok(&bob.get(&field).await)["displayname"], "Alice");
    assert_error(&bob.delete(&field, &json!({})).await, 403, "M_FORBIDDEN");
    ok(&alice.delete(&field, &json!({})).await);
    assert_error(&bob.get(&field).await, 404, "M_NOT_FOUND");

    assert_eq!(ok(&alice.get("/_matrix/client/v3/account/3pid").await), &json!({ "threepids": [] }));
    assert_error(&server.get("/_matrix/client/v3/account/3pid").await, 401, "M_MISSING_TOKEN");
});

both_backends!(
    openid_tokens_prove_identity_until_they_expire,
    with | c | common::set_config(c, "federation.enabled", true),
    |server| async move {
        let mut server = server;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let path = |user: &str| format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user));
        let token = ok(&alice.post(&path(&alice.user_id), &json!({})).await).clone();
        assert_eq!(token["token_type"], "Bearer");
        assert_eq!(token["matrix_server_name"], server.server_name());
        assert_eq!(token["expires_in"], 3600);
        let secret = token["access_token"].as_str().expect("access_token").to_owned();
        assert_error(&alice.post(&path(&bob.user_id), &json!({})).await, 403, "M_FORBIDDEN");

        // A third party asks who the token belongs to, with no other credential; tokens are
        // durable across a restart.
        let userinfo = |t: &str| format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(t));
        assert_eq!(ok(&server.get(&userinfo(&secret)).await), &json!({ "sub": alice.user_id }));
        server.restart().await;
        assert_eq!(ok(&server.get(&userinfo(&secret)).await)["sub"], alice.user_id.as_str());
        assert_error(&server.get(&userinfo("not-a-token")).await, 401, "M_UNKNOWN_TOKEN");
        // An access token is not an OpenID token.
        assert_error(&server.get(&userinfo(&alice.access_token)).await, 401, "M_UNKNOWN_TOKEN");
    }
);

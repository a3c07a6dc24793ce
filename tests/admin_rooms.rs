//! Room moderation through Synapse's admin API over real HTTP on both backends: deleting
//! (shutdown, moving members to a new room, purging), blocking, `make_room_admin`,
//! `/v1/join` and forward extremities.

#[macro_use]
mod common;

use std::time::Duration;

use common::{Client, Resp, assert_error, create_room, enc, make_admin, ok, send};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "/_synapse/admin";

async fn join(c: &Client, room: &str) -> Resp {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), &json!({})).await
}

async fn joined_rooms(c: &Client) -> Vec<String> {
    let body = ok(&c.get("/_matrix/client/v3/joined_rooms").await).clone();
    body["joined_rooms"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect()
}

/// Polls a deletion until it is no longer running; returns its status.
async fn wait_deleted(admin: &Client, delete_id: &str) -> Value {
    for _ in 0..200 {
        let status = ok(&admin.get(&format!("{A}/v2/rooms/delete_status/{delete_id}")).await).clone();
        if status["status"] == "complete" || status["status"] == "failed" {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("deletion {delete_id} did not finish");
}

both_backends!(room_moderation_is_for_server_admins_only, |server| async move {
    let alice = server.register("alice").await;
    let raw_room = create_room(&alice, json!({})).await;
    let room = enc(&raw_room);
    for (method, path) in [
        (Method::DELETE, format!("{A}/v2/rooms/{room}")),
        (Method::GET, format!("{A}/v2/rooms/{room}/delete_status")),
        (Method::GET, format!("{A}/v2/rooms/delete_status/abc")),
        (Method::GET, format!("{A}/v1/rooms/{room}/block")),
        (Method::PUT, format!("{A}/v1/rooms/{room}/block")),
        (Method::POST, format!("{A}/v1/rooms/{room}/make_room_admin")),
        (Method::GET, format!("{A}/v1/rooms/{room}/forward_extremities")),
        (Method::POST, format!("{A}/v1/join/{room}")),
    ] {
        let anonymous = send(server.request(method.clone(), &path).json(&json!({}))).await;
        assert_error(&anonymous, 401, "M_MISSING_TOKEN");
        let user = send(alice.request(method.clone(), &path).json(&json!({ "block": true }))).await;
        assert_error(&user, 403, "M_FORBIDDEN");
    }
    // Nothing happened: the room is neither blocked nor deleted.
    assert_eq!(joined_rooms(&alice).await.len(), 1);
    let bob = server.register("bob").await;
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({ "user_id": bob.user_id })).await);
    ok(&join(&bob, &raw_room).await);
});

both_backends!(blocked_rooms_cannot_be_joined_by_local_users, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let path = format!("{A}/v1/rooms/{}/block", enc(&room));
    assert_eq!(ok(&admin.get(&path).await), &json!({ "block": false }));
    assert_eq!(ok(&admin.put(&path, &json!({ "block": true })).await), &json!({ "block": true }));
    assert_eq!(ok(&admin.get(&path).await), &json!({ "block": true, "user_id": admin.user_id }));
    assert_error(&join(&bob, &room).await, 403, "M_FORBIDDEN");
    let invite = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
    assert_error(&alice.post(&invite, &json!({ "user_id": carol.user_id })).await, 403, "M_FORBIDDEN");
    assert_error(
        &admin.post(&format!("{A}/v1/join/{}", enc(&room)), &json!({ "user_id": bob.user_id })).await,
        403,
        "M_FORBIDDEN",
    );
    // Unblocked, the room is open again.
    assert_eq!(ok(&admin.put(&path, &json!({ "block": false })).await), &json!({ "block": false }));
    ok(&join(&bob, &room).await);
    // A room this server does not know can be blocked ahead of time.
    let unknown = format!("!future:{}", server.server_name());
    ok(&admin.put(&format!("{A}/v1/rooms/{}/block", enc(&unknown)), &json!({ "block": true })).await);
    assert_eq!(ok(&admin.get(&format!("{A}/v1/rooms/{}/block", enc(&unknown))).await)["block"], true);
    assert_error(&admin.get(&format!("{A}/v1/rooms/{}/block", enc("not-a-room"))).await, 400, "M_INVALID_PARAM");
    assert_error(&admin.put(&path, &json!({ "block": "yes" })).await, 400, "M_BAD_JSON");
});

both_backends!(delete_moves_members_blocks_and_purges, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let moderator = server.register("moderator").await;
    let room = create_room(
        &alice,
        json!({ "preset": "public_chat", "visibility": "public", "room_alias_name": "spam", "name": "Spam" }),
    )
    .await;
    ok(&join(&bob, &room).await);
    for i in 0..3 {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}", enc(&room));
        ok(&bob.put(&path, &json!({ "msgtype": "m.text", "body": "buy now" })).await);
    }
    let path = format!("{A}/v2/rooms/{}", enc(&room));
    let body = json!({
        "new_room_user_id": moderator.user_id,
        "room_name": "Moved",
        "message": "The room was removed",
        "block": true,
        "purge": true,
    });
    let started = std::time::Instant::now();
    let delete_id = ok(&admin.delete(&path, &body).await)["delete_id"].as_str().unwrap().to_owned();
    let status = wait_deleted(&admin, &delete_id).await;
    eprintln!("deletion took {:?}", started.elapsed());
    assert_eq!(status["status"], "complete", "{status}");
    let shutdown = &status["shutdown_room"];
    let mut kicked: Vec<&str> =
        shutdown["kicked_users"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    kicked.sort();
    assert_eq!(kicked, [alice.user_id.as_str(), bob.user_id.as_str()], "{status}");
    assert_eq!(shutdown["failed_to_kick_users"], json!([]));
    let alias = format!("#spam:{}", server.server_name());
    assert_eq!(shutdown["local_aliases"], json!([alias]));
    let new_room = shutdown["new_room_id"].as_str().expect("new room").to_owned();

    // The members left and were moved; the alias points at the new room, whose first message is
    // the moderator's.
    assert_eq!(joined_rooms(&alice).await, vec![new_room.clone()]);
    assert_eq!(joined_rooms(&bob).await, vec![new_room.clone()]);
    let resolved = ok(&bob.get(&format!("/_matrix/client/v3/directory/room/{}", enc(&alias))).await).clone();
    assert_eq!(resolved["room_id"], new_room);
    let messages =
        ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&new_room))).await).clone();
    let texts: Vec<&Value> =
        messages["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").collect();
    assert_eq!(texts.len(), 1, "{messages}");
    assert_eq!(
        (&texts[0]["sender"], &texts[0]["content"]["body"]),
        (&json!(moderator.user_id), &json!("The room was removed"))
    );
    let pl =
        ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&new_room))).await).clone();
    assert_eq!(pl["users_default"], -10, "{pl}");

    // Purged: the server no longer holds the room; blocked: it cannot be joined again.
    assert_error(&admin.get(&format!("{A}/v1/rooms/{}", enc(&room))).await, 404, "M_NOT_FOUND");
    let listed = ok(&admin.get(&format!("{A}/v1/rooms")).await).clone();
    assert!(listed["rooms"].as_array().unwrap().iter().all(|r| r["room_id"] != room), "{listed}");
    assert_error(&join(&bob, &room).await, 403, "M_FORBIDDEN");
    let history = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room))).await;
    assert!(history.0 == 403 || history.0 == 404, "{history:?}");
    let public = ok(&alice.get("/_matrix/client/v3/publicRooms").await).clone();
    assert!(public["chunk"].as_array().unwrap().iter().all(|r| r["room_id"] != room), "{public}");

    // Both status endpoints report the deletion.
    let by_room = ok(&admin.get(&format!("{A}/v2/rooms/{}/delete_status", enc(&room))).await).clone();
    assert_eq!(by_room["results"][0]["delete_id"], delete_id, "{by_room}");
    assert_eq!(by_room["results"][0]["status"], "complete");
    assert_error(&admin.get(&format!("{A}/v2/rooms/delete_status/nope")).await, 404, "M_NOT_FOUND");
    let other = enc(&format!("!other:{}", server.server_name()));
    assert_error(&admin.get(&format!("{A}/v2/rooms/{other}/delete_status")).await, 404, "M_NOT_FOUND");
    // Deleting a room this server does not hold needs `block`.
    assert_error(&admin.delete(&format!("{A}/v2/rooms/{other}"), &json!({})).await, 404, "M_NOT_FOUND");
    let blocked = ok(&admin.delete(&format!("{A}/v2/rooms/{other}"), &json!({ "block": true })).await).clone();
    let status = wait_deleted(&admin, blocked["delete_id"].as_str().unwrap()).await;
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(ok(&admin.get(&format!("{A}/v1/rooms/{other}/block")).await)["block"], true);
    let bad = admin.delete(&path, &json!({ "new_room_user_id": "@someone:elsewhere.example" })).await;
    assert_error(&bad, 400, "M_INVALID_PARAM");
});

both_backends!(delete_without_purge_empties_the_room_and_keeps_it, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    ok(&join(&bob, &room).await);
    let extremities = ok(&admin.get(&format!("{A}/v1/rooms/{}/forward_extremities", enc(&room))).await).clone();
    assert_eq!(extremities["count"], 1, "{extremities}");
    let extremity = &extremities["results"][0];
    assert!(extremity["event_id"].as_str().unwrap().starts_with('$'), "{extremity}");
    assert!(extremity["depth"].as_i64().unwrap() > 1 && extremity["received_ts"].as_i64().unwrap() > 0, "{extremity}");
    assert!(extremity["state_group"].is_i64(), "{extremity}");

    let delete = admin.delete(&format!("{A}/v2/rooms/{}", enc(&room)), &json!({ "purge": false })).await;
    let delete_id = ok(&delete)["delete_id"].as_str().unwrap().to_owned();
    let status = wait_deleted(&admin, &delete_id).await;
    assert_eq!(status["status"], "complete", "{status}");
    assert_eq!(status["shutdown_room"]["new_room_id"], Value::Null);
    let details = ok(&admin.get(&format!("{A}/v1/rooms/{}", enc(&room))).await).clone();
    assert_eq!((&details["joined_members"], &details["joined_local_members"]), (&json!(0), &json!(0)), "{details}");
    assert!(joined_rooms(&alice).await.is_empty() && joined_rooms(&bob).await.is_empty());
    // The server itself made the members leave: their member events say leave.
    let state = ok(&admin.get(&format!("{A}/v1/rooms/{}/state", enc(&room))).await).clone();
    let leaves = state["state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave")
        .count();
    assert_eq!(leaves, 2, "{state}");
    // Not blocked: the room can still be joined... but nobody is in it to let anyone in over
    // federation, and locally a public room can be joined again.
    assert_eq!(ok(&admin.get(&format!("{A}/v1/rooms/{}/block", enc(&room))).await)["block"], false);
});

both_backends!(make_room_admin_and_admin_join, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let private = create_room(&alice, json!({ "preset": "private_chat", "room_alias_name": "secret" })).await;
    let public = create_room(&alice, json!({ "preset": "public_chat" })).await;

    // `/v1/join`: a public room directly, by id or alias; a private one needs the admin inside.
    let joined =
        ok(&admin.post(&format!("{A}/v1/join/{}", enc(&public)), &json!({ "user_id": bob.user_id })).await).clone();
    assert_eq!(joined, json!({ "room_id": public }));
    assert!(joined_rooms(&bob).await.contains(&public));
    let alias = format!("#secret:{}", server.server_name());
    let refused = admin.post(&format!("{A}/v1/join/{}", enc(&alias)), &json!({ "user_id": bob.user_id })).await;
    assert_error(&refused, 403, "M_FORBIDDEN");
    assert_error(&admin.post(&format!("{A}/v1/join/{}", enc(&public)), &json!({})).await, 400, "M_MISSING_PARAM");
    let join_public = format!("{A}/v1/join/{}", enc(&public));
    let remote = admin.post(&join_public, &json!({ "user_id": "@x:elsewhere.example" })).await;
    assert_error(&remote, 400, "M_INVALID_PARAM");
    let nobody = admin.post(&join_public, &json!({ "user_id": server.user_id("nobody") })).await;
    assert_error(&nobody, 404, "M_NOT_FOUND");
    let unknown_alias = enc(&format!("#nothing:{}", server.server_name()));
    assert_error(
        &admin.post(&format!("{A}/v1/join/{unknown_alias}"), &json!({ "user_id": bob.user_id })).await,
        404,
        "M_NOT_FOUND",
    );

    // make_room_admin: the caller gets alice's level (set by alice) and an invite.
    let made = admin.post(&format!("{A}/v1/rooms/{}/make_room_admin", enc(&alias)), &json!({})).await;
    assert_eq!(ok(&made), &json!({}));
    ok(&join(&admin, &private).await);
    let pl =
        ok(&admin.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&private))).await).clone();
    // Alice's level, or (room version 12, where the creator's power is unlimited and not
    // listed) the highest level anything in the room needs.
    let level = pl["users"][&admin.user_id].as_i64().expect("a level for the admin");
    assert!(pl["users"][&alice.user_id].is_null() || pl["users"][&alice.user_id] == level, "{pl}");
    assert!(level >= 100, "{pl}");
    // Now the admin is inside: `/v1/join` invites and joins bob.
    ok(&admin.post(&format!("{A}/v1/join/{}", enc(&alias)), &json!({ "user_id": bob.user_id })).await);
    assert!(joined_rooms(&bob).await.contains(&private));
    // For another user.
    ok(&admin
        .post(&format!("{A}/v1/rooms/{}/make_room_admin", enc(&private)), &json!({ "user_id": bob.user_id }))
        .await);
    let pl =
        ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&private))).await).clone();
    assert_eq!(pl["users"][&bob.user_id], level, "{pl}");
    // Without a local member who may change the power levels, nothing can be done.
    let lonely = create_room(&alice, json!({ "preset": "public_chat" })).await;
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&lonely)), &json!({})).await);
    let refused = admin.post(&format!("{A}/v1/rooms/{}/make_room_admin", enc(&lonely)), &json!({})).await;
    assert_error(&refused, 400, "M_INVALID_PARAM");
    let unknown = enc(&format!("!unknown:{}", server.server_name()));
    assert_error(&admin.post(&format!("{A}/v1/rooms/{unknown}/make_room_admin"), &json!({})).await, 404, "M_NOT_FOUND");
    assert_error(&admin.get(&format!("{A}/v1/rooms/{unknown}/forward_extremities")).await, 404, "M_NOT_FOUND");
});

//! Server notices (`POST /_synapse/admin/v1/send_server_notice`) over real HTTP on both backends:
//! the notices room each user is invited to, tagged `m.server_notice`, where only the system
//! user writes; reused while the user stays, made anew after they leave.

#[macro_use]
mod common;

use common::{Client, assert_error, enc, make_admin, ok, send, set_config};
use reqwest::Method;
use serde_json::json;

const NOTICE: &str = "/_synapse/admin/v1/send_server_notice";

/// The rooms alice is invited to, from an initial sync.
async fn invites(c: &Client) -> Vec<String> {
    let body = ok(&c.get("/_matrix/client/v3/sync").await).clone();
    body["rooms"]["invite"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
}

both_backends!(
    server_notices_arrive_in_a_room_of_their_own,
    with | c | {
        set_config(c, "server_notices.system_mxid_localpart", "notices");
        set_config(c, "server_notices.room_name", "From the admins");
    },
    |server| async move {
        let admin = make_admin(&server).await;
        let alice = server.register("alice").await;
        let notice =
            json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": "Maintenance at 22:00" } });
        assert_error(&send(alice.request(Method::POST, NOTICE).json(&notice)).await, 403, "M_FORBIDDEN");
        assert_error(&send(alice.request(Method::PUT, &format!("{NOTICE}/t")).json(&notice)).await, 403, "M_FORBIDDEN");
        let first = ok(&admin.post(NOTICE, &notice).await).clone();
        assert!(first["event_id"].as_str().unwrap().starts_with('$'), "{first}");

        // Alice is invited to the notices room, which carries the tag and the configured name.
        let rooms = invites(&alice).await;
        assert_eq!(rooms.len(), 1, "{rooms:?}");
        let room = rooms[0].clone();
        let tags =
            ok(&alice.get(&format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room))).await)
                .clone();
        assert!(tags["tags"]["m.server_notice"].is_object(), "{tags}");
        ok(&alice.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
        let name = ok(&alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room))).await).clone();
        assert_eq!(name["name"], "From the admins");
        let messages = ok(&alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room))).await).clone();
        let notice_event =
            messages["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == first["event_id"]).cloned();
        let notice_event = notice_event.expect("the notice in the room");
        assert_eq!(notice_event["sender"], server.user_id("notices"));
        assert_eq!(notice_event["content"]["body"], "Maintenance at 22:00");
        // Only the system user writes.
        let reply = alice
            .put(
                &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/r1", enc(&room)),
                &json!({ "msgtype": "m.text", "body": "ok" }),
            )
            .await;
        assert_error(&reply, 403, "M_FORBIDDEN");

        // The next notice goes to the same room.
        let second = ok(&admin
            .post(NOTICE, &json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": "Done" } }))
            .await)
        .clone();
        let event = ok(&alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(second["event_id"].as_str().unwrap())
            ))
            .await)
        .clone();
        assert_eq!(event["content"]["body"], "Done");
        // After alice leaves, a new room.
        ok(&alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), &json!({})).await);
        ok(&admin
            .post(NOTICE, &json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": "Again" } }))
            .await);
        let rooms = invites(&alice).await;
        assert_eq!(rooms.len(), 1, "{rooms:?}");
        assert_ne!(rooms[0], room);

        // With a transaction id: a retry answers the first event and sends nothing new.
        let body = json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": "Once" } });
        let first = ok(&admin.put(&format!("{NOTICE}/txn1"), &body).await).clone();
        let retry = ok(&admin.put(&format!("{NOTICE}/txn1"), &body).await).clone();
        assert_eq!(first, retry);
        let other = ok(&admin.put(&format!("{NOTICE}/txn2"), &body).await).clone();
        assert_ne!(first, other);
        let room = invites(&alice).await[0].clone();
        ok(&alice.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
        let messages =
            ok(&alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await).clone();
        let onces = messages["chunk"].as_array().unwrap().iter().filter(|e| e["content"]["body"] == "Once").count();
        assert_eq!(onces, 2, "{messages}");

        // Bad input.
        assert_error(&admin.post(NOTICE, &json!({ "content": {} })).await, 400, "M_MISSING_PARAM");
        assert_error(&admin.post(NOTICE, &json!({ "user_id": alice.user_id })).await, 400, "M_MISSING_PARAM");
        let remote = admin.post(NOTICE, &json!({ "user_id": "@bob:elsewhere.example", "content": {} })).await;
        assert_error(&remote, 400, "M_INVALID_PARAM");
        let ghost = admin.post(NOTICE, &json!({ "user_id": server.user_id("ghost"), "content": {} })).await;
        assert_error(&ghost, 404, "M_NOT_FOUND");
    }
);

both_backends!(server_notices_are_off_without_a_system_user, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let resp =
        admin.post(NOTICE, &json!({ "user_id": alice.user_id, "content": { "msgtype": "m.text", "body": "x" } })).await;
    assert_error(&resp, 400, "M_UNKNOWN");
    assert!(invites(&alice).await.is_empty());
});

//! Account locking and suspension (spec v1.18 server administration, MSC3823/MSC3939) over real
//! HTTP on both backends: who may lock and suspend whom, what a locked account can still do (log
//! out), what a suspended one can (read, leave, redact its own events) and cannot (send, join,
//! invite, create rooms, change its profile, upload), and the Synapse admin API's view.

#[macro_use]
mod common;

use common::{Client, Resp, TestServer, assert_error, create_room, enc, make_admin, ok, send};
use reqwest::Method;
use serde_json::{Value, json};

const A: &str = "/_synapse/admin";

fn lock_path(user: &str) -> String {
    format!("/_matrix/client/v1/admin/lock/{}", enc(user))
}

fn suspend_path(user: &str) -> String {
    format!("/_matrix/client/v1/admin/suspend/{}", enc(user))
}

async fn login_attempt(server: &TestServer, localpart: &str, password: &str) -> Resp {
    server
        .post(
            "/_matrix/client/v3/login",
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": localpart },
                "password": password,
            }),
        )
        .await
}

both_backends!(only_server_admins_lock_and_suspend_local_accounts, |server| async move {
    let admin = make_admin(&server).await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    // Not an admin: 403 before any lookup, so unknown users are not told apart.
    for path in [lock_path(&carol.user_id), suspend_path(&carol.user_id), lock_path(&server.user_id("nobody"))] {
        assert_error(&bob.get(&path).await, 403, "M_FORBIDDEN");
    }
    assert_error(&bob.put(&lock_path(&carol.user_id), &json!({ "locked": true })).await, 403, "M_FORBIDDEN");
    assert_error(&bob.put(&suspend_path(&carol.user_id), &json!({ "suspended": true })).await, 403, "M_FORBIDDEN");
    let unauthenticated = send(server.request(Method::GET, &lock_path(&carol.user_id))).await;
    assert_error(&unauthenticated, 401, "M_MISSING_TOKEN");

    // Only admins see the capability.
    let caps = ok(&admin.get("/_matrix/client/v3/capabilities").await).clone();
    assert_eq!(caps["capabilities"]["m.account_moderation"], json!({ "suspend": true, "lock": true }), "{caps}");
    let caps = ok(&bob.get("/_matrix/client/v3/capabilities").await).clone();
    assert!(caps["capabilities"].get("m.account_moderation").is_none(), "{caps}");

    // Both start unset.
    assert_eq!(ok(&admin.get(&lock_path(&carol.user_id)).await)["locked"], false);
    assert_eq!(ok(&admin.get(&suspend_path(&carol.user_id)).await)["suspended"], false);

    // Unknown, remote, malformed and administrator targets.
    assert_error(&admin.get(&lock_path(&server.user_id("nobody"))).await, 404, "M_NOT_FOUND");
    assert_error(
        &admin.put(&suspend_path(&server.user_id("nobody")), &json!({ "suspended": true })).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&admin.get(&suspend_path("@eve:elsewhere.example")).await, 400, "M_INVALID_PARAM");
    assert_error(
        &admin.put(&lock_path("@eve:elsewhere.example"), &json!({ "locked": true })).await,
        400,
        "M_INVALID_PARAM",
    );
    assert_error(&admin.get("/_matrix/client/v1/admin/lock/not-a-user").await, 400, "M_INVALID_PARAM");
    assert_error(&admin.put(&lock_path(&carol.user_id), &json!({ "locked": "yes" })).await, 400, "M_BAD_JSON");
    assert_error(&admin.put(&suspend_path(&admin.user_id), &json!({ "suspended": true })).await, 403, "M_FORBIDDEN");
    assert_error(&admin.put(&lock_path(&admin.user_id), &json!({ "locked": true })).await, 403, "M_FORBIDDEN");

    // Set and read back, through both APIs.
    assert_eq!(ok(&admin.put(&suspend_path(&carol.user_id), &json!({ "suspended": true })).await)["suspended"], true);
    assert_eq!(ok(&admin.get(&suspend_path(&carol.user_id)).await)["suspended"], true);
    let user = ok(&admin.get(&format!("{A}/v2/users/{}", enc(&carol.user_id))).await).clone();
    assert_eq!((&user["suspended"], &user["locked"]), (&json!(true), &json!(false)), "{user}");
    assert_eq!(ok(&admin.put(&suspend_path(&carol.user_id), &json!({ "suspended": false })).await)["suspended"], false);
    assert_eq!(ok(&admin.get(&format!("{A}/v2/users/{}", enc(&carol.user_id))).await)["suspended"], false);

    // A deactivated account is not found.
    ok(&admin.post(&format!("{A}/v1/deactivate/{}", enc(&bob.user_id)), &json!({})).await);
    assert_error(&admin.get(&suspend_path(&bob.user_id)).await, 404, "M_NOT_FOUND");
});

both_backends!(a_locked_account_is_soft_logged_out_until_unlocked, |server| async move {
    let admin = make_admin(&server).await;
    let bob = server.register("bob").await;
    let second = server.login("bob", &bob.password).await;
    // A login token taken before the lock does not get in either.
    let (status, uia) = bob.post("/_matrix/client/v1/login/get_token", &json!({})).await;
    assert_eq!(status, 401, "{uia}");
    let auth = json!({ "auth": bob.password_auth(uia["session"].as_str().unwrap()) });
    let login_token = ok(&bob.post("/_matrix/client/v1/login/get_token", &auth).await)["login_token"].clone();

    assert_eq!(ok(&admin.put(&lock_path(&bob.user_id), &json!({ "locked": true })).await)["locked"], true);
    assert_eq!(ok(&admin.get(&lock_path(&bob.user_id)).await)["locked"], true);
    // At once, on every endpoint, with soft_logout so that clients keep their session.
    for path in ["/_matrix/client/v3/account/whoami", "/_matrix/client/v3/sync?timeout=0", "/_matrix/client/v3/devices"]
    {
        let resp = bob.get(path).await;
        assert_error(&resp, 401, "M_USER_LOCKED");
        assert_eq!(resp.1["soft_logout"], true, "{resp:?}");
    }
    assert_error(&bob.post("/_matrix/client/v3/createRoom", &json!({})).await, 401, "M_USER_LOCKED");
    // No new logins; a wrong password is still just wrong.
    assert_error(&login_attempt(&server, "bob", &bob.password).await, 401, "M_USER_LOCKED");
    assert_error(&login_attempt(&server, "bob", "wrong").await, 403, "M_FORBIDDEN");
    let by_token =
        server.post("/_matrix/client/v3/login", &json!({ "type": "m.login.token", "token": login_token })).await;
    assert_error(&by_token, 401, "M_USER_LOCKED");

    // The Synapse admin API shows it; the users list leaves locked accounts out unless asked.
    let user = ok(&admin.get(&format!("{A}/v2/users/{}", enc(&bob.user_id))).await).clone();
    assert_eq!(user["locked"], true, "{user}");
    let names = |body: &Value| -> Vec<String> {
        body["users"].as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap().to_owned()).collect()
    };
    let list = ok(&admin.get(&format!("{A}/v2/users")).await).clone();
    assert!(!names(&list).contains(&bob.user_id), "{list}");
    let list = ok(&admin.get(&format!("{A}/v2/users?locked=true")).await).clone();
    let entry = list["users"].as_array().unwrap().iter().find(|u| u["name"] == bob.user_id.as_str()).cloned();
    assert_eq!(entry.expect("locked user listed with locked=true")["locked"], true, "{list}");

    // Logging out is allowed while locked.
    ok(&second.post("/_matrix/client/v3/logout", &json!({})).await);
    assert_error(&second.get("/_matrix/client/v3/account/whoami").await, 401, "M_UNKNOWN_TOKEN");

    // Unlocked: the remaining token works again and logins succeed.
    assert_eq!(ok(&admin.put(&lock_path(&bob.user_id), &json!({ "locked": false })).await)["locked"], false);
    assert_eq!(ok(&bob.get("/_matrix/client/v3/account/whoami").await)["user_id"], bob.user_id.as_str());
    server.login("bob", &bob.password).await;

    // `PUT /_synapse/admin/v2/users` locks and unlocks too.
    let path = format!("{A}/v2/users/{}", enc(&bob.user_id));
    assert_eq!(ok(&admin.put(&path, &json!({ "locked": true })).await)["locked"], true);
    assert_error(&bob.get("/_matrix/client/v3/account/whoami").await, 401, "M_USER_LOCKED");
    assert_eq!(ok(&admin.get(&lock_path(&bob.user_id)).await)["locked"], true);
    assert_eq!(ok(&admin.put(&path, &json!({ "locked": false })).await)["locked"], false);
    ok(&bob.get("/_matrix/client/v3/account/whoami").await);
    // Created locked.
    let (status, body) = admin
        .put(&format!("{A}/v2/users/{}", enc(&server.user_id("dora"))), &json!({ "password": "pw", "locked": true }))
        .await;
    assert_eq!((status, &body["locked"]), (201, &json!(true)), "{body}");
    assert_error(&login_attempt(&server, "dora", "pw").await, 401, "M_USER_LOCKED");
});

/// Sends a text message; returns the response.
async fn say(client: &Client, room: &str, txn: &str, body: &str) -> Resp {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    client.put(&path, &json!({ "msgtype": "m.text", "body": body })).await
}

both_backends!(a_suspended_account_reads_but_cannot_act, |server| async move {
    let admin = make_admin(&server).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;

    // A shared room where bob may redact (moderator), a room bob is invited to, a public room.
    let shared = create_room(&alice, json!({ "preset": "public_chat" })).await;
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&shared)), &json!({})).await);
    let pl_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&shared));
    let mut pl = ok(&alice.get(&pl_path).await).clone();
    pl["users"][bob.user_id.as_str()] = json!(50);
    ok(&alice.put(&pl_path, &pl).await);
    let bobs = ok(&say(&bob, &shared, "b1", "mine").await)["event_id"].as_str().unwrap().to_owned();
    let alices = ok(&say(&alice, &shared, "a1", "hers").await)["event_id"].as_str().unwrap().to_owned();
    let invited = create_room(&alice, json!({ "invite": [bob.user_id] })).await;
    let public = create_room(&carol, json!({ "preset": "public_chat" })).await;

    ok(&admin.put(&suspend_path(&bob.user_id), &json!({ "suspended": true })).await);

    // Acting in rooms or on what others see: 403 M_USER_SUSPENDED.
    let suspended = |resp: Resp| assert_error(&resp, 403, "M_USER_SUSPENDED");
    suspended(say(&bob, &shared, "b2", "still here?").await);
    suspended(
        bob.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&shared)), &json!({ "topic": "t" }))
            .await,
    );
    suspended(bob.post("/_matrix/client/v3/createRoom", &json!({})).await);
    suspended(bob.post(&format!("/_matrix/client/v3/join/{}", enc(&public)), &json!({})).await);
    suspended(bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&public)), &json!({})).await);
    suspended(
        bob.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&shared)), &json!({ "user_id": carol.user_id }))
            .await,
    );
    suspended(
        bob.post(&format!("/_matrix/client/v3/rooms/{}/kick", enc(&shared)), &json!({ "user_id": alice.user_id }))
            .await,
    );
    suspended(
        bob.put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.user_id)),
            &json!({ "displayname": "B" }),
        )
        .await,
    );
    suspended(
        bob.put(
            &format!("/_matrix/client/v3/directory/room/{}", enc(&format!("#b:{}", server.server_name()))),
            &json!({ "room_id": shared }),
        )
        .await,
    );
    let upload =
        send(bob.request(Method::POST, "/_matrix/media/v3/upload").header("content-type", "text/plain").body("hi"))
            .await;
    suspended(upload);
    suspended(bob.post("/_matrix/media/v1/create", &json!({})).await);
    // A redaction of someone else's event, by either route.
    suspended(
        bob.put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&shared), enc(&alices)), &json!({})).await,
    );

    // Reading, leaving, declining, redacting one's own events and private data still work.
    let sync = ok(&bob.get("/_matrix/client/v3/sync?timeout=0").await).clone();
    assert!(sync["rooms"]["join"].get(&shared).is_some(), "{sync}");
    assert!(sync["rooms"]["invite"].get(&invited).is_some(), "{sync}");
    let messages = ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&shared))).await).clone();
    assert!(messages["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == alices.as_str()), "{messages}");
    ok(&bob.put(&format!("/_matrix/client/v3/rooms/{}/redact/{}/r2", enc(&shared), enc(&bobs)), &json!({})).await);
    ok(&bob.put(&format!("/_matrix/client/v3/user/{}/account_data/m.x", enc(&bob.user_id)), &json!({ "a": 1 })).await);
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&invited)), &json!({})).await);
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&shared)), &json!({})).await);
    // Logging in again gives a session that is just as suspended.
    let again = server.login("bob", &bob.password).await;
    assert_error(&again.post("/_matrix/client/v3/createRoom", &json!({})).await, 403, "M_USER_SUSPENDED");

    // Lifted: bob acts again at once.
    ok(&admin.put(&suspend_path(&bob.user_id), &json!({ "suspended": false })).await);
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&public)), &json!({})).await);
    ok(&say(&bob, &public, "b3", "back").await);
});

//! Third-party invites over real HTTP on both backends, against a real identity server: a small
//! Python one (`tests/nio/identity_server.py`, in the test virtualenv) with its own ed25519 key
//! (PyNaCl), which stores invitations, answers lookups hashed with its pepper, and calls
//! `/3pid/onbind` when an address is bound, with signed invitations, as Sydent does.

#[macro_use]
mod common;
mod sync_util;

use common::{Backend, Client, Resp, TestServer, assert_error, create_room, enc, free_port, join, ok, set_config};
use serde_json::{Value, json};
use test_support::identity::{IS_TOKEN, IdentityServer};

async fn start(backend: Backend) -> (TestServer, IdentityServer) {
    let is = IdentityServer::start(free_port());
    let server = TestServer::start_with(backend, |c| {
        // `/3pid/onbind` is a federation endpoint.
        set_config(c, "federation.enabled", true);
        set_config(c, "identity.plain_http", true);
        set_config(c, "identity.ip_allowlist", toml::Value::Array(vec!["127.0.0.1".into()]));
    })
    .await;
    (server, is)
}

async fn invite_by_email(c: &Client, room: &str, is: &IdentityServer, address: &str, token: &str) -> Resp {
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(room)),
        &json!({ "id_server": is.name(), "id_access_token": token, "medium": "email", "address": address }),
    )
    .await
}

/// The room's `m.room.third_party_invite` state events: `(token, content)`.
async fn third_party_invites(c: &Client, room: &str) -> Vec<(String, Value)> {
    let state = ok(&c.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(room))).await).clone();
    state
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.third_party_invite")
        .map(|e| (e["state_key"].as_str().unwrap().to_owned(), e["content"].clone()))
        .collect()
}

async fn member_event(c: &Client, room: &str, user: &str) -> Resp {
    c.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event", enc(room), enc(user))).await
}

async fn unbound_address_invite_then_bind_and_join(backend: Backend) {
    let (server, is) = start(backend).await;
    let alice = server.register("alice").await;
    ok(&alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            &json!({ "displayname": "Alice A" }),
        )
        .await);
    let room = create_room(&alice, json!({ "name": "Tea room", "preset": "private_chat" })).await;

    ok(&invite_by_email(&alice, &room, &is, "Bob@Example.org", IS_TOKEN).await);
    let stored = is.invites().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    let asked = &stored[0]["body"];
    assert_eq!(stored[0]["authorization"], format!("Bearer {IS_TOKEN}"));
    assert_eq!(asked["address"], "bob@example.org");
    assert_eq!(asked["medium"], "email");
    assert_eq!(asked["room_id"], room.as_str());
    assert_eq!(asked["sender"], alice.user_id.as_str());
    assert_eq!(asked["room_name"], "Tea room");
    assert_eq!(asked["room_join_rules"], "invite");
    assert_eq!(asked["sender_display_name"], "Alice A");

    let invites = third_party_invites(&alice, &room).await;
    assert_eq!(invites.len(), 1, "{invites:?}");
    let (token, content) = invites[0].clone();
    assert_eq!(content["display_name"], "bob...@example.org");
    let key = content["public_key"].as_str().unwrap();
    assert_eq!(content["public_keys"][0]["public_key"], key);
    assert!(content["key_validity_url"].as_str().unwrap().ends_with("/_matrix/identity/v2/pubkey/isvalid"));

    // Bob registers and binds the address: the identity server tells us, we exchange the
    // invitation (the inviter is ours) and bob is invited.
    let bob = server.register("bob").await;
    let since = sync_util::next_batch(&sync_util::sync(&bob, None, None, 0).await);
    let (answer, sent) = is.bind(&server.url(), "bob@example.org", &bob.user_id).await;
    assert_eq!(answer, (200, json!({})), "onbind: {answer:?}");
    let (synced, _) = sync_util::sync_until(&bob, since, 20, |b| b["rooms"]["invite"][room.as_str()].is_object()).await;
    let invite_state = &synced["rooms"]["invite"][room.as_str()]["invite_state"]["events"];
    assert!(invite_state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.name"), "{invite_state}");

    let invite = ok(&member_event(&alice, &room, &bob.user_id).await).clone();
    assert_eq!(invite["sender"], alice.user_id.as_str());
    assert_eq!(invite["content"]["membership"], "invite");
    assert_eq!(invite["content"]["third_party_invite"]["display_name"], "bob...@example.org");
    assert_eq!(invite["content"]["third_party_invite"]["signed"]["token"], token.as_str());
    assert_eq!(invite["content"]["third_party_invite"]["signed"]["mxid"], bob.user_id.as_str());

    // The token is used up: the invitation was replaced by an empty (revoked) one.
    let revoked = third_party_invites(&alice, &room).await;
    assert_eq!(revoked, vec![(token.clone(), json!({}))]);

    join(&bob, &room).await;
    assert_eq!(ok(&member_event(&alice, &room, &bob.user_id).await)["content"]["membership"], "join");

    // Bob leaves; the same signed invitation sent again invites nobody.
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), &json!({})).await);
    let replay = is.onbind(&server.url(), sent).await;
    assert_error(&replay, 403, "M_FORBIDDEN");
    assert_eq!(ok(&member_event(&alice, &room, &bob.user_id).await)["content"]["membership"], "leave");
}

async fn forged_or_misdirected_invitations_are_refused(backend: Backend) {
    let (server, is) = start(backend).await;
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    ok(&invite_by_email(&alice, &room, &is, "carol@example.org", IS_TOKEN).await);
    let (token, _) = third_party_invites(&alice, &room).await.remove(0);
    let carol = server.register("carol").await;
    let dave = server.register("dave").await;

    let invite = |mxid: &str, room: &str, signed: Value| {
        json!({ "medium": "email", "address": "carol@example.org", "mxid": mxid, "invites": [{
            "medium": "email", "address": "carol@example.org", "mxid": mxid, "room_id": room,
            "sender": alice.user_id, "signed": signed,
        }]})
    };
    let good = is.sign(json!({ "mxid": carol.user_id, "sender": alice.user_id, "token": token })).await;

    // A signature that does not verify.
    let mut forged = good.clone();
    let sig = forged["signatures"][is.name()]["ed25519:0"].as_str().unwrap().to_owned();
    let flipped = match sig.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", sig.get(1..).unwrap()),
    };
    forged["signatures"][is.name()]["ed25519:0"] = json!(flipped);
    assert_error(&is.onbind(&server.url(), invite(&carol.user_id, &room, forged)).await, 403, "M_FORBIDDEN");
    // Signed for carol, claimed for dave.
    assert_error(&is.onbind(&server.url(), invite(&dave.user_id, &room, good.clone())).await, 403, "M_FORBIDDEN");
    // Signed for dave with carol's token: the signature is good, but onbind is for carol.
    let for_dave = is.sign(json!({ "mxid": dave.user_id, "sender": alice.user_id, "token": token })).await;
    assert_error(&is.onbind(&server.url(), invite(&carol.user_id, &room, for_dave)).await, 403, "M_FORBIDDEN");
    // A token the room has never seen.
    let unknown = is.sign(json!({ "mxid": carol.user_id, "sender": alice.user_id, "token": "not-a-token" })).await;
    assert_error(&is.onbind(&server.url(), invite(&carol.user_id, &room, unknown)).await, 403, "M_FORBIDDEN");
    // A user of another server.
    let elsewhere = invite("@carol:elsewhere.example", &room, good.clone());
    assert_error(&is.onbind(&server.url(), elsewhere).await, 403, "M_FORBIDDEN");
    // A room that does not exist.
    let nowhere = format!("!nowhere:{}", server.server_name());
    assert_error(&is.onbind(&server.url(), invite(&carol.user_id, &nowhere, good.clone())).await, 404, "M_NOT_FOUND");
    // The identity server revoked its key.
    is.configure(json!({ "revoked": true })).await;
    assert_error(&is.onbind(&server.url(), invite(&carol.user_id, &room, good.clone())).await, 403, "M_FORBIDDEN");
    is.configure(json!({ "revoked": false })).await;

    // Nothing of it entered the room: no member event for carol or dave, the invitation unused.
    assert_error(&member_event(&alice, &room, &carol.user_id).await, 404, "M_NOT_FOUND");
    assert_error(&member_event(&alice, &room, &dave.user_id).await, 404, "M_NOT_FOUND");
    assert_ne!(third_party_invites(&alice, &room).await[0].1, json!({}));

    // The genuine invitation still works.
    ok(&is.onbind(&server.url(), invite(&carol.user_id, &room, good)).await);
    assert_eq!(ok(&member_event(&alice, &room, &carol.user_id).await)["content"]["membership"], "invite");
}

async fn identity_server_errors_store_nothing(backend: Backend) {
    let (server, is) = start(backend).await;
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;

    // A wrong access token for the identity server: its refusal, not ours (403, not 401).
    assert_error(&invite_by_email(&alice, &room, &is, "erin@example.org", "wrong").await, 403, "M_FORBIDDEN");
    // The identity server fails.
    is.configure(json!({ "refuse": true })).await;
    assert_error(&invite_by_email(&alice, &room, &is, "erin@example.org", IS_TOKEN).await, 502, "M_UNKNOWN");
    is.configure(json!({ "refuse": false })).await;
    // Nothing listens there.
    let gone = json!({ "id_server": format!("127.0.0.1:{}", free_port()), "id_access_token": IS_TOKEN,
        "medium": "email", "address": "erin@example.org" });
    let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
    assert_error(&alice.post(&path, &gone).await, 502, "M_UNKNOWN");
    // Not a host name.
    let mut bad = gone.clone();
    bad["id_server"] = json!("127.0.0.1/evil?");
    assert_error(&alice.post(&path, &bad).await, 400, "M_INVALID_PARAM");
    // Other media than email.
    let mut phone = gone.clone();
    phone["medium"] = json!("msisdn");
    assert_error(&alice.post(&path, &phone).await, 400, "M_THREEPID_MEDIUM_NOT_SUPPORTED");
    // Someone not in the room: refused before the identity server hears of it.
    let mallory = server.register("mallory").await;
    assert_error(&invite_by_email(&mallory, &room, &is, "erin@example.org", IS_TOKEN).await, 403, "M_FORBIDDEN");
    // A room that does not exist.
    let nowhere = format!("!nowhere:{}", server.server_name());
    assert_error(&invite_by_email(&alice, &nowhere, &is, "erin@example.org", IS_TOKEN).await, 404, "M_NOT_FOUND");

    assert!(is.invites().await.is_empty());
    assert!(third_party_invites(&alice, &room).await.is_empty());
}

async fn bound_address_invites_the_user(backend: Backend) {
    let (server, is) = start(backend).await;
    let alice = server.register("alice").await;
    let frank = server.register("frank").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let (answer, _) = is.bind(&server.url(), "frank@example.org", &frank.user_id).await;
    assert_eq!(answer, (200, json!({})));

    ok(&invite_by_email(&alice, &room, &is, "frank@example.org", IS_TOKEN).await);
    let invite = ok(&member_event(&alice, &room, &frank.user_id).await).clone();
    assert_eq!(invite["content"]["membership"], "invite");
    assert!(invite["content"]["third_party_invite"].is_null(), "{invite}");
    assert!(is.invites().await.is_empty(), "nothing stored for a bound address");
    assert!(third_party_invites(&alice, &room).await.is_empty());
    join(&frank, &room).await;
}

macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    };
}

on_both!(unbound_address_invite_then_bind_and_join);
on_both!(forged_or_misdirected_invitations_are_refused);
on_both!(identity_server_errors_store_nothing);
on_both!(bound_address_invites_the_user);

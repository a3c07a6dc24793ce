//! Third-party invites across two Myelin servers with a real identity server (the Python one
//! of `tests/nio/identity_server.py`, ed25519 by PyNaCl): alice of server A invites an email
//! address nobody has bound; the identity server stores the invitation; bob of server B binds
//! the address and the identity server calls B's `/3pid/onbind`. B is not in the room, so it
//! hands the signed invitation to A (`exchange_third_party_invite`); A checks it against the
//! room's `m.room.third_party_invite` and the identity server's key, invites bob over
//! `/invite`, and bob joins.

#[macro_use]
mod common;

use std::time::Duration;

use common::peer::{EventSpec, Peer};
use common::{Backend, FedServer, enc, sync_until, wait_until};
use serde_json::json;
use test_support::identity::{IS_TOKEN, IdentityServer};

async fn invite_over_federation(backend: Backend, net: &str) {
    common::init_crypto();
    let is = IdentityServer::start(common::free_port("127.0.0.1"));
    let env = [("MYELIN_IDENTITY__PLAIN_HTTP", "true")];
    let a = FedServer::start_on_with_env(&format!("{net}.1"), backend, &env).await;
    let b = FedServer::start_on_with_env(&format!("{net}.2"), backend, &env).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_private_room().await;

    let (s, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({ "id_server": is.name(), "id_access_token": IS_TOKEN,
                    "medium": "email", "address": "bob@example.org" }),
        )
        .await;
    assert_eq!(s, 200, "3pid invite: {body}");
    let tokens: Vec<String> = alice
        .state(&room)
        .await
        .into_iter()
        .filter(|(t, _, _)| t == "m.room.third_party_invite")
        .map(|(_, k, _)| k)
        .collect();
    assert_eq!(tokens.len(), 1);

    // The identity server learns that bob bound the address and tells B.
    let ((status, answer), _) = is.bind(&b.url(), "bob@example.org", &bob.user_id).await;
    assert_eq!(status, 200, "onbind on B: {answer}");

    // A invited bob over federation: bob sees it on B and joins.
    let rid = room.clone();
    sync_until(&bob, Duration::from_secs(30), "the invite", |s| !s["rooms"]["invite"][&rid].is_null()).await;
    let (s, body) = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}?format=event", enc(&room), enc(&bob.user_id)))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["sender"], alice.user_id.as_str());
    assert_eq!(body["content"]["third_party_invite"]["signed"]["token"], tokens[0].as_str());
    let (s, body) = bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    assert_eq!(s, 200, "bob joins: {body}");
    wait_until(Duration::from_secs(30), "bob joined, seen by alice", || async {
        alice.membership(&room, &bob.user_id).await.as_deref() == Some("join")
    })
    .await;
    // The token is used up.
    let (s, content) = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.third_party_invite/{}", enc(&room), enc(&tokens[0])))
        .await;
    assert_eq!((s, content), (200, json!({})));

    // An invitation whose token the room never had: A refuses the exchange, B says so.
    let forged = json!({ "medium": "email", "address": "x@example.org", "mxid": bob.user_id, "invites": [{
        "medium": "email", "address": "x@example.org", "mxid": bob.user_id, "room_id": room,
        "sender": alice.user_id, "signed": { "mxid": bob.user_id, "token": "unknown", "signatures": {} } }] });
    let (status, answer) = is.onbind(&b.url(), forged).await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(answer["errcode"], "M_FORBIDDEN", "{answer}");
}

both_backends!(invite_over_federation, "143");

/// Member events with `third_party_invite` that arrive over `/send` pass the auth rules only
/// with a matching `m.room.third_party_invite` of the same sender and a signature by one of its
/// keys: a peer's invite with an unknown token, or with alice's token and a valid signature but
/// sent by its own user, is rejected.
async fn forged_third_party_invites_over_send_are_rejected(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.1"), backend).await;
    let peer = Peer::start(&format!("{net}.2")).await;
    let alice = a.register("alice").await;
    let room = alice.create_public_room().await;
    peer.join(&a, &room, "mallory").await;
    let victim = peer.user_id("victim");
    // Alice's invitation, whose key the peer holds (so that it can make a valid signature).
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.third_party_invite/tok", enc(&room)),
            json!({ "display_name": "v...@example.org", "key_validity_url": "https://is.example/isvalid",
                    "public_key": peer.policy_public_key() }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    wait_until(Duration::from_secs(30), "the peer receives the invitation", || async {
        peer.state().state.contains_key(&("m.room.third_party_invite".to_owned(), "tok".to_owned()))
    })
    .await;

    for token in ["unknown", "tok"] {
        let signed = peer.sign_with_policy_key(json!({ "mxid": victim, "sender": alice.user_id, "token": token }));
        let invite = peer.build(EventSpec::state(
            "m.room.member",
            &victim,
            json!({ "membership": "invite", "third_party_invite": { "display_name": "v", "signed": signed } }),
        ));
        let (s, answer) = peer.send_pdus(&a, &[&invite]).await;
        assert_eq!(s, 200, "{answer}");
        assert!(answer["pdus"][&invite.id]["error"].is_string(), "token {token}: accepted: {answer}");
    }
    assert_eq!(alice.membership(&room, &victim).await, None);
}

both_backends!(forged_third_party_invites_over_send_are_rejected, "145");

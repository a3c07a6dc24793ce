//! Policy servers (spec v1.18) as a room member: the test peer is the room's policy server
//! (`m.room.policy` names it, and it has a joined member). Myelin asks it to sign each local
//! event (`POST /_matrix/policy/v1/sign`), adds its `ed25519:policy_server` signature, and
//! refuses the client's event when it refuses; events received without its valid signature are
//! soft-failed (never shown to clients).

#[macro_use]
mod common;

use std::time::Duration;

use common::peer::{EventSpec, Peer};
use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

async fn policy_server_signs_local_and_vets_received_events(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.1"), backend).await;
    let peer = Peer::start(&format!("{net}.2")).await;
    let alice = a.register("alice").await;
    let room = alice.create_public_room().await;
    peer.join(&a, &room, "ps").await;
    let ps = peer.user_id("ps");

    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.policy/", enc(&room)),
            json!({ "via": peer.name(), "public_keys": { "ed25519": peer.policy_public_key() } }),
        )
        .await;
    assert_eq!(s, 200, "m.room.policy: {b}");
    assert_eq!(peer.state().policy_requests, 0, "the m.room.policy event itself is never sent for signing");

    // A local message is signed by the policy server before it is sent.
    let hello = alice.say(&room, "hello").await;
    wait_until(T, "the peer receives the message", || async { peer.state().events.contains_key(&hello) }).await;
    let pdu = peer.state().events[&hello].clone();
    let signature = pdu["signatures"][peer.name()]["ed25519:policy_server"].as_str().expect("policy signature");
    assert_eq!(signature, peer.policy_signature(&pdu));
    assert_eq!(peer.state().policy_requests, 1);

    // The policy server refuses: the client gets 403 and nothing is stored.
    peer.state().policy_refuse_body = Some("buy now".into());
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/spam1", enc(&room)),
            json!({ "msgtype": "m.text", "body": "buy now, cheap" }),
        )
        .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(b["errcode"], "M_FORBIDDEN", "{b}");
    assert!(!alice.messages(&room).await.iter().any(|m| m.contains("buy now")));
    // Its other events still go through, with the same txn id answered once.
    let again = alice.say(&room, "still here").await;
    assert!(alice.messages(&room).await.contains(&"still here".to_owned()), "{again}");

    // Received events: without the policy server's signature, soft-failed; with it, shown.
    let unsigned = peer.build(EventSpec::message("unsigned words").sender(&ps));
    let (s, answer) = peer.send_pdus(&a, &[&unsigned]).await;
    assert_eq!(s, 200, "{answer}");
    peer.advance(&unsigned);
    let mut signed = peer.build(EventSpec::message("signed words").sender(&ps));
    let sig = peer.policy_signature(&signed.json);
    signed.json["signatures"][peer.name()]["ed25519:policy_server"] = json!(sig);
    let (s, answer) = peer.send_pdus(&a, &[&signed]).await;
    assert_eq!(s, 200, "{answer}");
    wait_until(T, "alice sees the signed message", || async {
        alice.messages(&room).await.contains(&"signed words".to_owned())
    })
    .await;
    assert!(!alice.messages(&room).await.contains(&"unsigned words".to_owned()), "unsigned event shown");
}

both_backends!(policy_server_signs_local_and_vets_received_events, "144");

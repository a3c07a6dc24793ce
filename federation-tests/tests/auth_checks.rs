//! The auth rules applied to what other servers hand us (issue 16, defects 4 and 6): remote
//! redactions take effect only as the redaction rules allow, and the state of a `send_join`
//! answer is checked against the auth rules before it becomes the room's state.
//!
//! Every test uses the hostile-peer harness (`common::peer`) and runs on SQLite (servers on
//! `127.0.8N.*`) and on PostgreSQL (`127.1.8N.*`).

#[macro_use]
mod common;

use std::time::Duration;

use common::peer::{Built, EventSpec, Peer};
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Whether a `/send` answer accepted the PDU.
fn accepted(answer: &Value, ev: &Built) -> bool {
    answer["pdus"][&ev.id].as_object().is_some_and(|r| !r.contains_key("error"))
}

/// Pushes `ev` to `dest` in a transaction and makes it the peer's latest event; returns
/// whether `dest` accepted it.
async fn push(peer: &Peer, dest: &FedServer, ev: &Built) -> bool {
    let (s, answer) = peer.send_pdus(dest, &[ev]).await;
    assert_eq!(s, 200, "{answer}");
    let ok = accepted(&answer, ev);
    if ok {
        peer.advance(ev);
    }
    ok
}

/// A redaction by mallory (content `redacts`, room version 11).
fn redaction_of(target: &str) -> EventSpec {
    EventSpec { kind: "m.room.redaction".into(), content: json!({ "redacts": target }), ..EventSpec::default() }
}

/// The content of `id` as `client` reads it, and as another server reads it over `/event`.
async fn contents(client: &Client, peer: &Peer, server: &FedServer, room: &str, id: &str) -> (Value, Value) {
    let (s, local) = client.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id))).await;
    assert_eq!(s, 200, "{local}");
    let (s, remote) =
        peer.request(&server.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(id)), None).await;
    assert_eq!(s, 200, "{remote}");
    (local["content"].clone(), remote["pdus"][0]["content"].clone())
}

/// Waits until the peer holds `id` (received in a transaction) as its latest event.
async fn peer_receives(peer: &Peer, id: &str) {
    wait_until(T, "the peer receives the event", || async { peer.state().latest == vec![id.to_owned()] }).await;
}

/// Defect 4: in room versions 3 and later a redaction is a valid event, but it takes effect
/// only if its sender has the `redact` power level or is on the server of the target's sender.
/// Mallory (power 0, on the peer) redacts alice's message: stored, but the message stays whole
/// for alice and for other servers. Mallory redacts eve's (same server) message: redacted. With
/// the `redact` level, mallory's next redaction of alice's message takes effect; and a
/// redaction that arrives before its target applies when the target arrives.
async fn remote_redactions_follow_the_redaction_rules(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "public_chat", "name": "redactions", "room_version": "11" }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let room = b["room_id"].as_str().expect("room_id").to_owned();
    peer.join(&a, &room, "mallory").await;
    let eve = peer.user_id("eve");
    let eve_join = peer.build(EventSpec::state("m.room.member", &eve, json!({ "membership": "join" })).sender(&eve));
    assert!(push(&peer, &a, &eve_join).await, "eve joins");

    // Mallory, without the redact level, redacts alice's message: accepted, no effect.
    let m1 = alice.say(&room, "alice's words").await;
    peer_receives(&peer, &m1).await;
    let r1 = peer.build(redaction_of(&m1));
    assert!(push(&peer, &a, &r1).await, "a redaction is a valid event even when it does not take effect");
    let (local, remote) = contents(&alice, &peer, &a, &room, &m1).await;
    assert_eq!(local["body"], "alice's words", "unredacted for local clients");
    assert_eq!(remote["body"], "alice's words", "unredacted for other servers");

    // Mallory redacts eve's message: same server, takes effect.
    let e1 = peer.build(EventSpec::message("eve's words").sender(&eve));
    assert!(push(&peer, &a, &e1).await);
    let r2 = peer.build(redaction_of(&e1.id));
    assert!(push(&peer, &a, &r2).await);
    let (local, remote) = contents(&alice, &peer, &a, &room, &e1.id).await;
    assert_eq!(local, json!({}), "same-server redaction applied for local clients");
    assert_eq!(remote, json!({}), "same-server redaction applied for other servers");

    // Alice gives mallory the redact level (50); mallory's redaction of alice's message applies.
    let (s, mut pl) = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room))).await;
    assert_eq!(s, 200, "{pl}");
    pl["users"][peer.user_id("mallory")] = json!(50);
    let (s, b) = alice.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)), pl).await;
    assert_eq!(s, 200, "{b}");
    peer_receives(&peer, b["event_id"].as_str().expect("event_id")).await;
    let r3 = peer.build(redaction_of(&m1));
    assert!(push(&peer, &a, &r3).await);
    let (local, remote) = contents(&alice, &peer, &a, &room, &m1).await;
    assert_eq!(local, json!({}), "redaction with the redact level applied for local clients");
    assert_eq!(remote, json!({}), "redaction with the redact level applied for other servers");

    // A redaction that arrives before its target (a fork: both on mallory's latest event)
    // applies when the target arrives.
    let base = peer.state().latest.clone();
    let base: Vec<&str> = base.iter().map(String::as_str).collect();
    let e2 = peer.build(EventSpec::message("eve again").sender(&eve).prev(&base));
    let r4 = peer.build(redaction_of(&e2.id).prev(&base));
    assert!(push(&peer, &a, &r4).await, "the redaction, its target unknown");
    assert!(push(&peer, &a, &e2).await, "the target, after its redaction");
    let (local, remote) = contents(&alice, &peer, &a, &room, &e2.id).await;
    assert_eq!(local, json!({}), "held redaction applied when its target arrived");
    assert_eq!(remote, json!({}), "held redaction applied for other servers");
}
both_backends!(remote_redactions_follow_the_redaction_rules, "86");

/// Defect 6: bob (on Myelin) joins a room hosted by the peer, whose `send_join` answer carries
/// a forged power-levels event: eve, at power 0, makes herself an admin, with auth events
/// (the real power levels) that do not allow it. Myelin rejects it: the previous power levels
/// stay in its state, and eve's later admin-only action is rejected.
async fn forged_state_in_a_send_join_answer_is_rejected(backend: Backend, net: &str) {
    let b = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let bob = b.register("bob").await;
    let room = peer.create_room("11");
    let eve = peer.user_id("eve");
    let eve_join = peer.build(EventSpec::state("m.room.member", &eve, json!({ "membership": "join" })).sender(&eve));
    peer.advance(&eve_join);
    let pl_key = ("m.room.power_levels".to_owned(), String::new());
    let real_pl = peer.state().state[&pl_key].clone();
    let mut content = peer.state().events[&real_pl]["content"].clone();
    content["users"][&eve] = json!(100);
    let forged = peer.build(EventSpec::state("m.room.power_levels", "", content).sender(&eve));
    peer.state().join_answer_state.insert(pl_key.clone(), forged.id.clone());

    let (s, body) = bob.join_via(&room, &peer.name()).await;
    assert_eq!(s, 200, "bob joins through the peer: {body}");
    let state = bob.state(&room).await;
    let pl = state.iter().find(|(t, k, _)| (t, k) == (&pl_key.0, &pl_key.1)).map(|(_, _, id)| id.clone());
    assert_eq!(pl.as_deref(), Some(real_pl.as_str()), "the previous power levels stand: {state:?}");

    // Eve renames the room (power 50 needed), on top of bob's join, with the auth events of
    // the peer's real state: B rejects it.
    peer_receives(&peer, &bob_join_id(&bob, &room).await).await;
    let rename = peer.build(EventSpec::state("m.room.name", "", json!({ "name": "eve rules" })).sender(&eve));
    let (s, answer) = peer.send_pdus(&b, &[&rename]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(!accepted(&answer, &rename), "eve's admin-only action is rejected: {answer}");
    let (s, name) = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room))).await;
    assert_eq!(s, 404, "no room name: {name}");
    // Citing the forged power levels as an auth event does not help either.
    let mut spec = EventSpec::state("m.room.name", "", json!({ "name": "eve rules" })).sender(&eve);
    let create = peer.state().state[&("m.room.create".to_owned(), String::new())].clone();
    let member = peer.state().state[&("m.room.member".to_owned(), eve.clone())].clone();
    spec.auth_events = Some(vec![create, forged.id.clone(), member]);
    let rename = peer.build(spec);
    let (s, answer) = peer.send_pdus(&b, &[&rename]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(!accepted(&answer, &rename), "an event citing the forged power levels is rejected: {answer}");
}
both_backends!(forged_state_in_a_send_join_answer_is_rejected, "87");

/// The event id of `client`'s own join in the room's current state.
async fn bob_join_id(client: &Client, room: &str) -> String {
    client
        .state(room)
        .await
        .into_iter()
        .find(|(t, k, _)| t == "m.room.member" && *k == client.user_id)
        .map(|(_, _, id)| id)
        .expect("own join in the state")
}

/// Defect 6, through `/state_ids`: an event of the peer with a gap before it makes Myelin take
/// the state before it from the peer, whose answer holds a forged power-levels event (mallory,
/// at power 0, makes herself an admin). The forged event is rejected, the real power levels
/// stay the state before the event, and mallory's topic change (power 50 needed) is rejected.
async fn forged_state_in_a_state_ids_answer_is_rejected(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = alice.create_public_room().await;
    peer.join(&a, &room, "mallory").await;
    let mallory = peer.user_id("mallory");
    wait_until(T, "mallory joined", || async { alice.membership(&room, &mallory).await.as_deref() == Some("join") })
        .await;

    let key = |t: &str, k: &str| (t.to_owned(), k.to_owned());
    let real_pl = peer.state().state[&key("m.room.power_levels", "")].clone();
    let create = peer.state().state[&key("m.room.create", "")].clone();
    let member = peer.state().state[&key("m.room.member", &mallory)].clone();
    // A gap (Y, never sent), then the forged power levels, then the topic change.
    let y = peer.build(EventSpec::message("the gap"));
    peer.advance(&y);
    let mut content = peer.state().events[&real_pl]["content"].clone();
    content["users"][&mallory] = json!(100);
    let forged = peer.build(EventSpec::state("m.room.power_levels", "", content));
    peer.advance(&forged);
    let mut spec = EventSpec::state("m.room.topic", "", json!({ "topic": "mallory rules" }));
    let mut auth = vec![real_pl.clone(), member];
    if !peer.rules().authorization.room_create_event_id_as_room_id {
        auth.push(create);
    }
    spec.auth_events = Some(auth);
    let topic = peer.build(spec);
    // The peer fills no gap through get_missing_events: Myelin asks `/state_ids`.
    let (s, answer) = peer.send_pdus(&a, &[&topic]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(!accepted(&answer, &topic), "the topic change is rejected: {answer}");
    let (s, t) = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room))).await;
    assert!(s == 404 || t["topic"] != "mallory rules", "topic unchanged: {t}");
    let state = alice.state(&room).await;
    assert!(
        state.iter().any(|(t, k, id)| t == "m.room.power_levels" && k.is_empty() && *id == real_pl),
        "the real power levels stand: {state:?}"
    );
}
both_backends!(forged_state_in_a_state_ids_answer_is_rejected, "88");

/// Defect 6, the join itself: when the resident's `make_join` template cites the forged power
/// levels among the join's auth events, the join would be rejected by every honest server, so
/// Myelin refuses to join (403) instead of adopting a room state built on a forged event.
async fn join_citing_a_forged_auth_event_is_refused(backend: Backend, net: &str) {
    let b = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let bob = b.register("bob").await;
    let room = peer.create_room("11");
    let eve = peer.user_id("eve");
    let eve_join = peer.build(EventSpec::state("m.room.member", &eve, json!({ "membership": "join" })).sender(&eve));
    peer.advance(&eve_join);
    let pl_key = ("m.room.power_levels".to_owned(), String::new());
    let real_pl = peer.state().state[&pl_key].clone();
    let mut content = peer.state().events[&real_pl]["content"].clone();
    content["users"][&eve] = json!(100);
    let forged = peer.build(EventSpec::state("m.room.power_levels", "", content).sender(&eve));
    // The peer's own view now holds the forged event: its state and its join templates cite it.
    peer.advance(&forged);

    let (s, body) = bob.join_via(&room, &peer.name()).await;
    assert_eq!(s, 403, "the join is refused: {body}");
    assert_eq!(body["errcode"], "M_FORBIDDEN", "{body}");
    assert_eq!(bob.membership(&room, &bob.user_id).await, None, "bob is not in the room");
}
both_backends!(join_citing_a_forged_auth_event_is_refused, "89");

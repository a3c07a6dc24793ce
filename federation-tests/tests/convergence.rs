//! Federation that converges with real and hostile peers (issue 16): invites into rooms a
//! server is already in, outliers promoted when they arrive again, depth and size limits, late
//! ancestors, refused transactions, and what servers outside a room may read.
//!
//! Tests with a scripted peer use the hostile-peer harness (`common::peer`). Every test runs on
//! SQLite (servers on its own `127.0.6N.*` addresses) and on PostgreSQL (`127.1.6N.*`).

#[macro_use]
mod common;

use std::time::Duration;

use common::peer::{Built, EventSpec, Peer};
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// 2^53 - 1, the largest integer of canonical JSON.
const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;

/// The everyday case of defect 1: B is already in A's private room when a second (and third)
/// user of B is invited; the invite reaches B on `/invite` and again in a transaction, and
/// each invited user joins. Both directions, several users each.
async fn invites_of_several_users_of_a_member_server_both_directions(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let b = FedServer::start_on(&format!("{net}.12"), backend).await;
    let alice = a.register("alice").await;
    let carol = a.register("carol").await;
    let erin = a.register("erin").await;
    let bob = b.register("bob").await;
    let dave = b.register("dave").await;
    let frank = b.register("frank").await;

    let on_a = alice.create_private_room().await;
    for guest in [&bob, &dave, &frank] {
        alice.invite_and_join(guest, &on_a).await;
    }
    let on_b = bob.create_private_room().await;
    for guest in [&alice, &carol, &erin] {
        bob.invite_and_join(guest, &on_b).await;
    }
    for (room, people) in [(&on_a, [&alice, &bob, &dave, &frank]), (&on_b, [&bob, &alice, &carol, &erin])] {
        let last = people[3].say(room, "everyone here").await;
        let _ = last;
        for client in people {
            wait_until(T, "the last message everywhere", || async {
                client.messages(room).await.contains(&"everyone here".to_owned())
            })
            .await;
        }
        wait_until(T, "the same state on A and B", || async {
            people[0].state(room).await == people[1].state(room).await
        })
        .await;
    }
}
both_backends!(invites_of_several_users_of_a_member_server_both_directions, "60");

/// A public room on `a` that `peer` joined as `@mallory`; returns the room id.
async fn room_with_peer(a: &FedServer, alice: &Client, peer: &Peer) -> String {
    let room = alice.create_public_room().await;
    peer.join(a, &room, "mallory").await;
    let mallory = peer.user_id("mallory");
    wait_until(T, "mallory joined", || async { alice.membership(&room, &mallory).await.as_deref() == Some("join") })
        .await;
    room
}

/// Whether a `/send` answer accepted the PDU.
fn accepted(answer: &Value, ev: &Built) -> bool {
    answer["pdus"][&ev.id].as_object().is_some_and(|r| !r.contains_key("error"))
}

/// An event fetched as an outlier (through `/event_auth`, as an auth event of another one)
/// that later arrives in a transaction enters the timeline (defect 1).
async fn outlier_fetched_for_auth_is_promoted_when_it_arrives(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let mallory = peer.user_id("mallory");

    // Y: mallory's new display name (a state event); X: a message citing Y as auth and prev.
    let y = peer.build(EventSpec::state(
        "m.room.member",
        &mallory,
        json!({ "membership": "join", "displayname": "Mallory Y" }),
    ));
    peer.advance(&y);
    let x = peer.build(EventSpec::message("cites Y"));
    peer.advance(&x);
    let (s, answer) = peer.send_pdus(&a, &[&x]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &x), "X accepted: {answer}");
    // A holds Y (fetched for X's auth chain) but not in the timeline.
    let ids = alice.event_ids(&room).await;
    assert!(ids.contains(&x.id), "X in the timeline");

    let (s, answer) = peer.send_pdus(&a, &[&y]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &y), "Y, held as an outlier, accepted when sent: {answer}");
    let ids = alice.event_ids(&room).await;
    assert!(ids.contains(&y.id), "Y promoted into the timeline: {ids:?}");
    let pos = |id: &str| ids.iter().position(|e| e == id).expect("in timeline");
    assert!(pos(&y.id) < pos(&x.id), "Y before X (its child)");
    let (s, member) =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&mallory))).await;
    assert_eq!(s, 200, "{member}");
    assert_eq!(member["displayname"], "Mallory Y");
    // New local events extend X only (Y is an ancestor).
    let after = alice.say(&room, "after").await;
    let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(&after)), None).await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["pdus"][0]["prev_events"], json!([x.id]));
}
both_backends!(outlier_fetched_for_auth_is_promoted_when_it_arrives, "61");

/// The same, when the outlier comes back through `get_missing_events`: the peer fills the
/// gap before X, and Y, held as an outlier since A fetched X's auth chain, enters the
/// timeline (defect 1).
async fn outlier_is_promoted_when_get_missing_events_brings_it(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let mallory = peer.user_id("mallory");
    peer.state().serve_missing_events = true;
    let y = peer.build(EventSpec::state(
        "m.room.member",
        &mallory,
        json!({ "membership": "join", "displayname": "Mallory Y" }),
    ));
    peer.advance(&y);
    let x = peer.build(EventSpec::message("cites Y"));
    peer.advance(&x);
    let (s, answer) = peer.send_pdus(&a, &[&x]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &x), "{answer}");
    let ids = alice.event_ids(&room).await;
    assert!(ids.contains(&y.id), "Y, fetched by get_missing_events, in the timeline: {ids:?}");
    assert!(ids.contains(&x.id), "X in the timeline");
    let pos = |id: &str| ids.iter().position(|e| e == id).expect("in timeline");
    assert!(pos(&y.id) < pos(&x.id), "Y before X");
    let after = alice.say(&room, "after").await;
    let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(&after)), None).await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["pdus"][0]["prev_events"], json!([x.id]), "{ev}");
}
both_backends!(outlier_is_promoted_when_get_missing_events_brings_it, "71");

/// A peer's event at depth 2^53 - 1 is valid; local events after it keep that depth instead
/// of failing (defect 10).
async fn depth_at_the_canonical_json_limit_does_not_break_local_sends(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;

    let deep = peer.build(EventSpec::message("very deep").depth(MAX_SAFE_INT));
    let (s, answer) = peer.send_pdus(&a, &[&deep]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &deep), "{answer}");
    let first = alice.say(&room, "after the deep event").await;
    let second = alice.say(&room, "and another").await;
    for id in [&first, &second] {
        let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(id)), None).await;
        assert_eq!(s, 200, "{ev}");
        assert_eq!(ev["pdus"][0]["depth"], json!(MAX_SAFE_INT), "depth capped: {ev}");
    }
    let messages = alice.messages(&room).await;
    assert_eq!(messages, vec!["very deep", "after the deep event", "and another"]);
}
both_backends!(depth_at_the_canonical_json_limit_does_not_break_local_sends, "62");

/// A PDU of exactly 65,536 bytes is accepted, one of 65,537 refused (defect 10).
async fn pdu_size_limit_is_65536_bytes_inclusive(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;

    let sized = |target: usize, tag: &str| {
        let mut pad = target - 1000;
        loop {
            let ev = peer.build(EventSpec::message(&format!("{tag}{}", "x".repeat(pad))).depth(100));
            let object: ruma::CanonicalJsonObject = serde_json::from_value(ev.json.clone()).expect("canonical");
            let len = serde_json::to_vec(&object).expect("json").len();
            if len == target {
                return ev;
            }
            pad = pad + target - len;
        }
    };
    let at_limit = sized(65_536, "a");
    let over = sized(65_537, "b");
    let (s, answer) = peer.send_pdus(&a, &[&at_limit, &over]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &at_limit), "65,536 bytes accepted: {answer}");
    assert!(!accepted(&answer, &over), "65,537 bytes refused: {answer}");
    let ids = alice.event_ids(&room).await;
    assert!(ids.contains(&at_limit.id) && !ids.contains(&over.id));
}
both_backends!(pdu_size_limit_is_65536_bytes_inclusive, "63");

/// An event whose child arrived first (its gap filled from the peer's `/state_ids`) arrives
/// late: it must not become a forward extremity (defect 9).
async fn late_ancestor_is_not_a_forward_extremity(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;

    let e1 = peer.build(EventSpec::message("e1"));
    peer.advance(&e1);
    let e2 = peer.build(EventSpec::message("e2"));
    peer.advance(&e2);
    // E2 first: the peer does not fill the gap with get_missing_events, so A takes the state
    // before E2 from the peer's /state_ids.
    let (s, answer) = peer.send_pdus(&a, &[&e2]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &e2), "{answer}");
    let (s, answer) = peer.send_pdus(&a, &[&e1]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &e1), "{answer}");
    let after = alice.say(&room, "after").await;
    let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(&after)), None).await;
    assert_eq!(s, 200, "{ev}");
    assert_eq!(ev["pdus"][0]["prev_events"], json!([e2.id]), "the late E1 is not an extremity: {ev}");
}
both_backends!(late_ancestor_is_not_a_forward_extremity, "64");

/// A transaction the peer answers with 400 is not retried and does not hold back later events
/// (defect 11).
async fn refused_transaction_does_not_block_later_events(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    peer.state().refuse_first_txn = Some(400);
    alice.say(&room, "refused").await;
    wait_until(T, "the first transaction refused", || async { peer.state().refused_txn.is_some() }).await;
    let second = alice.say(&room, "delivered").await;
    wait_until(T, "the next event delivered", || async { peer.state().events.contains_key(&second) }).await;
    // retry_min_ms is 200: a retried transaction would have come again by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = peer.state();
    let refused = st.refused_txn.clone().expect("refused");
    let attempts = st.txns.iter().filter(|(t, _)| *t == refused).count();
    assert_eq!(attempts, 1, "the refused transaction is not sent again: {:?}", st.txns);
}
both_backends!(refused_transaction_does_not_block_later_events, "65");

/// A transaction answered with 429 (too many requests) is not dropped: it is sent again, with
/// the same id, and delivered.
async fn transaction_answered_429_is_retried(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    {
        let mut st = peer.state();
        st.refuse_first_txn = Some(429);
        st.refuse_attempts = Some(1);
    }
    let id = alice.say(&room, "after a 429").await;
    wait_until(T, "the event delivered on a retry", || async { peer.state().events.contains_key(&id) }).await;
    let st = peer.state();
    let refused = st.refused_txn.clone().expect("refused");
    let attempts: Vec<&Vec<String>> = st.txns.iter().filter(|(t, _)| *t == refused).map(|(_, ids)| ids).collect();
    assert_eq!(attempts.len(), 2, "one refusal, one retry of the same transaction: {:?}", st.txns);
    assert_eq!(attempts[0], attempts[1], "the retry carries the same PDUs");
}
both_backends!(transaction_answered_429_is_retried, "70");

/// `/invite` checks the room's server ACL (defect 12).
async fn invite_from_a_server_denied_by_the_acl_is_refused(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let carol = a.register("carol").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let version = peer.state().room_version.clone().expect("version");
    let (peer, a, room) = (&peer, &a, &room);
    let invite = |target: String| {
        let ev = peer.build(EventSpec::state("m.room.member", &target, json!({ "membership": "invite" })));
        let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room), enc(&ev.id));
        let body = json!({ "room_version": version, "event": ev.json, "invite_room_state": [] });
        async move { peer.request(&a.name(), "PUT", &path, Some(body)).await }
    };
    // Mallory may invite (level 0).
    let (s, mut levels) =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(room))).await;
    assert_eq!(s, 200, "{levels}");
    levels["invite"] = json!(0);
    let (s, body) =
        alice.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(room)), levels).await;
    assert_eq!(s, 200, "{body}");
    let pl = body["event_id"].as_str().expect("event_id").to_owned();
    wait_until(T, "the peer has the new power levels", || async {
        peer.state().state.get(&("m.room.power_levels".to_owned(), String::new())) == Some(&pl)
    })
    .await;
    let (s, body) = invite(bob.user_id.clone()).await;
    assert_eq!(s, 200, "an invite before the ACL: {body}");
    let (s, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl/", enc(room)),
            json!({ "allow": ["*"], "deny": [peer.ip], "allow_ip_literals": true }),
        )
        .await;
    assert_eq!(s, 200, "ACL: {body}");
    let (s, body) = invite(carol.user_id.clone()).await;
    assert_eq!((s, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "an invite from a denied server: {body}");
    assert!(body["error"].as_str().unwrap_or("").contains("ACL"), "{body}");
    let (s, sync) = carol.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200);
    assert!(sync["rooms"]["invite"][room.as_str()].is_null(), "no invite recorded: {sync}");
}
both_backends!(invite_from_a_server_denied_by_the_acl_is_refused, "66");

/// The v1 `/invite` (the PDU as the body, `[200, {"event": ...}]` as the answer) takes the v2
/// path: the invite is countersigned, recorded, and the invited user can join.
async fn invite_through_the_v1_api_is_countersigned_and_recorded(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let bob = a.register("bob").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let (s, mut levels) =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room))).await;
    assert_eq!(s, 200, "{levels}");
    levels["invite"] = json!(0);
    let (s, body) =
        alice.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room)), levels).await;
    assert_eq!(s, 200, "{body}");
    let pl = body["event_id"].as_str().expect("event_id").to_owned();
    wait_until(T, "the peer has the new power levels", || async {
        peer.state().state.get(&("m.room.power_levels".to_owned(), String::new())) == Some(&pl)
    })
    .await;

    let built = peer.build(EventSpec::state("m.room.member", &bob.user_id, json!({ "membership": "invite" })));
    // The v1 request requires the PDU's (since deprecated) `origin`.
    let mut json = built.json.clone();
    json["origin"] = json!(peer.name());
    let mut ev = peer.sign(&peer.rules(), json);
    ev.json["unsigned"] = json!({ "invite_room_state": [{ "type": "m.room.name", "state_key": "", "sender": alice.user_id, "content": { "name": "v1" } }] });
    let path = format!("/_matrix/federation/v1/invite/{}/{}", enc(&room), enc(&ev.id));
    let (s, answer) = peer.request(&a.name(), "PUT", &path, Some(ev.json.clone())).await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer[0], 200, "the v1 answer is [200, {{\"event\": ...}}]: {answer}");
    let signed = &answer[1]["event"];
    assert!(signed["signatures"][a.name()].is_object(), "countersigned by the invited user's server: {answer}");
    assert!(signed["signatures"][peer.name()].is_object(), "{answer}");
    wait_until(T, "bob sees the invite", || async {
        let (_, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
        !sync["rooms"]["invite"][room.as_str()].is_null() || !sync["rooms"]["join"][room.as_str()].is_null()
    })
    .await;
    let (s, body) = bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await;
    assert_eq!(s, 200, "bob joins on the v1 invite: {body}");

    // The v1 shape is checked: an event without its fields is refused.
    let (s, body) = peer.request(&a.name(), "PUT", &path, Some(json!({ "content": {} }))).await;
    assert_eq!((s, body["errcode"].as_str()), (400, Some("M_BAD_JSON")), "{body}");
}
both_backends!(invite_through_the_v1_api_is_countersigned_and_recorded, "79");

/// `get_missing_events` returns no event shallower than `min_depth` (defect 12).
async fn get_missing_events_honours_min_depth(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(alice.say(&room, &format!("m{i}")).await);
    }
    let mut depth = Vec::new();
    for id in &ids {
        let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(id)), None).await;
        assert_eq!(s, 200, "{ev}");
        depth.push(ev["pdus"][0]["depth"].as_i64().expect("depth"));
    }
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room));
    let body = json!({ "earliest_events": [], "latest_events": [ids[4]], "limit": 50, "min_depth": depth[1] });
    let (s, answer) = peer.request(&a.name(), "POST", &path, Some(body)).await;
    assert_eq!(s, 200, "{answer}");
    let events = answer["events"].as_array().cloned().unwrap_or_default();
    let bodies: Vec<&str> = events.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["m1", "m2", "m3"], "{answer}");
    assert!(events.iter().all(|e| e["depth"].as_i64().unwrap_or(0) >= depth[1]), "{answer}");
}
both_backends!(get_missing_events_honours_min_depth, "67");

/// A server none of whose users is in the room any more (its only user was banned) reads
/// nothing of it over federation (defect 12).
async fn departed_server_cannot_read_the_room(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let msg = alice.say(&room, "while mallory is here").await;
    let r = enc(&room);
    let e = enc(&msg);
    let reads = [
        ("GET", format!("/_matrix/federation/v1/event/{e}"), None),
        ("GET", format!("/_matrix/federation/v1/state/{r}?event_id={e}"), None),
        ("GET", format!("/_matrix/federation/v1/state_ids/{r}?event_id={e}"), None),
        ("GET", format!("/_matrix/federation/v1/event_auth/{r}/{e}"), None),
        ("GET", format!("/_matrix/federation/v1/backfill/{r}?v={e}&limit=10"), None),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({ "earliest_events": [], "latest_events": [msg], "limit": 10 })),
        ),
    ];
    for (method, path, body) in &reads {
        let (s, answer) = peer.request(&a.name(), method, path, body.clone()).await;
        assert_eq!(s, 200, "{method} {path} while joined: {answer}");
    }
    let mallory = peer.user_id("mallory");
    let (s, body) =
        alice.post(&format!("/_matrix/client/v3/rooms/{r}/ban"), json!({ "user_id": mallory, "reason": "go" })).await;
    assert_eq!(s, 200, "ban: {body}");
    for (method, path, body) in &reads {
        let (s, answer) = peer.request(&a.name(), method, path, body.clone()).await;
        assert_eq!(
            (s, answer["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{method} {path} after the ban: {answer}"
        );
    }
}
both_backends!(departed_server_cannot_read_the_room, "68");

/// Soft failure (defect 3): events that pass the auth rules against the state before them but
/// not against the current state (here: sent by a user banned meanwhile) are stored, not
/// rejected: they are served to servers and later events may cite them as prev and auth
/// events, but they are neither shown to local clients nor applied to the current state, and
/// new local events do not extend them.
async fn soft_failed_events_are_stored_served_and_usable(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let mallory = peer.user_id("mallory");
    let mike = peer.user_id("mike");
    peer.join(&a, &room, "mike").await;
    wait_until(T, "mike joined", || async { alice.membership(&room, &mike).await.as_deref() == Some("join") }).await;

    // Built on the state before the ban: S (mallory's new name) and M (a message citing S as
    // auth event and prev event).
    let s_ev = peer.build(EventSpec::state(
        "m.room.member",
        &mallory,
        json!({ "membership": "join", "displayname": "Mallory S" }),
    ));
    peer.advance(&s_ev);
    let m_ev = peer.build(EventSpec::message("after S"));
    let (s, body) =
        alice.post(&format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)), json!({ "user_id": mallory })).await;
    assert_eq!(s, 200, "ban: {body}");
    let ban = alice.state(&room).await.into_iter().find(|e| e.0 == "m.room.member" && e.1 == mallory).expect("ban").2;
    wait_until(T, "the peer has the ban", || async { peer.state().events.contains_key(&ban) }).await;

    let (s, answer) = peer.send_pdus(&a, &[&s_ev, &m_ev]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &s_ev) && accepted(&answer, &m_ev), "soft-failed, not rejected: {answer}");
    let ids = alice.event_ids(&room).await;
    assert!(!ids.contains(&s_ev.id) && !ids.contains(&m_ev.id), "not shown to clients: {ids:?}");
    assert_eq!(alice.membership(&room, &mallory).await.as_deref(), Some("ban"), "not applied to the state");
    for id in [&s_ev.id, &m_ev.id] {
        let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(id)), None).await;
        assert_eq!(s, 200, "served to servers: {ev}");
    }

    // Mike's message cites M as its prev event: accepted, and shown.
    let n_ev = peer.build(EventSpec::message("from mike").sender(&mike).prev(&[&m_ev.id]));
    let (s, answer) = peer.send_pdus(&a, &[&n_ev]).await;
    assert_eq!(s, 200, "{answer}");
    assert!(accepted(&answer, &n_ev), "{answer}");
    assert!(alice.event_ids(&room).await.contains(&n_ev.id), "an event after a soft-failed one is shown");
    let after = alice.say(&room, "after").await;
    let (s, ev) = peer.request(&a.name(), "GET", &format!("/_matrix/federation/v1/event/{}", enc(&after)), None).await;
    assert_eq!(s, 200, "{ev}");
    let prev = ev["pdus"][0]["prev_events"].as_array().cloned().unwrap_or_default();
    assert!(prev.contains(&json!(n_ev.id)), "{ev}");
    assert!(!prev.contains(&json!(s_ev.id)) && !prev.contains(&json!(m_ev.id)), "{ev}");
}
both_backends!(soft_failed_events_are_stored_served_and_usable, "69");

/// `GET /_matrix/federation/v1/timestamp_to_event`: a server in the room gets the event nearest
/// a time in either direction; a server with no user in the room gets 403.
async fn timestamp_to_event_for_member_servers(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let outsider = Peer::start(&format!("{net}.13")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    let first = alice.say(&room, "first").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let between = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = alice.say(&room, "second").await;
    let r = enc(&room);
    let path = |dir: &str| format!("/_matrix/federation/v1/timestamp_to_event/{r}?ts={between}&dir={dir}");
    let (s, body) = peer.request(&a.name(), "GET", &path("b"), None).await;
    assert_eq!((s, body["event_id"].as_str()), (200, Some(first.as_str())), "{body}");
    assert!(body["origin_server_ts"].as_u64().is_some_and(|ts| u128::from(ts) <= between), "{body}");
    let (s, body) = peer.request(&a.name(), "GET", &path("f"), None).await;
    assert_eq!((s, body["event_id"].as_str()), (200, Some(second.as_str())), "{body}");
    let future = format!("/_matrix/federation/v1/timestamp_to_event/{r}?ts={}&dir=f", between + 3_600_000);
    let (s, body) = peer.request(&a.name(), "GET", &future, None).await;
    assert_eq!((s, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (s, body) = outsider.request(&a.name(), "GET", &path("b"), None).await;
    assert_eq!((s, body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{body}");
}
both_backends!(timestamp_to_event_for_member_servers, "95");

/// After a destination was down, a backlog is not replayed event by event: each room's newest
/// queued event is sent and the peer fetches the gap (defect 11, second half).
async fn backlog_after_an_outage_is_caught_up_not_replayed(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let peer = Peer::start(&format!("{net}.12")).await;
    let alice = a.register("alice").await;
    let room = room_with_peer(&a, &alice, &peer).await;
    // The peer is "down": it answers 503 to every attempt until told otherwise.
    peer.state().refuse_first_txn = Some(503);
    let first = alice.say(&room, "message 0").await;
    wait_until(T, "the first transaction refused", || async { peer.state().refused_txn.is_some() }).await;
    let started = std::time::Instant::now();
    for i in 1..=60 {
        alice.say(&room, &format!("message {i}")).await;
    }
    let last = alice.say(&room, "the newest").await;
    eprintln!("61 messages queued in {:?}", started.elapsed());
    {
        // The peer comes back: the next attempt of the refused transaction is accepted.
        let mut st = peer.state();
        let refused = st.refused_txn.clone().expect("refused");
        let attempts = st.txns.iter().filter(|(t, _)| *t == refused).count();
        st.refuse_attempts = Some(attempts);
    }
    let took =
        wait_until(T, "the newest message delivered", || async { peer.state().events.contains_key(&last) }).await;
    eprintln!("delivered {took:?} after the peer came back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = peer.state();
    let refused = st.refused_txn.clone().expect("refused");
    let mut delivered: Vec<&String> = st.txns.iter().filter(|(t, _)| *t != refused).flat_map(|(_, ids)| ids).collect();
    delivered.sort();
    delivered.dedup();
    assert!(st.events.contains_key(&first), "the transaction in flight was delivered");
    assert!(
        delivered.len() <= 5,
        "a backlog of 61 events was replayed instead of caught up: {} sent after the outage",
        delivered.len()
    );
}
both_backends!(backlog_after_an_outage_is_caught_up_not_replayed, "96");

/// A state event a server holds only as an outlier (adopted from the `send_join` answer, like
/// the room's create event when joining through another server) is served to a joined user by
/// `/event`, as `/state` shows it.
async fn state_adopted_at_a_remote_join_is_served_by_event(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let b = FedServer::start_on(&format!("{net}.12"), backend).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_public_room().await;
    bob.join_via_seen_by(&room, &a.name(), &alice).await;
    let create = bob
        .state(&room)
        .await
        .into_iter()
        .find(|(kind, _, _)| kind == "m.room.create")
        .map(|(_, _, id)| id)
        .expect("a create event in bob's state");
    let (s, body) = bob.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&create))).await;
    assert_eq!((s, body["type"].as_str()), (200, Some("m.room.create")), "{body}");
}
both_backends!(state_adopted_at_a_remote_join_is_served_by_event, "97");

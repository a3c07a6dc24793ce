//! Three Myelin servers federating over HTTPS on loopback (certificates from the test CA).
//! Each test uses its own 127.0.N.* addresses so that the tests can run in parallel.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(30);

/// Waits until `client` sees `body` in the room's timeline; returns how long that took.
async fn wait_for_message(client: &Client, room: &str, body: &str) -> Duration {
    let body = body.to_owned();
    wait_until(T, &format!("{body} on {}", client.user_id), || {
        let body = body.clone();
        async move { client.messages(room).await.contains(&body) }
    })
    .await
}

#[tokio::test]
async fn join_messages_both_ways_same_order_and_membership_changes() {
    let a = FedServer::start("127.0.1.11").await;
    let b = FedServer::start("127.0.1.12").await;
    let c = FedServer::start("127.0.1.13").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room_id = alice.create_public_room().await;
    let room = room_id.as_str();

    let start = Instant::now();
    let (s, body) = bob.join_via(room, &a.name()).await;
    assert_eq!(s, 200, "bob's join over federation: {body}");
    let join_latency = start.elapsed();
    report(&format!("join latency (remote /join over federation, 2 servers): {} ms", join_latency.as_millis()));
    let (s, body) = carol.join_via(room, &a.name()).await;
    assert_eq!(s, 200, "carol's join over federation: {body}");

    // Every server learns every join.
    for client in [&alice, &bob, &carol] {
        for user in [&bob.user_id, &carol.user_id] {
            let user = user.clone();
            wait_until(T, &format!("{user} joined, seen by {}", client.user_id), || {
                let user = user.clone();
                async move { client.membership(room, &user).await.as_deref() == Some("join") }
            })
            .await;
        }
    }

    // Causally ordered messages: each is sent after the previous one arrived at the sender.
    let mut latencies = Vec::new();
    let people = [&alice, &bob, &carol];
    for i in 0..30 {
        let sender = people[i % 3];
        let receiver = people[(i + 1) % 3];
        let text = format!("m{i} from {}", sender.user_id);
        let sent = Instant::now();
        sender.say(room, &text).await;
        wait_for_message(receiver, room, &text).await;
        latencies.push(sent.elapsed());
        let third = people[(i + 2) % 3];
        wait_for_message(third, room, &text).await;
    }
    report(&format!(
        "cross-server message latency (send -> visible via /messages on another server, n={}): p50 {:.0} ms, p99 {:.0} ms",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0)
    ));
    let expected: Vec<String> = (0..30).map(|i| format!("m{i} from {}", people[i % 3].user_id)).collect();
    for client in people {
        assert_eq!(client.messages(room).await, expected, "order on {}", client.user_id);
    }
    let ids_a = alice.event_ids(room).await;
    let ids_b = bob.event_ids(room).await;
    let tail = |v: &Vec<String>| v[v.len() - 30..].to_vec();
    assert_eq!(tail(&ids_a), tail(&ids_b), "same event order on A and B");

    // Kick carol, ban her, bob leaves: every server agrees.
    let (s, b1) =
        alice.post(&format!("/_matrix/client/v3/rooms/{}/kick", enc(room)), json!({ "user_id": carol.user_id })).await;
    assert_eq!(s, 200, "kick: {b1}");
    for client in [&alice, &bob] {
        wait_until(T, "carol kicked", || async {
            client.membership(room, &carol.user_id).await.as_deref() == Some("leave")
        })
        .await;
    }
    let (s, b1) =
        alice.post(&format!("/_matrix/client/v3/rooms/{}/ban", enc(room)), json!({ "user_id": carol.user_id })).await;
    assert_eq!(s, 200, "ban: {b1}");
    wait_until(T, "carol banned on B", || async {
        bob.membership(room, &carol.user_id).await.as_deref() == Some("ban")
    })
    .await;
    let (s, _) = carol.join_via(room, &a.name()).await;
    assert_ne!(s, 200, "a banned user cannot rejoin");
    let (s, b1) = bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room)), json!({})).await;
    assert_eq!(s, 200, "leave: {b1}");
    wait_until(T, "bob left on A", || async { alice.membership(room, &bob.user_id).await.as_deref() == Some("leave") })
        .await;
    drop((a, b, c));
}

/// Both servers send at the same time: the DAG forks, later events merge the forks, and both
/// servers end with the same timeline and the same state.
#[tokio::test]
async fn concurrent_sends_merge_forks_to_same_state() {
    let a = FedServer::start("127.0.2.11").await;
    let b = FedServer::start("127.0.2.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;

    let n = 15;
    let (ra, rb) = tokio::join!(
        async {
            for i in 0..n {
                alice.say(room, &format!("a{i}")).await;
            }
            // A concurrent state change on one side.
            let (s, b) = alice
                .put(
                    &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room)),
                    json!({ "topic": "forked" }),
                )
                .await;
            assert_eq!(s, 200, "topic: {b}");
        },
        async {
            for i in 0..n {
                bob.say(room, &format!("b{i}")).await;
            }
        }
    );
    let _ = (ra, rb);
    // One more message from each side merges the forks.
    alice.say(room, "merge-a").await;
    bob.say(room, "merge-b").await;
    for client in [&alice, &bob] {
        wait_until(T, "all messages on both servers", || async {
            let m = client.messages(room).await;
            m.len() == 2 * n + 2 && m.contains(&"merge-a".to_owned()) && m.contains(&"merge-b".to_owned())
        })
        .await;
    }
    wait_until(T, "same state on A and B", || async { alice.state(room).await == bob.state(room).await }).await;
    let mut ma = alice.messages(room).await;
    let mut mb = bob.messages(room).await;
    // Causal order holds within each sender's messages on both servers.
    for m in [&ma, &mb] {
        let a_only: Vec<&String> = m.iter().filter(|x| x.starts_with('a')).collect();
        let expected: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
        assert_eq!(a_only, expected.iter().collect::<Vec<_>>());
    }
    ma.sort();
    mb.sort();
    assert_eq!(ma, mb, "same set of messages");
    let topic = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room))).await;
    let topic_b = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room))).await;
    assert_eq!(topic.1["topic"], "forked");
    assert_eq!(topic_b.1["topic"], "forked");
}

/// A peer stopped while messages are sent receives every message exactly once when it
/// returns; the time from its restart to having everything is reported.
#[tokio::test]
async fn stopped_peer_gets_every_event_exactly_once() {
    let a = FedServer::start("127.0.3.11").await;
    let mut b = FedServer::start("127.0.3.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;
    alice.say(room, "before").await;
    wait_for_message(&bob, room, "before").await;

    b.stop();
    let n = 60; // more than one transaction (50 PDUs)
    for i in 0..n {
        alice.say(room, &format!("while down {i}")).await;
    }
    // Let A's sender fail a few times so that its backoff grows to the cap.
    tokio::time::sleep(Duration::from_secs(4)).await;
    b.start_again().await;
    let restarted = Instant::now();
    let expected: Vec<String> =
        std::iter::once("before".to_owned()).chain((0..n).map(|i| format!("while down {i}"))).collect();
    wait_until(Duration::from_secs(60), "all messages after restart", || async { bob.messages(room).await.len() > n })
        .await;
    report(&format!(
        "recovery: peer restarted -> all {n} queued messages visible: {} ms (retry_max_ms = 2000)",
        restarted.elapsed().as_millis()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob.messages(room).await, expected, "every message exactly once, in order");
}

/// Myelin killed with SIGKILL after committing events but before delivering them: after the
/// restart the queue is delivered, and nothing is duplicated.
#[tokio::test]
async fn sigkill_between_commit_and_delivery_delivers_once() {
    let mut a = FedServer::start("127.0.5.11").await;
    let mut b = FedServer::start("127.0.5.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;
    // B is down, so A commits but cannot deliver; then A dies hard.
    b.stop();
    for i in 0..10 {
        alice.say(room, &format!("queued {i}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    b.start_again().await;
    a.start_again().await;
    let expected: Vec<String> = (0..10).map(|i| format!("queued {i}")).collect();
    wait_until(Duration::from_secs(60), "queued messages delivered", || async { bob.messages(room).await.len() >= 10 })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(bob.messages(room).await, expected);
}

/// Acts as server B (with B's own signing key) towards A: unsigned transactions get 401;
/// an event with a bad signature, one with a bad content hash and one that violates the auth
/// rules are rejected (or redacted) and never served to clients.
#[tokio::test]
async fn forged_events_are_rejected() {
    use base64::Engine;
    use ruma::CanonicalJsonObject;
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    use ruma::signatures::Ed25519KeyPair;

    let a = FedServer::start("127.0.4.11").await;
    let b = FedServer::start("127.0.4.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;
    alice.say(room, "hello").await;
    wait_for_message(&bob, room, "hello").await;

    // B's key, read from its data directory.
    let text = std::fs::read_to_string(b.data_dir().join("signing.key")).expect("B's signing key");
    let parts: Vec<&str> = text.lines().next().expect("key line").split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD.decode(parts[2]).expect("base64");
    let b_key = Ed25519KeyPair::from_der(&der, parts[1].to_owned()).expect("key");
    let fake_key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "fake".into()).expect("key");
    let origin = ruma::ServerName::parse(b.name()).expect("name");
    let dest = ruma::ServerName::parse(a.name()).expect("name");
    let rules = ruma::RoomVersionId::V12.rules().expect("v12");

    let https = {
        init_crypto();
        let pem = std::fs::read(ca().pem()).expect("ca");
        reqwest::Client::builder()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
            .build()
            .expect("client")
    };
    let put_txn = |body: serde_json::Value, sign: bool| {
        let https = https.clone();
        let (origin, dest) = (origin.clone(), dest.clone());
        let b_key = &b_key;
        async move {
            let path = format!("/_matrix/federation/v1/send/forged{}", rand::random::<u32>());
            let bytes = serde_json::to_vec(&body).expect("json");
            let mut req = https.put(format!("https://{dest}{path}")).header("content-type", "application/json");
            if sign {
                let r = http::Request::builder().method("PUT").uri(&path).body(bytes.as_slice()).expect("req");
                let x = XMatrix::sign_http_request(&r, XMatrixSigningInput::new(origin, dest.clone(), b_key))
                    .expect("sign");
                req = req.header("authorization", http::HeaderValue::from(&x));
            }
            send(req.body(bytes)).await
        }
    };

    // Unsigned: 401 M_UNAUTHORIZED.
    let (s, body) = put_txn(json!({ "origin": b.name(), "origin_server_ts": 0, "pdus": [] }), false).await;
    assert_eq!(s, 401, "unsigned transaction: {body}");
    assert_eq!(body["errcode"], "M_UNAUTHORIZED");

    // Events built on A's current state.
    let state = alice.state(room).await;
    let find =
        |t: &str, k: &str| state.iter().find(|e| e.0 == t && e.1 == k).map(|e| e.2.clone()).expect("state event");
    let pl = find("m.room.power_levels", "");
    let bob_member = find("m.room.member", &bob.user_id);
    let prev = alice.event_ids(room).await.last().cloned().expect("latest event");
    let make = |kind: &str, state_key: Option<&str>, content: serde_json::Value, key: &Ed25519KeyPair| {
        let mut ev = json!({
            "type": kind,
            "room_id": room,
            "sender": bob.user_id,
            "content": content,
            "origin_server_ts": 1_700_000_000_000u64,
            "depth": 1000,
            "prev_events": [prev],
            "auth_events": [pl, bob_member],
        });
        if let Some(k) = state_key {
            ev["state_key"] = json!(k);
        }
        let mut obj: CanonicalJsonObject = serde_json::from_value(ev).expect("canonical");
        ruma::signatures::hash_and_sign_event(origin.as_str(), key, &mut obj, &rules.redaction).expect("sign event");
        let id = format!("${}", ruma::signatures::reference_hash(&obj, &rules).expect("hash"));
        (id, serde_json::to_value(&obj).expect("json"))
    };
    let (bad_sig_id, bad_sig) =
        make("m.room.message", None, json!({ "msgtype": "m.text", "body": "forged signature" }), &fake_key);
    let (bad_hash_id, mut bad_hash) =
        make("m.room.message", None, json!({ "msgtype": "m.text", "body": "original" }), &b_key);
    bad_hash["content"]["body"] = json!("tampered content");
    let (bad_auth_id, bad_auth) =
        make("m.room.power_levels", Some(""), json!({ "users": { bob.user_id.clone(): 100 } }), &b_key);
    let (s, body) =
        put_txn(json!({ "origin": b.name(), "origin_server_ts": 0, "pdus": [bad_sig, bad_hash, bad_auth] }), true)
            .await;
    assert_eq!(s, 200, "signed transaction: {body}");
    assert!(body["pdus"][&bad_sig_id]["error"].is_string(), "bad signature must be rejected: {body}");
    assert!(body["pdus"][&bad_auth_id]["error"].is_string(), "auth-violating event must be rejected: {body}");
    // The bad hash is accepted in its redacted form: no content reaches clients.
    let messages = alice.messages(room).await;
    assert!(
        !messages.iter().any(|m| m.contains("forged") || m.contains("tampered") || m.contains("original")),
        "{messages:?}"
    );
    let (s, _) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(&bad_sig_id))).await;
    assert_eq!(s, 404, "an event with a bad signature is not served");
    let (s, _) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(&bad_auth_id))).await;
    assert_eq!(s, 404, "an auth-violating event is not served");
    let (s, ev) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(&bad_hash_id))).await;
    if s == 200 {
        assert!(ev["content"]["body"].is_null(), "a bad-hash event is served redacted only: {ev}");
    }
    assert_eq!(find("m.room.power_levels", ""), {
        let st = alice.state(room).await;
        st.iter().find(|e| e.0 == "m.room.power_levels").map(|e| e.2.clone()).expect("pl")
    });
}

/// Typing notifications and read receipts cross servers as EDUs.
#[tokio::test]
async fn typing_and_receipts_across_servers() {
    let a = FedServer::start("127.0.6.11").await;
    let b = FedServer::start("127.0.6.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;

    let (s, body) = alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(room), enc(&alice.user_id)),
            json!({ "typing": true, "timeout": 30000 }),
        )
        .await;
    assert_eq!(s, 200, "typing: {body}");
    let alice_id = alice.user_id.clone();
    sync_until(&bob, T, "alice typing", |b| sees_typing(b, room, &alice_id)).await;

    let event_id = alice.say(room, "read me").await;
    wait_for_message(&bob, room, "read me").await;
    let (s, body) =
        bob.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(room), enc(&event_id)), json!({})).await;
    assert_eq!(s, 200, "receipt: {body}");
    let bob_id = bob.user_id.clone();
    sync_until(&alice, T, "bob's receipt", |b| sees_receipt(b, room, &event_id, &bob_id)).await;
}

/// Pages `/messages` backwards from `from` with `limit` until the start of the room; returns
/// the events oldest first.
async fn page_back(client: &Client, room: &str, from: &str, limit: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut from = from.to_owned();
    for _ in 0..1000 {
        let (s, b) = client
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}&from={}", enc(room), enc(&from)))
            .await;
        assert_eq!(s, 200, "messages: {b}");
        out.extend(b["chunk"].as_array().cloned().unwrap_or_default());
        match b["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => {
                out.reverse();
                return out;
            }
        }
    }
    panic!("pagination did not end");
}

fn ids_of(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["event_id"].as_str().expect("event_id").to_owned()).collect()
}

/// B joins a room with 120 messages of history on A; its user pages back with `/messages` to
/// the room's creation: B backfills from A, shows every event once, in A's order, and `/sync`
/// does not present the history as new events.
#[tokio::test]
async fn backfill_on_messages_reaches_room_creation() {
    let a = FedServer::start("127.0.7.11").await;
    let b = FedServer::start("127.0.7.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    let n = 120;
    for i in 0..n {
        alice.say(room, &format!("history {i}")).await;
    }
    bob.join_via_seen_by(room, &a.name(), &alice).await;

    // Bob's first sync: the room with a short timeline (his join) and a token to page back from.
    let (s, first) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {first}");
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();
    let joined = &first["rooms"]["join"][room];
    let sync_timeline: Vec<serde_json::Value> = joined["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        !sync_timeline.iter().any(|e| e["type"] == "m.room.message"),
        "history is not in the join's timeline yet: {sync_timeline:?}"
    );
    let prev_batch = joined["timeline"]["prev_batch"].as_str().expect("prev_batch").to_owned();

    let started = Instant::now();
    let history = page_back(&bob, room, &prev_batch, 25).await;
    let took = started.elapsed();
    let mut bob_ids = ids_of(&history);
    bob_ids.extend(ids_of(&sync_timeline));
    report(&format!(
        "backfill: {} events paged back over federation in pages of 25 in {} ms",
        history.len(),
        took.as_millis()
    ));

    let alice_ids = ids_of(&alice.timeline(room).await);
    let unique: std::collections::HashSet<&String> = bob_ids.iter().collect();
    assert_eq!(unique.len(), bob_ids.len(), "no event twice");
    assert_eq!(bob_ids, alice_ids, "B shows A's history in A's order");
    let bodies: Vec<String> = history
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(bodies, (0..n).map(|i| format!("history {i}")).collect::<Vec<_>>());
    assert_eq!(history.first().expect("events")["type"], "m.room.create", "paged back to the creation");

    // Paging again is served from B's copy, with the same answer.
    let again = page_back(&bob, room, &prev_batch, 50).await;
    assert_eq!(ids_of(&again), ids_of(&history));

    // /sync: the backfilled history never shows up as new; a new message does, alone.
    alice.say(room, "after backfill").await;
    let mut since = since;
    let mut seen_new = false;
    let deadline = Instant::now() + T;
    while !seen_new {
        assert!(Instant::now() < deadline, "new message not synced");
        let (s, body) = bob.get(&format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(&since))).await;
        assert_eq!(s, 200, "sync: {body}");
        for e in body["rooms"]["join"][room]["timeline"]["events"].as_array().into_iter().flatten() {
            let text = e["content"]["body"].as_str().unwrap_or("");
            assert!(!text.starts_with("history"), "backfilled event synced as new: {e}");
            if text == "after backfill" {
                seen_new = true;
            }
        }
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
    }
    // An initial sync shows the room's latest events, not the history.
    let (_, fresh) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    let tl = fresh["rooms"]["join"][room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(!tl.iter().any(|e| e["content"]["body"].as_str().unwrap_or("").starts_with("history")), "{tl:?}");

    // History visibility still applies to backfilled events: in a `joined` room, what was said
    // before bob joined stays hidden from him, though B now holds it.
    let (s, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "public_chat", "initial_state": [
                { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
            ] }),
        )
        .await;
    assert_eq!(s, 200, "createRoom: {body}");
    let private = body["room_id"].as_str().expect("room_id").to_owned();
    for i in 0..5 {
        alice.say(&private, &format!("before bob {i}")).await;
    }
    let (s, body) = bob.join_via(&private, &a.name()).await;
    assert_eq!(s, 200, "join: {body}");
    alice.say(&private, "after bob").await;
    wait_for_message(&bob, &private, "after bob").await;
    let seen = bob.timeline(&private).await;
    let (_, all_b) = bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", enc(&private))).await;
    assert!(all_b["end"].is_null(), "one page holds everything bob may see");
    let bodies: Vec<&str> = seen.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["after bob"], "history before the join is hidden: {seen:?}");
    assert!(seen.iter().any(|e| e["state_key"] == bob.user_id.as_str()), "bob sees his own join");
    // A serves that history to B redacted: B never held the words.
    let latest = alice.event_ids(&private).await.last().cloned().expect("latest");
    let (s, answer) =
        signed_get(&b, &a, &format!("/_matrix/federation/v1/backfill/{}?v={}&limit=50", enc(&private), enc(&latest)))
            .await;
    assert_eq!(s, 200, "backfill as B: {answer}");
    let pdus = answer["pdus"].as_array().cloned().unwrap_or_default();
    let messages: Vec<&serde_json::Value> = pdus.iter().filter(|p| p["type"] == "m.room.message").collect();
    assert_eq!(messages.len(), 6, "{answer}");
    let served: Vec<&str> = messages.iter().filter_map(|p| p["content"]["body"].as_str()).collect();
    assert_eq!(served, vec!["after bob"], "only what B's users could see is served whole");
}

/// A signed GET from server `from` to server `to` (with `from`'s signing key).
async fn signed_get(from: &FedServer, to: &FedServer, path: &str) -> (u16, serde_json::Value) {
    use base64::Engine;
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    use ruma::signatures::Ed25519KeyPair;
    let text = std::fs::read_to_string(from.data_dir().join("signing.key")).expect("signing key");
    let parts: Vec<&str> = text.lines().next().expect("key line").split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD.decode(parts[2]).expect("base64");
    let key = Ed25519KeyPair::from_der(&der, parts[1].to_owned()).expect("key");
    let origin = ruma::ServerName::parse(from.name()).expect("name");
    let dest = ruma::ServerName::parse(to.name()).expect("name");
    init_crypto();
    let pem = std::fs::read(ca().pem()).expect("ca");
    let https = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
        .build()
        .expect("client");
    let r = http::Request::builder().method("GET").uri(path).body(&[][..]).expect("req");
    let x = XMatrix::sign_http_request(&r, XMatrixSigningInput::new(origin, dest.clone(), &key)).expect("sign");
    send(https.get(format!("https://{dest}{path}")).header("authorization", http::HeaderValue::from(&x))).await
}

/// B's user knocks on a room of A (`/knock` with `via`): make_knock, send_knock, the knock
/// shown under `rooms.knock` with the room's stripped state; rescinding it goes through A;
/// A's member sees the knock and accepts it with an invite, and B's user joins.
#[tokio::test]
async fn knock_over_federation_then_invite_and_join() {
    let a = FedServer::start("127.0.8.11").await;
    let b = FedServer::start("127.0.8.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (s, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "name": "knock here", "initial_state": [
                { "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }
            ] }),
        )
        .await;
    assert_eq!(s, 200, "createRoom: {body}");
    let room = body["room_id"].as_str().expect("room_id").to_owned();
    let room = room.as_str();
    let knock = |reason: &'static str| {
        let bob = bob.clone();
        let via = a.name();
        async move {
            bob.post(&format!("/_matrix/client/v3/knock/{}?via={}", enc(room), enc(&via)), json!({ "reason": reason }))
                .await
        }
    };

    // A public room is not open to knocks: A refuses, and B passes the refusal on.
    let public = alice.create_public_room().await;
    let (s, body) =
        bob.post(&format!("/_matrix/client/v3/knock/{}?via={}", enc(&public), enc(&a.name())), json!({})).await;
    assert_eq!(s, 403, "knocking on a public room: {body}");

    let started = Instant::now();
    let (s, body) = knock("let me in").await;
    assert_eq!(s, 200, "knock: {body}");
    assert_eq!(body["room_id"], room);
    report(&format!("knock round trip (remote /knock: make_knock + send_knock): {} ms", started.elapsed().as_millis()));
    assert_eq!(alice.membership(room, &bob.user_id).await.as_deref(), Some("knock"), "A holds the knock");
    let (s, sync) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {sync}");
    let knock_state = sync["rooms"]["knock"][room]["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    let has = |t: &str| knock_state.iter().any(|e| e["type"] == t);
    assert!(has("m.room.create") && has("m.room.join_rules") && has("m.room.name"), "stripped state: {sync}");
    assert!(
        knock_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "knock"),
        "the knock itself: {knock_state:?}"
    );
    let name = knock_state.iter().find(|e| e["type"] == "m.room.name").expect("name");
    assert_eq!(name["content"]["name"], "knock here");

    // Rescind through A, then knock again.
    let (s, body) = bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(room)), json!({})).await;
    assert_eq!(s, 200, "rescinding the knock: {body}");
    assert_eq!(alice.membership(room, &bob.user_id).await.as_deref(), Some("leave"), "A saw the knock rescinded");
    let (s, body) = knock("second try").await;
    assert_eq!(s, 200, "knock again: {body}");

    // Alice rejects it (a kick): B, with no member in the room, is told, and bob's sync shows
    // the room as left. Then a third knock.
    let (s, since) = bob.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {since}");
    let since = since["next_batch"].as_str().expect("next_batch").to_owned();
    let (s, body) = alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(room)),
            json!({ "user_id": bob.user_id, "reason": "not now" }),
        )
        .await;
    assert_eq!(s, 200, "rejecting the knock: {body}");
    let rid = room.to_owned();
    let deadline = Instant::now() + T;
    let mut since = since;
    loop {
        assert!(Instant::now() < deadline, "the rejection did not reach bob");
        let (s, body) = bob.get(&format!("/_matrix/client/v3/sync?timeout=1000&since={}", enc(&since))).await;
        assert_eq!(s, 200, "sync: {body}");
        if !body["rooms"]["leave"][&rid].is_null() {
            break;
        }
        since = body["next_batch"].as_str().expect("next_batch").to_owned();
    }
    let (s, body) = knock("third try").await;
    assert_eq!(s, 200, "knock after the rejection: {body}");

    // Alice sees the knock in her sync, accepts it with an invite; bob joins.
    let bob_id = bob.user_id.clone();
    sync_until(&alice, T, "bob's knock", |s| {
        s["rooms"]["join"][room]["timeline"]["events"].as_array().into_iter().flatten().any(|e| {
            e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str() && e["content"]["membership"] == "knock"
        })
    })
    .await;
    let (s, body) =
        alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(room)), json!({ "user_id": bob.user_id })).await;
    assert_eq!(s, 200, "invite: {body}");
    let rid = room.to_owned();
    sync_until(&bob, T, "the invite", |s| !s["rooms"]["invite"][&rid].is_null()).await;
    let (s, body) = bob.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
    assert_eq!(s, 200, "join after the invite: {body}");
    wait_until(T, "bob joined on A", || async {
        alice.membership(room, &bob.user_id).await.as_deref() == Some("join")
    })
    .await;
    alice.say(room, "welcome").await;
    wait_for_message(&bob, room, "welcome").await;
}

/// A room on A restricted to the members of another room: B's user (a member of the allowed
/// room) joins through A, which names its own user in `join_authorised_via_users_server` and
/// signs the join; a user in no allowed room is refused. C's user joins through the list
/// `[B, A]`: B is in the allowed room but has no user who may invite (level 50), so it answers
/// `M_UNABLE_TO_GRANT_JOIN` and C goes on to A.
#[tokio::test]
async fn restricted_join_through_resident_server() {
    let a = FedServer::start("127.0.9.11").await;
    let b = FedServer::start("127.0.9.12").await;
    let c = FedServer::start("127.0.9.13").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let dave = b.register("dave").await;
    let carol = c.register("carol").await;
    let allowed = alice.create_public_room().await;
    let (s, body) = bob.join_via(&allowed, &a.name()).await;
    assert_eq!(s, 200, "bob joins the allowed room: {body}");
    let (s, body) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({ "preset": "private_chat", "name": "members of the allowed room",
                "power_level_content_override": { "invite": 50 },
                "initial_state": [
                { "type": "m.room.join_rules", "state_key": "", "content": {
                    "join_rule": "restricted",
                    "allow": [{ "type": "m.room_membership", "room_id": allowed }],
                } }
            ] }),
        )
        .await;
    assert_eq!(s, 200, "createRoom: {body}");
    let room = body["room_id"].as_str().expect("room_id").to_owned();
    let room = room.as_str();

    // Dave is in no allowed room: A refuses.
    let (s, body) = dave.join_via(room, &a.name()).await;
    assert_eq!(s, 403, "a user in no allowed room: {body}");

    let started = Instant::now();
    let (s, body) = bob.join_via(room, &a.name()).await;
    assert_eq!(s, 200, "bob's restricted join through A: {body}");
    report(&format!("restricted join through a resident server: {} ms", started.elapsed().as_millis()));
    let (s, join) =
        alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(room), enc(&bob.user_id))).await;
    assert_eq!(s, 200, "bob's member event on A: {join}");
    assert_eq!(join["membership"], "join");
    assert_eq!(join["join_authorised_via_users_server"], alice.user_id.as_str(), "authorised by A's user");
    bob.say(room, "in through A").await;
    wait_until(T, "bob's message on A", || async { alice.messages(room).await.contains(&"in through A".to_owned()) })
        .await;

    // Carol joins the allowed room, then the restricted room through [B, A].
    let (s, body) = carol.join_via(&allowed, &a.name()).await;
    assert_eq!(s, 200, "carol joins the allowed room: {body}");
    wait_until(T, "carol in the allowed room, seen by B", || async {
        bob.membership(&allowed, &carol.user_id).await.as_deref() == Some("join")
    })
    .await;
    let (s, body) = carol.join_via(room, &b.name()).await;
    assert_eq!(s, 400, "B cannot grant the join: {body}");
    assert_eq!(body["errcode"], "M_UNABLE_TO_GRANT_JOIN", "{body}");
    let (s, body) = carol
        .post(
            &format!("/_matrix/client/v3/join/{}?via={}&via={}", enc(room), enc(&b.name()), enc(&a.name())),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "carol's join through [B, A]: {body}");
    for client in [&alice, &bob] {
        wait_until(T, "carol joined", || async {
            client.membership(room, &carol.user_id).await.as_deref() == Some("join")
        })
        .await;
    }

    // Dave, now in the allowed room, joins without naming a server: B is in the room but none
    // of its users may authorise, so B goes through a resident server that can (A).
    let (s, body) = dave.join_via(&allowed, &a.name()).await;
    assert_eq!(s, 200, "dave joins the allowed room: {body}");
    wait_until(T, "dave in the allowed room, seen by A", || async {
        alice.membership(&allowed, &dave.user_id).await.as_deref() == Some("join")
    })
    .await;
    let (s, body) = dave.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({})).await;
    assert_eq!(s, 200, "dave's join through A: {body}");
    wait_until(T, "dave joined on A", || async {
        alice.membership(room, &dave.user_id).await.as_deref() == Some("join")
    })
    .await;
    dave.say(room, "dave here").await;
    bob.say(room, "bob again").await;
    for client in [&alice, &carol] {
        wait_until(T, "dave's and bob's messages", || async {
            let m = client.messages(room).await;
            m.contains(&"dave here".to_owned()) && m.contains(&"bob again".to_owned())
        })
        .await;
    }
}

#[tokio::test]
async fn remote_profiles_and_the_user_directory_across_servers() {
    let a = FedServer::start("127.0.10.11").await;
    let b = FedServer::start("127.0.10.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{}", enc(user));
    let (s, body) =
        bob.put(&format!("{}/displayname", profile(&bob.user_id)), json!({ "displayname": "Bob Remote" })).await;
    assert_eq!(s, 200, "{body}");

    // Alice's server asks Bob's for his profile, whole and by field.
    let (s, body) = alice.get(&profile(&bob.user_id)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["displayname"], "Bob Remote");
    let (s, body) = alice.get(&format!("{}/displayname", profile(&bob.user_id))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body, json!({ "displayname": "Bob Remote" }));
    // A user Bob's server does not have.
    let ghost = format!("@ghost:{}", b.name());
    let (s, body) = alice.get(&profile(&ghost)).await;
    assert_eq!((s, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // Once Bob has joined Alice's room, Alice finds him in her directory under the name of his
    // member event.
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;
    let (s, body) = alice.post("/_matrix/client/v3/user_directory/search", json!({ "search_term": "bob rem" })).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["results"], json!([{ "user_id": bob.user_id, "display_name": "Bob Remote" }]), "{body}");
    // And the two share exactly that room.
    let (s, body) = alice.get(&format!("/_matrix/client/v1/mutual_rooms?user_id={}", enc(&bob.user_id))).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["joined"], json!([room]));
}

#[tokio::test]
async fn space_hierarchy_over_federation() {
    let a = FedServer::start("127.0.11.11").await;
    let b = FedServer::start("127.0.11.12").await;
    let alice = a.register("alice").await;
    b.register("bob").await;
    let create = |body: serde_json::Value| {
        let alice = &alice;
        async move {
            let (s, r) = alice.post("/_matrix/client/v3/createRoom", body).await;
            assert_eq!(s, 200, "createRoom: {r}");
            r["room_id"].as_str().unwrap().to_owned()
        }
    };
    let space =
        create(json!({ "preset": "public_chat", "name": "Space", "creation_content": { "type": "m.space" } })).await;
    let open = create(json!({ "preset": "public_chat", "name": "Open room" })).await;
    let closed = create(json!({ "preset": "private_chat", "name": "Closed room" })).await;
    for (child, suggested) in [(&open, true), (&closed, false)] {
        let path = format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(&space), enc(child));
        let (s, r) = alice.put(&path, json!({ "via": [a.name()], "suggested": suggested })).await;
        assert_eq!(s, 200, "space child: {r}");
    }

    // B's server asks A's: the space, its two child events, the open child's summary, and the
    // closed child as inaccessible.
    let path = format!("/_matrix/federation/v1/hierarchy/{}", enc(&space));
    let (s, body) = signed_get(&b, &a, &path).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room"]["room_id"], space.as_str());
    assert_eq!(body["room"]["room_type"], "m.space");
    assert_eq!(body["room"]["children_state"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(body["children"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["children"][0]["room_id"], open.as_str());
    assert_eq!(body["children"][0]["name"], "Open room");
    assert_eq!(body["inaccessible_children"], json!([closed]));
    // Only suggested children.
    let (s, body) = signed_get(&b, &a, &format!("{path}?suggested_only=true")).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["room"]["children_state"].as_array().map(Vec::len), Some(1), "{body}");
    // A private room is not shown to a server with no member in it, nor an unknown one.
    let (s, body) = signed_get(&b, &a, &format!("/_matrix/federation/v1/hierarchy/{}", enc(&closed))).await;
    assert_eq!((s, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let unknown = format!("!nope:{}", a.name());
    let (s, _) = signed_get(&b, &a, &format!("/_matrix/federation/v1/hierarchy/{}", enc(&unknown))).await;
    assert_eq!(s, 404);
}

/// Push rules are evaluated for events from other servers too: a remote mention turns the
/// room's badge red, a remote message counts, and an invite from another server reaches the
/// invited user with stripped state that includes the room's create event (v1.16: the
/// inviting server sends whole PDUs; clients get type, state key, sender and content).
#[tokio::test]
async fn remote_mentions_count_and_invites_carry_the_create_event() {
    let a = FedServer::start("127.0.12.11").await;
    let b = FedServer::start("127.0.12.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_public_room().await;
    let (s, body) = bob.join_via(&room, &a.name()).await;
    assert_eq!(s, 200, "{body}");
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention1", enc(&room));
    let content = json!({ "msgtype": "m.text", "body": "hi", "m.mentions": { "user_ids": [alice.user_id] } });
    let (s, body) = bob.put(&path, content).await;
    assert_eq!(s, 200, "{body}");
    bob.say(&room, "plain").await;
    wait_for_message(&alice, &room, "plain").await;
    let (s, sync) = alice.get("/_matrix/client/v3/sync").await;
    assert_eq!(s, 200, "{sync}");
    let counts = &sync["rooms"]["join"][&room]["unread_notifications"];
    assert_eq!(counts["notification_count"], 2, "{sync}");
    assert_eq!(counts["highlight_count"], 1, "{sync}");

    let private = alice.create_private_room().await;
    let (s, body) = alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)), json!({ "user_id": bob.user_id }))
        .await;
    assert_eq!(s, 200, "{body}");
    wait_until(T, "the invite on B", || {
        let (bob, private) = (&bob, &private);
        async move {
            let (_, sync) = bob.get("/_matrix/client/v3/sync").await;
            sync["rooms"]["invite"][private].is_object()
        }
    })
    .await;
    let (_, sync) = bob.get("/_matrix/client/v3/sync").await;
    let invite = sync["rooms"]["invite"][&private]["invite_state"]["events"].clone();
    let events = invite.as_array().unwrap();
    let create = events.iter().find(|e| e["type"] == "m.room.create").expect("the create event");
    assert_eq!(create["sender"], alice.user_id.as_str(), "{invite}");
    for e in events.iter().filter(|e| e["type"] != "m.room.member" || e["state_key"] != bob.user_id.as_str()) {
        assert!(e.get("signatures").is_none() && e.get("auth_events").is_none(), "stripped: {e}");
    }
}

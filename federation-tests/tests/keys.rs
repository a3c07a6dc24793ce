//! Signing keys between Myelin servers: notaries (`federation.trusted_key_servers`) vouch for
//! the keys of a server that is down, and a server's retired keys keep one fixed `expired_ts`.
//! The validity rule itself (a key valid at the event's `origin_server_ts`) is unit-tested in
//! `src/federation/keys.rs`. Every test runs on SQLite (servers on `127.0.42.*`) and on
//! PostgreSQL (`127.1.42.*`).

#[macro_use]
mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// `server`'s own key document, over its client listener (which serves federation too).
async fn key_document(server: &FedServer) -> Value {
    let (s, doc) = send(http_client().get(format!("{}/_matrix/key/v2/server", server.url()))).await;
    assert_eq!(s, 200, "key document of {}: {doc}", server.name());
    doc
}

/// Restarts `server` with `trusted_key_servers` set to the given TOML array.
async fn set_trusted_key_servers(server: &mut FedServer, toml_array: &str) {
    server.stop();
    let path = server.config_path();
    let config = std::fs::read_to_string(&path).expect("config");
    assert!(config.contains("trusted_key_servers = []"), "harness config changed");
    let config = config.replace("trusted_key_servers = []", &format!("trusted_key_servers = {toml_array}"));
    std::fs::write(&path, config).expect("config");
    server.start_again().await;
}

/// B's user joins a room on A and speaks; B goes down; C's user joins through A. C must check
/// B's signatures on B's join and message, and B does not answer: C asks its notary, A, which
/// answers B's self-signed key document countersigned by A. Without the notary C cannot verify
/// B's events (the join fails or B's events are dropped).
async fn a_notary_vouches_for_the_keys_of_a_server_that_is_down(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.11"), backend).await;
    let mut b = FedServer::start_on(&format!("{net}.12"), backend).await;
    let mut c = FedServer::start_on(&format!("{net}.13"), backend).await;
    let doc = key_document(&a).await;
    let (id, key) = doc["verify_keys"].as_object().expect("verify_keys").iter().next().expect("a key");
    let key = key["key"].as_str().expect("key");
    set_trusted_key_servers(
        &mut c,
        &format!(r#"[{{ server_name = "{}", verify_keys = {{ "{id}" = "{key}" }} }}]"#, a.name()),
    )
    .await;

    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = alice.create_public_room().await;
    bob.join_via_seen_by(&room, &a.name(), &alice).await;
    bob.say(&room, "hello from bob").await;
    wait_until(T, "bob's message on A", || async {
        alice.messages(&room).await.contains(&"hello from bob".to_owned())
    })
    .await;
    b.stop();

    let (s, body) = carol.join_via(&room, &a.name()).await;
    assert_eq!(s, 200, "carol's join through A while B is down: {body}\n{}", c.log());
    wait_until(T, "bob's membership on C", || async {
        carol.membership(&room, &bob.user_id).await.as_deref() == Some("join")
    })
    .await;
    wait_until(T, "bob's message on C", || async {
        carol.messages(&room).await.contains(&"hello from bob".to_owned())
    })
    .await;
    assert!(c.log().contains("fetching server keys failed"), "C did try B first:\n{}", c.log());
}

/// A notary answer must be signed by the notary's configured key: with a wrong key configured,
/// C refuses A's answer and cannot check B's events while B is down.
async fn a_notary_answer_not_signed_by_its_configured_key_is_refused(backend: Backend, net: &str) {
    let a = FedServer::start_on(&format!("{net}.21"), backend).await;
    let mut b = FedServer::start_on(&format!("{net}.22"), backend).await;
    let mut c = FedServer::start_on(&format!("{net}.23"), backend).await;
    let doc = key_document(&a).await;
    let id = doc["verify_keys"].as_object().expect("verify_keys").keys().next().expect("a key").clone();
    // Someone else's key under A's key id.
    let wrong = key_document(&b).await["verify_keys"].as_object().expect("keys").values().next().expect("key")["key"]
        .as_str()
        .expect("key")
        .to_owned();
    set_trusted_key_servers(
        &mut c,
        &format!(r#"[{{ server_name = "{}", verify_keys = {{ "{id}" = "{wrong}" }} }}]"#, a.name()),
    )
    .await;

    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = c.register("carol").await;
    let room = alice.create_public_room().await;
    bob.join_via_seen_by(&room, &a.name(), &alice).await;
    b.stop();

    let (s, _) = carol.join_via(&room, &a.name()).await;
    // Whether the join fails or B's join is left out, C must not hold B's join.
    if s == 200 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_ne!(carol.membership(&room, &bob.user_id).await.as_deref(), Some("join"));
    }
    assert!(c.log().contains("notary key query failed"), "C asked A and refused its answer:\n{}", c.log());
}

/// The retired keys' `expired_ts` in `doc`, sorted by key id.
fn expired(doc: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = doc["old_verify_keys"]
        .as_object()
        .expect("old_verify_keys")
        .iter()
        .map(|(id, k)| (id.clone(), k["expired_ts"].as_i64().expect("expired_ts")))
        .collect();
    out.sort();
    out
}

/// A key file with a current key, a key retired without a recorded time (it takes the file's
/// modification time) and one retired at a recorded time: both are published with the same
/// `expired_ts` in every answer, before and after a restart, and in the server's notary answer
/// about itself; that time is in the past.
async fn retired_keys_are_published_with_a_fixed_expired_ts(backend: Backend, net: &str) {
    let mut s = FedServer::start_on(&format!("{net}.31"), backend).await;
    s.stop();
    let path = s.data_dir().join("signing.key");
    let first = std::fs::read_to_string(&path).expect("key file");
    let first_id = format!("ed25519:{}", first.split_whitespace().nth(1).expect("version"));
    let new = STANDARD.encode(&ruma::signatures::Ed25519KeyPair::generate()[..]);
    let older = STANDARD.encode(&ruma::signatures::Ed25519KeyPair::generate()[..]);
    std::fs::write(&path, format!("ed25519 rotated {new}\n{}\ned25519 older {older} 1600000000000\n", first.trim()))
        .expect("key file");
    let written = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    s.start_again().await;

    let asked = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let one = key_document(&s).await;
    assert!(one["verify_keys"]["ed25519:rotated"].is_object(), "the first line is the current key: {one}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let two = key_document(&s).await;
    let published = expired(&one);
    assert_eq!(published.len(), 2, "{one}");
    let time_of = |id: &str| published.iter().find(|(k, _)| k == id).map(|(_, t)| *t);
    assert_eq!(time_of("ed25519:older"), Some(1_600_000_000_000), "the recorded time is published: {one}");
    let fallback = time_of(&first_id).expect("the key retired without a time is published");
    assert!(fallback <= written + 1000 && fallback > written - 60_000, "the file's modification time: {fallback}");
    assert!(fallback <= asked, "in the past: {fallback} > {asked}");
    assert_eq!(expired(&two), published, "the same in every answer");

    let (status, notary) = send(
        http_client()
            .post(format!("{}/_matrix/key/v2/query", s.url()))
            .json(&json!({ "server_keys": { s.name(): {} } })),
    )
    .await;
    assert_eq!(status, 200, "{notary}");
    assert_eq!(expired(&notary["server_keys"][0]), published, "the notary answer about itself agrees");

    s.stop();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.start_again().await;
    assert_eq!(expired(&key_document(&s).await), published, "the same after a restart");
}

/// B's events reach A signed with B's real key, in a v12 room (key validity enforced): one made
/// now is accepted; one whose `origin_server_ts` is 8 days ahead, after the validity of every
/// key B publishes (`valid_until_ts` is now + 7 days, and A caps validity at 7 days after its
/// fetch), is refused even though its signature is good.
async fn an_event_signed_after_its_keys_validity_is_refused(backend: Backend, net: &str) {
    use ruma::CanonicalJsonObject;
    use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
    use ruma::signatures::Ed25519KeyPair;

    let a = FedServer::start_on(&format!("{net}.41"), backend).await;
    let b = FedServer::start_on(&format!("{net}.42"), backend).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = &alice.create_public_room().await;
    bob.join_via_seen_by(room, &a.name(), &alice).await;

    // B's key, read from its data directory: the test signs as B.
    let text = std::fs::read_to_string(b.data_dir().join("signing.key")).expect("B's signing key");
    let parts: Vec<&str> = text.lines().next().expect("key line").split_whitespace().collect();
    let der = STANDARD.decode(parts[2]).expect("base64");
    let b_key = Ed25519KeyPair::from_der(&der, parts[1].to_owned()).expect("key");
    let origin = ruma::ServerName::parse(b.name()).expect("name");
    let dest = ruma::ServerName::parse(a.name()).expect("name");
    let (s, version) = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(room))).await;
    assert_eq!(s, 200);
    let version = ruma::RoomVersionId::try_from(version["room_version"].as_str().unwrap_or("1")).expect("version");
    let rules = version.rules().expect("rules");
    assert!(rules.enforce_key_validity, "the default room version enforces key validity");

    let state = alice.state(room).await;
    let find =
        |t: &str, k: &str| state.iter().find(|e| e.0 == t && e.1 == k).map(|e| e.2.clone()).expect("state event");
    let (pl, bob_member) = (find("m.room.power_levels", ""), find("m.room.member", &bob.user_id));
    let prev = alice.event_ids(room).await.last().cloned().expect("latest event");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let make = |body: &str, ts: u64| {
        let ev = json!({
            "type": "m.room.message",
            "room_id": room,
            "sender": bob.user_id,
            "content": { "msgtype": "m.text", "body": body },
            "origin_server_ts": ts,
            "depth": 1000,
            "prev_events": [prev],
            "auth_events": [pl, bob_member],
        });
        let mut obj: CanonicalJsonObject = serde_json::from_value(ev).expect("canonical");
        ruma::signatures::hash_and_sign_event(origin.as_str(), &b_key, &mut obj, &rules.redaction).expect("sign");
        let id = format!("${}", ruma::signatures::reference_hash(&obj, &rules).expect("hash"));
        (id, serde_json::to_value(&obj).expect("json"))
    };
    let (future_id, future) = make("from the future", now + 8 * 24 * 3600 * 1000);
    let (now_id, present) = make("from now", now);

    init_crypto();
    let pem = std::fs::read(ca().pem()).expect("ca");
    let https = reqwest::Client::builder()
        .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("pem"))
        .build()
        .expect("client");
    let body = json!({ "origin": b.name(), "origin_server_ts": now, "pdus": [future, present] });
    let path = "/_matrix/federation/v1/send/keyvalidity";
    let bytes = serde_json::to_vec(&body).expect("json");
    let r = http::Request::builder().method("PUT").uri(path).body(bytes.as_slice()).expect("req");
    let x =
        XMatrix::sign_http_request(&r, XMatrixSigningInput::new(origin.clone(), dest.clone(), &b_key)).expect("sign");
    let (s, answer) = send(
        https
            .put(format!("https://{dest}{path}"))
            .header("content-type", "application/json")
            .header("authorization", http::HeaderValue::from(&x))
            .body(bytes),
    )
    .await;
    assert_eq!(s, 200, "transaction signed by B now: {answer}");
    let error = answer["pdus"][&future_id]["error"].as_str().unwrap_or_default();
    assert!(error.contains("valid"), "an event after its key's validity is refused: {answer}");
    assert!(answer["pdus"][&now_id].get("error").is_none(), "an event within validity is accepted: {answer}");
    wait_until(T, "B's present message on A", || async { alice.messages(room).await.contains(&"from now".to_owned()) })
        .await;
    assert!(!alice.messages(room).await.contains(&"from the future".to_owned()));
    let (s, _) = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(&future_id))).await;
    assert_eq!(s, 404, "the refused event is not served");
}
both_backends!(a_notary_vouches_for_the_keys_of_a_server_that_is_down, "42");
both_backends!(a_notary_answer_not_signed_by_its_configured_key_is_refused, "42");
both_backends!(retired_keys_are_published_with_a_fixed_expired_ts, "42");
both_backends!(an_event_signed_after_its_keys_validity_is_refused, "42");

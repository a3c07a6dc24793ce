//! End-to-end encryption across two Myelin servers: `/keys/query` and `/keys/claim` for a
//! remote user (served by `user/keys/query` and `user/keys/claim`), device-list and
//! signing-key EDUs reaching the other server's `/sync`, the remote device-list cache (filled
//! by a `user/devices` resync and kept by EDUs) answering while the remote server is down, and
//! matrix-nio's Olm/Megolm round trip between a user on each server.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::*;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

async fn whoami_device(c: &Client) -> String {
    let (s, b) = c.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "{b}");
    b["device_id"].as_str().unwrap().to_owned()
}

/// Uploads (unsigned; the server does not check device self-signatures) device keys and
/// `n` one-time keys for the client's device.
async fn upload_keys(c: &Client, device: &str, n: usize) {
    let otks: serde_json::Map<String, Value> =
        (0..n).map(|i| (format!("signed_curve25519:K{i}"), json!({ "key": format!("otk-{device}-{i}") }))).collect();
    let body = json!({
        "device_keys": {
            "user_id": c.user_id,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{device}"): format!("curve-{device}"), format!("ed25519:{device}"): format!("ed-{device}") },
            "signatures": {},
        },
        "one_time_keys": otks,
    });
    let (s, b) = c.post("/_matrix/client/v3/keys/upload", body).await;
    assert_eq!(s, 200, "keys/upload: {b}");
}

/// Master and self-signing keys for `user`, the self-signing key signed by the master key.
fn cross_signing(user: &str) -> Value {
    let key = || {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "p".into()).unwrap();
        let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
        (Ed25519KeyPair::from_der(&der, public.clone()).unwrap(), public)
    };
    let (master_pair, master_pub) = key();
    let (_, ssk_pub) = key();
    let master =
        json!({ "user_id": user, "usage": ["master"], "keys": { format!("ed25519:{master_pub}"): master_pub } });
    let ssk = json!({ "user_id": user, "usage": ["self_signing"], "keys": { format!("ed25519:{ssk_pub}"): ssk_pub } });
    let ruma::CanonicalJsonValue::Object(mut obj) = ruma::CanonicalJsonValue::try_from(ssk).unwrap() else {
        unreachable!()
    };
    ruma::signatures::sign_json(user, &master_pair, &mut obj).unwrap();
    json!({ "master_key": master, "self_signing_key": obj })
}

async fn query(c: &Client, user: &str) -> Value {
    let (s, b) = c.post("/_matrix/client/v3/keys/query", json!({ "device_keys": { user: [] } })).await;
    assert_eq!(s, 200, "keys/query: {b}");
    b
}

fn device_ids(q: &Value, user: &str) -> BTreeSet<String> {
    q["device_keys"][user].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

async fn sync(c: &Client, since: Option<&str>, timeout_ms: u64) -> Value {
    let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
    if let Some(s) = since {
        path.push_str(&format!("&since={}", enc(s)));
    }
    let (s, b) = c.get(&path).await;
    assert_eq!(s, 200, "sync: {b}");
    b
}

/// Syncs from `since` until `user` is in `device_lists.changed`; returns the last token.
/// One incremental sync of `c` from `token`, waiting up to `timeout_ms`: the next token and
/// whether `user` is in `device_lists.changed`.
async fn sync_changed(c: &Client, token: &str, user: &str, timeout_ms: u64) -> (String, bool) {
    let b = sync(c, Some(token), timeout_ms).await;
    let changed = b["device_lists"]["changed"].as_array().is_some_and(|a| a.contains(&json!(user)));
    (b["next_batch"].as_str().unwrap().to_owned(), changed)
}

async fn wait_changed(c: &Client, since: &str, user: &str) -> String {
    let mut token = since.to_owned();
    let deadline = std::time::Instant::now() + T;
    loop {
        let (next, changed) = sync_changed(c, &token, user, 5000).await;
        token = next;
        if changed {
            return token;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user} never showed up in device_lists.changed for {}",
            c.user_id
        );
    }
}

/// Waits until `user`'s device list stops changing on `c`'s server: no change for 1.5 s. Each
/// applied device-list EDU and each background resync (after a `prev_id` gap) is a change, so
/// afterwards the server's cache holds what the remote server last sent.
async fn wait_quiet(c: &Client, since: &str, user: &str) {
    let mut token = since.to_owned();
    let deadline = std::time::Instant::now() + T;
    loop {
        let (next, changed) = sync_changed(c, &token, user, 1500).await;
        token = next;
        if !changed {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{user}'s device list kept changing for {}", c.user_id);
    }
}

#[tokio::test]
async fn keys_and_device_lists_across_servers() {
    let a = FedServer::start("127.0.16.11").await;
    let mut b = FedServer::start("127.0.16.12").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let bob_device = whoami_device(&bob).await;
    let room = alice.create_public_room().await;
    let (s, body) = bob.join_via(&room, &a.name()).await;
    assert_eq!(s, 200, "join: {body}");
    wait_until(T, "bob joined on a", || async {
        alice.membership(&room, &bob.user_id).await.as_deref() == Some("join")
    })
    .await;
    let t0 = sync(&alice, None, 0).await["next_batch"].as_str().unwrap().to_owned();

    // Bob's keys, uploaded while he shares a room with Alice: an EDU tells server a.
    upload_keys(&bob, &bob_device, 5).await;
    let t1 = wait_changed(&alice, &t0, &bob.user_id).await;

    // /keys/query for a remote user goes to his server.
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(device_ids(&q, &bob.user_id), BTreeSet::from([bob_device.clone()]), "{q}");
    assert!(q["failures"].as_object().is_none_or(|f| f.is_empty()), "{q}");
    assert_eq!(
        q["device_keys"][&bob.user_id][&bob_device]["keys"][format!("ed25519:{bob_device}")],
        format!("ed-{bob_device}")
    );

    // /keys/claim for a remote user consumes one of his one-time keys on his server.
    let (s, c) = alice
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { &bob.user_id: { &bob_device: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let claimed = c["one_time_keys"][&bob.user_id][&bob_device].as_object().cloned().unwrap_or_default();
    assert_eq!(claimed.len(), 1, "{c}");
    assert!(claimed.keys().next().unwrap().starts_with("signed_curve25519:K"), "{c}");
    let (_, counts) = bob.post("/_matrix/client/v3/keys/upload", json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 4, "{counts}");

    // Cross-signing keys: an m.signing_key_update EDU.
    let (s, r) = bob.post("/_matrix/client/v3/keys/device_signing/upload", cross_signing(&bob.user_id)).await;
    assert_eq!(s, 200, "{r}");
    let t2 = wait_changed(&alice, &t1, &bob.user_id).await;

    // A second device of Bob's: m.device_list_update with prev_id.
    let (s, login) = send(
        http_client()
            .post(format!("{}/_matrix/client/v3/login", b.url()))
            .json(&json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" }, "password": PASSWORD })),
    )
    .await;
    assert_eq!(s, 200, "{login}");
    let mut bob2 = bob.clone();
    bob2.access_token = login["access_token"].as_str().unwrap().to_owned();
    let bob2_device = login["device_id"].as_str().unwrap().to_owned();
    upload_keys(&bob2, &bob2_device, 1).await;
    let t3 = wait_changed(&alice, &t2, &bob.user_id).await;
    // The login and the key upload are two EDUs, and a gap in their `prev_id`s makes server a
    // resync in the background: all of it must be done before b goes away.
    wait_quiet(&alice, &t3, &bob.user_id).await;

    // Server a now holds Bob's device list (user/devices resync on the first update, then the
    // EDUs): with server b down, Alice's query is answered from it.
    let expected = BTreeSet::from([bob_device.clone(), bob2_device.clone()]);
    // The signing-key EDU travels on its own: wait for it too before b goes away.
    wait_until(T, "a's cache of bob's devices and cross-signing keys", || {
        let (alice, user, expected) = (alice.clone(), bob.user_id.clone(), expected.clone());
        async move {
            let q = query(&alice, &user).await;
            device_ids(&q, &user) == expected
                && q["master_keys"][&user].is_object()
                && q["self_signing_keys"][&user].is_object()
        }
    })
    .await;
    b.stop();
    let q = query(&alice, &bob.user_id).await;
    assert_eq!(device_ids(&q, &bob.user_id), expected, "answered from the cache while b is down: {q}");
    assert!(q["master_keys"][&bob.user_id].is_object(), "master key from the signing-key EDU: {q}");
    assert!(q["self_signing_keys"][&bob.user_id].is_object(), "{q}");
    // Claims cannot be served from a cache: b is reported as failing.
    let (s, c) = alice
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({ "one_time_keys": { &bob.user_id: { &bob_device: "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert!(c["failures"][b.name()].is_object(), "{c}");
    b.start_again().await;
}

#[tokio::test]
async fn nio_encrypted_round_trip_across_servers() {
    let a = FedServer::start("127.0.16.21").await;
    let b = FedServer::start("127.0.16.22").await;
    let python = test_support::nio_python();
    let script = Path::new(&workspace_root()).join("tests/nio/e2ee.py");
    let child = tokio::process::Command::new(python)
        .arg(&script)
        .arg(a.url())
        .arg(b.url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python");
    let out =
        tokio::time::timeout(Duration::from_secs(180), child.wait_with_output()).await.expect("nio timed out").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "nio e2ee across servers failed:\n{stderr}\n{stdout}\nserver a:\n{}\nserver b:\n{}",
        a.log(),
        b.log()
    );
    let steps: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let decrypted: Vec<&Value> = steps.iter().filter(|s| s["step"] == "decrypted").collect();
    assert_eq!(decrypted.len(), 2, "both directions decrypted: {steps:?}");
    assert!(decrypted[0]["by"].as_str().unwrap().ends_with(&b.name()), "{steps:?}");
    assert!(decrypted[1]["by"].as_str().unwrap().ends_with(&a.name()), "{steps:?}");
    report("e2ee: matrix-nio Olm/Megolm round trip between two servers: ok");
}

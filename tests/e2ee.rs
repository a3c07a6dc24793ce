//! End-to-end encryption endpoints over real HTTP on SQLite and PostgreSQL: key upload, query
//! and claim (also concurrently), device-list changes, cross-signing, signatures, key backup.
//! Signed objects are signed here with real ed25519 keys (ruma's signatures module), so the
//! server's signature checks are exercised both ways.

#[macro_use]
mod common;
mod sync_util;

use std::collections::BTreeSet;

use base64::Engine;
use common::Client;
use ruma::signatures::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

// ---- helpers --------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// An ed25519 key named by `name`, or by its own public key (cross-signing keys).
struct SigningKey {
    pair: Ed25519KeyPair,
    public: String,
}

impl SigningKey {
    fn new(name: Option<&str>) -> Self {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "probe".into()).unwrap();
        let public = b64(&probe.public_key());
        let version = name.map(str::to_owned).unwrap_or_else(|| public.clone());
        Self { pair: Ed25519KeyPair::from_der(&der, version).unwrap(), public }
    }

    fn key_id(&self) -> String {
        format!("ed25519:{}", self.pair.version())
    }

    /// Adds this key's signature (by `signer`) to `object`.
    fn sign(&self, signer: &str, object: &mut Value) {
        let mut canonical: ruma::CanonicalJsonObject = match ruma::CanonicalJsonValue::try_from(object.clone()).unwrap()
        {
            ruma::CanonicalJsonValue::Object(o) => o,
            _ => panic!("not an object"),
        };
        ruma::signatures::sign_json(signer, &self.pair, &mut canonical).unwrap();
        *object = serde_json::to_value(&canonical).unwrap();
    }

    /// Raw signature over arbitrary bytes (for forging bad signatures).
    fn raw_sign(&self, msg: &[u8]) -> String {
        b64(self.pair.sign(msg).as_bytes())
    }
}

/// A device's identity keys, signed by its ed25519 key.
fn device_keys(c: &Client, ed: &SigningKey) -> Value {
    let mut keys = json!({
        "user_id": c.user_id,
        "device_id": c.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", c.device_id): format!("curve-{}", c.device_id),
            format!("ed25519:{}", c.device_id): ed.public,
        },
    });
    ed.sign(&c.user_id, &mut keys);
    keys
}

fn otk(c: &Client, n: usize) -> (String, Value) {
    (format!("signed_curve25519:AAAA{n:04}"), json!({ "key": format!("otk-{}-{n}", c.device_id), "signatures": {} }))
}

async fn upload_otks(c: &Client, range: std::ops::Range<usize>) -> Value {
    let keys: serde_json::Map<String, Value> = range.map(|n| otk(c, n)).collect();
    let (status, body) = c.post("/_matrix/client/v3/keys/upload", &json!({ "one_time_keys": keys })).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn query(c: &Client, users: &[&str]) -> Value {
    let wanted: serde_json::Map<String, Value> = users.iter().map(|u| (u.to_string(), json!([]))).collect();
    let (status, body) = c.post("/_matrix/client/v3/keys/query", &json!({ "device_keys": wanted })).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn claim(c: &Client, user: &str, device: &str) -> Value {
    let (status, body) = c
        .post("/_matrix/client/v3/keys/claim", &json!({ "one_time_keys": { user: { device: "signed_curve25519" } } }))
        .await;
    assert_eq!(status, 200, "{body}");
    body["one_time_keys"][user][device].clone()
}

async fn create_room(c: &Client) -> String {
    let (status, body) = c.post("/_matrix/client/v3/createRoom", &json!({ "preset": "private_chat" })).await;
    assert_eq!(status, 200, "{body}");
    body["room_id"].as_str().unwrap().to_owned()
}

async fn join(owner: &Client, c: &Client, room: &str) {
    let (status, body) =
        owner.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({ "user_id": c.user_id })).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = c.post(&format!("/_matrix/client/v3/rooms/{room}/join"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
}

/// `/keys/changes` from the very beginning to now.
async fn changes_since_start(c: &Client) -> (BTreeSet<String>, BTreeSet<String>) {
    let (status, body) = c.get("/_matrix/client/v3/keys/changes?from=s0&to=s9999999999").await;
    assert_eq!(status, 200, "{body}");
    let set = |v: &Value| v.as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    (set(&body["changed"]), set(&body["left"]))
}

/// A cross-signing key object of `usage` for `user`.
fn cross_key(user: &str, usage: &str, key: &SigningKey) -> Value {
    json!({ "user_id": user, "usage": [usage], "keys": { key.key_id(): key.public } })
}

struct CrossSigning {
    master: SigningKey,
    self_signing: SigningKey,
    user_signing: SigningKey,
}

fn cross_signing_body(user: &str) -> (CrossSigning, Value) {
    let cs = CrossSigning {
        master: SigningKey::new(None),
        self_signing: SigningKey::new(None),
        user_signing: SigningKey::new(None),
    };
    let master = cross_key(user, "master", &cs.master);
    let mut ssk = cross_key(user, "self_signing", &cs.self_signing);
    cs.master.sign(user, &mut ssk);
    let mut usk = cross_key(user, "user_signing", &cs.user_signing);
    cs.master.sign(user, &mut usk);
    (cs, json!({ "master_key": master, "self_signing_key": ssk, "user_signing_key": usk }))
}

// ---- upload and query -----------------------------------------------------------------

both_backends!(upload_and_query_device_keys, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let ed = SigningKey::new(Some(&alice.device_id));
    let keys = device_keys(&alice, &ed);

    let (status, body) = alice
        .post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": keys, "one_time_keys": { "signed_curve25519:A1": { "key": "k1" }, "signed_curve25519:A2": { "key": "k2" } } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2, "{body}");

    // Bob sees Alice's keys exactly as signed, plus the display name in `unsigned`.
    let res = query(&bob, &[&alice.user_id]).await;
    let served = &res["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(served["keys"], keys["keys"], "{res}");
    assert_eq!(served["signatures"], keys["signatures"], "{res}");
    assert!(served["unsigned"].is_object(), "{res}");
    // Verifying the served object with the device's key works (the server kept every signed byte).
    let mut unsigned_removed = served.clone();
    unsigned_removed.as_object_mut().unwrap().remove("unsigned");
    assert_eq!(unsigned_removed, keys);

    // Asking for one device only, and for a device that does not exist.
    let (_, one) = bob
        .post("/_matrix/client/v3/keys/query", &json!({ "device_keys": { &alice.user_id: [&alice.device_id] } }))
        .await;
    assert!(one["device_keys"][&alice.user_id][&alice.device_id].is_object(), "{one}");
    let (_, none) =
        bob.post("/_matrix/client/v3/keys/query", &json!({ "device_keys": { &alice.user_id: ["NOPE"] } })).await;
    assert_eq!(none["device_keys"][&alice.user_id], json!({}), "{none}");
    // Bob uploaded nothing: his entry is empty.
    let res = query(&alice, &[&bob.user_id]).await;
    assert_eq!(res["device_keys"][&bob.user_id], json!({}), "{res}");

    // Device keys of someone else's user or device are refused.
    let mut wrong_user = keys.clone();
    wrong_user["user_id"] = json!(bob.user_id);
    let (status, body) = alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": wrong_user })).await;
    assert_eq!(status, 400, "{body}");
    let mut wrong_device = keys.clone();
    wrong_device["device_id"] = json!("OTHERDEVICE");
    let (status, body) = alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": wrong_device })).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = bob.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": keys })).await;
    assert_eq!(status, 400, "{body}");

    // The same one-time key again is fine; the same id with other content is refused.
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "one_time_keys": { "signed_curve25519:A1": { "key": "k1" } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2, "{body}");
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "one_time_keys": { "signed_curve25519:A1": { "key": "other" } } }),
        )
        .await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    // An empty upload reports the counts.
    let (status, body) = alice.post("/_matrix/client/v3/keys/upload", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 2, "{body}");

    // Remote users are reported as failures until federation queries exist.
    let res = query(&alice, &["@someone:remote.example"]).await;
    assert!(res["failures"]["remote.example"].is_object(), "{res}");
});

// ---- claim ------------------------------------------------------------------------------

both_backends!(claim_one_time_and_fallback_keys, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    upload_otks(&alice, 0..2).await;
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "fallback_keys": { "signed_curve25519:FB1": { "key": "fallback", "fallback": true } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    let first = claim(&bob, &alice.user_id, &alice.device_id).await;
    let second = claim(&bob, &alice.user_id, &alice.device_id).await;
    let id = |v: &Value| v.as_object().unwrap().keys().next().unwrap().clone();
    assert_ne!(id(&first), id(&second), "the same one-time key was handed out twice");
    assert!(id(&first).starts_with("signed_curve25519:AAAA"), "{first}");
    assert!(id(&second).starts_with("signed_curve25519:AAAA"), "{second}");
    // The claimed key is the uploaded object.
    let n: usize = id(&first)["signed_curve25519:AAAA".len()..].parse().unwrap();
    assert_eq!(first[id(&first)], otk(&alice, n).1);

    // One-time keys are used up: the fallback key, and it stays.
    for _ in 0..2 {
        let fb = claim(&bob, &alice.user_id, &alice.device_id).await;
        assert_eq!(fb["signed_curve25519:FB1"]["key"], "fallback", "{fb}");
    }
    let (_, counts) = alice.post("/_matrix/client/v3/keys/upload", &json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0, "{counts}");

    // A device with nothing to claim is simply absent; unknown users too.
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/keys/claim",
            &json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" }, "@nobody:localhost": { "X": "signed_curve25519" } } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["one_time_keys"].get(&bob.user_id).is_none(), "{body}");

    // A new fallback key replaces the old one.
    let (status, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "fallback_keys": { "signed_curve25519:FB2": { "key": "fallback2", "fallback": true } } }),
        )
        .await;
    assert_eq!(status, 200);
    let fb = claim(&bob, &alice.user_id, &alice.device_id).await;
    assert_eq!(fb["signed_curve25519:FB2"]["key"], "fallback2", "{fb}");
});

both_backends!(concurrent_claims_never_double_spend, |server| async move {
    let alice = server.register("alice").await;
    const KEYS: usize = 40;
    const CLAIMS: usize = 60;
    upload_otks(&alice, 0..KEYS).await;
    let mut claimers = Vec::new();
    for i in 0..4 {
        claimers.push(server.register(&format!("claimer{i}")).await);
    }
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|i| {
            let c = claimers[i % claimers.len()].clone();
            let (user, device) = (alice.user_id.clone(), alice.device_id.clone());
            tokio::spawn(async move { claim(&c, &user, &device).await })
        })
        .collect();
    let mut handed_out = Vec::new();
    let mut empty = 0;
    for t in tasks {
        let got = t.await.unwrap();
        match got.as_object() {
            Some(m) if !m.is_empty() => handed_out.extend(m.keys().cloned()),
            _ => empty += 1,
        }
    }
    let distinct: BTreeSet<_> = handed_out.iter().collect();
    assert_eq!(distinct.len(), handed_out.len(), "a key was handed out twice: {handed_out:?}");
    assert_eq!(handed_out.len(), KEYS, "every key handed out exactly once ({empty} claims got nothing)");
    assert_eq!(empty, CLAIMS - KEYS);
    let (_, counts) = alice.post("/_matrix/client/v3/keys/upload", &json!({})).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 0, "{counts}");
});

both_backends!(one_time_keys_are_claimed_in_upload_order, |server| async move {
    // Spec v1.13 (MSC4225): the first upload's keys go first, whatever their ids.
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    upload_otks(&alice, 5..7).await;
    upload_otks(&alice, 0..2).await;
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = claim(&bob, &alice.user_id, &alice.device_id).await;
        order.extend(got.as_object().unwrap().keys().cloned());
    }
    let first: BTreeSet<_> = order[..2].iter().map(String::as_str).collect();
    let then: BTreeSet<_> = order[2..].iter().map(String::as_str).collect();
    assert_eq!(first, BTreeSet::from(["signed_curve25519:AAAA0005", "signed_curve25519:AAAA0006"]), "{order:?}");
    assert_eq!(then, BTreeSet::from(["signed_curve25519:AAAA0000", "signed_curve25519:AAAA0001"]), "{order:?}");
});

// ---- device lists -------------------------------------------------------------------------

both_backends!(device_list_changes_follow_shared_rooms, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice).await;
    join(&alice, &bob, &room).await;

    // Bob's keys: Alice shares a room with him, Carol does not.
    let ed = SigningKey::new(Some(&bob.device_id));
    let (status, _) =
        bob.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": device_keys(&bob, &ed) })).await;
    assert_eq!(status, 200);
    let (changed, left) = changes_since_start(&alice).await;
    assert!(changed.contains(&bob.user_id), "{changed:?}");
    assert!(!changed.contains(&carol.user_id), "{changed:?}");
    assert!(left.is_empty(), "{left:?}");
    let (changed, _) = changes_since_start(&carol).await;
    assert!(!changed.contains(&bob.user_id), "Carol shares no room with Bob: {changed:?}");
    assert!(changed.contains(&carol.user_id), "own changes are reported: {changed:?}");

    // Once Bob leaves, he is in `left` and no longer in `changed`.
    let (status, body) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (changed, left) = changes_since_start(&alice).await;
    assert!(left.contains(&bob.user_id), "{left:?}");
    assert!(!changed.contains(&bob.user_id), "{changed:?}");

    // Tokens are validated.
    let (status, body) = alice.get("/_matrix/client/v3/keys/changes?from=garbage&to=s1").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, _) = alice.get("/_matrix/client/v3/keys/changes?from=s0").await;
    assert_eq!(status, 400);
});

both_backends!(deleting_a_device_deletes_its_keys, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice).await;
    join(&alice, &bob, &room).await;
    let second = server.login("bob", common::PASSWORD).await;
    for c in [&bob, &second] {
        let ed = SigningKey::new(Some(&c.device_id));
        let (status, _) =
            c.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": device_keys(c, &ed) })).await;
        assert_eq!(status, 200);
        upload_otks(c, 0..3).await;
    }
    let res = query(&alice, &[&bob.user_id]).await;
    assert_eq!(res["device_keys"][&bob.user_id].as_object().unwrap().len(), 2, "{res}");

    // DELETE /devices/{id} (with UIA): the device's keys are gone, one-time keys too.
    let (status, body) = bob
        .with_password_uia(
            reqwest::Method::DELETE,
            &format!("/_matrix/client/v3/devices/{}", second.device_id),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let res = query(&alice, &[&bob.user_id]).await;
    let devices = res["device_keys"][&bob.user_id].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), vec![&bob.device_id], "{res}");
    assert_eq!(claim(&alice, &bob.user_id, &second.device_id).await, Value::Null);

    // Logout does the same.
    let (status, _) = bob.post("/_matrix/client/v3/logout", &json!({})).await;
    assert_eq!(status, 200);
    let res = query(&alice, &[&bob.user_id]).await;
    assert_eq!(res["device_keys"][&bob.user_id], json!({}), "{res}");
    assert_eq!(claim(&alice, &bob.user_id, &bob.device_id).await, Value::Null);

    // Logging in again (a new device) is a change Alice hears about, as were the deletions.
    let (changed, _) = changes_since_start(&alice).await;
    assert!(changed.contains(&bob.user_id), "{changed:?}");
});

// ---- cross-signing ------------------------------------------------------------------------

both_backends!(cross_signing_upload_and_query, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (cs, body) = cross_signing_body(&alice.user_id);

    // First upload: no UIA needed.
    let (status, res) = alice.post("/_matrix/client/v3/keys/device_signing/upload", &body).await;
    assert_eq!(status, 200, "{res}");
    // The same keys again: still no UIA (a retried request).
    let (status, res) = alice.post("/_matrix/client/v3/keys/device_signing/upload", &body).await;
    assert_eq!(status, 200, "{res}");

    let mine = query(&alice, &[&alice.user_id]).await;
    assert_eq!(mine["master_keys"][&alice.user_id], body["master_key"], "{mine}");
    assert_eq!(mine["self_signing_keys"][&alice.user_id], body["self_signing_key"], "{mine}");
    assert_eq!(mine["user_signing_keys"][&alice.user_id], body["user_signing_key"], "{mine}");
    let theirs = query(&bob, &[&alice.user_id]).await;
    assert_eq!(theirs["master_keys"][&alice.user_id], body["master_key"], "{theirs}");
    assert_eq!(theirs["self_signing_keys"][&alice.user_id], body["self_signing_key"], "{theirs}");
    assert!(theirs["user_signing_keys"].get(&alice.user_id).is_none(), "user-signing key is private: {theirs}");

    // Replacing the keys needs the password.
    let (cs2, body2) = cross_signing_body(&alice.user_id);
    let (status, res) = alice.post("/_matrix/client/v3/keys/device_signing/upload", &body2).await;
    assert_eq!(status, 401, "{res}");
    assert!(res["session"].is_string(), "{res}");
    let (status, res) = alice
        .with_password_uia(reqwest::Method::POST, "/_matrix/client/v3/keys/device_signing/upload", body2.clone())
        .await;
    assert_eq!(status, 200, "{res}");
    let mine = query(&alice, &[&alice.user_id]).await;
    assert_eq!(mine["master_keys"][&alice.user_id]["keys"], json!({ cs2.master.key_id(): cs2.master.public }));
    let _ = cs;

    // A self-signing key not signed by the master key is refused.
    let (_, mut bad) = cross_signing_body(&bob.user_id);
    let stranger = SigningKey::new(None);
    let mut ssk = cross_key(&bob.user_id, "self_signing", &SigningKey::new(None));
    stranger.sign(&bob.user_id, &mut ssk);
    bad["self_signing_key"] = ssk;
    let (status, res) = bob.post("/_matrix/client/v3/keys/device_signing/upload", &bad).await;
    assert_eq!((status, res["errcode"].as_str()), (400, Some("M_INVALID_SIGNATURE")), "{res}");
    // Keys of another user are refused.
    let (_, other) = cross_signing_body(&alice.user_id);
    let (status, res) = bob.post("/_matrix/client/v3/keys/device_signing/upload", &other).await;
    assert_eq!(status, 400, "{res}");
    let res = query(&alice, &[&bob.user_id]).await;
    assert!(res["master_keys"].get(&bob.user_id).is_none(), "nothing stored after a refused upload: {res}");
});

both_backends!(signatures_upload_rules, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let ed = SigningKey::new(Some(&alice.device_id));
    let keys = device_keys(&alice, &ed);
    let (status, _) = alice.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": keys })).await;
    assert_eq!(status, 200);
    let (acs, abody) = cross_signing_body(&alice.user_id);
    let (status, _) = alice.post("/_matrix/client/v3/keys/device_signing/upload", &abody).await;
    assert_eq!(status, 200);
    let (_bcs, bbody) = cross_signing_body(&bob.user_id);
    let (status, _) = bob.post("/_matrix/client/v3/keys/device_signing/upload", &bbody).await;
    assert_eq!(status, 200);

    // Alice signs her device with her self-signing key, and her master key with her device.
    let mut signed_device = keys.clone();
    acs.self_signing.sign(&alice.user_id, &mut signed_device);
    let mut signed_master = abody["master_key"].clone();
    ed.sign(&alice.user_id, &mut signed_master);
    // ... and Bob's master key with her user-signing key.
    let mut bobs_master = bbody["master_key"].clone();
    acs.user_signing.sign(&alice.user_id, &mut bobs_master);
    // A forged signature on the device (wrong key) fails alone.
    let (status, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            &json!({
                &alice.user_id: { &alice.device_id: signed_device, &acs.master.public: signed_master },
                &bob.user_id: { &bob_master_id(&bbody): bobs_master },
            }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"].as_object().is_none_or(|f| f.is_empty()), "{res}");

    let ssk_id = acs.self_signing.key_id();
    for viewer in [&alice, &bob, &carol] {
        let q = query(viewer, &[&alice.user_id, &bob.user_id]).await;
        let dev = &q["device_keys"][&alice.user_id][&alice.device_id];
        assert!(dev["signatures"][&alice.user_id][&ssk_id].is_string(), "device signed by SSK: {q}");
        let master = &q["master_keys"][&alice.user_id];
        assert!(
            master["signatures"][&alice.user_id][&format!("ed25519:{}", alice.device_id)].is_string(),
            "master signed by device: {q}"
        );
        // Alice's signature on Bob's master key is visible to Alice only.
        let on_bob = &q["master_keys"][&bob.user_id]["signatures"][&alice.user_id];
        assert_eq!(on_bob.is_object(), viewer.user_id == alice.user_id, "viewer {}: {q}", viewer.user_id);
    }

    // Bad signatures are reported per key and stored nowhere.
    let mut forged = keys.clone();
    forged["signatures"][&alice.user_id][&ssk_id] = json!(acs.master.raw_sign(b"something else"));
    let mut unknown = keys.clone();
    unknown["device_id"] = json!("NOSUCHDEVICE");
    let (status, res) = alice
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            &json!({ &alice.user_id: { &alice.device_id: forged, "NOSUCHDEVICE": unknown } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["failures"][&alice.user_id][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE", "{res}");
    assert!(res["failures"][&alice.user_id]["NOSUCHDEVICE"]["errcode"].is_string(), "{res}");
    // The earlier valid signature is still the one served.
    let q = query(&bob, &[&alice.user_id]).await;
    let served = &q["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id][&ssk_id];
    let mut check = keys.clone();
    acs.self_signing.sign(&alice.user_id, &mut check);
    assert_eq!(served, &check["signatures"][&alice.user_id][&ssk_id], "{q}");

    // Carol has no user-signing key: she cannot sign Bob.
    let mut bobs_master = bbody["master_key"].clone();
    SigningKey::new(None).sign(&carol.user_id, &mut bobs_master);
    let (status, res) = carol
        .post(
            "/_matrix/client/v3/keys/signatures/upload",
            &json!({ &bob.user_id: { &bob_master_id(&bbody): bobs_master } }),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    assert!(res["failures"][&bob.user_id].is_object(), "{res}");
});

fn bob_master_id(body: &Value) -> String {
    body["master_key"]["keys"].as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned()
}

// ---- key backup ---------------------------------------------------------------------------

fn session(first_message_index: i64, forwarded_count: i64, is_verified: bool, tag: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": tag, "ciphertext": tag, "mac": tag },
    })
}

both_backends!(key_backup_versions_and_keys, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (status, body) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let (status, body) = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            &json!({ "algorithm": algorithm, "auth_data": { "public_key": "pk1" } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let v1 = body["version"].as_str().unwrap().to_owned();
    let (status, info) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(status, 200, "{info}");
    assert_eq!(info["version"], v1);
    assert_eq!(info["algorithm"], algorithm);
    assert_eq!(info["auth_data"]["public_key"], "pk1");
    assert_eq!(info["count"], 0);
    let etag0 = info["etag"].as_str().unwrap().to_owned();
    // Bob has no backup; Alice's is hers alone.
    let (status, _) = bob.get(&format!("/_matrix/client/v3/room_keys/version/{v1}")).await;
    assert_eq!(status, 404);

    // Keys: per session, per room, all.
    let room = "!room:localhost";
    let keys = |path: &str| format!("/_matrix/client/v3/room_keys/keys{path}?version={v1}");
    let (status, body) = alice.put(&keys(&format!("/{room}/s1")), &session(5, 1, false, "a")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 1);
    let etag1 = body["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0);
    let (status, body) =
        alice.put(&keys(&format!("/{room}")), &json!({ "sessions": { "s2": session(0, 0, false, "b") } })).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2);
    let (status, body) = alice
        .put(&keys(""), &json!({ "rooms": { "!other:localhost": { "sessions": { "s3": session(0, 0, true, "c") } } } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 3);
    let etag3 = body["etag"].as_str().unwrap().to_owned();

    // Replacement rules: a worse key keeps the stored one (and the etag); a better one wins.
    for worse in [session(6, 0, false, "worse-index"), session(5, 2, false, "worse-fwd"), session(5, 1, false, "tie")] {
        let (status, body) = alice.put(&keys(&format!("/{room}/s1")), &worse).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["etag"], etag3.as_str(), "unchanged keys keep the etag");
    }
    let (_, stored) = alice.get(&keys(&format!("/{room}/s1"))).await;
    assert_eq!(stored["session_data"]["ciphertext"], "a", "{stored}");
    let (_, body) = alice.put(&keys(&format!("/{room}/s1")), &session(9, 9, true, "verified")).await;
    assert_ne!(body["etag"], etag3.as_str());
    let (_, stored) = alice.get(&keys(&format!("/{room}/s1"))).await;
    assert_eq!(stored["session_data"]["ciphertext"], "verified", "verified beats unverified: {stored}");
    let (_, body) = alice.put(&keys(&format!("/{room}/s1")), &session(2, 9, false, "unverified-lower")).await;
    assert_eq!(body["count"], 3);
    let (_, stored) = alice.get(&keys(&format!("/{room}/s1"))).await;
    assert_eq!(stored["session_data"]["ciphertext"], "verified", "{stored}");
    let (_, body) = alice.put(&keys(&format!("/{room}/s1")), &session(3, 9, true, "lower-index")).await;
    assert_eq!(body["count"], 3);
    let (_, stored) = alice.get(&keys(&format!("/{room}/s1"))).await;
    assert_eq!(stored["session_data"]["ciphertext"], "lower-index", "{stored}");

    // Reads.
    let (status, all) = alice.get(&keys("")).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["rooms"][room]["sessions"].as_object().unwrap().len(), 2, "{all}");
    assert_eq!(all["rooms"]["!other:localhost"]["sessions"]["s3"]["session_data"]["ciphertext"], "c", "{all}");
    let (_, one_room) = alice.get(&keys(&format!("/{room}"))).await;
    assert_eq!(one_room["sessions"].as_object().unwrap().len(), 2, "{one_room}");
    let (_, empty_room) = alice.get(&keys("/!empty:localhost")).await;
    assert_eq!(empty_room, json!({ "sessions": {} }));
    let (status, body) = alice.get(&keys(&format!("/{room}/nosuch"))).await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");

    // A new version: writes to the old one are refused with the current version named.
    let (_, body) = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            &json!({ "algorithm": algorithm, "auth_data": { "public_key": "pk2" } }),
        )
        .await;
    let v2 = body["version"].as_str().unwrap().to_owned();
    assert_ne!(v1, v2);
    let (status, body) = alice.put(&keys(&format!("/{room}/s9")), &session(0, 0, false, "x")).await;
    assert_eq!((status, body["errcode"].as_str()), (403, Some("M_WRONG_ROOM_KEYS_VERSION")), "{body}");
    assert_eq!(body["current_version"], v2.as_str());
    let (_, info) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(info["version"], v2.as_str());
    assert_eq!(info["count"], 0);
    // The old version can still be read.
    let (status, info1) = alice.get(&format!("/_matrix/client/v3/room_keys/version/{v1}")).await;
    assert_eq!(status, 200, "{info1}");
    assert_eq!(info1["count"], 3);

    // Update auth_data (algorithm must stay).
    let (status, body) = alice
        .put(
            &format!("/_matrix/client/v3/room_keys/version/{v2}"),
            &json!({ "algorithm": algorithm, "auth_data": { "public_key": "pk2b" }, "version": v2 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, info) = alice.get(&format!("/_matrix/client/v3/room_keys/version/{v2}")).await;
    assert_eq!(info["auth_data"]["public_key"], "pk2b");
    let (status, _) = alice
        .put(&format!("/_matrix/client/v3/room_keys/version/{v2}"), &json!({ "algorithm": "other", "auth_data": {} }))
        .await;
    assert_eq!(status, 400);

    // Deleting keys: session, room, all — each gives etag and count.
    let (status, body) = alice.delete(&keys(&format!("/{room}/s2")), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 2);
    let (_, body) = alice.delete(&keys(&format!("/{room}")), &json!({})).await;
    assert_eq!(body["count"], 1);
    let (_, body) = alice.delete(&keys(""), &json!({})).await;
    assert_eq!(body["count"], 0);

    // Deleting the current version makes the previous one the latest; numbers are not reused.
    let (status, _) = alice.delete(&format!("/_matrix/client/v3/room_keys/version/{v2}"), &json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = alice.get(&format!("/_matrix/client/v3/room_keys/version/{v2}")).await;
    assert_eq!(status, 404);
    let (status, _) = alice.delete(&format!("/_matrix/client/v3/room_keys/version/{v2}"), &json!({})).await;
    assert_eq!(status, 404);
    let (_, info) = alice.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(info["version"], v1.as_str());
    let (_, body) =
        alice.post("/_matrix/client/v3/room_keys/version", &json!({ "algorithm": algorithm, "auth_data": {} })).await;
    assert_ne!(body["version"], v2.as_str());
});

// ---- /sync: device lists, key counts, to-device --------------------------------------------

fn users_in(body: &Value, field: &str) -> BTreeSet<String> {
    body["device_lists"][field].as_array().into_iter().flatten().map(|u| u.as_str().unwrap().to_owned()).collect()
}

both_backends!(sync_device_lists_and_key_counts, |server| async move {
    use sync_util::{next_batch, sync};
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = create_room(&alice).await;
    join(&alice, &bob, &room).await;

    let first = sync(&alice, None, None, 0).await;
    assert_eq!(first["device_one_time_keys_count"]["signed_curve25519"], 0, "{first}");
    let t1 = next_batch(&first);

    // A long-polling sync of Alice wakes when Bob uploads keys, and names Bob.
    let waiting = {
        let (alice, t1) = (alice.clone(), t1.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let body = sync(&alice, Some(&t1), None, 20_000).await;
            (body, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let ed = SigningKey::new(Some(&bob.device_id));
    let (status, _) =
        bob.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": device_keys(&bob, &ed) })).await;
    assert_eq!(status, 200);
    // Carol shares no room: her keys must not show up for Alice.
    let ed = SigningKey::new(Some(&carol.device_id));
    let (status, _) =
        carol.post("/_matrix/client/v3/keys/upload", &json!({ "device_keys": device_keys(&carol, &ed) })).await;
    assert_eq!(status, 200);
    let (woken, elapsed) = waiting.await.unwrap();
    assert!(elapsed < std::time::Duration::from_secs(15), "the key upload did not wake the sync ({elapsed:?})");
    assert!(users_in(&woken, "changed").contains(&bob.user_id), "{woken}");
    let t2 = next_batch(&woken);
    let body = sync(&alice, Some(&t1), None, 0).await;
    assert!(users_in(&body, "changed").contains(&bob.user_id), "{body}");
    assert!(!users_in(&body, "changed").contains(&carol.user_id), "{body}");

    // /keys/changes with real sync tokens: the range names Bob; an empty range names nobody.
    let t3 = next_batch(&body);
    let (status, ch) = alice.get(&format!("/_matrix/client/v3/keys/changes?from={t1}&to={t3}")).await;
    assert_eq!(status, 200, "{ch}");
    assert!(ch["changed"].as_array().unwrap().contains(&json!(bob.user_id)), "{ch}");
    assert!(!ch["changed"].as_array().unwrap().contains(&json!(carol.user_id)), "{ch}");
    let (_, ch) = alice.get(&format!("/_matrix/client/v3/keys/changes?from={t3}&to={t3}")).await;
    assert_eq!(ch, json!({ "changed": [], "left": [] }));
    let _ = t2;

    // Alice's own key counts and fallback key types.
    upload_otks(&alice, 0..3).await;
    let (status, _) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            &json!({ "fallback_keys": { "signed_curve25519:FB": { "key": "fb", "fallback": true } } }),
        )
        .await;
    assert_eq!(status, 200);
    let body = sync(&alice, Some(&t3), None, 0).await;
    assert_eq!(body["device_one_time_keys_count"]["signed_curve25519"], 3, "{body}");
    assert_eq!(body["device_unused_fallback_key_types"], json!(["signed_curve25519"]), "{body}");
    for _ in 0..4 {
        claim(&bob, &alice.user_id, &alice.device_id).await;
    }
    let t4 = next_batch(&body);
    let body = sync(&alice, Some(&t4), None, 0).await;
    assert_eq!(body["device_one_time_keys_count"]["signed_curve25519"], 0, "{body}");
    assert_eq!(body["device_unused_fallback_key_types"], json!([]), "the fallback key was used: {body}");
    let t5 = next_batch(&body);

    // Carol joins: she is new to Alice, so she is in `changed` (her devices must be fetched).
    join(&alice, &carol, &room).await;
    let body = sync(&alice, Some(&t5), None, 0).await;
    assert!(users_in(&body, "changed").contains(&carol.user_id), "{body}");
    let t6 = next_batch(&body);

    // Bob leaves: he is in `left`, and his later changes are no longer reported to Alice.
    let (status, _) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await;
    assert_eq!(status, 200);
    let body = sync(&alice, Some(&t6), None, 0).await;
    assert!(users_in(&body, "left").contains(&bob.user_id), "{body}");
    let t7 = next_batch(&body);
    let _second = server.login("bob", common::PASSWORD).await;
    let body = sync(&alice, Some(&t7), None, 0).await;
    assert!(!users_in(&body, "changed").contains(&bob.user_id), "{body}");
    // Carol, who still shares the room, logging in a new device is reported.
    let t8 = next_batch(&body);
    let _carol2 = server.login("carol", common::PASSWORD).await;
    let body = sync(&alice, Some(&t8), None, 0).await;
    assert!(users_in(&body, "changed").contains(&carol.user_id), "{body}");
});

both_backends!(to_device_reaches_every_addressed_device, |server| async move {
    use sync_util::{next_batch, sync};
    let alice1 = server.register("alice").await;
    let alice2 = server.login("alice", common::PASSWORD).await;
    let bob = server.register("bob").await;
    let mut tokens = Vec::new();
    for c in [&alice1, &alice2] {
        tokens.push(next_batch(&sync(c, None, None, 0).await));
    }
    let send = |txn: &str, messages: Value| {
        let bob = bob.clone();
        let path = format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/{txn}");
        async move {
            let (status, body) = bob.put(&path, &json!({ "messages": messages })).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    send("t1", json!({ &alice1.user_id: { "*": { "ciphertext": "to all" } } })).await;
    send("t2", json!({ &alice1.user_id: { &alice1.device_id: { "ciphertext": "to one" } } })).await;
    // A retried transaction is not delivered twice.
    send("t2", json!({ &alice1.user_id: { &alice1.device_id: { "ciphertext": "to one" } } })).await;

    let received = |body: &Value| -> Vec<String> {
        body["to_device"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                assert_eq!(e["sender"], json!(bob.user_id), "{e}");
                assert_eq!(e["type"], "m.room.encrypted", "{e}");
                e["content"]["ciphertext"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let b1 = sync(&alice1, Some(&tokens[0]), None, 0).await;
    assert_eq!(received(&b1), vec!["to all", "to one"], "{b1}");
    let b2 = sync(&alice2, Some(&tokens[1]), None, 0).await;
    assert_eq!(received(&b2), vec!["to all"], "{b2}");
    // Delivered messages are not delivered again once the client moves on.
    let again = sync(&alice1, Some(&next_batch(&b1)), None, 0).await;
    assert!(received(&again).is_empty(), "{again}");
});

// ---- a real client: matrix-nio with Olm/Megolm --------------------------------------------

/// The step named `step` in a script's output (the last one when repeated).
fn nio_steps<'a>(out: &'a [Value], step: &str) -> Vec<&'a Value> {
    out.iter().filter(|v| v["step"] == step).collect()
}

both_backends!(nio_encrypted_round_trip, |server| async move {
    let url = server.url();
    let (ok, out, stderr) = common::run_nio_script("e2ee.py", &[&url]).await;
    assert!(ok, "nio e2ee scenario failed:\n{stderr}\noutput: {out:?}\nserver log:\n{}", server.log());

    let uploads = nio_steps(&out, "keys_upload");
    assert_eq!(uploads.len(), 2, "{out:?}");
    let room = nio_steps(&out, "room")[0];
    let room_id = room["room_id"].as_str().unwrap();
    let token = room["access_token"].as_str().unwrap();
    let sent = nio_steps(&out, "sent");
    let decrypted = nio_steps(&out, "decrypted");
    assert_eq!(sent.len(), 2, "{out:?}");
    assert_eq!(decrypted.len(), 2, "both directions decrypted: {out:?}");

    let get = |path: String| {
        let req = server.request(reqwest::Method::GET, &path).bearer_auth(token);
        common::send(req)
    };
    for (s, d) in sent.iter().zip(&decrypted) {
        assert_eq!(s["event_id"], d["event_id"]);
        // What the server stored is ciphertext: m.room.encrypted with Megolm, no plaintext.
        let (status, ev) =
            get(format!("/_matrix/client/v3/rooms/{room_id}/event/{}", s["event_id"].as_str().unwrap())).await;
        assert_eq!(status, 200, "{ev}");
        assert_eq!(ev["type"], "m.room.encrypted", "{ev}");
        assert_eq!(ev["content"]["algorithm"], "m.megolm.v1.aes-sha2", "{ev}");
        let body = d["body"].as_str().unwrap();
        assert!(!ev.to_string().contains(body), "plaintext reached the server: {ev}");
    }

    // The server serves each device's identity key exactly as the client holds it.
    let users: Vec<&str> = uploads.iter().map(|u| u["user_id"].as_str().unwrap()).collect();
    let wanted: serde_json::Map<String, Value> = users.iter().map(|u| (u.to_string(), json!([]))).collect();
    let (status, keys) = common::send(
        server
            .request(reqwest::Method::POST, "/_matrix/client/v3/keys/query")
            .bearer_auth(token)
            .json(&json!({ "device_keys": wanted })),
    )
    .await;
    assert_eq!(status, 200, "{keys}");
    for u in &uploads {
        let (user, device) = (u["user_id"].as_str().unwrap(), u["device_id"].as_str().unwrap());
        let served = &keys["device_keys"][user][device]["keys"][format!("ed25519:{device}")];
        assert_eq!(served, &u["ed25519"], "{keys}");
    }
});

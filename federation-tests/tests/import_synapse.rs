//! `myelin import-synapse`: a real Synapse (on SQLite, or on PostgreSQL) is given users, rooms
//! with history, state changes and a redaction, media, profiles, account data, push rules, device
//! keys, a key backup and a to-device message, and a second server (a Myelin) joins one of its
//! rooms; Synapse is stopped and imported (once interrupted, then resumed) into a Myelin database
//! on the same backend, and Myelin, started with the same server name, must serve the same to
//! the same clients: old access tokens, password login (Synapse's bcrypt hash), `/sync` and
//! `/messages` with the same rooms, state and history in the same order, byte-identical media,
//! keys and the backup; and federation with the second server goes on both ways. A rerun says it
//! was already imported; refusals (Synapse running, a Myelin database that is not empty, another
//! server name) are checked.
//!
//! Set `SKIP_SYNAPSE_TESTS=1` to skip it where PyPI is unreachable.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

use common::synapse::SynapseServer;
use common::*;
use serde_json::{Value, json};

/// What the clients saw on Synapse, to compare with what they see on Myelin.
struct Seen {
    rooms: Vec<String>,
    state: BTreeMap<String, Vec<(String, String, String)>>,
    history: BTreeMap<String, Vec<String>>,
    media: Vec<(String, Vec<u8>)>,
    redacted: String,
    read_up_to: String,
    remote_room: String,
    remote_state: Vec<(String, String, String)>,
    synapse_since: String,
    device_keys: Value,
    cross_signing: Value,
    backup: Value,
}

fn run_import(args: &[&str]) -> (bool, String) {
    run_import_env(args, &[])
}

fn run_import_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(myelin_bin())
        .arg("import-synapse")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running myelin");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn history(c: &Client, room: &str) -> Vec<String> {
    // Paged backwards in small pages, so that tokens from one page to the next are exercised.
    let mut ids = Vec::new();
    let mut from: Option<String> = None;
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=7", enc(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", enc(f)));
        }
        let (s, b) = c.get(&path).await;
        assert_eq!(s, 200, "messages: {b}");
        for e in b["chunk"].as_array().cloned().unwrap_or_default() {
            ids.push(e["event_id"].as_str().expect("event_id").to_owned());
        }
        match b["end"].as_str() {
            Some(end) if !b["chunk"].as_array().is_none_or(Vec::is_empty) => from = Some(end.to_owned()),
            _ => break,
        }
    }
    ids.reverse();
    ids
}

async fn joined_rooms(c: &Client) -> Vec<String> {
    let (s, b) = c.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200, "sync: {b}");
    let mut rooms: Vec<String> =
        b["rooms"]["join"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    rooms.sort();
    rooms
}

async fn download(base: &str, mxc: &str, token: &str) -> Vec<u8> {
    let (server, id) = mxc.trim_start_matches("mxc://").split_once('/').expect("mxc");
    let url = format!("{base}/_matrix/client/v1/media/download/{}/{}", enc(server), enc(id));
    let res = http_client().get(url).bearer_auth(token).send().await.expect("download");
    assert_eq!(res.status(), 200, "download {mxc}");
    res.bytes().await.expect("bytes").to_vec()
}

async fn upload(c: &Client, bytes: Vec<u8>, name: &str, ty: &str) -> String {
    let url = format!("{}/_matrix/media/v3/upload?filename={}", c.base, enc(name));
    let (s, b) =
        send(http_client().post(url).bearer_auth(&c.access_token).header("Content-Type", ty).body(bytes)).await;
    assert_eq!(s, 200, "upload: {b}");
    b["content_uri"].as_str().expect("content_uri").to_owned()
}

/// Fills Synapse with what the import must carry over.
async fn populate(synapse: &SynapseServer, remote: &Client) -> (Client, String, Client, Seen) {
    let alice = synapse.register("alice").await;
    let alice_dev = alice.device_id.clone();
    let bob = synapse.register("bob").await;
    let ok = |s: u16, b: &Value, what: &str| assert_eq!(s, 200, "{what}: {b}");
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice S"}),
        )
        .await;
    ok(s, &b, "displayname");
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/org.example.settings", enc(&alice.user_id)),
            json!({"theme": "dark"}),
        )
        .await;
    ok(s, &b, "account data");
    let (s, b) = alice
        .put(
            "/_matrix/client/v3/pushrules/global/content/cats",
            json!({"pattern": "cats", "actions": ["notify", {"set_tweak": "highlight"}]}),
        )
        .await;
    ok(s, &b, "push rule");

    // A public room with an alias, history and state changes, two members.
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({"preset": "public_chat", "name": "Imported", "room_alias_name": "imported", "visibility": "public"}),
        )
        .await;
    ok(s, &b, "createRoom");
    let room = b["room_id"].as_str().expect("room").to_owned();
    let (s, b) = bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({})).await;
    ok(s, &b, "bob joins");
    let mut said = Vec::new();
    for i in 0..30 {
        let who = if i % 3 == 0 { &bob } else { &alice };
        said.push(who.say(&room, &format!("message {i}")).await);
        if i == 10 {
            let (s, b) = alice
                .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)), json!({"topic": "t1"}))
                .await;
            ok(s, &b, "topic");
        }
        if i == 20 {
            let (s, b) = alice
                .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)), json!({"name": "Renamed"}))
                .await;
            ok(s, &b, "name");
        }
    }
    let (s, b) = alice.get(&format!("/_matrix/client/v3/directory/list/room/{}", enc(&room))).await;
    assert_eq!((s, &b["visibility"]), (200, &json!("public")), "published on Synapse: {b}");
    // A redaction, and a read receipt.
    let redacted = said[3].clone();
    let (s, b) = bob
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&redacted)),
            json!({"reason": "oops"}),
        )
        .await;
    ok(s, &b, "redact");
    let read_up_to = said[29].clone();
    let (s, b) = bob
        .post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&read_up_to)), json!({}))
        .await;
    ok(s, &b, "receipt");
    let (s, b) = alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
                enc(&alice.user_id),
                enc(&room)
            ),
            json!({"pinned": true}),
        )
        .await;
    ok(s, &b, "room account data");
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.work", enc(&alice.user_id), enc(&room)),
            json!({"order": 0.5}),
        )
        .await;
    ok(s, &b, "tag");
    // A private room of Alice's alone, and one Bob left.
    let (s, b) = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "private_chat", "name": "Notes"})).await;
    ok(s, &b, "createRoom 2");
    let notes = b["room_id"].as_str().expect("room").to_owned();
    alice.say(&notes, "note to self").await;
    let (s, b) = bob.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat", "name": "Left"})).await;
    ok(s, &b, "createRoom 3");
    let left = b["room_id"].as_str().expect("room").to_owned();
    let (s, b) = alice.post(&format!("/_matrix/client/v3/join/{}", enc(&left)), json!({})).await;
    ok(s, &b, "alice joins 3");
    bob.say(&left, "bye").await;
    let (s, b) = bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)), json!({})).await;
    ok(s, &b, "bob leaves");

    // Media: a PNG-ish blob and a text file.
    let png: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mxc1 = upload(&alice, png.clone(), "blob.bin", "application/octet-stream").await;
    let mxc2 = upload(&bob, b"hello from synapse\n".to_vec(), "hello.txt", "text/plain").await;

    // Device keys, one-time and fallback keys of Alice's device, and a key backup.
    let device_keys = json!({
        "user_id": alice.user_id, "device_id": alice_dev,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{alice_dev}"): "Y3VydmUyNTUxOWtleWN1cnZlMjU1MTlrZXljdXJ2ZTI",
                  format!("ed25519:{alice_dev}"): "ZWQyNTUxOWtleWVkMjU1MTlrZXllZDI1NTE5a2V5ZWQ" },
        "signatures": { alice.user_id.clone(): { format!("ed25519:{alice_dev}"): "c2lnbmF0dXJl" } },
    });
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({
                "device_keys": device_keys,
                "one_time_keys": { "signed_curve25519:AAAAAQ": { "key": "b3RrMQ", "signatures": {} },
                                   "signed_curve25519:AAAAAg": { "key": "b3RrMg", "signatures": {} } },
                "fallback_keys": { "signed_curve25519:AAAAAw": { "key": "ZmFsbGJhY2s", "fallback": true, "signatures": {} } },
            }),
        )
        .await;
    ok(s, &b, "keys/upload");
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 2, "{b}");
    // Cross-signing keys (User-Interactive Auth with the password when Synapse asks for it).
    let (s, b) = alice.post("/_matrix/client/v3/keys/device_signing/upload", cross_signing(&alice.user_id)).await;
    if s == 401 {
        let mut body = cross_signing(&alice.user_id);
        body["auth"] = json!({"type": "m.login.password", "session": b["session"],
            "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": PASSWORD});
        let (s, b) = alice.post("/_matrix/client/v3/keys/device_signing/upload", body).await;
        ok(s, &b, "cross-signing upload");
    } else {
        ok(s, &b, "cross-signing upload");
    }
    let (s, b) = alice
        .post(
            "/_matrix/client/v3/room_keys/version",
            json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "cHVibGlj"}}),
        )
        .await;
    ok(s, &b, "backup version");
    let version = b["version"].as_str().expect("version").to_owned();
    let (s, b) = alice
        .put(
            &format!("/_matrix/client/v3/room_keys/keys/{}/sess1?version={version}", enc(&room)),
            json!({"first_message_index": 1, "forwarded_count": 0, "is_verified": false,
                   "session_data": {"ephemeral": "ZXBo", "ciphertext": "Y2lwaGVy", "mac": "bWFj"}}),
        )
        .await;
    ok(s, &b, "backup session");

    // A user of another server (Myelin) joins the public room over federation and talks.
    remote.join_via_seen_by(&room, &synapse.name(), &alice).await;
    remote.say(&room, "hello from the other server").await;
    wait_until(T, "the remote message on Synapse", || async {
        alice.messages(&room).await.iter().any(|m| m == "hello from the other server")
    })
    .await;

    // And Alice joins a room of the other server: Synapse holds its earlier state as outliers.
    let remote_room = remote.create_public_room().await;
    let remote_server = remote.user_id.split_once(':').expect("user id").1.to_owned();
    let (s, b) = alice.join_via(&remote_room, &remote_server).await;
    ok(s, &b, "join a room of the other server");
    let remote_state = alice.state(&remote_room).await;

    let mut rooms = joined_rooms(&alice).await;
    rooms.sort();
    let (s, b) = alice.get("/_matrix/client/v3/sync?timeout=0").await;
    ok(s, &b, "sync");
    let synapse_since = b["next_batch"].as_str().expect("next_batch").to_owned();
    let mut state = BTreeMap::new();
    let mut hist = BTreeMap::new();
    for r in [&room, &notes, &left] {
        state.insert(r.clone(), alice.state(r).await);
        hist.insert(r.clone(), history(&alice, r).await);
    }
    let (s, keys) =
        alice.post("/_matrix/client/v3/keys/query", json!({"device_keys": {alice.user_id.clone(): []}})).await;
    ok(s, &keys, "keys/query");
    let device_keys = keys["device_keys"][&alice.user_id][&alice_dev].clone();
    assert!(device_keys.is_object(), "{keys}");
    let cross_signing = json!([keys["master_keys"][&alice.user_id], keys["self_signing_keys"][&alice.user_id]]);
    assert!(cross_signing[0]["keys"].is_object() && cross_signing[1]["keys"].is_object(), "{keys}");
    let (s, backup) = alice.get(&format!("/_matrix/client/v3/room_keys/keys?version={version}")).await;
    ok(s, &backup, "backup keys");
    // A to-device message waiting for Alice's device when Synapse stops.
    let (s, b) = bob
        .put(
            "/_matrix/client/v3/sendToDevice/org.example.ping/td1",
            json!({"messages": {alice.user_id.clone(): {alice_dev.clone(): {"n": 1}}}}),
        )
        .await;
    ok(s, &b, "sendToDevice");
    let seen = Seen {
        rooms,
        state,
        history: hist,
        media: vec![(mxc1, png), (mxc2, b"hello from synapse\n".to_vec())],
        redacted,
        read_up_to,
        remote_room,
        remote_state,
        synapse_since,
        device_keys,
        cross_signing,
        backup,
    };
    (alice, alice_dev, bob, seen)
}

async fn import_synapse(backend: Backend, net: &str) {
    if common::synapse::skip() {
        eprintln!("SKIP_SYNAPSE_TESTS=1: skipping the import test");
        return;
    }
    let ip = format!("{net}.1");
    // The imported server keeps Synapse's name (its address); the other server is a Myelin.
    // Synapse runs on the same backend as the Myelin it is imported into.
    let mut synapse = SynapseServer::start_on(&ip, backend).await;
    let other_server = FedServer::start_on(&format!("{net}.2"), backend).await;
    let carol = other_server.register("carol").await;
    let (alice, alice_dev, bob, seen) = populate(&synapse, &carol).await;
    let mut myelin = FedServer::prepare(&ip, backend).await;
    let synapse_config = synapse.config_path().display().to_string();
    let myelin_config = myelin.config_path().display().to_string();
    let args = ["--synapse-config", synapse_config.as_str(), "--config", myelin_config.as_str()];

    // Refused while Synapse runs.
    let (ok, out) = run_import(&args);
    assert!(!ok && out.contains("still running"), "import while Synapse runs: {out}");
    synapse.stop();

    // Interrupted (as by a crash) after five units of work, then run again to the end.
    let (ok, out) = run_import_env(&args, &[("IMPORT_SYNAPSE_INTERRUPT_AFTER", "5")]);
    assert!(!ok && out.contains("interrupted after 5 units"), "interrupted import: {out}");
    let t = Instant::now();
    let (ok, out) = run_import(&args);
    assert!(ok, "import failed: {out}");
    assert!(out.contains("done in an earlier run"), "the rerun resumed: {out}");
    report(&format!("import-synapse ({backend:?}) took {} ms:\n{out}", t.elapsed().as_millis()));
    let (ok, again) = run_import(&args);
    assert!(ok && again.contains("already imported"), "rerun: {again}");

    myelin.start_again().await;
    let on_myelin = |c: &Client| Client::new(myelin.url(), c.access_token.clone(), c.user_id.clone());
    let (alice_m, bob_m) = (on_myelin(&alice), on_myelin(&bob));

    // Old access tokens.
    let (s, b) = alice_m.get("/_matrix/client/v3/account/whoami").await;
    assert_eq!(s, 200, "old token on Myelin: {b}\n{}", tail(&myelin.log()));
    assert_eq!(b["user_id"], alice.user_id);
    assert_eq!(b["device_id"], alice_dev);
    // A client's Synapse sync token is answered as a first sync, not an error it would retry.
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/sync?timeout=0&since={}", enc(&seen.synapse_since))).await;
    assert_eq!(s, 200, "sync with Synapse's token {}: {b}", seen.synapse_since);
    let to_device = b["to_device"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        to_device
            .iter()
            .any(|e| e["type"] == "org.example.ping" && e["sender"] == bob.user_id && e["content"]["n"] == 1),
        "the pending to-device message: {b}"
    );
    let mut again: Vec<String> =
        b["rooms"]["join"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    again.sort();
    assert_eq!(again, seen.rooms, "rooms of a sync with Synapse's token");
    // Rooms, state, history.
    assert_eq!(joined_rooms(&alice_m).await, seen.rooms, "joined rooms");
    for (room, state) in &seen.state {
        assert_eq!(&alice_m.state(room).await, state, "state of {room}");
        assert_eq!(&history(&alice_m, room).await, &seen.history[room], "history of {room}");
    }
    // The room of the other server: its state, members who joined before us included.
    assert_eq!(alice_m.state(&seen.remote_room).await, seen.remote_state, "state of the other server's room");
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&seen.remote_room))).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["joined"][&carol.user_id].is_object() && b["joined"][&alice.user_id].is_object(), "members: {b}");
    // The redaction took effect; the receipt is there.
    let (s, b) =
        alice_m.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_of(&seen)), enc(&seen.redacted))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["content"], json!({}), "redacted on Myelin: {b}");
    let (s, sync) = alice_m.get("/_matrix/client/v3/sync?timeout=0").await;
    assert_eq!(s, 200);
    assert!(sees_receipt(&sync, &room_of(&seen), &seen.read_up_to, &bob.user_id), "receipt: {sync}");
    // Profile, account data, tags, push rules.
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id))).await;
    assert_eq!((s, &b["displayname"]), (200, &json!("Alice S")), "{b}");
    let (s, b) = alice_m
        .get(&format!("/_matrix/client/v3/user/{}/account_data/org.example.settings", enc(&alice.user_id)))
        .await;
    assert_eq!((s, b), (200, json!({"theme": "dark"})));
    let room = room_of(&seen);
    let (s, b) = alice_m
        .get(&format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
            enc(&alice.user_id),
            enc(&room)
        ))
        .await;
    assert_eq!((s, b), (200, json!({"pinned": true})));
    let (s, b) =
        alice_m.get(&format!("/_matrix/client/v3/user/{}/rooms/{}/tags", enc(&alice.user_id), enc(&room))).await;
    assert_eq!((s, &b["tags"]["u.work"]["order"]), (200, &json!(0.5)), "{b}");
    let (s, b) = alice_m.get("/_matrix/client/v3/pushrules/global/content/cats").await;
    assert_eq!(s, 200, "push rule: {b}");
    assert_eq!(b["pattern"], "cats");
    // Aliases and the directory.
    let alias = format!("#imported:{}", myelin.name());
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/directory/room/{}", enc(&alias))).await;
    assert_eq!((s, &b["room_id"]), (200, &json!(room)), "{b}");
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/directory/list/room/{}", enc(&room))).await;
    assert_eq!((s, &b["visibility"]), (200, &json!("public")), "{b}");
    // Media, byte-identical.
    for (mxc, bytes) in &seen.media {
        assert_eq!(&download(&myelin.url(), mxc, &alice.access_token).await, bytes, "{mxc}");
    }
    // Keys and the backup.
    let (s, keys) =
        alice_m.post("/_matrix/client/v3/keys/query", json!({"device_keys": {alice.user_id.clone(): []}})).await;
    assert_eq!(s, 200, "{keys}");
    let mut got = keys["device_keys"][&alice.user_id][&alice_dev].clone();
    let mut want = seen.device_keys.clone();
    for v in [&mut got, &mut want] {
        v.as_object_mut().map(|o| o.remove("unsigned"));
    }
    assert_eq!(got, want, "device keys");
    for (i, kind) in ["master_keys", "self_signing_keys"].into_iter().enumerate() {
        assert_eq!(keys[kind][&alice.user_id]["keys"], seen.cross_signing[i]["keys"], "{kind}: {keys}");
    }
    let (s, b) = alice_m.post("/_matrix/client/v3/keys/upload", json!({})).await;
    assert_eq!((s, &b["one_time_key_counts"]["signed_curve25519"]), (200, &json!(2)), "{b}");
    let (s, b) = alice_m.get("/_matrix/client/v3/room_keys/version").await;
    assert_eq!(s, 200, "{b}");
    let version = b["version"].as_str().expect("version").to_owned();
    let (s, b) = alice_m.get(&format!("/_matrix/client/v3/room_keys/keys?version={version}")).await;
    assert_eq!((s, &b), (200, &seen.backup), "backup");

    // Password login with Synapse's bcrypt hash, twice (the second against the argon2id rehash).
    for _ in 0..2 {
        let (s, b) = send(http_client().post(format!("{}/_matrix/client/v3/login", myelin.url())).json(&json!({
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": PASSWORD,
        })))
        .await;
        assert_eq!(s, 200, "password login: {b}");
    }
    // The room goes on: a new message, seen by the other member after his history.
    let id = alice_m.say(&room, "first on myelin").await;
    let ids = history(&bob_m, &room).await;
    assert_eq!(ids.last(), Some(&id));
    assert_eq!(&ids[..ids.len() - 1], &seen.history[&room][..]);
    // And federation goes on with the same key: the other server gets the new message (signed
    // by the imported key) and its user's answer comes back.
    wait_until(T, "Myelin's message on the other server", || async {
        carol.messages(&room).await.iter().any(|m| m == "first on myelin")
    })
    .await;
    carol.say(&room, "answer from the other server").await;
    wait_until(T, "the other server's answer on Myelin", || async {
        alice_m.messages(&room).await.iter().any(|m| m == "answer from the other server")
    })
    .await;

    // Once Myelin has run on it, a rerun still only says it is done.
    myelin.stop();
    let (ok, out) = run_import(&args);
    assert!(ok && out.contains("already imported"), "rerun after use: {out}");

    // A Myelin database that is not empty is refused.
    let mut other = FedServer::prepare(&ip, backend).await;
    other.start_again().await;
    other.register("someone").await;
    other.stop();
    let other_config = other.config_path().display().to_string();
    let (ok, out) = run_import(&["--synapse-config", synapse_config.as_str(), "--config", other_config.as_str()]);
    assert!(!ok && out.contains("not empty"), "import into a used database: {out}");

    // Nor is a Myelin of another server name.
    let renamed = FedServer::prepare(&format!("{net}.3"), backend).await;
    let renamed_config = renamed.config_path().display().to_string();
    let (ok, out) = run_import(&["--synapse-config", synapse_config.as_str(), "--config", renamed_config.as_str()]);
    assert!(!ok && out.contains("must be the same"), "import under another server name: {out}");
}

/// Master and self-signing keys for `user`, the self-signing key signed by the master key.
fn cross_signing(user: &str) -> Value {
    use base64::Engine;
    use ruma::signatures::Ed25519KeyPair;
    let key = || {
        let der = Ed25519KeyPair::generate();
        let probe = Ed25519KeyPair::from_der(&der, "p".into()).expect("key");
        let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
        (Ed25519KeyPair::from_der(&der, public.clone()).expect("key"), public)
    };
    let (master_pair, master_pub) = key();
    let (_, ssk_pub) = key();
    let master =
        json!({ "user_id": user, "usage": ["master"], "keys": { format!("ed25519:{master_pub}"): master_pub } });
    let ssk = json!({ "user_id": user, "usage": ["self_signing"], "keys": { format!("ed25519:{ssk_pub}"): ssk_pub } });
    let ruma::CanonicalJsonValue::Object(mut obj) = ruma::CanonicalJsonValue::try_from(ssk).expect("JSON") else {
        unreachable!("an object")
    };
    ruma::signatures::sign_json(user, &master_pair, &mut obj).expect("signing");
    json!({ "master_key": master, "self_signing_key": obj })
}

/// The room with the long history.
fn room_of(seen: &Seen) -> String {
    seen.state.keys().find(|r| seen.history[*r].len() > 30).expect("the big room").clone()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

both_backends!(import_synapse, "140");

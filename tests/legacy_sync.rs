//! The deprecated pre-`/sync` endpoints the spec still lists, over real HTTP on both backends:
//! `GET /initialSync`, `GET /events` (long-poll, and peeking into world-readable rooms with
//! `room_id`), `GET /events/{eventId}` and `GET /rooms/{roomId}/initialSync`, with history
//! visibility applied.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{Client, assert_error, create_room, enc, ok};
use serde_json::{Value, json};

async fn say(client: &Client, room: &str, body: &str) -> String {
    let txn = format!("t{}", rand_suffix());
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    ok(&client.put(&path, &json!({ "msgtype": "m.text", "body": body })).await)["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

fn room_entry<'a>(body: &'a Value, room: &str) -> Option<&'a Value> {
    body["rooms"].as_array().unwrap().iter().find(|r| r["room_id"] == room)
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

both_backends!(initial_sync_has_rooms_state_messages_and_account_data, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "name": "Lobby", "visibility": "public", "preset": "public_chat" })).await;
    for n in 1..=3 {
        say(&alice, &room, &format!("m{n}")).await;
    }
    let tags = format!("/_matrix/client/v3/user/{}/rooms/{}/tags/u.work", enc(&alice.user_id), enc(&room));
    ok(&alice.put(&tags, &json!({ "order": 0.5 })).await);
    ok(&alice
        .put(&format!("/_matrix/client/v3/user/{}/account_data/org.example", enc(&alice.user_id)), &json!({ "k": 1 }))
        .await);
    let invited = create_room(&alice, json!({ "invite": [bob.user_id] })).await;
    let left = create_room(&alice, json!({})).await;
    say(&alice, &left, "before leaving").await;
    ok(&alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)), &json!({})).await);

    let body = ok(&alice.get("/_matrix/client/v3/initialSync?limit=2").await).clone();
    let end = body["end"].as_str().expect("end").to_owned();
    assert!(body["presence"].is_array(), "{body}");
    assert!(body["account_data"].as_array().unwrap().iter().any(|e| e["type"] == "org.example"), "{body}");
    let entry = room_entry(&body, &room).expect("joined room listed");
    assert_eq!(entry["membership"], "join");
    assert_eq!(entry["visibility"], "public");
    let chunk = &entry["messages"]["chunk"];
    assert_eq!(bodies(chunk), ["m2", "m3"], "{entry}");
    assert!(chunk.as_array().unwrap().iter().all(|e| e["room_id"] == room.as_str()), "{chunk}");
    assert_eq!(entry["messages"]["end"], end.as_str());
    let state = entry["state"].as_array().unwrap();
    let of = |kind: &str| state.iter().find(|e| e["type"] == kind).cloned();
    assert_eq!(of("m.room.name").expect("name in state")["content"]["name"], "Lobby");
    assert!(of("m.room.create").is_some() && of("m.room.power_levels").is_some(), "{state:?}");
    assert!(state.iter().all(|e| e["room_id"] == room.as_str()), "{state:?}");
    assert!(entry["account_data"].as_array().unwrap().iter().any(|e| e["type"] == "m.tag"), "{entry}");
    // `start` pages on with /messages, exclusively.
    let start = entry["messages"]["start"].as_str().expect("start");
    let older =
        ok(&alice.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={start}", enc(&room))).await)
            .clone();
    assert_eq!(bodies(&older["chunk"]), ["m1"], "{older}");
    // A left room only with `archived=true`, as it was when left.
    assert!(room_entry(&body, &left).is_none(), "{body}");
    let archived = ok(&alice.get("/_matrix/client/v3/initialSync?archived=true").await).clone();
    let gone = room_entry(&archived, &left).expect("left room with archived=true");
    assert_eq!(gone["membership"], "leave");
    assert!(bodies(&gone["messages"]["chunk"]).contains(&"before leaving".to_owned()), "{gone}");

    // An invite carries the invite event.
    let body = ok(&bob.get("/_matrix/client/v3/initialSync").await).clone();
    let invite = room_entry(&body, &invited).expect("invited room listed");
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["invite"]["state_key"], bob.user_id.as_str(), "{invite}");
    assert_eq!(invite["invite"]["content"]["membership"], "invite");

    assert_error(&alice.get("/_matrix/client/v3/initialSync?limit=many").await, 400, "M_INVALID_PARAM");
    assert_error(&alice.get("/_matrix/client/v3/initialSync?archived=maybe").await, 400, "M_INVALID_PARAM");
    let anonymous = common::send(server.request(reqwest::Method::GET, "/_matrix/client/v3/initialSync")).await;
    assert_error(&anonymous, 401, "M_MISSING_TOKEN");
});

both_backends!(events_streams_what_happens_and_waits_for_it, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "invite": [bob.user_id] })).await;
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
    let end = ok(&bob.get("/_matrix/client/v3/initialSync").await)["end"].as_str().unwrap().to_owned();

    // Nothing new: an empty chunk at once with timeout=0.
    let quiet = ok(&bob.get(&format!("/_matrix/client/v3/events?from={end}&timeout=0")).await).clone();
    assert_eq!(quiet["start"], end.as_str());
    assert!(bodies(&quiet["chunk"]).is_empty(), "{quiet}");

    say(&alice, &room, "one").await;
    let got = ok(&bob.get(&format!("/_matrix/client/v3/events?from={end}&timeout=0")).await).clone();
    assert_eq!(bodies(&got["chunk"]), ["one"], "{got}");
    let msg = got["chunk"].as_array().unwrap().iter().find(|e| e["type"] == "m.room.message").unwrap();
    assert_eq!(msg["room_id"], room.as_str());
    let next = got["end"].as_str().unwrap().to_owned();
    // Continuing from `end` does not repeat it.
    let again = ok(&bob.get(&format!("/_matrix/client/v3/events?from={next}&timeout=0")).await).clone();
    assert!(bodies(&again["chunk"]).is_empty(), "{again}");

    // A long-poll answers when something happens.
    let waiting = {
        let bob = bob.clone();
        let next = next.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = bob.get(&format!("/_matrix/client/v3/events?from={next}&timeout=20000")).await;
            (resp, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(&alice, &room, "two").await;
    let (resp, took) = waiting.await.unwrap();
    assert_eq!(bodies(&ok(&resp)["chunk"]), ["two"], "{resp:?}");
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(10), "answered after {took:?}");
    // A long-poll with nothing happening waits its timeout.
    let started = Instant::now();
    let end = ok(&resp)["end"].as_str().unwrap().to_owned();
    let idle = ok(&bob.get(&format!("/_matrix/client/v3/events?from={end}&timeout=700")).await).clone();
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());
    assert!(bodies(&idle["chunk"]).is_empty());

    // Without `from`: from now.
    let now = ok(&bob.get("/_matrix/client/v3/events?timeout=0").await).clone();
    assert!(bodies(&now["chunk"]).is_empty(), "{now}");
    assert!(now["end"].is_string());
    assert_error(&bob.get("/_matrix/client/v3/events?from=garbage&timeout=0").await, 400, "M_INVALID_PARAM");
    assert_error(&bob.get("/_matrix/client/v3/events?timeout=soon").await, 400, "M_INVALID_PARAM");
});

both_backends!(peeking_reads_world_readable_rooms_only, |server| async move {
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let open = create_room(
        &alice,
        json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } }],
        }),
    )
    .await;
    let closed = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let first = say(&alice, &open, "hello world").await;
    let secret = say(&alice, &closed, "members only").await;

    // The room snapshot, for a stranger: state and messages, no membership.
    let snap = ok(&carol.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&open))).await).clone();
    assert_eq!(snap["room_id"], open.as_str());
    assert!(snap.get("membership").is_none(), "{snap}");
    assert_eq!(bodies(&snap["messages"]["chunk"]), ["hello world"], "{snap}");
    assert!(snap["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.history_visibility"), "{snap}");
    assert_eq!(snap["visibility"], "private");
    assert_error(
        &carol.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&closed))).await,
        403,
        "M_FORBIDDEN",
    );

    // Peeking with /events?room_id=.
    let peek = ok(&carol.get(&format!("/_matrix/client/v3/events?room_id={}&timeout=0", enc(&open))).await).clone();
    let end = peek["end"].as_str().unwrap().to_owned();
    let from_start = ok(&carol
        .get(&format!("/_matrix/client/v3/events?room_id={}&from=s0_0_0_0_0_0_0&timeout=0", enc(&open)))
        .await)
    .clone();
    assert!(bodies(&from_start["chunk"]).contains(&"hello world".to_owned()), "{from_start}");
    let waiting = {
        let carol = carol.clone();
        let path = format!("/_matrix/client/v3/events?room_id={}&from={end}&timeout=20000", enc(&open));
        tokio::spawn(async move {
            let started = Instant::now();
            (carol.get(&path).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    say(&alice, &open, "news").await;
    let (resp, took) = waiting.await.unwrap();
    let chunk = &ok(&resp)["chunk"];
    assert_eq!(bodies(chunk), ["news"], "{resp:?}");
    assert_eq!(chunk[0]["room_id"], open.as_str());
    assert!(took < Duration::from_secs(10), "woken after {took:?}");
    assert_error(
        &carol.get(&format!("/_matrix/client/v3/events?room_id={}&timeout=0", enc(&closed))).await,
        403,
        "M_FORBIDDEN",
    );
    assert_error(&carol.get("/_matrix/client/v3/events?room_id=not-a-room&timeout=0").await, 400, "M_INVALID_PARAM");

    // /events/{eventId}: what the user may see, else 404.
    let ev = ok(&carol.get(&format!("/_matrix/client/v3/events/{}", enc(&first))).await).clone();
    assert_eq!((&ev["room_id"], &ev["content"]["body"]), (&json!(open), &json!("hello world")), "{ev}");
    assert_error(&carol.get(&format!("/_matrix/client/v3/events/{}", enc(&secret))).await, 404, "M_NOT_FOUND");
    let own = ok(&alice.get(&format!("/_matrix/client/v3/events/{}", enc(&secret))).await).clone();
    assert_eq!(own["content"]["body"], "members only");
    assert_error(
        &alice.get(&format!("/_matrix/client/v3/events/{}", enc("$nope:localhost"))).await,
        404,
        "M_NOT_FOUND",
    );
    assert_error(&alice.get("/_matrix/client/v3/events/not-an-event").await, 400, "M_INVALID_PARAM");
});

both_backends!(room_initial_sync_for_members_and_former_members, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat", "visibility": "public" })).await;
    ok(&bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), &json!({})).await);
    let seen = say(&alice, &room, "while bob is here").await;
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&seen));
    ok(&bob.post(&receipt, &json!({})).await);
    ok(&bob
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/org.x", enc(&bob.user_id), enc(&room)),
            &json!({ "v": 2 }),
        )
        .await);

    let snap = ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&room))).await).clone();
    assert_eq!(snap["membership"], "join");
    assert_eq!(snap["visibility"], "public");
    assert!(bodies(&snap["messages"]["chunk"]).contains(&"while bob is here".to_owned()), "{snap}");
    let receipts = snap["receipts"].as_array().unwrap();
    assert!(receipts.iter().any(|r| r["content"][&seen]["m.read"][&bob.user_id].is_object()), "{snap}");
    assert!(snap["account_data"].as_array().unwrap().iter().any(|e| e["type"] == "org.x"), "{snap}");
    assert!(snap["presence"].is_array());
    assert!(snap["messages"]["end"].is_string());

    // After leaving, bob sees the room as it was when he left.
    ok(&bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), &json!({})).await);
    say(&alice, &room, "after bob left").await;
    ok(&alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)), &json!({ "topic": "later" }))
        .await);
    let snap = ok(&bob.get(&format!("/_matrix/client/v3/rooms/{}/initialSync", enc(&room))).await).clone();
    assert_eq!(snap["membership"], "leave");
    let said = bodies(&snap["messages"]["chunk"]);
    assert!(said.contains(&"while bob is here".to_owned()) && !said.contains(&"after bob left".to_owned()), "{said:?}");
    let state = snap["state"].as_array().unwrap();
    assert!(!state.iter().any(|e| e["type"] == "m.room.topic"), "state after the leave leaked: {state:?}");
    let me = state.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()).unwrap();
    assert_eq!(me["content"]["membership"], "leave");
});

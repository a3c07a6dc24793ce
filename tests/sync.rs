//! `/sync` over real HTTP on both backends: timelines and state, incremental syncs that never
//! skip or repeat an event (concurrent senders, several syncers), backlog catch-up through
//! `limited` + `prev_batch` + `/messages`, long-polls that wake on a send and time out empty,
//! filters (lazy-loading members), invites, leaves, and `use_state_after`.
//! The streams `/sync` carries (typing, receipts, account data, presence, to-device) are in
//! tests/sync_streams.rs.

#[macro_use]
mod common;

mod sync_util;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::without_age;
use serde_json::json;
use sync_util::*;

// ---------------------------------------------------------------------------------------------
// Initial and incremental sync

both_backends!(initial_sync_has_timeline_and_state, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "name": "Sync room" })).await;
    let sent = send_texts(&alice, &room, "hello", 3).await;

    let body = sync(&alice, None, None, 0).await;
    let token = body["next_batch"].as_str().expect("next_batch");
    assert!(token.starts_with('s'), "sync tokens start with s<stream>: {token}");
    let joined = &body["rooms"]["join"][&room];
    assert!(joined.is_object(), "room in rooms.join: {body}");
    // The default timeline limit (10) covers the room's events here: nothing is limited.
    let timeline = timeline_ids(&body, &room);
    assert!(timeline.ends_with(&sent), "timeline ends with the messages in order: {timeline:?} {sent:?}");
    assert_eq!(joined["timeline"]["limited"], false, "{joined}");
    // Every state event is either in the timeline or in state, never both.
    let state = event_ids(&joined["state"]["events"]);
    let timeline_set: HashSet<&String> = timeline.iter().collect();
    assert!(state.iter().all(|id| !timeline_set.contains(id)), "state and timeline overlap: {joined}");
    let all_types: Vec<String> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .chain(joined["timeline"]["events"].as_array().unwrap())
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    for t in ["m.room.create", "m.room.member", "m.room.power_levels", "m.room.name"] {
        assert!(all_types.iter().any(|x| x == t), "{t} missing from initial sync: {joined}");
    }
    assert_eq!(joined["summary"]["m.joined_member_count"], 1, "{joined}");
    // Own events carry the transaction id of the sending device.
    let last = joined["timeline"]["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["unsigned"]["transaction_id"], "hello-2", "{last}");

    // Nothing new: an incremental sync without timeout returns at once with no rooms.
    let again = sync(&alice, Some(token), None, 0).await;
    assert!(again.get("rooms").is_none(), "nothing changed: {again}");

    // One more message: exactly that message.
    let id = send_text(&alice, &room, "after", "after the token").await;
    let inc = sync(&alice, Some(token), None, 0).await;
    assert_eq!(timeline_ids(&inc, &room), vec![id], "{inc}");
    assert_eq!(inc["rooms"]["join"][&room]["timeline"]["limited"], false);
    assert!(inc["rooms"]["join"][&room]["state"]["events"].as_array().unwrap().is_empty(), "{inc}");
});

both_backends!(state_changes_in_gap_are_sent_as_state, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({})).await;
    let token = next_batch(&sync(&alice, None, None, 0).await);
    let name_id = put_state(&alice, &room, "m.room.name", "", json!({ "name": "Renamed" })).await;
    send_texts(&alice, &room, "m", 5).await;
    // A timeline of 2 leaves the rename in the gap: it must come as state.
    let body = sync(&alice, Some(&token), Some(json!({ "room": { "timeline": { "limit": 2 } } })), 0).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    assert_eq!(joined["timeline"]["events"].as_array().unwrap().len(), 2);
    assert_eq!(event_ids(&joined["state"]["events"]), vec![name_id.clone()], "{joined}");

    // use_state_after: the state at the end of the timeline, timeline state events included.
    let topic_id = put_state(&alice, &room, "m.room.topic", "", json!({ "topic": "t" })).await;
    let path = format!("/_matrix/client/v3/sync?since={token}&use_state_after=true");
    let (status, body) = alice.get(&path).await;
    assert_eq!(status, 200, "{body}");
    let joined = &body["rooms"]["join"][&room];
    assert!(joined.get("state").is_none(), "state is omitted with use_state_after: {joined}");
    let after = event_ids(&joined["state_after"]["events"]);
    assert!(after.contains(&name_id) && after.contains(&topic_id), "{joined}");
    assert!(timeline_ids(&body, &room).contains(&topic_id), "the topic is in the timeline too: {body}");
});

both_backends!(full_state_returns_all_state_with_since, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({})).await;
    let token = next_batch(&sync(&alice, None, None, 0).await);
    let started = Instant::now();
    let (status, body) =
        alice.get(&format!("/_matrix/client/v3/sync?since={token}&full_state=true&timeout=20000")).await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "full_state ignores the timeout");
    let state = &body["rooms"]["join"][&room]["state"]["events"];
    assert!(state.as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"), "{body}");
});

both_backends!(bad_tokens_and_filters_are_rejected, |server| async move {
    let alice = server.register("alice").await;
    let (status, body) = alice.get("/_matrix/client/v3/sync?since=garbage").await;
    assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")), "{body}");
    let (status, body) = alice.get("/_matrix/client/v3/sync?filter=12345").await;
    assert_eq!((status, body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{body}");
    let (status, body) = server.get("/_matrix/client/v3/sync").await;
    assert_eq!((status, body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")), "{body}");
});

both_backends!(initial_sync_of_many_rooms_answers_each_room_as_alone, |server| async move {
    // An initial sync of a user in several rooms reads what the rooms need (timelines, state
    // groups, summaries, unread counts, state events) in batched statements; a filter naming one
    // room takes the one-room path. Each room must come out the same both ways.
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let mut rooms = Vec::new();
    for i in 0..8usize {
        let room = create_room(&alice, json!({ "name": format!("room {i}"), "preset": "public_chat" })).await;
        if i % 2 == 0 {
            join(&bob, &room).await;
        }
        if i % 3 == 0 {
            join(&carol, &room).await;
        }
        if i == 4 {
            put_state(&alice, &room, "m.room.encryption", "", json!({ "algorithm": "m.megolm.v1.aes-sha2" })).await;
        }
        // Rooms of different lengths: some hold more than a timeline.
        send_texts(&alice, &room, &format!("a{i}"), i * 3).await;
        if i % 2 == 0 {
            let sent = send_texts(&bob, &room, &format!("b{i}"), 3).await;
            if i == 2 {
                // Alice read up to the first: two stay unread.
                let (status, res) = alice
                    .post(&format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", sent[0]), &json!({}))
                    .await;
                assert_eq!(status, 200, "{res}");
            }
        }
        if i == 6 {
            put_state(&alice, &room, "m.room.topic", "", json!({ "topic": "late" })).await;
            send_texts(&carol, &room, "c6", 1).await;
        }
        rooms.push(room);
    }
    let lazy = json!({ "room": { "timeline": { "limit": 5 }, "state": { "lazy_load_members": true } } });
    for filter in [None, Some(lazy)] {
        let all = sync(&alice, None, filter.clone(), 0).await;
        assert_eq!(all["rooms"]["join"].as_object().map(|o| o.len()), Some(rooms.len()), "{all}");
        for room in &rooms {
            let mut one_filter = filter.clone().unwrap_or_else(|| json!({}));
            one_filter["room"]["rooms"] = json!([room]);
            let one = sync(&alice, None, Some(one_filter), 0).await;
            assert_eq!(
                without_age(all["rooms"]["join"][room].clone()),
                without_age(one["rooms"]["join"][room].clone()),
                "room {room} differs between the sync of all rooms and the sync of it alone (filter {filter:?})"
            );
        }
        let unread = &all["rooms"]["join"][&rooms[2]]["unread_notifications"];
        assert_eq!(unread["notification_count"], 2, "{unread}");
    }
});

// ---------------------------------------------------------------------------------------------
// Ordering: no skip, no repeat

both_backends!(no_skip_no_repeat_with_concurrent_senders_and_syncers, |server| async move {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 25;
    const SYNCERS: usize = 3;
    let owner = server.register("owner").await;
    let room = create_room(&owner, json!({ "preset": "public_chat" })).await;
    let mut senders = vec![owner.clone()];
    for i in 1..SENDERS {
        let c = server.register(&format!("sender{i}")).await;
        join(&c, &room).await;
        senders.push(c);
    }
    let mut syncers = Vec::new();
    for i in 0..SYNCERS {
        let c = server.register(&format!("reader{i}")).await;
        join(&c, &room).await;
        let token = next_batch(&sync(&c, None, None, 0).await);
        syncers.push((c, token));
    }
    // Readers long-poll with a small timeline limit, so some of their syncs are limited and
    // must be completed with /messages from prev_batch: the order must still be exact.
    let total = SENDERS * PER_SENDER;
    let readers: Vec<_> = syncers
        .into_iter()
        .map(|(c, token)| {
            let room = room.clone();
            tokio::spawn(async move { read_all(&c, &room, token, total, 5).await })
        })
        .collect();
    let writers: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, room) = (c.clone(), room.clone());
            tokio::spawn(async move {
                for k in 0..PER_SENDER {
                    send_text(&c, &room, &format!("w{i}-{k}"), &format!("msg {i} {k}")).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let expected = all_messages_forward(&owner, &room).await;
    assert_eq!(expected.len(), total, "/messages has every message once");
    for r in readers {
        let seen = r.await.unwrap();
        assert_eq!(seen, expected, "a syncer's message order differs from /messages");
    }
});

both_backends!(offline_user_catches_up_200_message_backlog, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    let token = next_batch(&sync(&bob, None, None, 0).await);
    let sent = send_texts(&alice, &room, "backlog", 200).await;

    let filter = json!({ "room": { "timeline": { "limit": 20 } } });
    let body = sync(&bob, Some(&token), Some(filter), 0).await;
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(joined["timeline"]["limited"], true, "{joined}");
    let mut got = timeline_ids(&body, &room);
    assert_eq!(got, sent[180..].to_vec(), "the timeline is the last 20 messages");
    // Page back from prev_batch until the token's position is reached.
    let mut from = joined["timeline"]["prev_batch"].as_str().unwrap().to_owned();
    let mut earlier = Vec::new();
    loop {
        let (status, page) =
            bob.get(&format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=30&from={from}&to={token}")).await;
        assert_eq!(status, 200, "{page}");
        for e in page["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                earlier.push(e["event_id"].as_str().unwrap().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) if !page["chunk"].as_array().unwrap().is_empty() => from = end.to_owned(),
            _ => break,
        }
    }
    earlier.reverse();
    earlier.append(&mut got);
    assert_eq!(earlier, sent, "catch-up through prev_batch has every message once, in order");
});

// ---------------------------------------------------------------------------------------------
// Long-poll

both_backends!(long_poll_wakes_on_send, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    let token = next_batch(&sync(&bob, None, None, 0).await);
    let poll = {
        let (bob, token) = (bob.clone(), token.clone());
        tokio::spawn(async move {
            let body = sync(&bob, Some(&token), None, 30_000).await;
            (body, Instant::now())
        })
    };
    // Let the long-poll reach its wait; sending earlier would be fine too, but then this would
    // not test the wake-up.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent_at = Instant::now();
    let id = send_text(&alice, &room, "wake", "wake up").await;
    let sent_done = Instant::now();
    let (body, returned_at) = poll.await.unwrap();
    assert!(
        returned_at.duration_since(sent_at) < Duration::from_secs(10),
        "the long-poll returned long after the send"
    );
    assert_eq!(timeline_ids(&body, &room), vec![id], "{body}");
    eprintln!(
        "wake latency ({:?}): {:.1} ms after the send was answered ({:.1} ms after it started)",
        server.backend,
        returned_at.saturating_duration_since(sent_done).as_secs_f64() * 1000.0,
        returned_at.duration_since(sent_at).as_secs_f64() * 1000.0,
    );
});

both_backends!(long_poll_times_out_empty, |server| async move {
    let alice = server.register("alice").await;
    create_room(&alice, json!({})).await;
    let token = next_batch(&sync(&alice, None, None, 0).await);
    let started = Instant::now();
    let body = sync(&alice, Some(&token), None, 1500).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "returned after {waited:?}, before the timeout");
    assert!(waited < Duration::from_secs(15), "returned after {waited:?}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys, vec!["next_batch"], "an empty response at the timeout: {body}");
    // The token it gives continues without loss.
    let room_msg_token = next_batch(&body);
    let rooms = sync(&alice, Some(&room_msg_token), None, 0).await;
    assert!(rooms.get("rooms").is_none(), "{rooms}");
});

both_backends!(events_of_other_rooms_do_not_end_a_long_poll, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let shared = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &shared).await;
    let alone = create_room(&alice, json!({})).await;
    let token = next_batch(&sync(&bob, None, None, 0).await);
    let poll = {
        let (bob, token) = (bob.clone(), token.clone());
        tokio::spawn(async move { sync(&bob, Some(&token), None, 30_000).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_text(&alice, &alone, "x", "bob is not here").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "a message in a room bob is not in ended his long-poll");
    let id = send_text(&alice, &shared, "y", "bob is here").await;
    let body = poll.await.unwrap();
    assert_eq!(timeline_ids(&body, &shared), vec![id]);
    assert!(body["rooms"]["join"].get(&alone).is_none(), "{body}");
});

// ---------------------------------------------------------------------------------------------
// Membership: invites, joins, leaves

both_backends!(invite_join_leave_flow, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "name": "Invite only", "preset": "private_chat" })).await;
    send_texts(&alice, &room, "before", 3).await;
    let token = next_batch(&sync(&bob, None, None, 0).await);

    let (status, body) =
        alice.post(&format!("/_matrix/client/v3/rooms/{room}/invite"), &json!({ "user_id": bob.user_id })).await;
    assert_eq!(status, 200, "{body}");
    let body = sync(&bob, Some(&token), None, 10_000).await;
    let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let types: Vec<&str> =
        invite.as_array().expect("invite_state").iter().map(|e| e["type"].as_str().unwrap()).collect();
    for t in ["m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"] {
        assert!(types.contains(&t), "{t} missing from invite_state: {invite}");
    }
    let member = invite
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .unwrap();
    assert_eq!(member["state_key"], bob.user_id);
    assert_eq!(member["content"]["membership"], "invite");
    assert_eq!(member["sender"], alice.user_id);
    let token = next_batch(&body);

    join(&bob, &room).await;
    let body = sync(&bob, Some(&token), None, 10_000).await;
    let joined = &body["rooms"]["join"][&room];
    assert!(joined.is_object(), "joined room after the join: {body}");
    assert!(body["rooms"].get("invite").is_none(), "{body}");
    // A fresh join comes with the room's state (like an initial sync of that room).
    let state_types: Vec<&str> =
        joined["state"]["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(state_types.contains(&"m.room.create"), "{joined}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 2, "{joined}");
    let token = next_batch(&body);

    let (status, body) = bob.post(&format!("/_matrix/client/v3/rooms/{room}/leave"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let after_leave = send_text(&alice, &room, "after-leave", "bob is gone").await;
    let body = sync(&bob, Some(&token), None, 10_000).await;
    let left = &body["rooms"]["leave"][&room];
    let tl = left["timeline"]["events"].as_array().expect("left room timeline");
    let last = tl.last().unwrap();
    assert_eq!((last["type"].as_str(), last["content"]["membership"].as_str()), (Some("m.room.member"), Some("leave")));
    assert!(!event_ids(&left["timeline"]["events"]).contains(&after_leave), "no events after the leave: {left}");
    assert!(body["rooms"].get("join").is_none_or(|j| j.get(&room).is_none()), "{body}");

    // Left rooms appear in an initial sync only with include_leave.
    let initial = sync(&bob, None, None, 0).await;
    assert!(initial["rooms"].get("leave").is_none(), "{initial}");
    let initial = sync(&bob, None, Some(json!({ "room": { "include_leave": true } })), 0).await;
    assert!(initial["rooms"]["leave"][&room].is_object(), "{initial}");
});

both_backends!(lazy_loading_members_and_filters, |server| async move {
    let alice = server.register("alice").await;
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    let mut others = Vec::new();
    for name in ["b", "c", "d"] {
        let c = server.register(name).await;
        join(&c, &room).await;
        others.push(c);
    }
    send_text(&others[0], &room, "b1", "only b speaks").await;
    let lazy = json!({ "room": { "timeline": { "limit": 1 }, "state": { "lazy_load_members": true } } });
    let body = sync(&alice, None, Some(lazy.clone()), 0).await;
    let joined = &body["rooms"]["join"][&room];
    let members: HashSet<&str> = joined["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    // The sender of the timeline event and the user; the heroes (everyone here, as the room has
    // no name) are loaded too.
    assert!(members.contains(others[0].user_id.as_str()) && members.contains(alice.user_id.as_str()), "{joined}");
    let plain = sync(&alice, None, Some(json!({ "room": { "timeline": { "limit": 1 } } })), 0).await;
    let all_members = plain["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .count();
    assert_eq!(all_members, 4, "without lazy-loading every member is sent");

    // The same filter stored on the server, by id; and a room filter.
    let (status, created) = alice.post(&format!("/_matrix/client/v3/user/{}/filter", alice.user_id), &lazy).await;
    assert_eq!(status, 200, "{created}");
    let id = created["filter_id"].as_str().unwrap();
    let (status, got) = alice.get(&format!("/_matrix/client/v3/user/{}/filter/{id}", alice.user_id)).await;
    assert_eq!((status, &got), (200, &lazy));
    let (status, body) = alice.get(&format!("/_matrix/client/v3/sync?filter={id}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["events"].as_array().unwrap().len(), 1, "{body}");
    let (status, _) = others[0].get(&format!("/_matrix/client/v3/user/{}/filter/{id}", alice.user_id)).await;
    assert_eq!(status, 403);
    let excluded = sync(&alice, None, Some(json!({ "room": { "not_rooms": [room] } })), 0).await;
    assert!(excluded["rooms"].get("join").is_none_or(|j| j.get(&room).is_none()), "{excluded}");
    let only_topics =
        sync(&alice, None, Some(json!({ "room": { "timeline": { "types": ["m.room.message"], "limit": 5 } } })), 0)
            .await;
    let types: Vec<&str> = only_topics["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["m.room.message"], "{only_topics}");
});

both_backends!(history_visibility_joined_hides_earlier_events, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(
        &alice,
        json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
        ] }),
    )
    .await;
    let secret = send_text(&alice, &room, "s", "before bob").await;
    join(&bob, &room).await;
    let visible = send_text(&alice, &room, "v", "after bob").await;
    let body = sync(&bob, None, None, 0).await;
    let ids = timeline_ids(&body, &room);
    assert!(ids.contains(&visible) && !ids.contains(&secret), "{ids:?}");
});

// An invite's stripped state names the inviter: their own `m.room.member` (display name), as
// Synapse sends it, so that clients can say who invited (matrix-rust-sdk's
// `invite_details().inviter`, found by sdk-tests). Before, only the room's state and the
// invitee's membership were there.
both_backends!(invite_state_names_the_inviter, |server| async move {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (s, _) = alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            &json!({ "displayname": "Alice A." }),
        )
        .await;
    assert_eq!(s, 200);
    let room = create_room(&alice, json!({ "name": "Invited" })).await;
    let (s, body) = alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), &json!({ "user_id": bob.user_id }))
        .await;
    assert_eq!(s, 200, "{body}");
    let body = sync(&bob, None, None, 0).await;
    let events = body["rooms"]["invite"][&room]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    let inviter = events
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str())
        .unwrap_or_else(|| panic!("the inviter's membership in {events:?}"));
    assert_eq!(inviter["content"]["membership"], "join");
    assert_eq!(inviter["content"]["displayname"], "Alice A.");
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));
});

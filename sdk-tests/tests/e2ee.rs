//! End-to-end encryption with matrix-rust-sdk's own crypto (Olm/Megolm through vodozemac):
//! device and one-time keys uploaded, claimed and queried through Myelin, room keys sent as
//! to-device messages through `/sync`, and cross-signing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use matrix_sdk::Client;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId};

/// Decrypted text messages a client has seen through sync: (room, event id, body).
type Seen = Arc<Mutex<Vec<(OwnedRoomId, OwnedEventId, String)>>>;

fn record_messages(client: &Client) -> Seen {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push((room.room_id().to_owned(), ev.event_id, ev.content.body().to_owned()));
        }
    });
    seen
}

fn seen_event(seen: &Seen, body: &str) -> Option<OwnedEventId> {
    seen.lock().unwrap().iter().find(|(_, _, b)| b == body).map(|(_, e, _)| e.clone())
}

/// Two users, two SDK clients: an encrypted room, a message encrypted by one and decrypted by the
/// other, and the answer back; the server only ever held `m.room.encrypted` events.
#[tokio::test]
async fn encrypted_room_round_trip() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let alice_seen = record_messages(&alice);
    let bob_seen = record_messages(&bob);
    // The first syncs upload each device's identity and one-time keys.
    sync_once(&alice).await;
    sync_once(&bob).await;
    let bob_device = bob.device_id().unwrap().to_owned();
    let keys = alice.encryption().get_user_devices(&bob_id).await.expect("devices");
    assert_eq!(keys.devices().count(), 0, "alice does not track bob before sharing a room");

    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob_id.clone()];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id = room.room_id().to_owned();
    room.enable_encryption().await.expect("enable encryption");
    sync_until(&bob, Duration::from_secs(20), "bob sees the invite", || bob.get_room(&room_id).is_some()).await;
    bob.join_room_by_id(&room_id).await.expect("join");
    sync_until(&alice, Duration::from_secs(20), "alice sees bob join", || {
        alice.get_room(&room_id).is_some_and(|r| r.joined_members_count() == 2)
    })
    .await;
    let room = alice.get_room(&room_id).unwrap();
    assert!(room.latest_encryption_state().await.expect("encryption state").is_encrypted());

    // Sending queries bob's devices, claims a one-time key and shares the Megolm session.
    let sent = room.send(RoomMessageEventContent::text_plain("the secret is 42")).await.expect("send");
    let bob_device_seen = alice.encryption().get_device(&bob_id, &bob_device).await.expect("get_device");
    assert!(bob_device_seen.is_some(), "alice fetched bob's device keys through /keys/query");

    sync_until(&bob, Duration::from_secs(30), "bob decrypts alice's message", || {
        seen_event(&bob_seen, "the secret is 42").is_some()
    })
    .await;
    assert_eq!(seen_event(&bob_seen, "the secret is 42").as_ref(), Some(&sent.event_id));
    let bob_room = bob.get_room(&room_id).unwrap();
    let event = bob_room.event(&sent.event_id, None).await.expect("event");
    assert!(event.encryption_info().is_some(), "the event bob sees was decrypted, not sent in clear");

    // And back: bob's first encrypted message in the room starts his own Megolm session.
    let answer = bob_room.send(RoomMessageEventContent::text_plain("got it")).await.expect("bob sends");
    sync_until(&alice, Duration::from_secs(30), "alice decrypts bob's answer", || {
        seen_event(&alice_seen, "got it").is_some()
    })
    .await;
    assert_eq!(seen_event(&alice_seen, "got it"), Some(answer.event_id));

    // What the server stores and serves to a client without keys is ciphertext only.
    let outsider = server.login("bob").await;
    sync_once(&outsider).await;
    let outsider_room = outsider.get_room(&room_id).expect("bob's new device is in the room");
    let stored = outsider_room.event(&sent.event_id, None).await.expect("event");
    assert!(stored.encryption_info().is_none(), "a new device cannot have the room key");
    let json = stored.raw().json().get();
    assert!(json.contains("m.room.encrypted") && !json.contains("the secret is 42"), "{json}");
}

/// Cross-signing bootstrap: the three keys are uploaded (with the password when the server asks
/// for user-interactive auth), the device is signed by its owner, and another user sees the same
/// master key and a cross-signed device through `/keys/query`.
#[tokio::test]
async fn cross_signing_bootstrap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let alice_device = alice.device_id().unwrap().to_owned();
    sync_once(&alice).await;
    sync_once(&bob).await;

    if let Err(e) = alice.encryption().bootstrap_cross_signing(None).await {
        let uiaa = e.as_uiaa_response().unwrap_or_else(|| panic!("bootstrap failed without UIA: {e:?}"));
        let mut password =
            uiaa::Password::new(uiaa::UserIdentifier::UserIdOrLocalpart("alice".to_owned()), PASSWORD.to_owned());
        password.session = uiaa.session.clone();
        alice
            .encryption()
            .bootstrap_cross_signing(Some(uiaa::AuthData::Password(password)))
            .await
            .expect("bootstrap with password");
    }
    let status = alice.encryption().cross_signing_status().await.expect("status");
    assert!(status.is_complete(), "{status:?}");
    // The device's new signature comes back from the server with the next /keys/query.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let own = alice.encryption().get_own_device().await.expect("own device").expect("device");
        if own.is_cross_signed_by_owner() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice's device never carried her self-signing signature");
        sync_once(&alice).await;
    }

    // Bob shares a room with alice so that he tracks her keys, then asks the server for them.
    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room = alice.create_room(request).await.expect("createRoom");
    sync_until(&bob, Duration::from_secs(20), "invite", || bob.get_room(room.room_id()).is_some()).await;
    bob.join_room_by_id(room.room_id()).await.expect("join");
    let identity = bob.encryption().request_user_identity(&alice_id).await.expect("keys/query").expect("identity");
    let own_identity = alice.encryption().get_user_identity(&alice_id).await.expect("identity").expect("own identity");
    assert_eq!(identity.master_key().get_first_key(), own_identity.master_key().get_first_key());
    sync_once(&bob).await;
    let device = bob.encryption().get_device(&alice_id, &alice_device).await.expect("device").expect("alice's device");
    assert!(
        device.is_cross_signed_by_owner(),
        "the self-signing signature uploaded by alice is served with her device keys"
    );
}

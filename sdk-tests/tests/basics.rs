//! matrix-rust-sdk's `Client` on the classic API: password login (with and without refresh
//! tokens), rooms, invites, messages through `/sync`, media.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters};
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, UserId};
use matrix_sdk::{Client, RoomState};

/// The text messages a client has seen through sync: (room, sender, event id, body).
type Seen = Arc<Mutex<Vec<(OwnedRoomId, OwnedUserId, OwnedEventId, String)>>>;

/// Records every `m.room.message` the client's syncs deliver (decrypted ones included).
fn record_messages(client: &Client) -> Seen {
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, room: Room| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().push((
                room.room_id().to_owned(),
                ev.sender,
                ev.event_id,
                ev.content.body().to_owned(),
            ));
        }
    });
    seen
}

fn has_body(seen: &Seen, room: &OwnedRoomId, body: &str) -> bool {
    seen.lock().unwrap().iter().any(|(r, _, _, b)| r == room && b == body)
}

/// Log in with a password, create a room, invite, join, and exchange messages both ways through
/// `sync_once`; the sender, event id and room seen by the receiver are the sender's.
#[tokio::test]
async fn login_room_invite_and_messages_through_sync() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let alice_id = alice.user_id().expect("alice logged in").to_owned();
    let bob_id = bob.user_id().expect("bob logged in").to_owned();
    assert_eq!(alice_id.as_str(), server.user_id("alice"));
    assert!(alice.matrix_auth().logged_in());
    assert_eq!(alice.whoami().await.expect("whoami").user_id, alice_id);

    let alice_seen = record_messages(&alice);
    let bob_seen = record_messages(&bob);
    sync_once(&alice).await;
    sync_once(&bob).await;

    let mut request = create_room::v3::Request::new();
    request.name = Some("SDK room".to_owned());
    request.invite = vec![bob_id.clone()];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id = room.room_id().to_owned();
    let sent = room.send(RoomMessageEventContent::text_plain("hello from alice")).await.expect("send");

    sync_until(&bob, Duration::from_secs(20), "bob sees the invite", || {
        bob.get_room(&room_id).is_some_and(|r| r.state() == RoomState::Invited)
    })
    .await;
    let joined = bob.join_room_by_id(&room_id).await.expect("join");
    assert_eq!(joined.state(), RoomState::Joined);

    sync_until(&bob, Duration::from_secs(20), "bob receives alice's message", || {
        has_body(&bob_seen, &room_id, "hello from alice")
    })
    .await;
    {
        let seen = bob_seen.lock().unwrap();
        let (_, sender, event_id, _) = seen.iter().find(|(_, _, _, b)| b == "hello from alice").unwrap();
        assert_eq!(sender, &alice_id);
        assert_eq!(event_id, &sent.event_id);
    }
    let room_for_bob = bob.get_room(&room_id).expect("joined room");
    assert_eq!(room_for_bob.name().as_deref(), Some("SDK room"));

    room_for_bob.send(RoomMessageEventContent::text_plain("hi alice")).await.expect("bob sends");
    sync_until(&alice, Duration::from_secs(20), "alice receives bob's answer", || {
        has_body(&alice_seen, &room_id, "hi alice")
    })
    .await;
    let members = alice.get_room(&room_id).expect("room").joined_user_ids().await.expect("members");
    assert!(members.contains(&alice_id) && members.contains(&bob_id), "{members:?}");
}

/// With refresh tokens: access tokens expire after a second; the SDK's `handle_refresh_tokens`
/// gets a new one from `/refresh` when the server answers `M_UNKNOWN_TOKEN` (soft logout), and
/// the request goes through with the new token.
#[tokio::test]
async fn refresh_tokens_keep_the_session_alive() {
    let server = TestServer::start_with("[sessions]\nrefreshable_access_token_lifetime_ms = 1500\n").await;
    drop(server.register("carol").await);
    let client = server.client_builder().handle_refresh_tokens().build().await.expect("client");
    client
        .matrix_auth()
        .login_username("carol", PASSWORD)
        .request_refresh_token()
        .await
        .expect("login with refresh token");
    let first = client.session_tokens().expect("tokens");
    let refresh = first.refresh_token.clone().expect("the server handed out a refresh token");
    assert_eq!(client.whoami().await.expect("whoami").user_id, UserId::parse(server.user_id("carol")).unwrap());

    // Several expiries in a row: each refresh token is used once, its successor next time.
    let mut previous = first;
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let who = client.whoami().await.unwrap_or_else(|e| panic!("round {round}: whoami after expiry: {e}"));
        assert_eq!(who.user_id.as_str(), server.user_id("carol"));
        let now = client.session_tokens().expect("tokens");
        assert_ne!(now.access_token, previous.access_token, "round {round}: the access token was not refreshed");
        assert!(now.refresh_token.is_some());
        previous = now;
    }
    assert_ne!(previous.refresh_token.as_deref(), Some(refresh.as_str()), "refresh token rotated");

    // Without refresh handling, an expired token is a soft logout the client sees.
    let plain = server.client_builder().build().await.expect("client");
    plain.matrix_auth().login_username("carol", PASSWORD).request_refresh_token().await.expect("login");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let err = plain.whoami().await.expect_err("expired access token still accepted");
    let api = err.as_client_api_error().expect("a Matrix error");
    assert_eq!(api.status_code.as_u16(), 401, "{err}");
    assert!(format!("{err:?}").contains("UnknownToken"), "{err:?}");
}

/// Upload through the SDK, download the same bytes through another user's client.
#[tokio::test]
async fn media_upload_and_download() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let uploaded = alice.media().upload(&mime::APPLICATION_OCTET_STREAM, data.clone(), None).await.expect("upload");
    assert_eq!(uploaded.content_uri.server_name().expect("server name").as_str(), server.server_name());
    let request =
        MediaRequestParameters { source: MediaSource::Plain(uploaded.content_uri.clone()), format: MediaFormat::File };
    let downloaded = bob.media().get_media_content(&request, false).await.expect("download");
    assert_eq!(downloaded.len(), data.len());
    assert!(downloaded == data, "downloaded bytes differ from the upload");

    // Media that was never uploaded is an error, not empty content.
    let missing = format!("mxc://{}/nosuchmediaid", server.server_name());
    let request = MediaRequestParameters { source: MediaSource::Plain(missing.into()), format: MediaFormat::File };
    assert!(bob.media().get_media_content(&request, false).await.is_err());
}

/// The invite's stripped state names who invited (Element X shows "Alice invited you" from the
/// inviter's `m.room.member` there; Synapse includes it).
#[tokio::test]
async fn invite_names_the_inviter() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room_id = alice.create_room(request).await.expect("createRoom").room_id().to_owned();
    sync_until(&bob, Duration::from_secs(20), "bob sees the invite", || bob.get_room(&room_id).is_some()).await;
    let details = bob.get_room(&room_id).unwrap().invite_details().await.expect("invite details");
    assert_eq!(details.invitee.user_id(), bob.user_id().unwrap());
    let inviter = details.inviter.expect("the inviter's membership is in the invite's stripped state");
    assert_eq!(inviter.user_id(), alice.user_id().unwrap());
}

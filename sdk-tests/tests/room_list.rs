//! Element X's engine: matrix-sdk-ui's `SyncService` (room list and encryption syncs over
//! simplified sliding sync, `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`,
//! discovered from `/versions`) and the `RoomListService` built on it.
//!
//! The users under test log in on a fresh client (empty store), so everything the room list
//! shows came through sliding sync; the other users act through the classic API.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{Stream, StreamExt};
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::room::Room;
use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::receipt::ReceiptThread;
use matrix_sdk::ruma::events::room::message::{OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::{Client, RoomState};
use matrix_sdk_ui::eyeball_im::{Vector, VectorDiff};
use matrix_sdk_ui::room_list_service::{RoomListItem, RoomListLoadingState, filters};
use matrix_sdk_ui::sync_service::{self, SyncService};
use matrix_sdk_ui::timeline::RoomExt;

/// How long the room list may take to reflect a change.
const LIMIT: Duration = Duration::from_secs(20);

/// Starts Element X's sync service for `client` and waits until it runs.
async fn start_sync_service(client: &Client) -> SyncService {
    assert!(
        matches!(client.sliding_sync_version(), matrix_sdk::sliding_sync::Version::Native),
        "the SDK found no simplified sliding sync in /versions (org.matrix.simplified_msc3575): {:?}",
        client.sliding_sync_version()
    );
    let service = SyncService::builder(client.clone()).build().await.expect("building the sync service");
    service.start().await;
    service
}

/// Fails the test with the sync service's error if it stopped.
fn check_running(service: &SyncService) {
    match service.state().get() {
        sync_service::State::Error(e) => panic!("the sync service failed: {e:?}"),
        sync_service::State::Terminated => panic!("the sync service terminated"),
        _ => {}
    }
}

/// The room list as the app shows it: the diffs of `entries_with_dynamic_adapters` applied to a
/// vector.
struct Shown<S> {
    stream: S,
    items: Vector<RoomListItem>,
}

impl<S: Stream<Item = Vec<VectorDiff<RoomListItem>>> + Unpin> Shown<S> {
    fn ids(&self) -> Vec<OwnedRoomId> {
        self.items.iter().map(|r| r.room_id().to_owned()).collect()
    }

    /// Applies diffs until `done` holds for the shown rooms.
    async fn wait(&mut self, service: &SyncService, what: &str, done: impl Fn(&Vector<RoomListItem>) -> bool) {
        let deadline = Instant::now() + LIMIT;
        while !done(&self.items) {
            check_running(service);
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{what}: not within {LIMIT:?}; the list shows {:?}", self.describe());
            // Wake up now and then to notice a failed sync service.
            if let Ok(next) = tokio::time::timeout(left.min(Duration::from_millis(500)), self.stream.next()).await {
                for diff in next.expect("the room list stream ended") {
                    diff.apply(&mut self.items);
                }
            }
        }
    }

    fn describe(&self) -> Vec<String> {
        self.items
            .iter()
            .map(|r| {
                format!("{} {:?} {:?} stamp={:?}", r.room_id(), r.cached_display_name(), r.state(), r.recency_stamp())
            })
            .collect()
    }
}

/// `n` rooms named "room 0" … created by `creator` in that order, each with `member` invited
/// and joined, and a message from the creator in each; returns their ids (oldest first).
async fn rooms_with(creator: &Client, member: &Client, n: usize) -> Vec<OwnedRoomId> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut request = create_room::v3::Request::new();
        request.name = Some(format!("room {i}"));
        request.invite = vec![member.user_id().unwrap().to_owned()];
        let room = creator.create_room(request).await.expect("createRoom");
        member.join_room_by_id(room.room_id()).await.expect("join");
        room.send(RoomMessageEventContent::text_plain(format!("first message in room {i}"))).await.expect("send");
        ids.push(room.room_id().to_owned());
    }
    ids
}

fn position(items: &Vector<RoomListItem>, room: &RoomId) -> Option<usize> {
    items.iter().position(|r| r.room_id() == room)
}

/// The room list loads every room of the user (with its name and member count) from an empty
/// store, ordered most recent first; a new message then moves its room to the top.
#[tokio::test]
async fn room_list_loads_all_rooms_and_a_new_message_moves_its_room_to_the_top() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alice_setup = server.register("alice").await;
    let rooms = rooms_with(&bob, &alice_setup, 7).await;

    let alice = server.login_element_x("alice").await;
    let service = start_sync_service(&alice).await;
    let room_list = service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("all_rooms");
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(filters::new_filter_non_left()));
    let mut shown = Shown { stream: Box::pin(stream), items: Vector::new() };
    shown.wait(&service, "all 7 rooms are listed", |items| items.len() == 7).await;

    let mut loading = all_rooms.loading_state();
    let deadline = Instant::now() + LIMIT;
    loop {
        if let RoomListLoadingState::Loaded { maximum_number_of_rooms } = loading.get() {
            assert_eq!(maximum_number_of_rooms, Some(7), "the list's count");
            break;
        }
        assert!(Instant::now() < deadline, "the room list never reported Loaded");
        let _ = tokio::time::timeout(Duration::from_millis(500), loading.next()).await;
    }

    // Newest first: the rooms were created, and last written to, in order.
    let mut newest_first = rooms.clone();
    newest_first.reverse();
    shown
        .wait(&service, "rooms ordered by recency, with names", |items| {
            items.iter().map(|r| r.room_id().to_owned()).collect::<Vec<_>>() == newest_first
                && items.iter().all(|r| r.cached_display_name().is_some_and(|n| n.to_string().starts_with("room ")))
        })
        .await;
    for item in shown.items.iter() {
        let i = rooms.iter().position(|r| r == item.room_id()).unwrap();
        assert_eq!(item.cached_display_name().map(|n| n.to_string()), Some(format!("room {i}")));
        assert_eq!(item.state(), RoomState::Joined);
        assert_eq!(item.joined_members_count(), 2, "{}", item.room_id());
    }

    // A message in the oldest room (at the bottom) moves it to the top.
    let oldest = rooms[0].clone();
    assert_eq!(position(&shown.items, &oldest), Some(6));
    let bump = bob.get_room(&oldest).unwrap().send(RoomMessageEventContent::text_plain("bump")).await.expect("send");
    shown
        .wait(&service, "the room with the new message is at the top", |items| position(items, &oldest) == Some(0))
        .await;
    assert_eq!(shown.ids()[1..], newest_first[..6], "the other rooms keep their order");

    // The room's latest event is the new message.
    let room = room_list.room(&oldest).expect("room");
    let deadline = Instant::now() + LIMIT;
    while room.latest_event().and_then(|e| e.event_id()) != Some(bump.event_id.clone()) {
        assert!(Instant::now() < deadline, "the latest event is not the new message: {:?}", room.latest_event());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;
}

/// An invitation appears in the running room list as an invite (from the stripped state), and
/// joining it through the SDK turns it into a joined room.
#[tokio::test]
async fn an_invite_appears_in_the_room_list() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alice_setup = server.register("alice").await;
    let rooms = rooms_with(&bob, &alice_setup, 2).await;
    let alice = server.login_element_x("alice").await;
    let service = start_sync_service(&alice).await;
    let room_list = service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("all_rooms");
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(filters::new_filter_non_left()));
    let mut shown = Shown { stream: Box::pin(stream), items: Vector::new() };
    shown.wait(&service, "the two rooms are listed", |items| items.len() == 2).await;

    let mut request = create_room::v3::Request::new();
    request.name = Some("party".to_owned());
    request.invite = vec![alice.user_id().unwrap().to_owned()];
    let party = bob.create_room(request).await.expect("createRoom").room_id().to_owned();
    shown
        .wait(&service, "the invite is listed", |items| {
            items.iter().any(|r| r.room_id() == party && r.state() == RoomState::Invited)
        })
        .await;
    let invited = room_list.room(&party).expect("room");
    assert_eq!(invited.state(), RoomState::Invited);
    let details = invited.invite_details().await.expect("invite details");
    let name = invited.display_name().await.expect("display name").to_string();
    assert_eq!(name, "party", "the invite's stripped state carries the room name");

    invited.join().await.expect("join");
    shown
        .wait(&service, "the room is joined", |items| {
            items.iter().any(|r| r.room_id() == party && r.state() == RoomState::Joined)
        })
        .await;
    assert_eq!(shown.items.len(), 3);
    assert!(rooms.iter().all(|r| position(&shown.items, r).is_some()));
    assert_eq!(details.invitee.user_id(), alice.user_id().unwrap());
    service.stop().await;
}

/// Element X shows who invited ("Bob invited you") from the inviter's `m.room.member` in the
/// invite's stripped state (Synapse includes it; the classic `/sync` lacks it too, see
/// basics.rs `invite_names_the_inviter`).
#[tokio::test]
async fn an_invite_in_the_room_list_names_its_inviter() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    drop(server.register("alice").await);
    let alice = server.login_element_x("alice").await;
    let service = start_sync_service(&alice).await;
    let room_list = service.room_list_service();
    let mut request = create_room::v3::Request::new();
    request.invite = vec![alice.user_id().unwrap().to_owned()];
    let party = bob.create_room(request).await.expect("createRoom").room_id().to_owned();
    let deadline = Instant::now() + LIMIT;
    while room_list.room(&party).is_err() {
        check_running(&service);
        assert!(Instant::now() < deadline, "the invite never arrived");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let details = room_list.room(&party).unwrap().invite_details().await.expect("invite details");
    let inviter = details.inviter.expect("the inviter's m.room.member in the invite's stripped state");
    assert_eq!(inviter.user_id(), bob.user_id().unwrap());
    service.stop().await;
}

/// A plain message counts as a notification; a message that mentions the user (`m.mentions`
/// and the display name in the body) as a highlight: the red badge Element X shows.
#[tokio::test]
async fn a_mention_shows_as_a_highlight() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alice_setup = server.register("alice").await;
    let rooms = rooms_with(&bob, &alice_setup, 2).await;
    let alice = server.login_element_x("alice").await;
    let alice_id = alice.user_id().unwrap().to_owned();
    let service = start_sync_service(&alice).await;
    let room_list = service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("all_rooms");
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(filters::new_filter_non_left()));
    let mut shown = Shown { stream: Box::pin(stream), items: Vector::new() };
    shown.wait(&service, "the two rooms are listed", |items| items.len() == 2).await;

    let (quiet, loud) = (&rooms[0], &rooms[1]);
    bob.get_room(quiet).unwrap().send(RoomMessageEventContent::text_plain("just chatting")).await.expect("send");
    let mention = RoomMessageEventContent::text_plain("alice: are you there?")
        .add_mentions(Mentions::with_user_ids([alice_id.clone()]));
    let mentioned = bob.get_room(loud).unwrap().send(mention).await.expect("send");

    let counts = |room: &OwnedRoomId| room_list.room(room).expect("room").unread_notification_counts();
    let deadline = Instant::now() + LIMIT;
    loop {
        check_running(&service);
        let (q, l) = (counts(quiet), counts(loud));
        if l.highlight_count >= 1 && q.notification_count >= 2 {
            assert_eq!(q.highlight_count, 0, "a message without a mention is no highlight");
            assert_eq!(l.highlight_count, 1, "one mention");
            assert_eq!(l.notification_count, 2, "the first message and the mention notify");
            break;
        }
        assert!(Instant::now() < deadline, "counts never became right: quiet room {q:?}, mentioned room {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Reading the room (a read receipt on its last event) clears its badge, not the other's.
    alice
        .get_room(loud)
        .unwrap()
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, mentioned.event_id)
        .await
        .expect("receipt");
    let deadline = Instant::now() + LIMIT;
    loop {
        check_running(&service);
        let (q, l) = (counts(quiet), counts(loud));
        if l.notification_count == 0 && l.highlight_count == 0 {
            assert_eq!((q.notification_count, q.highlight_count), (2, 0), "the other room keeps its count");
            break;
        }
        assert!(Instant::now() < deadline, "the read receipt never cleared the counts: {l:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    service.stop().await;
}

/// Both users on Element X's sync service: room keys travel as to-device messages through the
/// encryption sync (sliding sync's `to_device` and `e2ee` extensions) and the message decrypts.
#[tokio::test]
async fn encrypted_room_over_the_sync_service() {
    let server = TestServer::start().await;
    drop(server.register("alice").await);
    drop(server.register("bob").await);
    let alice = server.login_element_x("alice").await;
    let bob = server.login_element_x("bob").await;
    // Each message bob's client receives, with whether it came to him encrypted (the SDK passes
    // the decryption's details to handlers that ask for them).
    let seen: Arc<Mutex<Vec<(OwnedEventId, String, bool)>>> = Arc::default();
    let sink = seen.clone();
    bob.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, _room: Room, info: Option<EncryptionInfo>| {
        let sink = sink.clone();
        async move { sink.lock().unwrap().push((ev.event_id, ev.content.body().to_owned(), info.is_some())) }
    });
    let alice_service = start_sync_service(&alice).await;
    let bob_service = start_sync_service(&bob).await;

    let mut request = create_room::v3::Request::new();
    request.invite = vec![bob.user_id().unwrap().to_owned()];
    let room = alice.create_room(request).await.expect("createRoom");
    let room_id = room.room_id().to_owned();
    room.enable_encryption().await.expect("enable encryption");
    let deadline = Instant::now() + LIMIT;
    // Alice's client encrypts only once it knows the room is encrypted: from its sync, which
    // may come after `enable_encryption` returns (the message would otherwise go out in clear,
    // as the SDK allows, and this test would not be about encryption).
    while !room.latest_encryption_state().await.expect("encryption state").is_encrypted() {
        check_running(&alice_service);
        assert!(Instant::now() < deadline, "alice's client never saw the room encrypted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while bob.get_room(&room_id).is_none_or(|r| r.state() != RoomState::Invited) {
        check_running(&bob_service);
        assert!(Instant::now() < deadline, "bob never saw the invite");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bob.join_room_by_id(&room_id).await.expect("join");
    while alice.get_room(&room_id).is_none_or(|r| r.joined_members_count() != 2) {
        check_running(&alice_service);
        assert!(Instant::now() < deadline, "alice never saw bob join");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = room.send(RoomMessageEventContent::text_plain("sliding secret")).await.expect("send");
    let deadline = Instant::now() + Duration::from_secs(30);
    let received = loop {
        let found = seen.lock().unwrap().iter().find(|(id, ..)| id == &sent.event_id).cloned();
        if let Some(found) = found {
            break found;
        }
        check_running(&bob_service);
        assert!(Instant::now() < deadline, "bob never received the message");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(received.1, "sliding secret");
    assert!(received.2, "the message reached bob encrypted and his device decrypted it");
    alice_service.stop().await;
    bob_service.stop().await;
}

/// The SDK keeps its connection (`pos`) across a server crash: after Myelin restarts (SIGKILL,
/// then the same data), the sync service, in the offline mode Element X uses, comes back by
/// itself and the room list follows new messages and new rooms again.
#[tokio::test]
async fn the_room_list_survives_a_server_restart() {
    let mut server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alice_setup = server.register("alice").await;
    let rooms = rooms_with(&bob, &alice_setup, 3).await;
    let alice = server.login_element_x("alice").await;
    let service = SyncService::builder(alice.clone()).with_offline_mode().build().await.expect("sync service");
    service.start().await;
    let room_list = service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("all_rooms");
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(filters::new_filter_non_left()));
    let mut shown = Shown { stream: Box::pin(stream), items: Vector::new() };
    shown.wait(&service, "the three rooms are listed", |items| items.len() == 3).await;

    server.kill_and_restart().await;
    // The client finds out when its long-poll breaks; give it something to notice.
    bob.get_room(&rooms[0])
        .unwrap()
        .send(RoomMessageEventContent::text_plain("after the restart"))
        .await
        .expect("send");
    let mut request = create_room::v3::Request::new();
    request.name = Some("new after restart".to_owned());
    request.invite = vec![alice.user_id().unwrap().to_owned()];
    let fresh = bob.create_room(request).await.expect("createRoom").room_id().to_owned();

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Offline (or an error the service recovers from) is allowed for a while here.
        if let sync_service::State::Error(e) = service.state().get() {
            panic!("the sync service failed instead of going offline: {e:?}");
        }
        if let Ok(Some(diffs)) = tokio::time::timeout(Duration::from_millis(500), shown.stream.next()).await {
            for diff in diffs {
                diff.apply(&mut shown.items);
            }
        }
        // The new message moves the oldest room above the others (where the invite goes, with
        // no latest event of its own, is the SDK's sorter's business).
        if position(&shown.items, &fresh).is_some()
            && position(&shown.items, &rooms[0]) < position(&shown.items, &rooms[2])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the room list did not catch up after the restart (service {:?}): {:?}",
            service.state().get(),
            shown.describe()
        );
    }
    assert!(matches!(service.state().get(), sync_service::State::Running));
    service.stop().await;
}

/// Element X's room screen: a room subscription and matrix-sdk-ui's `Timeline`, paginated back
/// (`/messages`) to the room's creation, shows every message once and in order.
#[tokio::test]
async fn the_timeline_paginates_back_to_the_start() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let alice_setup = server.register("alice").await;
    let rooms = rooms_with(&bob, &alice_setup, 1).await;
    let bob_room = bob.get_room(&rooms[0]).unwrap();
    for i in 0..40 {
        bob_room.send(RoomMessageEventContent::text_plain(format!("message {i}"))).await.expect("send");
    }
    let alice = server.login_element_x("alice").await;
    let service = start_sync_service(&alice).await;
    let room_list = service.room_list_service();
    let all_rooms = room_list.all_rooms().await.expect("all_rooms");
    let (stream, controller) = all_rooms.entries_with_dynamic_adapters(50);
    controller.set_filter(Box::new(filters::new_filter_non_left()));
    let mut shown = Shown { stream: Box::pin(stream), items: Vector::new() };
    shown.wait(&service, "the room is listed", |items| items.len() == 1).await;

    room_list.subscribe_to_rooms(&[&rooms[0]]).await;
    let room = room_list.room(&rooms[0]).expect("room");
    let timeline = room.timeline().await.expect("timeline");
    let mut at_start = false;
    for _ in 0..20 {
        check_running(&service);
        if timeline.paginate_backwards(10).await.expect("paginate backwards") {
            at_start = true;
            break;
        }
    }
    assert!(at_start, "pagination never reached the start of the room");
    let bodies: Vec<String> = timeline
        .items()
        .await
        .iter()
        .filter_map(|item| item.as_event()?.content().as_message().map(|m| m.body().to_owned()))
        .collect();
    let mut expected = vec!["first message in room 0".to_owned()];
    expected.extend((0..40).map(|i| format!("message {i}")));
    assert_eq!(bodies, expected);
    service.stop().await;
}

//! Plain reads of rooms' stored records that handlers need as they are: memberships, current
//! state ids, events by id (without the visibility checks of `read`, for callers that apply
//! their own), and the answers to federation transactions already received.

use ruma::{RoomId, UserId};

use super::Rooms;
use crate::error::Result;
use crate::storage::rooms::{StateIds, StoredEvent};

impl Rooms {
    /// The rooms in which the user's membership is `membership`.
    pub async fn rooms_with_membership(&self, user_id: &UserId, membership: &str) -> Result<Vec<String>> {
        self.db.rooms_with_membership(user_id.as_str(), membership).await
    }

    /// The rooms the user is joined to.
    pub async fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<String>> {
        self.rooms_with_membership(user_id, "join").await
    }

    /// The users joined to the room.
    pub async fn joined_members(&self, room_id: &RoomId) -> Result<Vec<String>> {
        self.db.members_with(room_id.as_str(), "join").await
    }

    /// The user's membership in the room, its event and stream position, unless the user
    /// forgot the room (then it reads as never joined).
    pub async fn remembered_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<(String, String, i64)>> {
        self.db.remembered_membership(room_id.as_str(), user_id.as_str()).await
    }

    /// The room's current state, as event ids.
    pub async fn current_state_ids(&self, room_id: &RoomId) -> Result<StateIds> {
        self.db.current_state_ids(room_id.as_str()).await
    }

    /// The id of the room's current state event of this type and key.
    pub async fn current_state_event_id(
        &self,
        room_id: &RoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Option<String>> {
        self.db.current_state_event_id(room_id.as_str(), kind, state_key).await
    }

    /// A stored event by id, of any room (no visibility check).
    pub async fn stored_event(&self, event_id: &str) -> Result<Option<StoredEvent>> {
        self.db.get_event(event_id).await
    }

    /// Stored events by id, those we have (no visibility check).
    pub async fn stored_events(&self, event_ids: &[String]) -> Result<Vec<StoredEvent>> {
        self.db.get_events(event_ids).await
    }

    /// Our answer to the federation transaction `txn_id` of `origin`, if we received it before.
    pub async fn federation_txn_answer(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        Ok(self.db.federation_txn_answer(origin, txn_id).await?)
    }

    /// Records our answer to a federation transaction, so that a retry gets the same one.
    pub async fn record_federation_txn(&self, origin: &str, txn_id: &str, response: &str) -> Result<()> {
        Ok(self.db.record_federation_txn(origin, txn_id, response).await?)
    }
}

//! The room directory as handlers read and change it: local aliases, the public room list
//! (our own and the one appservices keep per network) and the rooms two users share.

use ruma::{RoomId, UserId};

use super::Rooms;
use crate::error::Result;

impl Rooms {
    /// The room a local alias points to, and who created the alias.
    pub async fn alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        self.db.get_alias(alias).await
    }

    /// Adds a local alias; false when the alias exists already.
    pub async fn insert_alias(&self, alias: &str, room_id: &RoomId, creator: &UserId) -> Result<bool> {
        self.db.insert_alias(alias, room_id.as_str(), creator.as_str()).await
    }

    /// Deletes a local alias.
    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        self.db.delete_alias(alias).await
    }

    /// The local aliases of a room.
    pub async fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<String>> {
        self.db.room_aliases(room_id.as_str()).await
    }

    /// Whether the room is in the public room list.
    pub async fn is_public(&self, room_id: &RoomId) -> Result<bool> {
        self.db.is_room_public(room_id.as_str()).await
    }

    /// Adds the room to the public room list or takes it off.
    pub async fn set_public(&self, room_id: &RoomId, public: bool) -> Result<()> {
        self.db.set_room_public(room_id.as_str(), public).await
    }

    /// The rooms of the public room list.
    pub async fn public_rooms(&self) -> Result<Vec<String>> {
        self.db.public_rooms().await
    }

    /// The rooms appservices list, as `(appservice, network, room)`: of one appservice's
    /// network, or of all.
    pub async fn appservice_listed_rooms(
        &self,
        network: Option<(&str, &str)>,
    ) -> Result<Vec<(String, String, String)>> {
        Ok(self.db.appservice_listed_rooms(network).await?)
    }

    /// Lists a room in (or takes it off) an appservice's network directory.
    pub async fn set_appservice_room_listed(
        &self,
        appservice_id: &str,
        network_id: &str,
        room_id: &RoomId,
        listed: bool,
    ) -> Result<()> {
        Ok(self.db.set_appservice_room_listed(appservice_id, network_id, room_id.as_str(), listed).await?)
    }

    /// A page of the rooms both users are joined to, after the room `after`, and how many
    /// there are in all.
    pub async fn mutual_rooms(
        &self,
        a: &UserId,
        b: &UserId,
        after: Option<&RoomId>,
        limit: i64,
    ) -> Result<(Vec<String>, i64)> {
        self.db.mutual_rooms(a.as_str(), b.as_str(), after.map(|r| r.as_str()), limit).await
    }
}

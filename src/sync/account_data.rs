//! Account data: global and per room, including room tags (`m.tag`) and the fully-read marker
//! (`m.fully_read`). Each write takes a new `account_data` stream position and wakes the
//! user's `/sync`. Account data is private to its user and never federated.

use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use super::SyncEngine;
use crate::error::{Error, Result};
use crate::storage::Db;
use crate::storage::sync::streams;

/// Types the server manages; clients set them through their own endpoints (spec: 405
/// `M_BAD_JSON` from the account data API).
pub const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// The room tag account data type.
pub const TAGS: &str = "m.tag";

impl SyncEngine {
    /// Sets global (`room_id` None) or room account data.
    pub async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &Value,
    ) -> Result<()> {
        if !content.is_object() {
            return Err(Error::bad_json("Content must be a JSON object"));
        }
        let room = room_id.map(RoomId::as_str).unwrap_or("");
        let mut tx = self.db.begin_write().await?;
        let pos = Db::next_stream_position(&mut tx, streams::ACCOUNT_DATA).await?;
        self.db.set_account_data(&mut tx, user_id.as_str(), room, data_type, &content.to_string(), pos).await?;
        tx.commit().await?;
        if room_id.is_none() && data_type == crate::push::PUSH_RULES {
            self.rooms.push.rules.forget(user_id);
        }
        self.notifier.wake([user_id.as_str()]);
        Ok(())
    }

    /// Global (`room_id` None) or room account data of a user.
    pub async fn account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Option<Value>> {
        let room = room_id.map(RoomId::as_str).unwrap_or("");
        let raw = self.db.get_account_data(user_id.as_str(), room, data_type).await?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// Every account data entry of the user, as the admin API shows them:
    /// `{"global": {type: content}, "rooms": {room: {type: content}}}`.
    pub async fn all_account_data(&self, user_id: &UserId) -> Result<Value> {
        // Every entry ever written: the stream positions only order changes, each key has one row.
        let rows = self.db.account_data_since(user_id.as_str(), i64::MIN, i64::MAX).await?;
        let mut global = serde_json::Map::new();
        let mut rooms = serde_json::Map::new();
        for row in rows {
            let content: Value = serde_json::from_str(&row.content).unwrap_or_else(|_| json!({}));
            if row.room_id.is_empty() {
                global.insert(row.data_type, content);
            } else if let Value::Object(room) = rooms.entry(row.room_id).or_insert_with(|| json!({})) {
                room.insert(row.data_type, content);
            }
        }
        Ok(json!({ "global": global, "rooms": rooms }))
    }

    /// The user's tags of a room: `{"tags": {...}}`.
    pub async fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<Value> {
        let mut tags = self.account_data(user_id, Some(room_id), TAGS).await?.unwrap_or_else(|| json!({}));
        if !tags["tags"].is_object() {
            tags = json!({ "tags": {} });
        }
        Ok(json!({ "tags": tags["tags"] }))
    }

    /// Adds (`info` Some) or removes one tag, read-modify-write in one transaction.
    pub async fn set_tag(&self, user_id: &UserId, room_id: &RoomId, tag: &str, info: Option<&Value>) -> Result<()> {
        if tag.is_empty() || tag.len() > 255 {
            return Err(Error::invalid_param("Tag names must be 1 to 255 bytes long"));
        }
        if let Some(i) = info
            && (!i.is_object() || i.get("order").is_some_and(|o| !o.is_number()))
        {
            return Err(Error::bad_json("Tag info must be an object whose order is a number"));
        }
        let mut tx = self.db.begin_write().await?;
        let current = self.db.get_account_data_tx(&mut tx, user_id.as_str(), room_id.as_str(), TAGS).await?;
        let mut content: Value = current.and_then(|c| serde_json::from_str(&c).ok()).unwrap_or_else(|| json!({}));
        if !content["tags"].is_object() {
            content["tags"] = json!({});
        }
        let tags = content["tags"].as_object_mut().expect("made an object above");
        match info {
            Some(i) => {
                tags.insert(tag.to_owned(), i.clone());
            }
            None => {
                if tags.remove(tag).is_none() {
                    // Nothing changed: no new stream position, nothing to wake.
                    return Ok(());
                }
            }
        }
        let pos = Db::next_stream_position(&mut tx, streams::ACCOUNT_DATA).await?;
        self.db.set_account_data(&mut tx, user_id.as_str(), room_id.as_str(), TAGS, &content.to_string(), pos).await?;
        tx.commit().await?;
        self.notifier.wake([user_id.as_str()]);
        Ok(())
    }
}

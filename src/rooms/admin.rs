//! Rooms as the server administration API lists them (`/_synapse/admin/v1/rooms`): statistics
//! from storage, names and settings from the current state, searched, sorted and paged here.

use std::cmp::Ordering;
use std::collections::HashMap;

use ruma::RoomId;
use serde_json::{Value, json};

use super::Rooms;
use crate::error::{Error, Result};
pub use crate::storage::admin::{EventReportRow, ReportQuery};
pub use crate::storage::reports::Reported;
use crate::storage::room_admin::Extremity;
pub use crate::storage::room_admin::RoomDeletion;

/// State events whose content the room list shows.
const LISTED_STATE: &[&str] = &[
    "m.room.name",
    "m.room.canonical_alias",
    "m.room.create",
    "m.room.encryption",
    "m.room.join_rules",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.topic",
    "m.room.avatar",
];

/// `order_by` values of the room list; `alphabetical` and `size` are Synapse's deprecated
/// names for `name` and `joined_members`.
pub const ROOM_ORDERS: &[&str] = &[
    "name",
    "canonical_alias",
    "joined_members",
    "joined_local_members",
    "version",
    "creator",
    "encryption",
    "federatable",
    "public",
    "join_rules",
    "guest_access",
    "history_visibility",
    "state_events",
    "alphabetical",
    "size",
];

/// Which rooms to list and how.
#[derive(Debug, Clone)]
pub struct RoomQuery {
    /// Case-insensitive substring of the name, canonical alias or room id.
    pub search_term: Option<String>,
    /// One of [`ROOM_ORDERS`].
    pub order_by: String,
    /// Descending.
    pub backwards: bool,
    /// Offset.
    pub from: usize,
    /// Page size.
    pub limit: usize,
}

/// Orders JSON values of one field: numbers and booleans by value, strings by text, nulls last.
fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Greater,
        (_, Value::Null) => Ordering::Less,
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

impl Rooms {
    /// Every room held here (or just `room_id`) in the admin API's shape; `details` adds the
    /// fields of `GET /_synapse/admin/v1/rooms/{roomId}`.
    pub async fn admin_rooms(&self, room_id: Option<&RoomId>, details: bool) -> Result<Vec<Value>> {
        let id = room_id.map(|r| r.as_str());
        let rows = self.db.admin_rooms(id).await?;
        // One query for the state of every room: a page sorted by name needs all of them.
        let mut contents: HashMap<(String, String), (String, Value)> = HashMap::new();
        for (room, kind, event) in self.db.admin_room_state_basics(id, LISTED_STATE).await? {
            let event: Value = serde_json::from_str(&event)?;
            let sender = event["sender"].as_str().unwrap_or_default().to_owned();
            contents.insert((room, kind), (sender, event["content"].clone()));
        }
        let mut rooms = Vec::with_capacity(rows.len());
        for row in rows {
            let content = |kind: &str, field: &str| {
                contents
                    .get(&(row.room_id.clone(), kind.to_owned()))
                    .map(|(_, c)| c[field].clone())
                    .unwrap_or(Value::Null)
            };
            let create = contents.get(&(row.room_id.clone(), "m.room.create".to_owned()));
            // Room versions up to 10 name the creator in the content; later ones by the sender.
            let creator = create.map(|(sender, c)| c["creator"].as_str().unwrap_or(sender).to_owned());
            let federatable = create.map(|(_, c)| c["m.federate"].as_bool().unwrap_or(true)).unwrap_or(true);
            let mut room = json!({
                "room_id": row.room_id,
                "name": content("m.room.name", "name"),
                "canonical_alias": content("m.room.canonical_alias", "alias"),
                "joined_members": row.joined_members,
                "joined_local_members": row.joined_local_members,
                "version": row.version,
                "creator": creator,
                "encryption": content("m.room.encryption", "algorithm"),
                "federatable": federatable,
                "public": row.public,
                "join_rules": content("m.room.join_rules", "join_rule"),
                "guest_access": content("m.room.guest_access", "guest_access"),
                "history_visibility": content("m.room.history_visibility", "history_visibility"),
                "state_events": row.state_events,
                "room_type": content("m.room.create", "type"),
            });
            if details {
                room["avatar"] = content("m.room.avatar", "url");
                room["topic"] = content("m.room.topic", "topic");
                room["joined_local_devices"] = json!(self.db.admin_joined_local_devices(&row.room_id).await?);
                room["forgotten"] = json!(row.local_not_forgotten == 0);
            }
            rooms.push(room);
        }
        Ok(rooms)
    }

    /// One page of the room list and the number of rooms matching the search.
    pub async fn admin_list_rooms(&self, q: &RoomQuery) -> Result<(Vec<Value>, usize)> {
        let field = match q.order_by.as_str() {
            "alphabetical" => "name",
            "size" => "joined_members",
            other if ROOM_ORDERS.contains(&other) => other,
            other => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
        };
        let mut rooms = self.admin_rooms(None, false).await?;
        if let Some(term) = q.search_term.as_deref().map(str::to_lowercase) {
            let hit = |v: &Value| v.as_str().is_some_and(|s| s.to_lowercase().contains(&term));
            rooms.retain(|r| hit(&r["name"]) || hit(&r["canonical_alias"]) || hit(&r["room_id"]));
        }
        rooms.sort_by(|a, b| {
            let primary = compare(&a[field], &b[field]);
            let primary = if q.backwards { primary.reverse() } else { primary };
            primary.then_with(|| compare(&a["room_id"], &b["room_id"]))
        });
        let total = rooms.len();
        let page = rooms.into_iter().skip(q.from).take(q.limit).collect();
        Ok((page, total))
    }
}

/// The moderation records the admin API and `/report` read and write directly: reports,
/// room blocks and deletions, forward extremities, server notices.
impl Rooms {
    /// Stores a user's report of an event, a room or a user.
    pub async fn insert_report(&self, reporter: &ruma::UserId, what: Reported<'_>, reason: Option<&str>) -> Result<()> {
        self.db.insert_report(&crate::ids::random_alpha(24), reporter.as_str(), what, reason).await
    }

    /// Whether the server knows the user (a local account, or a member of one of its rooms).
    pub async fn user_known(&self, user_id: &ruma::UserId) -> Result<bool> {
        self.db.user_known(user_id.as_str()).await
    }

    /// A page of the event reports, and how many match.
    pub async fn event_reports(&self, query: &ReportQuery) -> Result<(Vec<EventReportRow>, i64)> {
        self.db.admin_event_reports(query).await
    }

    /// One event report.
    pub async fn event_report(&self, id: &str) -> Result<Option<EventReportRow>> {
        self.db.admin_event_report(id).await
    }

    /// Deletes an event report; false when there is no such report.
    pub async fn delete_event_report(&self, id: &str) -> Result<bool> {
        self.db.admin_delete_event_report(id).await
    }

    /// The deletions of a room, started or done.
    pub async fn room_deletions_of(&self, room_id: &RoomId) -> Result<Vec<RoomDeletion>> {
        self.db.room_deletions_of(room_id.as_str()).await
    }

    /// One room deletion by its id.
    pub async fn room_deletion(&self, delete_id: &str) -> Result<Option<RoomDeletion>> {
        self.db.room_deletion(delete_id).await
    }

    /// Blocks the room (no local user may join it) or lifts the block.
    pub async fn set_room_blocked(&self, room_id: &RoomId, by: &ruma::UserId, block: bool) -> Result<()> {
        self.db.set_room_blocked(room_id.as_str(), by.as_str(), block).await
    }

    /// Who blocked the room, if it is blocked.
    pub async fn room_blocked_by(&self, room_id: &RoomId) -> Result<Option<String>> {
        self.db.room_blocked_by(room_id.as_str()).await
    }

    /// The room's forward extremities.
    pub async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<Extremity>> {
        self.db.admin_forward_extremities(room_id.as_str()).await
    }

    /// The event a server notice sent under `(admin, txn_id)` became, if it was sent.
    pub async fn server_notice_txn(&self, admin: &ruma::UserId, txn_id: &str) -> Result<Option<String>> {
        self.db.server_notice_txn(admin.as_str(), txn_id).await
    }

    /// Records the event a server notice sent under `(admin, txn_id)` became.
    pub async fn set_server_notice_txn(&self, admin: &ruma::UserId, txn_id: &str, event_id: &str) -> Result<()> {
        self.db.set_server_notice_txn(admin.as_str(), txn_id, event_id).await
    }

    /// The user's server notices room, as last recorded.
    pub async fn server_notice_room(&self, user_id: &ruma::UserId) -> Result<Option<String>> {
        self.db.server_notice_room(user_id.as_str()).await
    }

    /// Records the user's server notices room.
    pub async fn set_server_notice_room(&self, user_id: &ruma::UserId, room_id: &RoomId) -> Result<()> {
        self.db.set_server_notice_room(user_id.as_str(), room_id.as_str()).await
    }
}

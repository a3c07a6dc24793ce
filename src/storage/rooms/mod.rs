//! Tables of rooms: the `rooms` rows here; events and DAG edges, forward extremities, state
//! groups and current state, memberships, client transaction ids, aliases and the directory,
//! and the bulk writer of deferring transactions in the submodules.

mod bulk;
mod directory;
mod events;
mod extremities;
mod memberships;
mod state;
mod txns;

pub use bulk::{PendingEvent, PendingRows};
pub(super) use bulk::{ROWS_PER_STATEMENT, flush_pending, values_clause, values_clause_from};
use bulk::{write_edges, write_events, write_txns};

use std::collections::HashMap;

use serde_json::Value;

use super::{Backend, Db, WriteTx, now_ms};
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;

/// State as a map from `(event type, state key)` to event id, ordered by key.
///
/// A persistent map: a clone shares the whole tree and a change copies one path of it, so the
/// state after a state event costs one entry's path beside the state before it. A room of
/// 1,001 members taking 1,000 topic changes (the `storage` benchmark) held 1,000 full copies of
/// its state in the state cache as `BTreeMap`s: the server's RSS after it went from 486 to 244
/// MB with this map.
pub type StateIds = imbl::OrdMap<(String, String), String>;

/// A stored event with its positions.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// The PDU.
    pub pdu: Pdu,
    /// Global stream position.
    pub stream: i64,
    /// Depth, the first half of the topological position.
    pub topo: i64,
    /// Server-computed unsigned data.
    pub unsigned: Option<Value>,
    /// Whether the event is an outlier.
    pub outlier: bool,
    /// State group after the event.
    pub state_group: Option<i64>,
    /// The redaction applied to this event, if any.
    pub redacted_by: Option<String>,
}

/// `(relates_to, event_id, stream_ordering, state_group, sender, event_type, state_key)`.
type ThreadReplyRow = (String, String, i64, Option<i64>, String, String, Option<String>);

/// One thread reply as [`Db::thread_replies`] lists it.
#[derive(Debug, Clone)]
pub struct ThreadReply {
    /// The thread root it relates to.
    pub root: String,
    /// Its event id.
    pub event_id: String,
    /// Its stream position.
    pub stream: i64,
    /// The state group after it.
    pub state_group: Option<i64>,
    /// Its sender.
    pub sender: String,
    /// The state key when it is a member event (visibility treats one's own member events apart).
    pub own_member_of: Option<String>,
}

/// What [`Db::insert_event`] writes.
pub struct NewEventRow<'a> {
    /// The PDU.
    pub pdu: &'a Pdu,
    /// Global stream position.
    pub stream: i64,
    /// Server-computed unsigned data.
    pub unsigned: Option<&'a Value>,
    /// Outlier flag.
    pub outlier: bool,
    /// State group after the event.
    pub state_group: Option<i64>,
}

const EVENT_COLUMNS: &str = "event_id, room_id, json, rejected, stream_ordering, topological_ordering, unsigned_json, \
     outlier, state_group, redacted_by";

type EventTuple = (String, String, String, i64, i64, i64, Option<String>, i64, Option<i64>, Option<String>);

impl StoredEvent {
    /// Whether the event was soft-failed: the only outliers stored with a state group (see
    /// `Rooms::persist_soft_failed`).
    pub fn is_soft_failed(&self) -> bool {
        self.outlier && self.state_group.is_some() && !self.pdu.rejected
    }
}

fn stored_from(t: EventTuple) -> Result<StoredEvent> {
    let pdu = Pdu::from_stored(&t.0, &t.1, &t.2, t.3 != 0)?;
    Ok(StoredEvent {
        pdu,
        stream: t.4,
        topo: t.5,
        unsigned: t.6.and_then(|u| serde_json::from_str(&u).ok()),
        outlier: t.7 != 0,
        state_group: t.8,
        redacted_by: t.9,
    })
}

fn relation_of(pdu: &Pdu) -> (Option<String>, Option<String>) {
    let content = pdu.content();
    let rel = &content["m.relates_to"];
    let target = rel["event_id"].as_str().map(str::to_owned);
    let rel_type = rel["rel_type"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| rel.get("m.in_reply_to").map(|_| "m.in_reply_to".to_owned()));
    match (target, rel_type) {
        (Some(t), Some(r)) => (Some(t), Some(r)),
        (None, Some(r)) if r == "m.in_reply_to" => {
            (rel["m.in_reply_to"]["event_id"].as_str().map(str::to_owned), Some(r))
        }
        _ => (None, None),
    }
}

impl Db {
    /// Room version and current state group of a room we know.
    pub async fn get_room(&self, room_id: &str) -> Result<Option<(String, Option<i64>)>> {
        Ok(sqlx::query_as("SELECT room_version, current_state_group FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// Same, inside a write transaction; on PostgreSQL the row is locked so that one room's
    /// events are appended by one writer at a time across processes.
    pub async fn lock_room(&self, tx: &mut WriteTx, room_id: &str) -> Result<Option<(String, Option<i64>)>> {
        Ok(self.lock_rooms(tx, &[room_id]).await?.remove(room_id))
    }

    /// Locks several rooms' rows (PostgreSQL), in room id order so that two writers locking
    /// overlapping sets cannot deadlock: room id → (room version, current state group). Rooms
    /// that do not exist are absent.
    pub async fn lock_rooms(
        &self,
        tx: &mut WriteTx,
        room_ids: &[&str],
    ) -> Result<HashMap<String, (String, Option<i64>)>> {
        let lock = if self.backend() == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        let mut out = HashMap::new();
        for chunk in room_ids.chunks(200) {
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT room_id, room_version, current_state_group FROM rooms WHERE room_id IN ({}) \
                 ORDER BY room_id{lock}",
                super::placeholders(1, chunk.len())
            ));
            let mut q = sqlx::query_as::<_, (String, String, Option<i64>)>(sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for (room, version, group) in q.fetch_all(&mut *tx.tx).await? {
                out.insert(room, (version, group));
            }
        }
        Ok(out)
    }

    /// Creates the rooms row.
    pub async fn insert_room(&self, tx: &mut WriteTx, room_id: &str, version: &str) -> Result<()> {
        sqlx::query("INSERT INTO rooms (room_id, room_version, created_ts) VALUES ($1, $2, $3)")
            .bind(room_id)
            .bind(version)
            .bind(now_ms())
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }

    /// Points the room at its new current state group.
    pub async fn set_room_state_group(&self, tx: &mut WriteTx, room_id: &str, group: i64) -> Result<()> {
        sqlx::query("UPDATE rooms SET current_state_group = $1 WHERE room_id = $2")
            .bind(group)
            .bind(room_id)
            .execute(&mut *tx.tx)
            .await?;
        Ok(())
    }
}

/// Binds `binds` to `q` in order.
fn bind_all<'q, O>(
    mut q: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments>,
    binds: &[BindValue<'q>],
) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments> {
    for b in binds {
        q = match *b {
            BindValue::Str(s) => q.bind(s),
            BindValue::Int(i) => q.bind(i),
        };
    }
    q
}

/// A bind value for [`Db::query_events`].
#[derive(Debug, Clone, Copy)]
pub(super) enum BindValue<'a> {
    /// Text.
    Str(&'a str),
    /// Integer.
    Int(i64),
}

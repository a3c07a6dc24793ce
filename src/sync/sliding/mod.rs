//! Simplified sliding sync (MSC4186, `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`),
//! the sync Element X and matrix-rust-sdk use: the client asks for windows (`ranges`) of room
//! lists sorted by recent activity, for rooms by id (`room_subscriptions`) and for extensions
//! (to-device, E2EE, account data, receipts, typing); each response carries only what changed
//! for the client since its previous response.
//!
//! Built from the `/sync` machinery of [`super`]: the stream positions ([`SyncToken`]), the
//! recent-events log, memberships, timelines (`rooms::timeline`), summaries, unread counts,
//! stripped state, and the stream readers. What is new here:
//! - [`lists`]: which rooms a list holds (filters), their order (`bump_stamp`, the position of
//!   the room's latest event of a [`lists::BUMP_TYPES`] type, as Synapse defines it) and the
//!   rooms in the requested ranges.
//! - [`room`]: one room's entry (initial or the change since the client last got the room).
//! - [`extensions`]: the extensions, scoped to the lists and subscriptions they name.
//! - The connection state ([`ConnState`]): per `(user, device, conn_id)` and position, the
//!   stream positions of the last response and, per room, up to where the client holds it. It
//!   is stored in the database (`sliding_sync_positions`, migration 11) before the response
//!   leaves, so a position survives a restart, and a position the server does not hold (reset,
//!   expired, or older than the previous one) is answered with 400 `M_UNKNOWN_POS`, after which
//!   the client starts a new connection: never with data computed against the wrong state.
//!   A connection keeps two positions (the one sent and the one answered, in case the answer
//!   was lost); a device keeps at most [`MAX_CONNS`] connections, and positions unused for
//!   [`EXPIRY_MS`] are deleted.
//!
//! Waiting: like `/sync`, a request with `pos` and a `timeout` subscribes to the notifier before
//! it computes; when nothing changed for the client it waits for a wake-up or the timeout and
//! computes again from the same connection state. A response without changes keeps its `pos`.

pub mod extensions;
pub mod lists;
pub mod room;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::StatusCode;
use ruma::api::client::sync::sync_events::v5;
use ruma::{DeviceId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::memo::Memo;
use super::token::SyncToken;
use super::{MAX_TIMEOUT, SyncEngine};
use crate::error::{Error, Result};
use crate::storage::now_ms;
use crate::storage::sliding_sync::ConnKey;

/// Connections a device keeps; starting one more drops the least recently used.
pub const MAX_CONNS: i64 = 10;
/// Longest `conn_id` and list name (they are stored with the connection's state).
pub const MAX_CONN_ID: usize = 255;
/// Most lists in one request (each one is a pass over the user's rooms).
pub const MAX_LISTS: usize = 100;
/// Positions unused for this long (ms) are deleted.
pub const EXPIRY_MS: i64 = 7 * 24 * 3_600_000;

/// A room's sorted `required_state` pairs. Carried from position to position by pointer; rooms
/// with equal lists are stored once (see [`ConnState::to_json`]).
pub type RequiredState = Arc<Vec<(String, String)>>;

/// What the client of a connection holds, as of one position.
///
/// Stored as JSON with each distinct `required_state` written once (see [`StoredState`]): the
/// rooms of a window share one, and writing it per room made a connection's state grow by
/// ~350 bytes per room the client ever got (42 KB after 100 wake-ups in the benchmark), read,
/// parsed and written again on every response.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "StoredState")]
pub struct ConnState {
    /// The stream positions the response brought the client to (a [`SyncToken`]).
    pub token: String,
    /// Per room the client got: up to where.
    pub rooms: BTreeMap<String, RoomSent>,
    /// The count of each list last sent.
    pub lists: BTreeMap<String, u64>,
    /// The extensions' settings in effect (sticky, see [`sticky_extensions`]).
    pub extensions: Value,
}

/// What the client holds of one room.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoomSent {
    /// Timeline and state are sent up to this events position.
    pub at: i64,
    /// The stream position of the user's membership then: a change sends the room afresh.
    pub member: i64,
    /// The largest timeline limit the room was sent with.
    pub timeline_limit: u64,
    /// The `required_state` the room was sent with (sorted).
    pub required_state: RequiredState,
    /// The notification count last sent.
    pub notifications: i64,
}

impl ConnState {
    /// The state as stored. Consumes it: serde's `into` would clone the whole state (every
    /// room the client holds) at each response only to convert the copy.
    pub fn to_json(self) -> serde_json::Result<String> {
        serde_json::to_string(&StoredState::from(self))
    }
}

/// [`ConnState`] as stored: the distinct `required_state` lists once, named by index.
#[derive(Serialize, Deserialize)]
struct StoredState {
    #[serde(rename = "t")]
    token: String,
    #[serde(rename = "r", default)]
    rooms: BTreeMap<String, StoredRoom>,
    #[serde(rename = "l", default)]
    lists: BTreeMap<String, u64>,
    #[serde(rename = "x", default)]
    extensions: Value,
    /// The distinct `required_state` lists.
    #[serde(rename = "q", default)]
    required: Vec<Vec<(String, String)>>,
}

/// [`RoomSent`] as stored.
#[derive(Serialize, Deserialize)]
struct StoredRoom {
    #[serde(rename = "a")]
    at: i64,
    #[serde(rename = "m")]
    member: i64,
    #[serde(rename = "tl")]
    timeline_limit: u64,
    /// The index of the room's list in [`StoredState::required`].
    #[serde(rename = "ri", default, skip_serializing_if = "Option::is_none")]
    required_index: Option<usize>,
    /// The list itself, as positions stored before the lists were shared held it.
    #[serde(rename = "rs", default, skip_serializing_if = "Option::is_none")]
    required_state: Option<Vec<(String, String)>>,
    #[serde(rename = "n", default)]
    notifications: i64,
}

impl From<ConnState> for StoredState {
    fn from(s: ConnState) -> Self {
        let mut required: Vec<Vec<(String, String)>> = Vec::new();
        let mut index: HashMap<RequiredState, usize> = HashMap::new();
        let rooms = s
            .rooms
            .into_iter()
            .map(|(room, r)| {
                let i = *index.entry(r.required_state.clone()).or_insert_with(|| {
                    required.push(r.required_state.to_vec());
                    required.len() - 1
                });
                let stored = StoredRoom {
                    at: r.at,
                    member: r.member,
                    timeline_limit: r.timeline_limit,
                    required_index: Some(i),
                    required_state: None,
                    notifications: r.notifications,
                };
                (room, stored)
            })
            .collect();
        StoredState { token: s.token, rooms, lists: s.lists, extensions: s.extensions, required }
    }
}

impl From<StoredState> for ConnState {
    fn from(s: StoredState) -> Self {
        let required: Vec<RequiredState> = s.required.into_iter().map(Arc::new).collect();
        let rooms = s
            .rooms
            .into_iter()
            .map(|(room, r)| {
                // An index out of range reads as no required state: the server then resends
                // the room's state (more than needed, never less).
                let required_state = match (r.required_index, r.required_state) {
                    (Some(i), _) => required.get(i).cloned().unwrap_or_default(),
                    (None, Some(list)) => Arc::new(list),
                    (None, None) => RequiredState::default(),
                };
                let sent = RoomSent {
                    at: r.at,
                    member: r.member,
                    timeline_limit: r.timeline_limit,
                    required_state,
                    notifications: r.notifications,
                };
                (room, sent)
            })
            .collect();
        ConnState { token: s.token, rooms, lists: s.lists, extensions: s.extensions }
    }
}

/// The engine's remembered answers for sliding sync.
#[derive(Default)]
pub struct Memos {
    /// Per room: its bump stamp (0: no bump event) as of an events position. Valid while the
    /// recent-events log covers that position, which then holds every later event.
    pub(crate) bumps: Memo<String, (i64, i64)>,
    /// Per room: encryption and room type as of an events position (see `lists::room_facts`).
    pub(crate) facts: Memo<String, (i64, crate::storage::sliding_sync::RoomFacts)>,
    /// Per user: the rooms `m.direct` names, as of an account data position.
    pub(crate) direct: Memo<String, (i64, std::sync::Arc<std::collections::HashSet<String>>)>,
}

/// 400 `M_UNKNOWN_POS`: the client must start a new connection.
fn unknown_pos() -> Error {
    Error::new(StatusCode::BAD_REQUEST, "M_UNKNOWN_POS", "Unknown position; start a new connection")
}

/// One computed response.
pub(crate) struct Computed {
    /// The response body without `pos`.
    pub body: Map<String, Value>,
    /// The connection state after it.
    pub state: ConnState,
    /// Whether the client's state changed (a new position is needed).
    pub changed: bool,
    /// Whether there is anything to end a long-poll for.
    pub empty: bool,
}

impl SyncEngine {
    /// Answers one simplified sliding sync request of `user`'s `device`.
    pub async fn sliding_sync(&self, user: &UserId, device: &DeviceId, req: v5::Request) -> Result<Value> {
        let conn_id = req.conn_id.clone().unwrap_or_default();
        if conn_id.len() > MAX_CONN_ID {
            return Err(Error::invalid_param(format!("conn_id is longer than {MAX_CONN_ID} bytes")));
        }
        if req.lists.len() > MAX_LISTS || req.lists.keys().any(|n| n.len() > MAX_CONN_ID) {
            return Err(Error::invalid_param(format!(
                "At most {MAX_LISTS} lists, with names of up to {MAX_CONN_ID} bytes"
            )));
        }
        let key = ConnKey { user_id: user.as_str(), device_id: device.as_str(), conn_id: &conn_id };
        let presence = req.set_presence.as_str().to_owned();
        let _syncing = Box::pin(self.presence_on_sync(user, &presence)).await?;
        let (keep, prev) = match req.pos.as_deref() {
            None => {
                Box::pin(self.db.sliding_reset(key)).await?;
                if rand::random::<u8>() == 0 {
                    // Now and then, whoever starts a connection deletes the expired ones.
                    Box::pin(self.db.sliding_expire(now_ms() - EXPIRY_MS)).await?;
                }
                (None, None)
            }
            Some(p) => {
                let pos: i64 = p.parse().map_err(|_| unknown_pos())?;
                let raw = Box::pin(self.db.sliding_position(key, pos)).await?.ok_or_else(unknown_pos)?;
                let state: ConnState = serde_json::from_str(&raw).map_err(|_| unknown_pos())?;
                (Some(pos), Some(state))
            }
        };
        let prev_token = prev.as_ref().map(|s| SyncToken::parse(&s.token)).transpose()?;
        let mut req = req;
        let extensions = sticky_extensions(prev.as_ref().map(|p| &p.extensions), &req.extensions)?;
        req.extensions = serde_json::from_value(extensions.clone()).map_err(|e| Error::bad_json(e.to_string()))?;
        let stop = self.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let timeout = req.timeout.unwrap_or(Duration::ZERO);
        let may_wait = prev.is_some() && !timeout.is_zero() && !self.stopping.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout.min(MAX_TIMEOUT);
        let wakeup = self.notifier.subscribe(user.as_str());
        loop {
            let notified = wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Box::pin(self.current_token()).await?;
            let mut computed =
                Box::pin(self.sliding_compute(user, device, &req, prev.as_ref(), prev_token, now)).await?;
            if prev.as_ref().is_none_or(|p| p.extensions != extensions) {
                // New settings need a position that remembers them.
                computed.changed = true;
            }
            computed.state.extensions = extensions.clone();
            if !may_wait || !computed.empty {
                return Box::pin(self.sliding_answer(key, keep, req.txn_id.as_deref(), computed)).await;
            }
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => {
                    if woken.is_err() {
                        return Box::pin(self.sliding_answer(key, keep, req.txn_id.as_deref(), computed)).await;
                    }
                }
                _ = stop.as_mut() => return Box::pin(self.sliding_answer(key, keep, req.txn_id.as_deref(), computed)).await,
            }
        }
    }

    /// Stores the connection's new position (when the client's state changed) and returns the
    /// response with its `pos` (and the request's `txn_id`, which clients match answers by).
    async fn sliding_answer(
        &self,
        key: ConnKey<'_>,
        keep: Option<i64>,
        txn_id: Option<&str>,
        c: Computed,
    ) -> Result<Value> {
        let pos = match keep {
            Some(p) if !c.changed => p,
            _ => {
                // Positive and below 2^53, so that it survives any JSON number handling.
                let pos = (rand::random::<u64>() >> 11) as i64;
                let state = c.state.to_json()?;
                self.db.sliding_store(key, keep, pos, &state, MAX_CONNS).await?;
                pos
            }
        };
        let mut body = c.body;
        body.insert("pos".into(), json!(pos.to_string()));
        if let Some(txn) = txn_id {
            body.insert("txn_id".into(), json!(txn));
        }
        Ok(Value::Object(body))
    }

    /// Computes the response for the connection state `prev` (None: a new connection) at the
    /// stream positions `now`.
    async fn sliding_compute(
        &self,
        user: &UserId,
        device: &DeviceId,
        req: &v5::Request,
        prev: Option<&ConnState>,
        prev_token: Option<SyncToken>,
        now: SyncToken,
    ) -> Result<Computed> {
        let (view, memberships, now) = self.moment(user, now, prev_token).await?;
        let base = lists::Base { user, device, now, prev: prev_token, view: &view, memberships: &memberships };
        let selection = self.sliding_lists(&base, req).await?;
        let mut state = ConnState {
            token: now.to_token(),
            rooms: prev.map(|p| p.rooms.clone()).unwrap_or_default(),
            lists: selection.counts.clone(),
            extensions: Value::Null,
        };
        // Rooms forgotten (or never a membership) are dropped: the state stays bounded by the
        // user's rooms.
        state.rooms.retain(|room, _| selection.membership.contains_key(room.as_str()));
        let rooms = self.sliding_rooms(&base, &selection, &mut state).await?;
        let fresh: std::collections::HashSet<String> =
            rooms.iter().filter(|(_, r)| r["initial"] == json!(true)).map(|(id, _)| id.clone()).collect();
        let mut body = Map::new();
        let lists: Map<String, Value> =
            selection.counts.iter().map(|(name, n)| (name.clone(), json!({ "count": n }))).collect();
        body.insert("lists".into(), Value::Object(lists));
        let counts_changed = prev.is_none_or(|p| p.lists != selection.counts);
        let rooms_changed = !rooms.is_empty();
        if rooms_changed {
            body.insert("rooms".into(), Value::Object(rooms));
        }
        let ext = self.sliding_extensions(&base, req, &selection, &fresh).await?;
        let ext_empty = ext.empty;
        if !ext.body.is_empty() {
            body.insert("extensions".into(), Value::Object(ext.body));
        }
        // The extensions' streams move with the token: the client got them up to `now`.
        let token_moved = prev_token.is_none_or(|p| p != now) && !ext_empty;
        let changed = prev.is_none() || rooms_changed || counts_changed || token_moved;
        Ok(Computed { body, state, changed, empty: !rooms_changed && !counts_changed && ext_empty })
    }
}

/// The extension settings in effect for a request: what it says, and for each setting it
/// leaves out, what the connection's earlier requests said. Request parameters are sticky in
/// MSC4186 (as in Synapse): matrix-rust-sdk sends `enabled` once and leaves it out once the
/// server echoed its `txn_id`, so forgetting it turned its to-device and E2EE streams off.
/// `to_device.since` is a position, not a setting, and never carries over.
fn sticky_extensions(prev: Option<&Value>, req: &v5::request::Extensions) -> Result<Value> {
    let mut now = serde_json::to_value(req)?;
    if !now.is_object() {
        now = json!({});
    }
    let (Some(Value::Object(prev)), Some(now_map)) = (prev, now.as_object_mut()) else { return Ok(now) };
    for (name, settings) in prev {
        let Value::Object(settings) = settings else { continue };
        let entry = now_map.entry(name.clone()).or_insert_with(|| json!({}));
        let Some(entry) = entry.as_object_mut() else { continue };
        for (field, value) in settings {
            if field != "since" && entry.get(field).is_none_or(Value::is_null) {
                entry.insert(field.clone(), value.clone());
            }
        }
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(at: i64, required: &RequiredState) -> RoomSent {
        RoomSent { at, member: at, timeline_limit: 1, required_state: required.clone(), notifications: at % 3 }
    }

    #[test]
    fn stored_state_writes_each_required_state_once_and_reads_back_the_same() {
        let a: RequiredState =
            Arc::new(vec![("m.room.name".into(), "".into()), ("m.room.member".into(), "$LAZY".into())]);
        let b: RequiredState = Arc::new(vec![("*".into(), "*".into())]);
        let mut state = ConnState { token: "s1".into(), ..Default::default() };
        for i in 0..50 {
            state.rooms.insert(format!("!r{i}:x"), sent(i, if i % 10 == 0 { &b } else { &a }));
        }
        state.rooms.insert("!none:x".into(), sent(7, &RequiredState::default()));
        let json = state.clone().to_json().unwrap();
        assert_eq!(json.matches("m.room.name").count(), 1, "{json}");
        let back: ConnState = serde_json::from_str(&json).unwrap();
        assert_eq!(back.token, "s1");
        assert_eq!(back.rooms, state.rooms);
    }

    #[test]
    fn positions_stored_before_sharing_still_read() {
        let old =
            r#"{"t":"s9","r":{"!a:x":{"a":5,"m":4,"tl":10,"rs":[["m.room.topic",""]],"n":2}},"l":{"all":1},"x":null}"#;
        let state: ConnState = serde_json::from_str(old).unwrap();
        let room = &state.rooms["!a:x"];
        assert_eq!((room.at, room.member, room.timeline_limit, room.notifications), (5, 4, 10, 2));
        assert_eq!(*room.required_state, vec![("m.room.topic".to_owned(), String::new())]);
        assert_eq!(state.lists["all"], 1);
    }
}

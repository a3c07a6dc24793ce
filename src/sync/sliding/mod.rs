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

use std::collections::BTreeMap;
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

/// What the client of a connection holds, as of one position.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnState {
    /// The stream positions the response brought the client to (a [`SyncToken`]).
    #[serde(rename = "t")]
    pub token: String,
    /// Per room the client got: up to where.
    #[serde(rename = "r", default)]
    pub rooms: BTreeMap<String, RoomSent>,
    /// The count of each list last sent.
    #[serde(rename = "l", default)]
    pub lists: BTreeMap<String, u64>,
    /// The extensions' settings in effect (sticky, see [`sticky_extensions`]).
    #[serde(rename = "x", default)]
    pub extensions: Value,
}

/// What the client holds of one room.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomSent {
    /// Timeline and state are sent up to this events position.
    #[serde(rename = "a")]
    pub at: i64,
    /// The stream position of the user's membership then: a change sends the room afresh.
    #[serde(rename = "m")]
    pub member: i64,
    /// The largest timeline limit the room was sent with.
    #[serde(rename = "tl")]
    pub timeline_limit: u64,
    /// The `required_state` the room was sent with (sorted).
    #[serde(rename = "rs", default)]
    pub required_state: Vec<(String, String)>,
    /// The notification count last sent.
    #[serde(rename = "n", default)]
    pub notifications: i64,
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
                let state = serde_json::to_string(&c.state)?;
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

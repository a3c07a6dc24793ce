//! Sliding sync extensions: `to_device`, `e2ee`, `account_data`, `receipts` and `typing`, each
//! read by the `/sync` stream readers for the range between the connection's previous position
//! and now.
//!
//! - `to_device` has its own position, the `since` the client sends back (the `next_batch` it
//!   got): messages up to it are acknowledged, i.e. deleted, as a `/sync` token passing them
//!   does; until then they are delivered again.
//! - `e2ee`: device list changes and leaves (not on a new connection), one-time key counts and
//!   unused fallback key types; counts alone never end a long-poll.
//! - `account_data` (global, and per room), `receipts` and `typing` cover the rooms their
//!   `lists` and `rooms` name (by default every list and every subscription, `*`); a room sent
//!   afresh in this response gets all of its receipts, account data and current typing.

use std::collections::HashSet;

use ruma::api::client::sync::sync_events::v5;
use ruma::api::client::sync::sync_events::v5::request::ExtensionRoomConfig;
use serde_json::{Map, Value, json};

use super::lists::{Base, Selection};
use crate::error::Result;
use crate::storage::sync::by_room;
use crate::sync::{Ctx, SyncEngine, SyncOptions, receipts, to_device};

/// The extensions of one response.
pub struct ExtOut {
    /// The `extensions` object.
    pub body: Map<String, Value>,
    /// Nothing in it should end a long-poll.
    pub empty: bool,
}

/// Most to-device messages a client may ask for in one response.
const MAX_TO_DEVICE: i64 = 1000;

/// The rooms an extension covers.
fn scope<'a>(
    sel: &Selection<'a>,
    lists: Option<&Vec<String>>,
    rooms: Option<&Vec<ExtensionRoomConfig>>,
) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let all_lists = lists.is_none_or(|l| l.iter().any(|n| n == "*"));
    for (name, window) in &sel.in_ranges {
        if all_lists || lists.is_some_and(|l| l.contains(name)) {
            out.extend(window.iter().copied().filter(|r| seen.insert(*r)));
        }
    }
    match rooms {
        None => out.extend(sel.subscribed.iter().copied().filter(|r| seen.insert(*r))),
        Some(rooms) => {
            for r in rooms {
                match r {
                    ExtensionRoomConfig::Room(id) => {
                        if let Some((room, _)) = sel.configs.get_key_value(id.as_str())
                            && seen.insert(*room)
                        {
                            out.push(*room);
                        }
                    }
                    _ => out.extend(sel.subscribed.iter().copied().filter(|r| seen.insert(*r))),
                }
            }
        }
    }
    out
}

impl SyncEngine {
    /// The extensions a request enables; `fresh` are the rooms sent afresh in this response.
    pub(super) async fn sliding_extensions(
        &self,
        base: &Base<'_>,
        req: &v5::Request,
        sel: &Selection<'_>,
        fresh: &HashSet<String>,
    ) -> Result<ExtOut> {
        let ext = &req.extensions;
        let (user, now, prev) = (base.user.as_str(), base.now, base.prev);
        let mut body = Map::new();
        let mut empty = true;

        if ext.to_device.enabled == Some(true) {
            let since = match ext.to_device.since.as_deref() {
                Some(s) => {
                    s.parse::<i64>().map_err(|_| crate::error::Error::invalid_param("Invalid to_device since"))?
                }
                None => 0,
            };
            if since > 0 {
                self.ack_to_device(base.user, base.device, since).await?;
            }
            let limit = ext.to_device.limit.map_or(to_device::BATCH, |l| (u64::from(l) as i64).clamp(1, MAX_TO_DEVICE));
            let rows = if since < now.to_device {
                self.db.to_device_since(user, base.device.as_str(), since, now.to_device, limit).await?
            } else {
                Vec::new()
            };
            let next = if rows.len() as i64 == limit {
                rows.last().map_or(now.to_device, |r| r.stream_id)
            } else {
                now.to_device.max(since)
            };
            empty &= rows.is_empty();
            body.insert(
                "to_device".into(),
                json!({ "next_batch": next.to_string(), "events": to_device::to_device_events(&rows) }),
            );
        }

        if ext.e2ee.enabled == Some(true) {
            let opts = SyncOptions {
                since: None,
                filter: Default::default(),
                full_state: false,
                use_state_after: false,
                set_presence: "offline".into(),
                timeout: Default::default(),
            };
            let ctx = Ctx {
                user: base.user,
                device: base.device,
                opts: &opts,
                since: prev,
                now,
                now_ms: crate::storage::now_ms(),
                view: base.view,
            };
            let e2ee = self.e2ee_sync(&ctx, base.memberships).await?;
            empty &= e2ee.is_empty();
            let mut out = Map::new();
            e2ee.write_into(&mut out);
            body.insert("e2ee".into(), Value::Object(out));
        }

        if ext.account_data.enabled == Some(true) {
            let rooms = scope(sel, ext.account_data.lists.as_ref(), ext.account_data.rooms.as_ref());
            let from = prev.map_or(0, |p| p.account_data);
            let changed = if from < now.account_data {
                self.db.account_data_since(user, from, now.account_data).await?
            } else {
                Vec::new()
            };
            // Rooms sent afresh get all of their account data, which a read from `from` may miss.
            let fresh_in_scope: HashSet<&str> = rooms.iter().copied().filter(|r| fresh.contains(*r)).collect();
            let everything = if from > 0 && !fresh_in_scope.is_empty() {
                self.db.account_data_since(user, 0, now.account_data).await?
            } else {
                Vec::new()
            };
            let wanted: HashSet<&str> = rooms.iter().copied().collect();
            let event = |r: &crate::storage::sync::AccountDataRow| json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_default() });
            let global: Vec<Value> = changed.iter().filter(|r| r.room_id.is_empty()).map(event).collect();
            let mut per_room = Map::new();
            let rows = changed
                .iter()
                .filter(|r| everything.is_empty() || !fresh_in_scope.contains(r.room_id.as_str()))
                .chain(everything.iter().filter(|r| fresh_in_scope.contains(r.room_id.as_str())));
            for r in rows.filter(|r| wanted.contains(r.room_id.as_str())) {
                let events = per_room.entry(r.room_id.clone()).or_insert_with(|| json!([]));
                events.as_array_mut().expect("an array").push(event(r));
            }
            if !global.is_empty() || !per_room.is_empty() {
                empty = false;
                let mut out = Map::new();
                if !global.is_empty() {
                    out.insert("global".into(), Value::Array(global));
                }
                if !per_room.is_empty() {
                    out.insert("rooms".into(), Value::Object(per_room));
                }
                body.insert("account_data".into(), Value::Object(out));
            }
        }

        if ext.receipts.enabled == Some(true) {
            let rooms = scope(sel, ext.receipts.lists.as_ref(), ext.receipts.rooms.as_ref());
            let (new, old): (Vec<&str>, Vec<&str>) = rooms.iter().copied().partition(|r| fresh.contains(*r));
            let mut rows = Vec::new();
            if !new.is_empty() && now.receipts > 0 {
                rows.extend(self.db.receipts_since(&new, user, 0, now.receipts).await?);
            }
            let from = prev.map_or(0, |p| p.receipts);
            if !old.is_empty() && from < now.receipts {
                rows.extend(self.db.receipts_since(&old, user, from, now.receipts).await?);
            }
            let mut out = Map::new();
            for (room, rs) in by_room(rows, |r| &r.room_id) {
                out.insert(room, receipts::receipt_event(&rs));
            }
            if !out.is_empty() {
                empty = false;
                body.insert("receipts".into(), json!({ "rooms": out }));
            }
        }

        if ext.typing.enabled == Some(true) {
            let rooms = scope(sel, ext.typing.lists.as_ref(), ext.typing.rooms.as_ref());
            let (new, old): (Vec<&str>, Vec<&str>) = rooms.iter().copied().partition(|r| fresh.contains(*r));
            let mut typing = self.typing.changed_since(new, None);
            typing.extend(self.typing.changed_since(old, prev.map(|p| p.typing)));
            let out: Map<String, Value> = typing
                .into_iter()
                .map(|(room, users)| (room, json!({ "type": "m.typing", "content": { "user_ids": users } })))
                .collect();
            if !out.is_empty() {
                empty = false;
                body.insert("typing".into(), json!({ "rooms": out }));
            }
        }
        Ok(ExtOut { body, empty })
    }
}

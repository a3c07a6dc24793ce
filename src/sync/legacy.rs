//! The deprecated pre-`/sync` API, still in the spec: `GET /initialSync`, `GET /events` (with
//! `room_id`: peeking into a world-readable room), `GET /events/{eventId}` and `GET
//! /rooms/{roomId}/initialSync`.
//!
//! `/initialSync` and `/events` without `room_id` are a `/sync` in another shape: they call
//! [`SyncEngine::sync`] (same tokens, same long-poll, same history visibility) and rearrange its
//! answer. Their tokens are sync tokens, so a client can move between them and `/messages`.
//! They carry no to-device messages (the deprecated API never had them); the ones a `/sync`
//! of the same device would have delivered are acknowledged by the next `/events`, as a
//! `/sync` would, since a client of this API has no use for them.
//!
//! Peeking and the room snapshot read the room engine (`Rooms::messages`, which applies
//! history visibility and caps a former member at their leave). A peeking long-poll waits on
//! the room's wake-up (`Notifier::subscribe` with the room id), which every event of the room
//! triggers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::{DeviceId, RoomId, UserId};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::filter::SyncFilter;
use super::token::SyncToken;
use super::{MAX_TIMEOUT, SyncEngine, SyncOptions, presence, receipts};
use crate::error::{Error, Result};
use crate::rooms::read::{Dir, PageRange, TopoToken};
use crate::storage::now_ms;

/// Events per room that one `/events` answer carries (a room with more in the window is cut to
/// its latest ones, as a `/sync` timeline is; the client pages back with `/messages`).
pub const EVENTS_PER_ROOM: usize = 100;
/// Most events one peeking `/events?room_id=` answer carries; the next request continues.
pub const PEEK_LIMIT: usize = 100;
/// Most messages per room `/initialSync` and `/rooms/{roomId}/initialSync` send.
pub const MAX_MESSAGES: usize = 500;
/// Messages a room snapshot sends (Synapse's default page).
pub const ROOM_SNAPSHOT_MESSAGES: usize = 10;
/// Members whose presence a room snapshot carries.
const PRESENCE_MEMBERS: usize = 100;

/// The options of a `/sync` made for this API.
fn options(since: Option<String>, filter: Value, timeout: Duration) -> SyncOptions {
    SyncOptions {
        since,
        filter: Arc::new(SyncFilter::from_json(&filter)),
        full_state: false,
        use_state_after: false,
        set_presence: "online".to_owned(),
        timeout,
    }
}

/// The events of a `/sync` section (`{"events": [...]}`) with `room_id`, which `/sync`
/// leaves out and this API's events carry.
fn with_room_id(section: &Value, room_id: &str) -> Vec<Value> {
    let events = section["events"].as_array().cloned().unwrap_or_default();
    events
        .into_iter()
        .map(|mut e| {
            e["room_id"] = json!(room_id);
            e
        })
        .collect()
}

fn events_of(section: &Value) -> Vec<Value> {
    section["events"].as_array().cloned().unwrap_or_default()
}

impl SyncEngine {
    /// `GET /initialSync`: every room of the user with its current state (for a room left, the
    /// state when they left) and its latest `limit` messages, presence, account data and
    /// receipts; `archived` adds the rooms the user left.
    pub async fn legacy_initial_sync(
        &self,
        user: &UserId,
        device: &DeviceId,
        limit: usize,
        archived: bool,
    ) -> Result<Value> {
        let limit = limit.min(MAX_MESSAGES);
        let filter = json!({ "room": { "timeline": { "limit": limit.max(1) }, "include_leave": archived } });
        let body = self.sync(user, device, options(None, filter, Duration::ZERO)).await?;
        let end = body["next_batch"].clone();
        let mut rooms = Vec::new();
        let mut receipts = Vec::new();
        for section in ["join", "leave"] {
            let Some(entries) = body["rooms"][section].as_object() else { continue };
            for (room_id, r) in entries {
                let mut chunk = with_room_id(&r["timeline"], room_id);
                // The state after the timeline: `/sync` sends the state before it.
                let mut state: Vec<Value> = Vec::new();
                let mut at: HashMap<(String, String), usize> = HashMap::new();
                for ev in with_room_id(&r["state"], room_id).into_iter().chain(chunk.iter().cloned()) {
                    let Some(key) = ev["state_key"].as_str() else { continue };
                    let key = (ev["type"].as_str().unwrap_or_default().to_owned(), key.to_owned());
                    match at.get(&key) {
                        Some(&i) => state[i] = ev,
                        None => {
                            at.insert(key, state.len());
                            state.push(ev);
                        }
                    }
                }
                let membership = at
                    .get(&("m.room.member".to_owned(), user.to_string()))
                    .and_then(|&i| state[i]["content"]["membership"].as_str())
                    .unwrap_or(if section == "join" { "join" } else { "leave" })
                    .to_owned();
                if chunk.len() > limit {
                    chunk.drain(..chunk.len() - limit);
                }
                let mut messages = json!({ "chunk": chunk, "end": end });
                if let Some(prev) = r["timeline"]["prev_batch"].as_str() {
                    messages["start"] = json!(prev);
                }
                receipts
                    .extend(with_room_id(&r["ephemeral"], room_id).into_iter().filter(|e| e["type"] == "m.receipt"));
                rooms.push(json!({
                    "room_id": room_id,
                    "membership": membership,
                    "messages": messages,
                    "state": state,
                    "visibility": self.visibility(room_id).await?,
                    "account_data": events_of(&r["account_data"]),
                }));
            }
        }
        if let Some(invites) = body["rooms"]["invite"].as_object() {
            for (room_id, r) in invites {
                let mut entry = json!({ "room_id": room_id, "membership": "invite" });
                // Only the stripped state is held for an invite (the room may be elsewhere).
                let invite = with_room_id(&r["invite_state"], room_id)
                    .into_iter()
                    .find(|e| e["type"] == "m.room.member" && e["state_key"] == user.as_str());
                if let Some(invite) = invite {
                    entry["inviter"] = invite["sender"].clone();
                    entry["invite"] = invite;
                }
                rooms.push(entry);
            }
        }
        Ok(json!({
            "end": end,
            "rooms": rooms,
            "presence": events_of(&body["presence"]),
            "account_data": events_of(&body["account_data"]),
            "receipts": receipts,
        }))
    }

    /// `GET /events` without `room_id`: what happened in the user's rooms after `from` (or
    /// from now), waiting up to `timeout` for something: room events, receipts and typing (each
    /// with its `room_id`) and presence, in one `chunk`.
    pub async fn legacy_events(
        &self,
        user: &UserId,
        device: &DeviceId,
        from: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        let since = match from {
            Some(token) => SyncToken::parse(token)?.to_token(),
            None => self.current_token().await?.to_token(),
        };
        let filter = json!({ "room": { "timeline": { "limit": EVENTS_PER_ROOM } } });
        let body = self.sync(user, device, options(Some(since.clone()), filter, timeout)).await?;
        let mut chunk = Vec::new();
        for section in ["join", "leave"] {
            let Some(entries) = body["rooms"][section].as_object() else { continue };
            for (room_id, r) in entries {
                chunk.extend(with_room_id(&r["timeline"], room_id));
                chunk.extend(with_room_id(&r["ephemeral"], room_id));
            }
        }
        chunk.extend(events_of(&body["presence"]));
        Ok(json!({ "start": since, "end": body["next_batch"], "chunk": chunk }))
    }

    /// `GET /events?room_id=`: the room's events after `from` (or from now) that the user may
    /// see, waiting up to `timeout` for one. A user who is not a member may peek only into a
    /// world-readable room (403 otherwise).
    pub async fn legacy_peek(
        &self,
        user: &UserId,
        device: &DeviceId,
        room_id: &RoomId,
        from: Option<&str>,
        timeout: Duration,
    ) -> Result<Value> {
        self.rooms.require_read_access(room_id, user).await?;
        let start = match from {
            Some(token) => SyncToken::parse(token)?,
            None => self.current_token().await?,
        };
        // Subscribed before the first look, so an event committed in between wakes the wait.
        let wakeup = self.notifier.subscribe(room_id.as_str());
        let deadline = Instant::now() + timeout.min(MAX_TIMEOUT);
        let mut after = start.events;
        loop {
            let notified = wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.current_token().await?.at_least(start);
            let from = self.rooms.position_at_stream(room_id, after).await?;
            let upto = now.events;
            let page = self
                .rooms
                .messages(room_id, user, &PageRange { from, to: None, dir: Dir::Forward, limit: PEEK_LIMIT }, &|e| {
                    e.stream > after && e.stream <= upto
                })
                .await?;
            let done = !page.events.is_empty() || timeout.is_zero() || self.is_stopping();
            if done || Instant::now() >= deadline {
                // A full page may have more behind it: the next request continues after it.
                let end = match page.events.last() {
                    Some(last) if page.events.len() >= PEEK_LIMIT => SyncToken { events: last.stream, ..now },
                    _ => now,
                };
                let chunk = self.rooms.client_events(&page.events, Some((user, device.as_str()))).await?;
                return Ok(json!({ "start": start.to_token(), "end": end.to_token(), "chunk": chunk }));
            }
            after = upto;
            tokio::select! {
                _ = tokio::time::timeout_at(deadline, notified) => {}
                _ = self.stopped() => {}
            }
        }
    }

    /// `GET /events/{eventId}`: the event, if the user may see it; 404 otherwise, whether it
    /// exists or not.
    pub async fn legacy_event(&self, user: &UserId, device: &DeviceId, event_id: &str) -> Result<Value> {
        let not_found = || Error::not_found("Event not found");
        let (room, _) = self.db.event_stream(event_id).await?.ok_or_else(not_found)?;
        let room_id = RoomId::parse(&room).map_err(Error::internal)?;
        let ev = match self.rooms.event_for(&room_id, user, event_id).await {
            Ok(ev) => ev,
            Err(e) if e.status == http::StatusCode::FORBIDDEN => return Err(not_found()),
            Err(e) => return Err(e),
        };
        self.rooms.client_event(&ev, Some((user, device.as_str()))).await
    }

    /// `GET /rooms/{roomId}/initialSync`: a snapshot of one room: its state (for a former
    /// member, as it was when they left), latest messages, receipts, the presence of its
    /// members, the user's room account data, and whether it is in the directory. Members
    /// read their rooms; anyone may peek into a world-readable room (403 otherwise).
    pub async fn legacy_room_initial_sync(&self, user: &UserId, device: &DeviceId, room_id: &RoomId) -> Result<Value> {
        let access = self.rooms.require_read_access(room_id, user).await?;
        let membership = access.as_ref().map(|(m, _)| m.as_str());
        let state = match &access {
            Some((m, leave)) if m == "leave" || m == "ban" => {
                let ev = self.db.get_event(leave).await?.ok_or_else(|| Error::internal("membership event missing"))?;
                let group = ev.state_group.ok_or_else(|| Error::internal("membership event without state"))?;
                let ids = self.rooms.state_at_group(group).await?;
                self.rooms.state_pdus(&ids).await?
            }
            Some((m, _)) if m == "join" => self.rooms.current_state(room_id).await?,
            _ => {
                // Invited, knocking or a stranger: only a world-readable room shows its state.
                let hv = self.rooms.current_state_event(room_id, "m.room.history_visibility", "").await?;
                if !hv.is_some_and(|p| p.content()["history_visibility"] == "world_readable") {
                    return Err(Error::forbidden(format!("User {user} not in room {room_id}")));
                }
                self.rooms.current_state(room_id).await?
            }
        };
        let now = self.current_token().await?;
        let ts = now_ms();
        let mut state: Vec<&crate::events::pdu::Pdu> = state.values().collect();
        state.sort_by(|a, b| {
            (a.fields.kind.to_string(), &a.fields.state_key).cmp(&(b.fields.kind.to_string(), &b.fields.state_key))
        });
        let state: Vec<Value> = state.into_iter().map(|p| p.client_json(None, ts)).collect();

        let range = PageRange { from: None, to: None, dir: Dir::Backward, limit: ROOM_SNAPSHOT_MESSAGES };
        let mut page = self.rooms.messages(room_id, user, &range, &|_| true).await?;
        page.events.reverse();
        let chunk = self.rooms.client_events(&page.events, Some((user, device.as_str()))).await?;
        let mut messages = json!({ "chunk": chunk, "end": now.to_token() });
        if page.end.is_some()
            && let Some(first) = page.events.first()
        {
            // `/messages?dir=b` from here continues before the first message, exclusively.
            messages["start"] = json!(TopoToken::of(first).to_token());
        }

        let rows = self.db.receipts_since(&[room_id.as_str()], user.as_str(), 0, now.receipts).await?;
        let receipts = if rows.is_empty() {
            Vec::new()
        } else {
            let mut ev = receipts::receipt_event(&rows);
            ev["room_id"] = json!(room_id);
            vec![ev]
        };
        let mut presence = Vec::new();
        for member in self.db.members_with(room_id.as_str(), "join").await?.iter().take(PRESENCE_MEMBERS) {
            if let Some(p) = self.db.get_presence(member).await? {
                presence.push(presence::presence_event(&p, ts));
            }
        }
        let account_data: Vec<Value> = self
            .db
            .account_data_since(user.as_str(), 0, now.account_data)
            .await?
            .into_iter()
            .filter(|r| r.room_id == room_id.as_str())
            .map(|r| json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_default() }))
            .collect();

        let mut body = Map::new();
        body.insert("room_id".into(), json!(room_id));
        if let Some(m) = membership {
            body.insert("membership".into(), json!(m));
        }
        body.insert("messages".into(), messages);
        body.insert("state".into(), json!(state));
        body.insert("presence".into(), json!(presence));
        body.insert("receipts".into(), json!(receipts));
        body.insert("account_data".into(), json!(account_data));
        body.insert("visibility".into(), json!(self.visibility(room_id.as_str()).await?));
        Ok(Value::Object(body))
    }

    /// `public` when the room is in the directory, else `private`.
    async fn visibility(&self, room_id: &str) -> Result<&'static str> {
        Ok(if self.db.is_room_public(room_id).await? { "public" } else { "private" })
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the server begins shutting down.
    async fn stopped(&self) {
        let stop = self.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        if !self.is_stopping() {
            stop.await;
        }
    }
}

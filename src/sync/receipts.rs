//! Read receipts (`m.read`, `m.read.private`, threaded) and the `m.receipt` ephemeral event.
//!
//! One row per (room, type, user, thread) in `receipts`, rewritten with a new `receipts` stream
//! position on every change; a receipt never moves back to an earlier event. Public receipts of
//! local users are queued as `m.receipt` EDUs for the room's other servers in the same
//! transaction; inbound EDUs come through [`SyncEngine::store_receipt`] with
//! [`ReceiptOrigin::Remote`]. The `m.fully_read` marker is room account data (see
//! `sync::account_data`).

use ruma::{EventId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::SyncEngine;
use crate::error::{Error, Result};
use crate::storage::Db;
use crate::storage::outbox::Outbox;
use crate::storage::sync::{ReceiptRow, streams};

/// The public read receipt.
pub const READ: &str = "m.read";
/// The private read receipt (never federated, shown only to its owner).
pub const READ_PRIVATE: &str = "m.read.private";

/// Where a receipt comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptOrigin {
    /// A local user through the client API: the event must exist in the room; public receipts
    /// are federated.
    Local,
    /// An `m.receipt` EDU from the user's own server (the caller checked the origin); the event
    /// may be one this server does not have.
    Remote,
}

/// One receipt to store.
#[derive(Debug, Clone, Copy)]
pub struct NewReceipt<'a> {
    /// Room.
    pub room_id: &'a RoomId,
    /// Who read.
    pub user_id: &'a UserId,
    /// [`READ`] or [`READ_PRIVATE`].
    pub receipt_type: &'a str,
    /// Up to which event.
    pub event_id: &'a EventId,
    /// `main` or a thread root event id; None for an unthreaded receipt.
    pub thread_id: Option<&'a str>,
    /// When (ms since the epoch).
    pub ts: i64,
}

/// The `m.receipt` event of a room for the given rows.
pub fn receipt_event(rows: &[ReceiptRow]) -> Value {
    let mut content = Map::new();
    for r in rows {
        let data: Value = serde_json::from_str(&r.data_json).unwrap_or_else(|_| json!({}));
        let by_type = content.entry(r.event_id.clone()).or_insert_with(|| json!({}));
        by_type[&r.receipt_type][&r.user_id] = data;
    }
    json!({ "type": "m.receipt", "content": content })
}

impl SyncEngine {
    /// Stores a receipt unless the user already has one at a later event; returns whether it
    /// was stored. Wakes the room's local members (only the user for a private receipt).
    pub async fn store_receipt(&self, r: NewReceipt<'_>, origin: ReceiptOrigin) -> Result<bool> {
        if r.receipt_type != READ && r.receipt_type != READ_PRIVATE {
            return Err(Error::invalid_param(format!("Unknown receipt type {}", r.receipt_type)));
        }
        if let Some(t) = r.thread_id
            && t != "main"
            && EventId::parse(t).is_err()
        {
            return Err(Error::invalid_param("thread_id must be \"main\" or an event id"));
        }
        if self.rooms.membership_of(r.room_id, r.user_id).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("User {} not in room {}", r.user_id, r.room_id)));
        }
        let event_stream = match self.db.event_stream(r.event_id.as_str()).await? {
            Some((room, stream)) if room == r.room_id.as_str() => Some(stream),
            _ if origin == ReceiptOrigin::Local => return Err(Error::not_found("Event not found")),
            _ => None,
        };
        let federate = origin == ReceiptOrigin::Local && r.receipt_type == READ;
        let destinations =
            if federate { self.rooms.remote_destinations(r.room_id.as_str()).await? } else { Vec::new() };
        let thread = r.thread_id.unwrap_or("");
        let mut data = json!({ "ts": r.ts });
        if let Some(t) = r.thread_id {
            data["thread_id"] = json!(t);
        }

        let mut tx = self.db.begin_write().await?;
        let current =
            self.db.receipt_event(&mut tx, r.room_id.as_str(), r.receipt_type, r.user_id.as_str(), thread).await?;
        if let (Some((_, Some(old))), Some(new)) = (&current, event_stream)
            && *old >= new
        {
            return Ok(false);
        }
        let pos = Db::next_stream_position(&mut tx, streams::RECEIPTS).await?;
        self.db
            .upsert_receipt(
                &mut tx,
                r.room_id.as_str(),
                r.receipt_type,
                r.user_id.as_str(),
                thread,
                r.event_id.as_str(),
                &data.to_string(),
                pos,
            )
            .await?;
        if !destinations.is_empty() {
            let edu = json!({
                "edu_type": "m.receipt",
                "content": { r.room_id.as_str(): { READ: { r.user_id.as_str(): {
                    "data": data,
                    "event_ids": [r.event_id],
                } } } },
            })
            .to_string();
            for d in &destinations {
                self.db.queue_outbox(&mut tx, d, Outbox::Edu(&edu)).await?;
            }
        }
        let mut for_appservices = false;
        if r.receipt_type == READ {
            let receipt = json!({
                "type": "m.receipt",
                "room_id": r.room_id,
                "content": { r.event_id.as_str(): { READ: { r.user_id.as_str(): data } } },
            });
            for_appservices = self.queue_appservice_room_ephemeral(&mut tx, r.room_id.as_str(), &receipt).await?;
        }
        tx.commit().await?;
        if for_appservices {
            self.outbox_wakeup.notify_waiters();
        }
        if r.receipt_type == READ_PRIVATE {
            self.notifier.wake([r.user_id.as_str()]);
        } else {
            self.wake_room(r.room_id.as_str()).await;
        }
        if !destinations.is_empty() {
            self.outbox_wakeup.notify_waiters();
        }
        Ok(true)
    }
}

//! Typing, receipts and read markers: `PUT /typing`, `POST /receipt`, `POST /read_markers`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::read_marker::set_read_marker;
use ruma::api::client::receipt::create_receipt;
use ruma::api::client::typing::create_typing_event;
use ruma::{EventId, RoomId, UserId};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::storage::now_ms;
use crate::sync::receipts::{NewReceipt, READ, READ_PRIVATE, ReceiptOrigin};
use crate::sync::typing::TypingOrigin;

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`
pub async fn typing(State(state): State<AppState>, req: Ruma<create_typing_event::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    if s.user_id != req.body.user_id {
        return Err(Error::forbidden("Cannot set typing for other users"));
    }
    let body = req.json.clone().unwrap_or_default();
    let typing = body["typing"].as_bool().ok_or_else(|| Error::bad_json("typing must be a boolean"))?;
    let timeout = body["timeout"].as_u64().map(Duration::from_millis);
    state.sync.set_typing(&req.body.room_id, &s.user_id, typing, timeout, TypingOrigin::Local).await?;
    Ok(Json(json!({})))
}

/// Sets the fully-read marker (room account data `m.fully_read`) after checking the event.
async fn set_fully_read(state: &AppState, room_id: &RoomId, user: &UserId, event_id: &EventId) -> Result<()> {
    state.rooms.event_for(room_id, user, event_id.as_str()).await?;
    state.sync.set_account_data(user, Some(room_id), "m.fully_read", &json!({ "event_id": event_id })).await
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn receipt(State(state): State<AppState>, req: Ruma<create_receipt::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let kind = b.receipt_type.to_string();
    let thread = req
        .json
        .as_ref()
        .and_then(|j| j.get("thread_id"))
        .map(|t| t.as_str().map(str::to_owned).ok_or_else(|| Error::invalid_param("thread_id must be a string")));
    let thread = thread.transpose()?;
    if kind == "m.fully_read" {
        if thread.is_some() {
            return Err(Error::invalid_param("m.fully_read cannot be threaded"));
        }
        set_fully_read(&state, &b.room_id, &s.user_id, &b.event_id).await?;
        return Ok(Json(json!({})));
    }
    let receipt = NewReceipt {
        room_id: &b.room_id,
        user_id: &s.user_id,
        receipt_type: &kind,
        event_id: &b.event_id,
        thread_id: thread.as_deref(),
        ts: now_ms(),
    };
    state.sync.store_receipt(receipt, ReceiptOrigin::Local).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn read_markers(
    State(state): State<AppState>,
    req: Ruma<set_read_marker::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    if let Some(ev) = &b.fully_read {
        set_fully_read(&state, &b.room_id, &s.user_id, ev).await?;
    }
    for (kind, ev) in [(READ, &b.read_receipt), (READ_PRIVATE, &b.private_read_receipt)] {
        if let Some(ev) = ev {
            let receipt = NewReceipt {
                room_id: &b.room_id,
                user_id: &s.user_id,
                receipt_type: kind,
                event_id: ev,
                thread_id: None,
                ts: now_ms(),
            };
            state.sync.store_receipt(receipt, ReceiptOrigin::Local).await?;
        }
    }
    Ok(Json(json!({})))
}

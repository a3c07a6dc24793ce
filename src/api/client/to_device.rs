//! `PUT /sendToDevice/{eventType}/{txnId}`.

use axum::Json;
use axum::extract::State;
use ruma::api::client::to_device::send_event_to_device;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send(State(state): State<AppState>, req: Ruma<send_event_to_device::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let messages = req.json.as_ref().map(|j| &j["messages"]).ok_or_else(|| Error::bad_json("Missing messages"))?;
    let b = &req.body;
    state
        .sync
        .send_to_device(&s.user_id, s.device_id.as_str(), &b.event_type.to_string(), b.txn_id.as_str(), messages)
        .await?;
    Ok(Json(json!({})))
}

//! Presence: `PUT/GET /presence/{userId}/status`.

use axum::Json;
use axum::extract::State;
use ruma::api::client::presence::{get_presence, set_presence};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// `PUT /_matrix/client/v3/presence/{userId}/status`
pub async fn set(State(state): State<AppState>, req: Ruma<set_presence::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    if s.user_id != req.body.user_id {
        return Err(Error::forbidden("Cannot set presence for other users"));
    }
    state.sync.set_presence(&s.user_id, req.body.presence.as_str(), req.body.status_msg.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/presence/{userId}/status`
pub async fn get(State(state): State<AppState>, req: Ruma<get_presence::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.sync.get_presence(&s.user_id, &req.body.user_id).await?))
}

//! `GET /voip/turnServer`.

use axum::Json;
use axum::extract::State;
use ruma::api::client::voip::get_turn_server_info;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::Result;

/// `GET /_matrix/client/v3/voip/turnServer`: credentials for the configured TURN servers, or
/// `{}` when there are none (what Synapse answers, and what clients expect).
pub async fn turn_server(
    State(state): State<AppState>,
    req: Ruma<get_turn_server_info::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let now = (crate::storage::now_ms() / 1000) as u64;
    Ok(Json(match crate::voip::turn_credentials(&state.config.voip, &s.user_id, now) {
        Some(c) => json!({ "username": c.username, "password": c.password, "uris": c.uris, "ttl": c.ttl.as_secs() }),
        None => json!({}),
    }))
}

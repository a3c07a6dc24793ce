//! End-to-end encryption keys: upload, query, claim, changes, cross-signing. The rules are in
//! `crate::e2ee`; these handlers only unpack the request.

use axum::Json;
use axum::extract::State;
use ruma::api::client::keys::{
    claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
};
use serde_json::{Map, Value, json};

use crate::accounts::uia::{self, UiaRequest};
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::Result;

/// How long to wait for other servers: the client's `timeout` (default 10 s), within 1..30 s.
fn remote_timeout(timeout: Option<std::time::Duration>) -> std::time::Duration {
    timeout
        .unwrap_or(std::time::Duration::from_secs(10))
        .clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(30))
}

fn body_object(json: &Option<Value>) -> Map<String, Value> {
    json.as_ref().and_then(Value::as_object).cloned().unwrap_or_default()
}

/// `POST /_matrix/client/v3/keys/upload`
pub async fn upload(State(state): State<AppState>, req: Ruma<upload_keys::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let body = req.json.clone().unwrap_or_else(|| json!({}));
    let counts = state.e2ee.upload_keys(s.user_id.as_str(), s.device_id.as_str(), &body).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

/// `POST /_matrix/client/v3/keys/query`
pub async fn query(State(state): State<AppState>, req: Ruma<get_keys::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let wanted = body_object(&req.json).get("device_keys").and_then(Value::as_object).cloned().unwrap_or_default();
    let timeout = remote_timeout(req.body.timeout);
    Ok(Json(state.e2ee.query_keys(s.user_id.as_str(), &wanted, timeout).await?))
}

/// `POST /_matrix/client/v3/keys/claim`
pub async fn claim(State(state): State<AppState>, req: Ruma<claim_keys::v3::Request>) -> Result<Json<Value>> {
    req.session()?;
    let wanted = body_object(&req.json).get("one_time_keys").and_then(Value::as_object).cloned().unwrap_or_default();
    let timeout = remote_timeout(req.body.timeout);
    Ok(Json(state.e2ee.claim_keys(&wanted, timeout).await?))
}

/// `GET /_matrix/client/v3/keys/changes`
pub async fn changes(State(state): State<AppState>, req: Ruma<get_key_changes::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let delta = state.e2ee.key_changes(s.user_id.as_str(), &req.body.from, &req.body.to).await?;
    Ok(Json(json!({ "changed": delta.changed, "left": delta.left })))
}

/// `POST /_matrix/client/v3/keys/device_signing/upload`: User-Interactive Auth (password)
/// unless this is the user's first master key or a repeat of the stored keys.
pub async fn device_signing_upload(
    State(state): State<AppState>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let body = req.json.clone().unwrap_or_else(|| json!({}));
    if state.e2ee.signing_upload_needs_uia(s.user_id.as_str(), &body).await? {
        let flows = vec![vec![uia::PASSWORD]];
        state
            .accounts
            .check_uia(
                req.body.auth.as_ref(),
                UiaRequest { flows, user_id: Some(&s.user_id), operation: "device_signing_upload" },
            )
            .await?;
    }
    state.e2ee.upload_signing_keys(s.user_id.as_str(), &body).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/keys/signatures/upload`
pub async fn signatures_upload(
    State(state): State<AppState>,
    req: Ruma<upload_signatures::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let failures = state.e2ee.upload_signatures(s.user_id.as_str(), &body_object(&req.json)).await?;
    Ok(Json(json!({ "failures": failures })))
}

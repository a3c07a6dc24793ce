//! Server-side key backup: `/room_keys/version` and `/room_keys/keys`. The rules are in
//! `crate::e2ee::backup`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use ruma::api::client::backup::{
    add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version, delete_backup_keys,
    delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version, get_backup_info,
    get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};
use serde_json::{Map, Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::e2ee::backup::BackupState;
use crate::error::{Error, Result};

fn state_json(s: BackupState) -> Json<Value> {
    Json(json!({ "etag": s.etag, "count": s.count }))
}

fn body(json: &Option<Value>) -> Value {
    json.clone().unwrap_or_else(|| json!({}))
}

/// `{session_id: data}` from a `{"sessions": {...}}` object.
fn sessions_of(room: &Value) -> Result<Map<String, Value>> {
    room.get("sessions")
        .and_then(Value::as_object)
        .cloned()
        .ok_or_else(|| Error::bad_json("Expected an object with `sessions`"))
}

/// `POST /_matrix/client/v3/room_keys/version`
pub async fn create_version(
    State(state): State<AppState>,
    req: Ruma<create_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let version = state.e2ee.create_backup(s.user_id.as_str(), &body(&req.json)).await?;
    Ok(Json(json!({ "version": version })))
}

/// `GET /_matrix/client/v3/room_keys/version`
pub async fn latest_version(
    State(state): State<AppState>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.e2ee.backup_info(s.user_id.as_str(), None).await?))
}

/// `GET /_matrix/client/v3/room_keys/version/{version}`
pub async fn get_version(
    State(state): State<AppState>,
    req: Ruma<get_backup_info::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(Json(state.e2ee.backup_info(s.user_id.as_str(), Some(&req.body.version)).await?))
}

/// `PUT /_matrix/client/v3/room_keys/version/{version}`
pub async fn update_version(
    State(state): State<AppState>,
    req: Ruma<update_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    state.e2ee.update_backup(s.user_id.as_str(), &req.body.version, &body(&req.json)).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/room_keys/version/{version}`
pub async fn delete_version(
    State(state): State<AppState>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    state.e2ee.delete_backup(s.user_id.as_str(), &req.body.version).await?;
    Ok(Json(json!({})))
}

/// `PUT /_matrix/client/v3/room_keys/keys`
pub async fn put_keys(State(state): State<AppState>, req: Ruma<add_backup_keys::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = body(&req.json);
    let mut rooms = BTreeMap::new();
    for (room_id, room) in b.get("rooms").and_then(Value::as_object).into_iter().flatten() {
        rooms.insert(room_id.clone(), sessions_of(room)?);
    }
    Ok(state_json(state.e2ee.put_backup_keys(s.user_id.as_str(), &req.body.version, &rooms).await?))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn put_room_keys(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let rooms = BTreeMap::from([(req.body.room_id.to_string(), sessions_of(&body(&req.json))?)]);
    Ok(state_json(state.e2ee.put_backup_keys(s.user_id.as_str(), &req.body.version, &rooms).await?))
}

/// `PUT /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn put_session_key(
    State(state): State<AppState>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let session = Map::from_iter([(req.body.session_id.clone(), body(&req.json))]);
    let rooms = BTreeMap::from([(req.body.room_id.to_string(), session)]);
    Ok(state_json(state.e2ee.put_backup_keys(s.user_id.as_str(), &req.body.version, &rooms).await?))
}

/// `GET /_matrix/client/v3/room_keys/keys`
pub async fn get_keys(State(state): State<AppState>, req: Ruma<get_backup_keys::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let rooms = state.e2ee.get_backup_keys(s.user_id.as_str(), &req.body.version, None, None).await?;
    let rooms: Map<String, Value> = rooms.into_iter().map(|(r, s)| (r, json!({ "sessions": s }))).collect();
    Ok(Json(json!({ "rooms": rooms })))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn get_room_keys(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let mut rooms = state.e2ee.get_backup_keys(s.user_id.as_str(), &b.version, Some(b.room_id.as_str()), None).await?;
    let sessions = rooms.remove(b.room_id.as_str()).unwrap_or_default();
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn get_session_key(
    State(state): State<AppState>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let mut rooms = state
        .e2ee
        .get_backup_keys(s.user_id.as_str(), &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
        .await?;
    rooms
        .remove(b.room_id.as_str())
        .and_then(|mut sessions| sessions.remove(&b.session_id))
        .map(Json)
        .ok_or_else(|| Error::not_found("No backed-up key for this session"))
}

/// `DELETE /_matrix/client/v3/room_keys/keys`
pub async fn delete_keys(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    Ok(state_json(state.e2ee.delete_backup_keys(s.user_id.as_str(), &req.body.version, None, None).await?))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}`
pub async fn delete_room_keys(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    Ok(state_json(state.e2ee.delete_backup_keys(s.user_id.as_str(), &b.version, Some(b.room_id.as_str()), None).await?))
}

/// `DELETE /_matrix/client/v3/room_keys/keys/{roomId}/{sessionId}`
pub async fn delete_session_key(
    State(state): State<AppState>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    Ok(state_json(
        state
            .e2ee
            .delete_backup_keys(s.user_id.as_str(), &b.version, Some(b.room_id.as_str()), Some(&b.session_id))
            .await?,
    ))
}

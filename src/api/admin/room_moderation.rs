//! Room moderation: `DELETE /_synapse/admin/v2/rooms/{roomId}` with its `delete_status`,
//! `/v1/rooms/{roomId}/block`, `/make_room_admin`, `/forward_extremities` and `/v1/join`.

use axum::Json;
use axum::extract::State;
use ruma::RoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminPath, local_user_id};
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::rooms::admin::RoomDeletion;
use crate::rooms::moderation::DeleteRoom;

fn room_id(raw: &str) -> Result<ruma::OwnedRoomId> {
    RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("{raw} is not a legal room ID: {e}")))
}

/// Body of `DELETE /_synapse/admin/v2/rooms/{roomId}` (Synapse's defaults: purge, no block).
#[derive(Deserialize)]
pub struct DeleteBody {
    new_room_user_id: Option<String>,
    room_name: Option<String>,
    message: Option<String>,
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
    #[serde(default)]
    force_purge: bool,
}

fn yes() -> bool {
    true
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: starts the deletion, answers its `delete_id`.
pub async fn delete(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(room): AdminPath<String>,
    AdminJson(body): AdminJson<DeleteBody>,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    let new_room_user_id = body.new_room_user_id.as_deref().map(|u| local_user_id(&state, u)).transpose()?;
    for (field, value) in [("room_name", &body.room_name), ("message", &body.message)] {
        if value.as_ref().is_some_and(|v| v.len() > 65_536) {
            return Err(Error::invalid_param(format!("{field} is too long")));
        }
    }
    let req = DeleteRoom {
        new_room_user_id,
        room_name: body.room_name,
        message: body.message,
        block: body.block,
        purge: body.purge,
        force_purge: body.force_purge,
    };
    let delete_id = state.rooms.start_delete(&room_id, &admin.user_id, req).await?;
    Ok(Json(json!({ "delete_id": delete_id })))
}

fn status_json(d: &RoomDeletion) -> Value {
    let result: Value = serde_json::from_str(&d.result).unwrap_or(Value::Null);
    json!({
        "delete_id": d.delete_id,
        "room_id": d.room_id,
        "status": d.status,
        "error": d.error.clone().unwrap_or_default(),
        "shutdown_room": result,
    })
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`
pub async fn delete_status_of_room(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    let deletions = state.rooms.room_deletions_of(&room_id).await?;
    if deletions.is_empty() {
        return Err(Error::not_found("No delete task for room"));
    }
    Ok(Json(json!({ "results": deletions.iter().map(status_json).collect::<Vec<_>>() })))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
pub async fn delete_status(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(delete_id): AdminPath<String>,
) -> Result<Json<Value>> {
    let d = state.rooms.room_deletion(&delete_id).await?;
    Ok(Json(status_json(&d.ok_or_else(|| Error::not_found("delete id not found"))?)))
}

/// Body of `PUT /_synapse/admin/v1/rooms/{roomId}/block`.
#[derive(Deserialize)]
pub struct BlockBody {
    block: bool,
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn set_block(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(room): AdminPath<String>,
    AdminJson(body): AdminJson<BlockBody>,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    state.rooms.set_room_blocked(&room_id, &admin.user_id, body.block).await?;
    Ok(Json(json!({ "block": body.block })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`
pub async fn get_block(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = room_id(&room)?;
    Ok(Json(match state.rooms.room_blocked_by(&room_id).await? {
        Some(by) => json!({ "block": true, "user_id": by }),
        None => json!({ "block": false }),
    }))
}

/// Body of `make_room_admin`: the user (default: the caller).
#[derive(Deserialize)]
pub struct MakeAdminBody {
    user_id: Option<String>,
}

/// `POST /_synapse/admin/v1/rooms/{roomIdOrAlias}/make_room_admin`
pub async fn make_room_admin(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(room): AdminPath<String>,
    AdminJson(body): AdminJson<MakeAdminBody>,
) -> Result<Json<Value>> {
    let room_id = state.rooms.admin_resolve_room(&room).await?;
    let user = match body.user_id {
        Some(u) => local_user_id(&state, &u)?,
        None => admin.user_id.clone(),
    };
    state.rooms.make_room_admin(&room_id, &user).await?;
    Ok(Json(json!({})))
}

/// Body of `POST /_synapse/admin/v1/join/{roomIdOrAlias}`.
#[derive(Deserialize)]
pub struct JoinBody {
    user_id: Option<String>,
}

/// `POST /_synapse/admin/v1/join/{roomIdOrAlias}`: joins a local user to a room.
pub async fn join(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(room): AdminPath<String>,
    AdminJson(body): AdminJson<JoinBody>,
) -> Result<Json<Value>> {
    let raw = body.user_id.ok_or_else(|| Error::missing_param("Missing params: ['user_id']"))?;
    let user = local_user_id(&state, &raw)?;
    if !state.accounts.user_exists(&user).await? {
        return Err(Error::not_found("User not found"));
    }
    let room_id = state.rooms.admin_resolve_room(&room).await?;
    state.rooms.admin_join(&room_id, &admin.user_id, &user).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub async fn forward_extremities(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = state.rooms.admin_resolve_room(&room).await?;
    if !state.rooms.exists(&room_id).await? {
        return Err(Error::not_found("Room not found"));
    }
    let rows = state.rooms.forward_extremities(&room_id).await?;
    let results: Vec<Value> = rows
        .iter()
        .map(|e| {
            json!({ "event_id": e.event_id, "state_group": e.state_group, "depth": e.depth, "received_ts": e.received_ts })
        })
        .collect();
    Ok(Json(json!({ "count": results.len(), "results": results })))
}

//! Rooms: `/_synapse/admin/v1/rooms`, `/v1/rooms/{roomId}`, `/members`, `/state`.

use axum::Json;
use axum::extract::State;
use ruma::{OwnedRoomId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminPath, AdminQuery, direction, paging};
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::rooms::admin::RoomQuery;

/// Query of the room list.
#[derive(Deserialize)]
pub struct ListRooms {
    from: Option<i64>,
    limit: Option<i64>,
    order_by: Option<String>,
    dir: Option<String>,
    search_term: Option<String>,
}

/// `GET /_synapse/admin/v1/rooms`
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListRooms>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let query = RoomQuery {
        search_term: q.search_term.filter(|s| !s.is_empty()),
        order_by: q.order_by.unwrap_or_else(|| "name".to_owned()),
        backwards: direction(q.dir.as_deref(), false)?,
        from: from as usize,
        limit: limit as usize,
    };
    let (rooms, total) = state.rooms.admin_list_rooms(&query).await?;
    let (from, limit) = (from as usize, limit as usize);
    let mut body = json!({ "rooms": rooms, "offset": from, "total_rooms": total });
    if from.saturating_add(limit) < total {
        body["next_batch"] = json!(from + limit);
    }
    if from > 0 {
        body["prev_batch"] = json!(from.saturating_sub(limit));
    }
    Ok(Json(body))
}

/// The room of the path, which this server must hold.
async fn known_room(state: &AppState, raw: &str) -> Result<OwnedRoomId> {
    let room_id = RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid room ID {raw:?}: {e}")))?;
    if !state.rooms.exists(&room_id).await? {
        return Err(Error::not_found("Room not found"));
    }
    Ok(room_id)
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`
pub async fn get(State(state): State<AppState>, _: Admin, AdminPath(room): AdminPath<String>) -> Result<Json<Value>> {
    let room_id = known_room(&state, &room).await?;
    let room = state.rooms.admin_rooms(Some(&room_id), true).await?.pop();
    Ok(Json(room.ok_or_else(|| Error::not_found("Room not found"))?))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`: the joined members.
pub async fn members(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = known_room(&state, &room).await?;
    let members = state.rooms.joined_members(&room_id).await?;
    Ok(Json(json!({ "total": members.len(), "members": members })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state, as clients see events.
pub async fn state(State(state): State<AppState>, _: Admin, AdminPath(room): AdminPath<String>) -> Result<Json<Value>> {
    let room_id = known_room(&state, &room).await?;
    let now = crate::storage::now_ms();
    let events: Vec<Value> =
        state.rooms.current_state(&room_id).await?.values().map(|p| p.client_json(None, now)).collect();
    Ok(Json(json!({ "state": events })))
}

//! Account data (global and per room) and room tags.

use axum::Json;
use axum::extract::State;
use ruma::api::client::config::{
    get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data,
};
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::sync::account_data::SERVER_MANAGED;

fn require_self(session_user: &UserId, path_user: &UserId) -> Result<()> {
    if session_user == path_user { Ok(()) } else { Err(Error::forbidden("Cannot access account data of other users")) }
}

async fn set(state: &AppState, user: &UserId, room: Option<&RoomId>, kind: &str, body: Option<Value>) -> Result<()> {
    if SERVER_MANAGED.contains(&kind) {
        return Err(Error::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {kind} through this API"),
        ));
    }
    let content = body.unwrap_or_else(|| json!({}));
    state.sync.set_account_data(user, room, kind, &content).await
}

async fn get(state: &AppState, user: &UserId, room: Option<&RoomId>, kind: &str) -> Result<Json<Value>> {
    state.sync.account_data(user, room, kind).await?.map(Json).ok_or_else(|| Error::not_found("Account data not found"))
}

/// `PUT /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn set_global(
    State(state): State<AppState>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    set(&state, &s.user_id, None, &req.body.event_type.to_string(), req.json.clone()).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/account_data/{type}`
pub async fn get_global(
    State(state): State<AppState>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    get(&state, &s.user_id, None, &req.body.event_type.to_string()).await
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn set_room(
    State(state): State<AppState>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    set(&state, &s.user_id, Some(&req.body.room_id), &req.body.event_type.to_string(), req.json.clone()).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/account_data/{type}`
pub async fn get_room(
    State(state): State<AppState>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    get(&state, &s.user_id, Some(&req.body.room_id), &req.body.event_type.to_string()).await
}

/// `GET /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags`
pub async fn tags(State(state): State<AppState>, req: Ruma<get_tags::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    Ok(Json(state.sync.tags(&s.user_id, &req.body.room_id).await?))
}

/// `PUT /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn put_tag(State(state): State<AppState>, req: Ruma<create_tag::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    let info = req.json.clone().unwrap_or_else(|| json!({}));
    state.sync.set_tag(&s.user_id, &req.body.room_id, &req.body.tag, Some(&info)).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/user/{userId}/rooms/{roomId}/tags/{tag}`
pub async fn delete_tag(State(state): State<AppState>, req: Ruma<delete_tag::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id)?;
    state.sync.set_tag(&s.user_id, &req.body.room_id, &req.body.tag, None).await?;
    Ok(Json(json!({})))
}

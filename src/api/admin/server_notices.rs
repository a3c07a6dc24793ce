//! `POST /_synapse/admin/v1/send_server_notice`: a message from the server's admins to a local
//! user, sent by the `[server_notices]` system user into the user's notices room. The room is
//! made on the first notice (and again if the user left it): private, named
//! `server_notices.room_name`, the user invited with power level -10 so that only the system
//! user writes, and tagged `m.server_notice` for the user as the spec says.

use axum::Json;
use axum::extract::State;
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminPath, local_user_id};
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::rooms::Origin;
use crate::rooms::build::NewEvent;
use crate::rooms::create::CreateRoom;

/// The spec's tag of server-notices rooms.
const NOTICE_TAG: &str = "m.server_notice";

/// Body of `send_server_notice`.
#[derive(Deserialize)]
pub struct Notice {
    user_id: Option<String>,
    content: Option<serde_json::Map<String, Value>>,
    #[serde(rename = "type")]
    kind: Option<String>,
    state_key: Option<String>,
}

/// `PUT /_synapse/admin/v1/send_server_notice/{txnId}`: as `POST`, once per transaction id of
/// the calling admin (a retry answers the first event).
pub async fn send_txn(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(txn_id): AdminPath<String>,
    AdminJson(body): AdminJson<Notice>,
) -> Result<Json<Value>> {
    if txn_id.is_empty() || txn_id.len() > 255 {
        return Err(Error::invalid_param("Transaction ids are 1 to 255 bytes long"));
    }
    if let Some(event_id) = state.rooms.server_notice_txn(&admin.user_id, &txn_id).await? {
        return Ok(Json(json!({ "event_id": event_id })));
    }
    let answer = send_notice(&state, body).await?;
    if let Some(event_id) = answer["event_id"].as_str() {
        state.rooms.set_server_notice_txn(&admin.user_id, &txn_id, event_id).await?;
    }
    Ok(Json(answer))
}

/// `POST /_synapse/admin/v1/send_server_notice`: `{"event_id": ...}`.
pub async fn send(State(state): State<AppState>, _: Admin, AdminJson(body): AdminJson<Notice>) -> Result<Json<Value>> {
    Ok(Json(send_notice(&state, body).await?))
}

async fn send_notice(state: &AppState, body: Notice) -> Result<Value> {
    let cfg = &state.config.server_notices;
    let Some(localpart) = cfg.system_mxid_localpart.as_deref() else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Server notices are not enabled on this server",
        ));
    };
    let raw = body.user_id.ok_or_else(|| Error::missing_param("Missing params: ['user_id']"))?;
    let user = local_user_id(state, &raw)
        .map_err(|_| Error::invalid_param("Server notices can only be sent to local users"))?;
    let content = body.content.ok_or_else(|| Error::missing_param("Missing params: ['content']"))?;
    let account = state.accounts.user(&user).await?;
    if account.is_none() {
        return Err(Error::not_found("User not found"));
    }
    let system = UserId::parse(format!("@{localpart}:{}", state.config.server_name()))
        .map_err(|e| Error::internal(format!("server_notices.system_mxid_localpart: {e}")))?;
    if user == system {
        return Err(Error::invalid_param("Cannot send server notices to the system user"));
    }
    if !state.accounts.user_exists(&system).await? {
        state.accounts.admin_create(&system, None, false, Some(&cfg.system_mxid_display_name)).await?;
    }
    let room_id = notice_room(state, &system, &user).await?;
    let kind = body.kind.unwrap_or_else(|| "m.room.message".to_owned());
    let ev = match body.state_key {
        Some(key) => NewEvent::state(kind, key, Value::Object(content)),
        None => NewEvent::message(kind, Value::Object(content)),
    };
    let event_id = state.rooms.send(&room_id, Origin { user_id: &system, txn: None }, ev).await?;
    Ok(json!({ "event_id": event_id }))
}

/// The user's notices room: the recorded one while the system user is in it and the user is
/// joined or invited, else a new one.
async fn notice_room(state: &AppState, system: &UserId, user: &UserId) -> Result<OwnedRoomId> {
    if let Some(room) = state.rooms.server_notice_room(user).await?
        && let Ok(room_id) = RoomId::parse(&room)
        && state.rooms.membership_of(&room_id, system).await?.as_deref() == Some("join")
        && matches!(state.rooms.membership_of(&room_id, user).await?.as_deref(), Some("join") | Some("invite"))
    {
        return Ok(room_id);
    }
    let create = CreateRoom {
        preset: Some("private_chat".to_owned()),
        name: Some(state.config.server_notices.room_name.clone()),
        invite: vec![user.to_owned()],
        power_level_override: json!({ "users_default": -10, "events_default": 0 }).as_object().cloned(),
        ..Default::default()
    };
    let room_id = state.rooms.create_room(system, create).await?;
    state.rooms.set_server_notice_room(user, &room_id).await?;
    state.sync.set_tag(user, &room_id, NOTICE_TAG, Some(&json!({}))).await?;
    Ok(room_id)
}

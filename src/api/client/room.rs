//! Room creation and membership endpoints.

use axum::Json;
use axum::extract::State;
use ruma::api::client::knock::knock_room;
use ruma::api::client::membership::{
    ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias, joined_members,
    joined_rooms, kick_user, leave_room, unban_user,
};
use ruma::api::client::room::{create_room, get_summary};
use ruma::{OwnedRoomId, RoomAliasId, RoomId, RoomOrAliasId};
use serde_json::{Map, Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::rooms::create::CreateRoom;
use crate::rooms::read::{Position, TopoToken};

/// `POST /_matrix/client/v3/createRoom`
pub async fn create(State(state): State<AppState>, req: Ruma<create_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let raw = req.json.clone().unwrap_or(Value::Null);
    let object = |v: &Value, what: &str| -> Result<Option<Map<String, Value>>> {
        match v {
            Value::Null => Ok(None),
            Value::Object(m) => Ok(Some(m.clone())),
            _ => Err(Error::bad_json(format!("{what} must be an object"))),
        }
    };
    let mut initial_state = Vec::new();
    for ev in raw["initial_state"].as_array().cloned().unwrap_or_default() {
        let kind = ev["type"].as_str().ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        let key = ev["state_key"].as_str().unwrap_or("");
        if !ev["content"].is_object() {
            return Err(Error::bad_json("initial_state event without content"));
        }
        initial_state.push((kind.to_owned(), key.to_owned(), ev["content"].clone()));
    }
    let params = CreateRoom {
        preset: b.preset.as_ref().map(|p| p.as_str().to_owned()),
        public: b.visibility == ruma::api::client::room::Visibility::Public,
        alias_localpart: b.room_alias_name.clone(),
        name: b.name.clone(),
        topic: b.topic.clone(),
        invite: b.invite.clone(),
        initial_state,
        power_level_override: object(&raw["power_level_content_override"], "power_level_content_override")?,
        creation_content: object(&raw["creation_content"], "creation_content")?,
        is_direct: b.is_direct,
        room_version: b.room_version.as_ref().map(|v| v.to_string()),
    };
    let room_id = state.rooms.create_room(&s.user_id, params).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// Resolves a room id or a (local) alias.
pub async fn resolve_room(state: &AppState, id: &RoomOrAliasId) -> Result<OwnedRoomId> {
    if let Ok(room_id) = <&RoomId>::try_from(id) {
        return Ok(room_id.to_owned());
    }
    let alias = <&RoomAliasId>::try_from(id).map_err(|_| Error::invalid_param("Invalid room id or alias"))?;
    match state.appservices.lookup_alias(alias.as_str()).await? {
        Some((room_id, _)) => RoomId::parse(room_id).map_err(Error::internal),
        None => Err(Error::not_found(format!("Room alias {alias} not found"))),
    }
}

/// Resolves a room id or alias, asking the alias's server over federation for remote aliases;
/// also returns servers to join through.
pub async fn resolve_room_with_servers(
    state: &AppState,
    id: &RoomOrAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    if let Ok(alias) = <&RoomAliasId>::try_from(id)
        && *alias.server_name() != *state.config.server_name()
        && let Some(fed) = state.rooms.federation()
    {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            url::form_urlencoded::byte_serialize(alias.as_str().as_bytes()).collect::<String>()
        );
        let answer = fed.request(alias.server_name(), http::Method::GET, &path, None).await?;
        let room_id = answer["room_id"]
            .as_str()
            .and_then(|r| RoomId::parse(r).ok())
            .ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?;
        let mut servers: Vec<ruma::OwnedServerName> = answer["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().and_then(|s| ruma::ServerName::parse(s).ok()))
            .collect();
        servers.push(alias.server_name().to_owned());
        return Ok((room_id, servers));
    }
    Ok((resolve_room(state, id).await?, Vec::new()))
}

/// `POST /_matrix/client/v3/join/{roomIdOrAlias}`
pub async fn join_by_id_or_alias(
    State(state): State<AppState>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let (room_id, mut servers) = resolve_room_with_servers(&state, &req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    state.rooms.join_with_servers(&room_id, &s.user_id, req.body.reason.as_deref(), &servers).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/join`
pub async fn join_by_id(State(state): State<AppState>, req: Ruma<join_room_by_id::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.join(&req.body.room_id, &s.user_id, req.body.reason.as_deref()).await?;
    Ok(Json(json!({ "room_id": req.body.room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`
pub async fn leave(State(state): State<AppState>, req: Ruma<leave_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.leave(&req.body.room_id, &s.user_id, req.body.reason.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`
pub async fn forget(State(state): State<AppState>, req: Ruma<forget_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.forget(&req.body.room_id, &s.user_id).await?;
    state.sync.recent.forget_user(s.user_id.as_str());
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`
pub async fn invite(State(state): State<AppState>, req: Ruma<invite_user::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let target = match &req.body.recipient {
        invite_user::v3::InvitationRecipient::UserId(target) => target,
        invite_user::v3::InvitationRecipient::ThirdPartyId(_) => {
            let b = req.json.as_ref().ok_or_else(|| Error::not_json("Body is not JSON"))?;
            let field = |k: &str| b[k].as_str().ok_or_else(|| Error::missing_param(format!("{k} is required")));
            let invitee = crate::rooms::federated::third_party::ThirdPartyInvitee {
                id_server: field("id_server")?,
                id_access_token: field("id_access_token")?,
                medium: field("medium")?,
                address: field("address")?,
            };
            state.rooms.invite_third_party(&req.body.room_id, &s.user_id, invitee).await?;
            return Ok(Json(json!({})));
        }
        _ => return Err(Error::bad_json("Unknown kind of invitee")),
    };
    let is_direct = req.json.as_ref().and_then(|j| j["is_direct"].as_bool()).unwrap_or(false);
    state.rooms.invite(&req.body.room_id, &s.user_id, &target.user_id, target.reason.as_deref(), is_direct).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`
pub async fn kick(State(state): State<AppState>, req: Ruma<kick_user::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.kick(&req.body.room_id, &s.user_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`
pub async fn ban(State(state): State<AppState>, req: Ruma<ban_user::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.ban(&req.body.room_id, &s.user_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`
pub async fn unban(State(state): State<AppState>, req: Ruma<unban_user::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.unban(&req.body.room_id, &s.user_id, &req.body.user_id, req.body.reason.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`
pub async fn knock(State(state): State<AppState>, req: Ruma<knock_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let (room_id, mut servers) = resolve_room_with_servers(&state, &req.body.room_id_or_alias).await?;
    servers.extend(req.body.via.iter().cloned());
    state.rooms.knock(&room_id, &s.user_id, req.body.reason.as_deref(), &servers).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `GET /_matrix/client/v3/joined_rooms`
pub async fn joined(State(state): State<AppState>, req: Ruma<joined_rooms::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let rooms = state.rooms.joined_rooms(&s.user_id).await?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/members`
pub async fn members(State(state): State<AppState>, req: Ruma<get_member_events::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let room_id = &req.body.room_id;
    // A forgotten room reads as one never joined.
    let membership = state.rooms.remembered_membership(room_id, &s.user_id).await?;
    let ids = match (membership, &req.body.at) {
        (Some((m, ..)), Some(at)) if matches!(m.as_str(), "join" | "leave" | "ban") => {
            // As of the event at `at`, if the user may see it (as Synapse does): a token from
            // before a `joined`-visibility join or after a leave reveals nothing.
            state_ids_at_token(&state, room_id, &s.user_id, &m, at).await?
        }
        (Some((m, ..)), None) if m == "join" => state.rooms.current_state_ids(room_id).await?,
        // Members of a room the user left are shown as of the leave (as Synapse does).
        (Some((m, ev_id, _)), None) if m == "leave" || m == "ban" => {
            let ev =
                state.rooms.stored_event(&ev_id).await?.ok_or_else(|| Error::internal("membership event missing"))?;
            let group = ev.state_group.ok_or_else(|| Error::internal("membership event without state"))?;
            (*state.rooms.state_at_group(group).await?).clone()
        }
        _ => return Err(Error::forbidden(format!("User {} not in room {room_id}", s.user_id))),
    };
    let member_ids: crate::rooms::StateIds = ids.into_iter().filter(|((t, _), _)| t == "m.room.member").collect();
    let pdus = state.rooms.state_pdus(&member_ids).await?;
    let want = req.body.membership.as_ref().map(|m| m.as_str().to_owned());
    let not = req.body.not_membership.as_ref().map(|m| m.as_str().to_owned());
    let now = crate::storage::now_ms();
    let mut chunk = Vec::new();
    for (_, pdu) in pdus {
        let m = pdu.content()["membership"].as_str().unwrap_or("").to_owned();
        if want.as_ref().is_some_and(|w| *w != m) || not.as_ref().is_some_and(|n| *n == m) {
            continue;
        }
        chunk.push(pdu.client_json(None, now));
    }
    chunk.sort_by(|a, b| a["state_key"].as_str().cmp(&b["state_key"].as_str()));
    Ok(Json(json!({ "chunk": chunk })))
}

/// The state at a sync or topological token, as `user` (whose membership is `membership`) may
/// see it: the state after the last event at or before the token, if the user may see that
/// event; 403 otherwise.
async fn state_ids_at_token(
    state: &AppState,
    room_id: &RoomId,
    user: &ruma::UserId,
    membership: &str,
    at: &str,
) -> Result<crate::rooms::StateIds> {
    // Nothing at or before the token: the room did not exist yet.
    let pos = match TopoToken::parse(at) {
        Some(t) => Position::Topo(t),
        None => Position::Stream(
            crate::sync::token::stream_of_token(at).ok_or_else(|| Error::invalid_param("Invalid `at` token"))?,
        ),
    };
    let Some(ev) = state.rooms.last_event_at(room_id, pos).await? else { return Ok(Default::default()) };
    if !state.rooms.can_see(user, &ev, Some(membership)).await? {
        return Err(Error::forbidden(format!("User {user} may not see the room's members at {at}")));
    }
    match ev.state_group {
        Some(g) => Ok((*state.rooms.state_at_group(g).await?).clone()),
        None => Err(Error::internal("timeline event without state")),
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`
pub async fn joined_members_list(
    State(state): State<AppState>,
    req: Ruma<joined_members::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    state.rooms.require_joined(&req.body.room_id, &s.user_id).await?;
    let current = state.rooms.current_state(&req.body.room_id).await?;
    let mut joined = Map::new();
    for ((t, key), pdu) in current {
        if t != "m.room.member" {
            continue;
        }
        let c = pdu.content();
        if c["membership"] == "join" {
            let mut member = json!({});
            for (from, to) in [("displayname", "display_name"), ("avatar_url", "avatar_url")] {
                if let Some(v) = c[from].as_str() {
                    member[to] = json!(v);
                }
            }
            joined.insert(key, member);
        }
    }
    Ok(Json(json!({ "joined": joined })))
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}`
///
/// Rooms this server holds only: a room it has no member in is not found (asking other servers
/// over federation, with `via`, is not done yet).
pub async fn summary(State(state): State<AppState>, req: Ruma<get_summary::v1::Request>) -> Result<Json<Value>> {
    let user = req.session.as_ref().map(|s| s.user_id.clone());
    let not_found = || Error::not_found("Room not found");
    let room_id = match resolve_room_with_servers(&state, &req.body.room_id_or_alias).await {
        Ok((room_id, _)) => room_id,
        Err(e) if e.errcode == "M_NOT_FOUND" => return Err(not_found()),
        Err(e) => return Err(e),
    };
    let summary = state.rooms.room_summary(&room_id, user.as_deref()).await?.ok_or_else(not_found)?;
    Ok(Json(summary))
}

//! Room aliases, the public room directory and the user directory.

use axum::Json;
use axum::extract::State;
use ruma::RoomId;
use ruma::api::client::alias::{create_alias, delete_alias, get_alias};
use ruma::api::client::directory::{get_public_rooms, get_room_visibility, set_room_visibility};
use ruma::api::client::membership::get_mutual_rooms;
use ruma::api::client::room::aliases;
use ruma::api::client::user_directory::search_users;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn put_alias(State(state): State<AppState>, req: Ruma<create_alias::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let alias = &req.body.room_alias;
    if alias.server_name() != state.rooms.server_name() {
        return Err(Error::invalid_param("Room alias must be on this server"));
    }
    state.appservices.check_exclusive(crate::appservice::Kind::Aliases, alias.as_str(), Some(s.user_id.as_str()))?;
    // Only members may name a room (as Synapse requires), so that nobody squats the aliases of
    // rooms they are not in; membership is checked before existence so that the answer does
    // not tell a stranger which room ids exist. Server admins may alias any room.
    if !s.is_admin && state.rooms.membership_of(&req.body.room_id, &s.user_id).await?.as_deref() != Some("join") {
        return Err(Error::forbidden("You must be joined to the room to create an alias for it"));
    }
    if !state.rooms.exists(&req.body.room_id).await? {
        return Err(Error::not_found("Unknown room"));
    }
    if !state.rooms.insert_alias(alias.as_str(), &req.body.room_id, &s.user_id).await? {
        return Err(Error::new(http::StatusCode::CONFLICT, "M_UNKNOWN", format!("Room alias {alias} already exists")));
    }
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn get_alias_handler(
    State(state): State<AppState>,
    req: Ruma<get_alias::v3::Request>,
) -> Result<Json<Value>> {
    let alias = &req.body.room_alias;
    match state.appservices.lookup_alias(alias.as_str()).await? {
        Some((room_id, _)) => Ok(Json(json!({ "room_id": room_id, "servers": [state.rooms.server_name()] }))),
        None => Err(Error::not_found(format!("Room alias {alias} not found"))),
    }
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`
pub async fn delete_alias_handler(
    State(state): State<AppState>,
    req: Ruma<delete_alias::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let alias = &req.body.room_alias;
    let Some((room_id, creator)) = state.rooms.alias(alias.as_str()).await? else {
        return Err(Error::not_found(format!("Room alias {alias} not found")));
    };
    let allowed = creator == s.user_id.as_str() || s.is_admin || {
        let room_id = RoomId::parse(&room_id).map_err(Error::internal)?;
        let pl = state.rooms.power_levels(&room_id).await?;
        pl.user_level(&s.user_id) >= pl.event_level("m.room.canonical_alias", true)
    };
    if !allowed {
        return Err(Error::forbidden("You don't have permission to delete the alias."));
    }
    state.rooms.delete_alias(alias.as_str()).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`
pub async fn room_aliases(State(state): State<AppState>, req: Ruma<aliases::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let room_id = &req.body.room_id;
    if state.rooms.membership_of(room_id, &s.user_id).await?.as_deref() != Some("join") {
        let hv = state.rooms.current_state_event(room_id, "m.room.history_visibility", "").await?;
        if !hv.is_some_and(|p| p.content()["history_visibility"] == "world_readable") {
            return Err(Error::forbidden("You are not in the room"));
        }
    }
    Ok(Json(json!({ "aliases": state.rooms.room_aliases(room_id).await? })))
}

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn get_visibility(
    State(state): State<AppState>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> Result<Json<Value>> {
    if !state.rooms.exists(&req.body.room_id).await? {
        return Err(Error::not_found("Unknown room"));
    }
    let public = state.rooms.is_public(&req.body.room_id).await?;
    Ok(Json(json!({ "visibility": if public { "public" } else { "private" } })))
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`
pub async fn set_visibility(
    State(state): State<AppState>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let room_id = &req.body.room_id;
    if !state.rooms.exists(room_id).await? {
        return Err(Error::not_found("Unknown room"));
    }
    state.rooms.require_joined(room_id, &s.user_id).await?;
    let pl = state.rooms.power_levels(room_id).await?;
    if !s.is_admin && pl.user_level(&s.user_id) < pl.event_level("m.room.canonical_alias", true) {
        return Err(Error::forbidden("You don't have permission to change the room's directory visibility"));
    }
    let public = req.body.visibility == ruma::api::client::room::Visibility::Public;
    state.rooms.set_public(room_id, public).await?;
    Ok(Json(json!({})))
}

/// Which rooms a `publicRooms` request lists: the server's public directory (the default), the
/// rooms an appservice published for one of its networks (`third_party_instance_id`
/// `<appservice id>|<network id>`), or both (`include_all_networks`).
enum Networks<'a> {
    Matrix,
    Instance(&'a str),
    All,
}

async fn directory_rooms(state: &AppState, networks: Networks<'_>) -> Result<Vec<String>> {
    let mut rooms = match networks {
        Networks::Instance(_) => Vec::new(),
        _ => state.rooms.public_rooms().await?,
    };
    let listed = match networks {
        Networks::Matrix => Vec::new(),
        Networks::Instance(instance) => {
            let Some((appservice, network)) = instance.split_once('|') else {
                return Err(Error::invalid_param("third_party_instance_id must be <appservice id>|<network id>"));
            };
            state.rooms.appservice_listed_rooms(Some((appservice, network))).await?
        }
        Networks::All => state.rooms.appservice_listed_rooms(None).await?,
    };
    rooms.extend(listed.into_iter().map(|(_, _, room)| room));
    rooms.sort();
    rooms.dedup();
    Ok(rooms)
}

fn check_server(state: &AppState, server: Option<&ruma::ServerName>) -> Result<()> {
    match server {
        Some(s) if s != state.rooms.server_name() => Err(Error::new(
            http::StatusCode::NOT_FOUND,
            "M_NOT_FOUND",
            "Querying other servers' directories is not supported yet",
        )),
        _ => Ok(()),
    }
}

/// `GET /_matrix/client/v3/publicRooms`
pub async fn public_rooms(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> Result<Json<Value>> {
    check_server(&state, req.body.server.as_deref())?;
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let rooms = directory_rooms(&state, Networks::Matrix).await?;
    Ok(Json(state.rooms.public_rooms_page(rooms, limit, req.body.since.as_deref(), None).await?))
}

/// `POST /_matrix/client/v3/publicRooms`, served without a token like `GET` (ruma marks it
/// authenticated; Synapse-compatible clients browse the directory before logging in).
pub async fn public_rooms_filtered(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Json<Value>> {
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body).map_err(|e| Error::not_json(format!("Content not JSON: {e}")))?
    };
    if !req.is_object() {
        return Err(Error::bad_json("Body must be a JSON object"));
    }
    let server = match req["server"].as_str() {
        Some(s) => Some(ruma::ServerName::parse(s).map_err(|_| Error::invalid_param("Invalid server name"))?),
        None => None,
    };
    check_server(&state, server.as_deref())?;
    let limit = req["limit"].as_u64().map(|l| l as usize);
    let search = req["filter"]["generic_search_term"].as_str();
    let networks = match (&req["include_all_networks"], &req["third_party_instance_id"]) {
        (Value::Bool(true), _) => Networks::All,
        (_, Value::String(instance)) => Networks::Instance(instance),
        (_, Value::Null) => Networks::Matrix,
        _ => return Err(Error::bad_json("third_party_instance_id must be a string")),
    };
    let rooms = directory_rooms(&state, networks).await?;
    Ok(Json(state.rooms.public_rooms_page(rooms, limit, req["since"].as_str(), search).await?))
}

/// Routes for endpoints served outside the ruma extractor.
pub fn extra_routes(router: axum::Router<AppState>) -> axum::Router<AppState> {
    router
        .route("/_matrix/client/v3/publicRooms", axum::routing::post(public_rooms_filtered))
        .route("/_matrix/client/r0/publicRooms", axum::routing::post(public_rooms_filtered))
}

/// `POST /_matrix/client/v3/user_directory/search`
pub async fn search_users_handler(
    State(state): State<AppState>,
    req: Ruma<search_users::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let limit = usize::try_from(u64::from(req.body.limit)).unwrap_or(usize::MAX);
    let (found, limited) = state.rooms.search_users(&s.user_id, &req.body.search_term, limit).await?;
    let results: Vec<Value> = found
        .into_iter()
        .map(|u| {
            let mut user = json!({ "user_id": u.user_id });
            if let Some(name) = u.display_name {
                user["display_name"] = json!(name);
            }
            if let Some(avatar) = u.avatar_url {
                user["avatar_url"] = json!(avatar);
            }
            user
        })
        .collect();
    Ok(Json(json!({ "results": results, "limited": limited })))
}

/// Rooms per page of `/mutual_rooms`.
const MUTUAL_ROOMS_PAGE: i64 = 100;

/// `GET /_matrix/client/v1/mutual_rooms`
pub async fn mutual_rooms(
    State(state): State<AppState>,
    req: Ruma<get_mutual_rooms::v1::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let other = &req.body.user_id;
    if *other == s.user_id {
        return Err(Error::invalid_param("user_id is your own user id"));
    }
    // The token is the last room id of the previous page.
    let after = match req.body.from.as_deref() {
        Some(from) => Some(RoomId::parse(from).map_err(|_| Error::invalid_param("Invalid from token"))?),
        None => None,
    };
    let (joined, count) = state.rooms.mutual_rooms(&s.user_id, other, after.as_deref(), MUTUAL_ROOMS_PAGE + 1).await?;
    let more = joined.len() as i64 > MUTUAL_ROOMS_PAGE;
    let joined: Vec<String> = joined.into_iter().take(MUTUAL_ROOMS_PAGE as usize).collect();
    let mut out = json!({ "joined": joined, "count": count });
    if more && let Some(last) = joined.last() {
        out["next_batch"] = json!(last);
    }
    Ok(Json(out))
}

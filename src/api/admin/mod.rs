//! The server administration API: Synapse's `/_synapse/admin/...` endpoints, with Synapse's
//! paths and JSON shapes, so that the tools operators already use (synapse-admin/Ketesa,
//! moderation bots, scripts) work unchanged. See `docs/admin-api.md` for what is served.
//!
//! Ruma does not model these endpoints, so they are axum routes with the extractors below,
//! which give the same Matrix errors as [`crate::api::extract::Ruma`]: 401 without a valid
//! token, 403 `M_FORBIDDEN` for a user who is not a server admin, 400 `M_INVALID_PARAM` /
//! `M_NOT_JSON` / `M_BAD_JSON` for bad input.

mod devices;
mod federation;
mod media;
mod moderation;
mod registration_tokens;
mod reports;
mod room_moderation;
mod rooms;
mod server_notices;
mod user_extras;
mod users;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::routing::{delete, get, post, put};
use http::request::Parts;
use ruma::{OwnedUserId, UserId};
use serde::de::DeserializeOwned;

use super::extract::{MAX_JSON_BODY, access_token, body_error, client_ip};
use super::{AppState, RouterExt};
use crate::accounts::Session;
use crate::error::{Error, Result};

/// The caller of an admin endpoint: a server admin.
pub struct Admin(pub Session);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = access_token(parts)?.ok_or_else(Error::missing_token)?;
        let ip = client_ip(parts, &state.trusted_proxies).to_string();
        let session = state.accounts.authenticate(&token, Some(&ip)).await?;
        if !session.is_admin {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Admin(session))
    }
}

/// Path parameters, with a Matrix error when they do not parse.
pub struct AdminPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for AdminPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| AdminPath(p.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// Query parameters, with a Matrix error when they do not parse.
pub struct AdminQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for AdminQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| AdminQuery(q.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// A JSON body; an empty body reads as `{}` (Synapse accepts that, e.g. for `deactivate`).
pub struct AdminJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for AdminJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &AppState) -> Result<Self> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await.map_err(body_error)?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { &bytes };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| Error::not_json(format!("Content not JSON: {e}")))?;
        serde_json::from_value(value).map(AdminJson).map_err(|e| Error::bad_json(e.to_string()))
    }
}

/// Parses a user id of a path.
fn user_id(raw: &str) -> Result<OwnedUserId> {
    UserId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid user ID {raw:?}: {e}")))
}

/// Parses a user id of a path that must be an account of this server.
fn local_user_id(state: &AppState, raw: &str) -> Result<OwnedUserId> {
    let id = user_id(raw)?;
    if id.server_name() != state.config.server_name() {
        return Err(Error::invalid_param("This endpoint can only be used with local users"));
    }
    Ok(id)
}

/// Checks Synapse's paging parameters: `from` and `limit` must not be negative.
fn paging(from: Option<i64>, limit: Option<i64>) -> Result<(i64, i64)> {
    let from = from.unwrap_or(0);
    let limit = limit.unwrap_or(100);
    if from < 0 {
        return Err(Error::invalid_param("Query parameter from must be a string representing a positive integer."));
    }
    if limit < 0 {
        return Err(Error::invalid_param("Query parameter limit must be a string representing a positive integer."));
    }
    Ok((from, limit))
}

/// Parses `dir`: `f` (forwards) or `b` (backwards).
fn direction(dir: Option<&str>, default_backwards: bool) -> Result<bool> {
    match dir {
        None => Ok(default_backwards),
        Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(other) => Err(Error::invalid_param(format!("Unknown direction: {other}"))),
    }
}

/// Adds every admin API route.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    const A: &str = "/_synapse/admin";
    router
        .route(&format!("{A}/v1/server_version"), get(users::server_version))
        .route(&format!("{A}/v2/users"), get(users::list_v2))
        .route(&format!("{A}/v3/users"), get(users::list_v3))
        .route(&format!("{A}/v2/users/{{user_id}}"), get(users::get).put(users::put))
        .route(&format!("{A}/v1/users/{{user_id}}/admin"), get(users::get_admin).put(users::set_admin))
        .route(&format!("{A}/v1/deactivate/{{user_id}}"), post(users::deactivate))
        .route(&format!("{A}/v1/reset_password/{{user_id}}"), post(users::reset_password))
        .route(&format!("{A}/v1/whois/{{user_id}}"), get(users::whois))
        .ruma(users::client_whois)
        .ruma(moderation::is_locked)
        .ruma(moderation::lock)
        .ruma(moderation::is_suspended)
        .ruma(moderation::suspend)
        .route(&format!("{A}/v1/users/{{user_id}}/joined_rooms"), get(users::joined_rooms))
        .route(&format!("{A}/v1/users/{{user_id}}/pushers"), get(users::pushers))
        .route(&format!("{A}/v1/users/{{user_id}}/memberships"), get(users::memberships))
        .route(&format!("{A}/v1/users/{{user_id}}/accountdata"), get(user_extras::account_data))
        .route(
            &format!("{A}/v1/users/{{user_id}}/override_ratelimit"),
            get(user_extras::get_ratelimit).post(user_extras::set_ratelimit).delete(user_extras::delete_ratelimit),
        )
        .route(
            &format!("{A}/v1/users/{{user_id}}/shadow_ban"),
            post(user_extras::shadow_ban).delete(user_extras::lift_shadow_ban),
        )
        .route(&format!("{A}/v2/users/{{user_id}}/devices"), get(devices::list))
        .route(
            &format!("{A}/v2/users/{{user_id}}/devices/{{device_id}}"),
            get(devices::get).put(devices::update).delete(devices::delete),
        )
        .route(&format!("{A}/v2/users/{{user_id}}/delete_devices"), post(devices::delete_many))
        .route(&format!("{A}/v1/rooms"), get(rooms::list))
        .route(&format!("{A}/v1/rooms/{{room_id}}"), get(rooms::get))
        .route(&format!("{A}/v1/rooms/{{room_id}}/members"), get(rooms::members))
        .route(&format!("{A}/v1/rooms/{{room_id}}/state"), get(rooms::state))
        .route(&format!("{A}/v2/rooms/{{room_id}}"), delete(room_moderation::delete))
        .route(&format!("{A}/v2/rooms/{{room_id}}/delete_status"), get(room_moderation::delete_status_of_room))
        .route(&format!("{A}/v2/rooms/delete_status/{{delete_id}}"), get(room_moderation::delete_status))
        .route(
            &format!("{A}/v1/rooms/{{room_id}}/block"),
            get(room_moderation::get_block).put(room_moderation::set_block),
        )
        .route(&format!("{A}/v1/rooms/{{room_id}}/make_room_admin"), post(room_moderation::make_room_admin))
        .route(&format!("{A}/v1/rooms/{{room_id}}/forward_extremities"), get(room_moderation::forward_extremities))
        .route(&format!("{A}/v1/join/{{room_id}}"), post(room_moderation::join))
        .route(&format!("{A}/v1/registration_tokens"), get(registration_tokens::list))
        .route(&format!("{A}/v1/registration_tokens/new"), post(registration_tokens::create))
        .route(
            &format!("{A}/v1/registration_tokens/{{token}}"),
            get(registration_tokens::get).put(registration_tokens::update).delete(registration_tokens::delete),
        )
        .route(&format!("{A}/v1/users/{{user_id}}/media"), get(media::user_media).delete(media::delete_user_media))
        .route(&format!("{A}/v1/media/delete"), post(media::delete_old))
        .route(&format!("{A}/v1/media/{{server_name}}/delete"), post(media::delete_old_of_server))
        .route(&format!("{A}/v1/media/{{server_name}}/{{media_id}}"), delete(media::delete_one))
        .route(&format!("{A}/v1/purge_media_cache"), post(media::purge_cache))
        .route(&format!("{A}/v1/media/quarantine/{{server_name}}/{{media_id}}"), post(media::quarantine_one))
        .route(&format!("{A}/v1/media/unquarantine/{{server_name}}/{{media_id}}"), post(media::unquarantine_one))
        .route(&format!("{A}/v1/room/{{room_id}}/media/quarantine"), post(media::quarantine_room))
        .route(&format!("{A}/v1/user/{{user_id}}/media/quarantine"), post(media::quarantine_user))
        .route(&format!("{A}/v1/media/protect/{{media_id}}"), post(media::protect_one))
        .route(&format!("{A}/v1/media/unprotect/{{media_id}}"), post(media::unprotect_one))
        .route(&format!("{A}/v1/rooms/{{room_id}}/media"), get(media::room_media))
        .route(&format!("{A}/v1/statistics/users/media"), get(media::user_statistics))
        .route(&format!("{A}/v1/send_server_notice"), post(server_notices::send))
        .route(&format!("{A}/v1/send_server_notice/{{txn_id}}"), put(server_notices::send_txn))
        .route(&format!("{A}/v1/federation/destinations"), get(federation::list))
        .route(&format!("{A}/v1/federation/destinations/{{destination}}"), get(federation::get))
        .route(&format!("{A}/v1/federation/destinations/{{destination}}/rooms"), get(federation::rooms))
        .route(
            &format!("{A}/v1/federation/destinations/{{destination}}/reset_connection"),
            post(federation::reset_connection),
        )
        .route(&format!("{A}/v1/event_reports"), get(reports::list))
        .route(&format!("{A}/v1/event_reports/{{report_id}}"), get(reports::get).delete(reports::delete))
}

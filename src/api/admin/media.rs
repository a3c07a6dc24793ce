//! Media administration: `/_synapse/admin/v1/users/{userId}/media`, `/v1/media/...`
//! (delete, quarantine, protect), `/v1/purge_media_cache`, `/v1/room/{roomId}/media/quarantine`,
//! `/v1/user/{userId}/media/quarantine`, `/v1/rooms/{roomId}/media` and
//! `/v1/statistics/users/media`.

use std::cmp::Ordering;

use axum::Json;
use axum::extract::State;
use ruma::RoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminPath, AdminQuery, direction, local_user_id, paging};
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::media::admin::AdminMedia;

/// Query of `GET /_synapse/admin/v1/users/{userId}/media`.
#[derive(Deserialize)]
pub struct UserMediaQuery {
    from: Option<i64>,
    limit: Option<i64>,
    order_by: Option<String>,
    dir: Option<String>,
}

/// Orders of the user media list (Synapse's `MediaSortOrder`).
const MEDIA_ORDERS: &[&str] = &[
    "media_id",
    "upload_name",
    "created_ts",
    "last_access_ts",
    "media_length",
    "media_type",
    "quarantined_by",
    "safe_from_quarantine",
];

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()).unwrap_or(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Sorts, pages and answers a list with Synapse's `next_token` (an integer) and `total`.
fn page(mut items: Vec<Value>, field: &str, backwards: bool, from: i64, limit: i64, key: &str) -> Value {
    items.sort_by(|a, b| {
        let o = compare(&a[field], &b[field]);
        let o = if backwards { o.reverse() } else { o };
        o.then_with(|| compare(&a[key], &b[key]))
    });
    let total = items.len();
    let (from, limit) = (from as usize, limit as usize);
    let page: Vec<Value> = items.into_iter().skip(from).take(limit).collect();
    let mut body = json!({ "total": total });
    if from.saturating_add(page.len()) < total {
        body["next_token"] = json!(from + page.len());
    }
    body["page"] = json!(page);
    body
}

/// `GET /_synapse/admin/v1/users/{userId}/media`: the user's uploads, `media` with
/// `media_id`, `media_type`, `media_length`, `upload_name`, `created_ts`, `last_access_ts`,
/// `quarantined_by`, `safe_from_quarantine`.
pub async fn user_media(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
    AdminQuery(q): AdminQuery<UserMediaQuery>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    if !state.accounts.user_exists(&user_id).await? {
        return Err(Error::not_found("Unknown user"));
    }
    let (from, limit) = paging(q.from, q.limit)?;
    let order = q.order_by.as_deref().unwrap_or("created_ts");
    if !MEDIA_ORDERS.contains(&order) {
        return Err(Error::invalid_param(format!("Unknown value for order_by: {order}")));
    }
    let backwards = direction(q.dir.as_deref(), false)?;
    let media = state.media.user_media(&user_id).await?;
    let items: Vec<Value> = media.iter().map(media_json).collect();
    let mut body = page(items, order, backwards, from, limit, "media_id");
    body["media"] = body["page"].take();
    body.as_object_mut().map(|o| o.remove("page"));
    Ok(Json(body))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`: every upload of a local user (protected
/// ones too, as Synapse). `{"deleted_media": [...], "total": n}`.
pub async fn delete_user_media(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    if !state.accounts.user_exists(&user_id).await? {
        return Err(Error::not_found("Unknown user"));
    }
    let local = state.config.server_name().to_string();
    let mut deleted = Vec::new();
    for m in state.media.user_media(&user_id).await? {
        if state.media.delete_item(&local, &m.media_id).await? {
            deleted.push(m.media_id);
        }
    }
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

fn media_json(m: &AdminMedia) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`: one local item.
pub async fn delete_one(
    State(state): State<AppState>,
    _: Admin,
    AdminPath((server, media_id)): AdminPath<(String, String)>,
) -> Result<Json<Value>> {
    if !state.media.is_local_server(&server) {
        return Err(Error::invalid_param("Can only delete local media"));
    }
    if !state.media.delete_item(&server, &media_id).await? {
        return Err(Error::not_found("Unknown media"));
    }
    Ok(Json(json!({ "deleted_media": [media_id], "total": 1 })))
}

/// Query of `POST /_synapse/admin/v1/media/delete`.
#[derive(Deserialize)]
pub struct DeleteOldQuery {
    before_ts: Option<i64>,
    size_gt: Option<i64>,
    keep_profiles: Option<bool>,
}

/// `POST /_synapse/admin/v1/media/delete?before_ts=&size_gt=&keep_profiles=` (also under
/// `/v1/media/{serverName}/delete`, this server's name only).
pub async fn delete_old(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<DeleteOldQuery>,
) -> Result<Json<Value>> {
    let before_ts = q.before_ts.ok_or_else(|| Error::missing_param("Missing integer query parameter 'before_ts'"))?;
    if before_ts < 0 {
        return Err(Error::invalid_param("Query parameter before_ts must be a positive integer."));
    }
    // A timestamp in seconds would delete nothing useful: Synapse refuses those too.
    if before_ts < 30_000_000_000 {
        return Err(Error::invalid_param(
            "Query parameter before_ts you provided is from the year 1970. Double check that you are providing a timestamp in milliseconds.",
        ));
    }
    let size_gt = q.size_gt.unwrap_or(0);
    if size_gt < 0 {
        return Err(Error::invalid_param("Query parameter size_gt must be a string representing a positive integer."));
    }
    let deleted = state.media.delete_old_local(before_ts, size_gt, q.keep_profiles.unwrap_or(true)).await?;
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

/// `POST /_synapse/admin/v1/media/{serverName}/delete`: the older path of [`delete_old`].
pub async fn delete_old_of_server(
    state: State<AppState>,
    admin: Admin,
    AdminPath(server): AdminPath<String>,
    query: AdminQuery<DeleteOldQuery>,
) -> Result<Json<Value>> {
    if !state.media.is_local_server(&server) {
        return Err(Error::invalid_param("Can only delete local media"));
    }
    delete_old(state, admin, query).await
}

/// Query of `POST /_synapse/admin/v1/purge_media_cache`.
#[derive(Deserialize)]
pub struct PurgeCacheQuery {
    before_ts: Option<i64>,
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`: `{"deleted": n}`.
pub async fn purge_cache(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<PurgeCacheQuery>,
) -> Result<Json<Value>> {
    let before_ts = q.before_ts.ok_or_else(|| Error::missing_param("Missing integer query parameter 'before_ts'"))?;
    if before_ts < 0 {
        return Err(Error::invalid_param("Query parameter before_ts must be a positive integer."));
    }
    let deleted = state.media.purge_remote_cache(before_ts).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`
pub async fn quarantine_one(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath((server, media_id)): AdminPath<(String, String)>,
) -> Result<Json<Value>> {
    state.media.set_quarantine(&server, &media_id, Some(admin.user_id.as_str())).await?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`
pub async fn unquarantine_one(
    State(state): State<AppState>,
    _: Admin,
    AdminPath((server, media_id)): AdminPath<(String, String)>,
) -> Result<Json<Value>> {
    state.media.set_quarantine(&server, &media_id, None).await?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`: `{"num_quarantined": n}`.
pub async fn quarantine_room(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = RoomId::parse(&room).map_err(|e| Error::invalid_param(format!("Invalid room ID {room:?}: {e}")))?;
    let n = state.media.quarantine_room(room_id.as_str(), &admin.user_id).await?;
    Ok(Json(json!({ "num_quarantined": n })))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: `{"num_quarantined": n}`.
pub async fn quarantine_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    let n = state.media.quarantine_user(&user_id, &admin.user_id).await?;
    Ok(Json(json!({ "num_quarantined": n })))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}` and `unprotect`: local media.
async fn protect(state: &AppState, media_id: &str, protected: bool) -> Result<Json<Value>> {
    state.media.set_protected(media_id, protected).await?;
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}`
pub async fn protect_one(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(media_id): AdminPath<String>,
) -> Result<Json<Value>> {
    protect(&state, &media_id, true).await
}

/// `POST /_synapse/admin/v1/media/unprotect/{mediaId}`
pub async fn unprotect_one(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(media_id): AdminPath<String>,
) -> Result<Json<Value>> {
    protect(&state, &media_id, false).await
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/media`: `{"local": [mxc...], "remote": [mxc...]}`.
pub async fn room_media(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(room): AdminPath<String>,
) -> Result<Json<Value>> {
    let room_id = RoomId::parse(&room).map_err(|e| Error::invalid_param(format!("Invalid room ID {room:?}: {e}")))?;
    if !state.rooms.exists(&room_id).await? {
        return Err(Error::not_found("Room not found"));
    }
    let media = state.media.room_media(room_id.as_str()).await?;
    Ok(Json(json!({ "local": media.local, "remote": media.remote })))
}

/// Query of `GET /_synapse/admin/v1/statistics/users/media`.
#[derive(Deserialize)]
pub struct StatsQuery {
    from: Option<i64>,
    limit: Option<i64>,
    order_by: Option<String>,
    dir: Option<String>,
    from_ts: Option<i64>,
    until_ts: Option<i64>,
    search_term: Option<String>,
}

/// `GET /_synapse/admin/v1/statistics/users/media`: `users` (each `user_id`, `displayname`,
/// `media_count`, `media_length`), `total`, `next_token`.
pub async fn user_statistics(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<StatsQuery>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let order = q.order_by.as_deref().unwrap_or("user_id");
    if !["user_id", "displayname", "media_length", "media_count"].contains(&order) {
        return Err(Error::invalid_param(format!("Unknown value for order_by: {order}")));
    }
    let from_ts = q.from_ts.unwrap_or(0);
    let until_ts = q.until_ts.unwrap_or(i64::MAX);
    if from_ts < 0 || until_ts < 0 {
        return Err(Error::invalid_param("from_ts and until_ts must be positive integers"));
    }
    if until_ts <= from_ts {
        return Err(Error::invalid_param("Query parameter until_ts must be greater than from_ts."));
    }
    let backwards = direction(q.dir.as_deref(), false)?;
    let search = q.search_term.filter(|s| !s.is_empty()).map(|s| s.to_lowercase());
    let mut items = Vec::new();
    for s in state.media.user_statistics(from_ts, until_ts).await? {
        let hit = |v: &Option<String>| {
            v.as_deref().is_some_and(|v| v.to_lowercase().contains(search.as_deref().unwrap_or("")))
        };
        if search.is_some() && !hit(&Some(s.user_id.clone())) && !hit(&s.displayname) {
            continue;
        }
        items.push(json!({
            "user_id": s.user_id,
            "displayname": s.displayname,
            "media_count": s.media_count,
            "media_length": s.media_length,
        }));
    }
    let mut body = page(items, order, backwards, from, limit, "user_id");
    body["users"] = body["page"].take();
    body.as_object_mut().map(|o| o.remove("page"));
    Ok(Json(body))
}

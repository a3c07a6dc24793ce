//! Accounts: `/_synapse/admin/v2/users`, `/v3/users`, `/v2/users/{userId}`, deactivation,
//! password resets, whois (also the spec's `/_matrix/client/v3/admin/whois/{userId}`), the
//! admin flag and joined rooms.

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use ruma::api::client::admin::get_user_info;
use ruma::{RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminPath, AdminQuery, direction, local_user_id, paging};
use crate::accounts::admin::{AdminUserRow, USER_ORDER_COLUMNS, UserQuery};
use crate::accounts::users::ProfileField;
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// `GET /_synapse/admin/v1/server_version`
pub async fn server_version(_: Admin) -> Json<Value> {
    Json(json!({ "server_version": env!("CARGO_PKG_VERSION") }))
}

/// A user in the users list. Guests and user types do not exist on this server, so those
/// fields are constant. `creation_ts` is in seconds, as Synapse stores and
/// serves it (its documentation says ms; synapse-admin/Ketesa multiply it by 1000).
fn list_entry(u: &AdminUserRow) -> Value {
    json!({
        "name": u.user_id,
        "is_guest": false,
        "admin": u.is_admin,
        "user_type": null,
        "deactivated": u.deactivated,
        "erased": u.erased,
        "shadow_banned": u.shadow_banned,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "creation_ts": u.creation_ts / 1000,
        "last_seen_ts": u.last_seen_ts,
        "locked": u.locked,
    })
}

/// A user as `GET /_synapse/admin/v2/users/{userId}` shows it.
fn details(u: &AdminUserRow) -> Value {
    let mut v = list_entry(u);
    for (key, value) in [
        ("threepids", json!([])),
        ("external_ids", json!([])),
        ("appservice_id", Value::Null),
        ("consent_server_notice_sent", Value::Null),
        ("consent_version", Value::Null),
        ("consent_ts", Value::Null),
        ("suspended", json!(u.suspended)),
    ] {
        v[key] = value;
    }
    v
}

/// Query of the users list.
#[derive(Deserialize)]
pub struct ListUsers {
    from: Option<i64>,
    limit: Option<i64>,
    user_id: Option<String>,
    name: Option<String>,
    deactivated: Option<bool>,
    admins: Option<bool>,
    locked: Option<bool>,
    order_by: Option<String>,
    dir: Option<String>,
}

async fn list(state: &AppState, q: ListUsers, deactivated: Option<bool>) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let order = q.order_by.as_deref().unwrap_or("name");
    let order_by = USER_ORDER_COLUMNS
        .iter()
        .find(|(name, _)| *name == order)
        .map(|(_, column)| *column)
        .ok_or_else(|| Error::invalid_param(format!("Unknown value for order_by: {order}")))?;
    let query = UserQuery {
        user_id: q.user_id.filter(|s| !s.is_empty()),
        name: q.name.filter(|s| !s.is_empty()),
        deactivated,
        admins: q.admins,
        include_locked: q.locked.unwrap_or(false),
        order_by,
        backwards: direction(q.dir.as_deref(), false)?,
        from,
        limit,
    };
    let (users, total) = state.accounts.admin_users(&query).await?;
    let mut body = json!({ "users": users.iter().map(list_entry).collect::<Vec<_>>(), "total": total });
    if from + (users.len() as i64) < total {
        body["next_token"] = json!((from + users.len() as i64).to_string());
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v2/users`: deactivated accounts only with `deactivated=true`.
pub async fn list_v2(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListUsers>,
) -> Result<Json<Value>> {
    let deactivated = if q.deactivated == Some(true) { None } else { Some(false) };
    list(&state, q, deactivated).await
}

/// `GET /_synapse/admin/v3/users`: `deactivated` filters both ways, absent lists all.
pub async fn list_v3(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListUsers>,
) -> Result<Json<Value>> {
    let deactivated = q.deactivated;
    list(&state, q, deactivated).await
}

async fn existing(state: &AppState, user_id: &UserId) -> Result<AdminUserRow> {
    state.accounts.admin_user(user_id).await?.ok_or_else(|| Error::not_found("User not found"))
}

/// `GET /_synapse/admin/v2/users/{userId}`
pub async fn get(State(state): State<AppState>, _: Admin, AdminPath(user): AdminPath<String>) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    Ok(Json(details(&existing(&state, &user_id).await?)))
}

/// Body of `PUT /_synapse/admin/v2/users/{userId}`; `threepids` and `external_ids` are
/// accepted and ignored (this server has neither).
#[derive(Deserialize)]
pub struct PutUser {
    password: Option<String>,
    logout_devices: Option<bool>,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    locked: Option<bool>,
    #[serde(default)]
    user_type: Option<String>,
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (201) or changes it (200).
pub async fn put(
    State(state): State<AppState>,
    Admin(caller): Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<PutUser>,
) -> Result<(StatusCode, Json<Value>)> {
    let user_id = local_user_id(&state, &user)?;
    if body.user_type.is_some() {
        return Err(Error::invalid_param("User types are not supported by this server"));
    }
    if let Some(url) = body.avatar_url.as_deref().filter(|u| !u.is_empty())
        && !url.starts_with("mxc://")
    {
        return Err(Error::invalid_param("avatar_url must be an mxc:// URI"));
    }
    if let Some(name) = &body.displayname
        && name.len() > 256
    {
        return Err(Error::invalid_param("displayname is too long"));
    }
    let accounts = &state.accounts;
    let Some(current) = accounts.admin_user(&user_id).await? else {
        state
            .accounts
            .admin_create(&user_id, body.password, body.admin.unwrap_or(false), body.displayname.as_deref())
            .await?;
        if let Some(url) = body.avatar_url.as_deref().filter(|u| !u.is_empty()) {
            accounts.set_profile_field(&user_id, ProfileField::AvatarUrl, Some(url)).await?;
        }
        if body.deactivated == Some(true) {
            deactivate_account(&state, &user_id, false).await?;
        }
        if body.locked == Some(true) {
            accounts.admin_set_locked(&user_id, true).await?;
        }
        return Ok((StatusCode::CREATED, Json(details(&existing(&state, &user_id).await?))));
    };
    if let Some(admin) = body.admin
        && admin != current.is_admin
    {
        if !admin && user_id == caller.user_id {
            return Err(Error::invalid_param("You may not demote yourself."));
        }
        accounts.admin_set_admin(&user_id, admin).await?;
    }
    if let Some(locked) = body.locked
        && locked != current.locked
    {
        if locked && user_id == caller.user_id {
            return Err(Error::invalid_param("You may not lock yourself."));
        }
        accounts.admin_set_locked(&user_id, locked).await?;
    }
    let mut profile_changed = false;
    for (field, value) in [(ProfileField::DisplayName, &body.displayname), (ProfileField::AvatarUrl, &body.avatar_url)]
    {
        if let Some(value) = value {
            let value = Some(value.as_str()).filter(|v| !v.is_empty());
            accounts.set_profile_field(&user_id, field, value).await?;
            profile_changed = true;
        }
    }
    match body.deactivated {
        Some(true) if !current.deactivated => deactivate_account(&state, &user_id, false).await?,
        Some(false) if current.deactivated => {
            if body.password.is_none() {
                return Err(Error::invalid_param("Must provide a password to re-activate an account."));
            }
            accounts.admin_reactivate(&user_id).await?;
        }
        _ => {}
    }
    if let Some(password) = body.password
        && body.deactivated != Some(true)
    {
        if password.is_empty() {
            return Err(Error::invalid_param("Invalid password"));
        }
        if state.accounts.admin_set_password(&user_id, password, body.logout_devices.unwrap_or(true)).await? {
            state.e2ee.keys_changed(user_id.as_str()).await;
        }
    }
    if profile_changed && body.deactivated != Some(true) {
        state.rooms.propagate_profile(&user_id).await?;
    }
    Ok((StatusCode::OK, Json(details(&existing(&state, &user_id).await?))))
}

/// Deactivates an account as Synapse does: password, devices, tokens, keys and pushers go, the user
/// leaves every room and declines every invite; `erase` also removes the profile and marks
/// the account erased.
async fn deactivate_account(state: &AppState, user_id: &UserId, erase: bool) -> Result<()> {
    if erase {
        state.accounts.admin_erase(user_id).await?;
    }
    state.accounts.deactivate(user_id).await?;
    state.e2ee.keys_changed(user_id.as_str()).await;
    for membership in ["join", "invite", "knock"] {
        for room in state.rooms.rooms_with_membership(user_id, membership).await? {
            let Ok(room_id) = RoomId::parse(&room) else { continue };
            if let Err(e) = state.rooms.leave(&room_id, user_id, None).await {
                // The account is deactivated either way; a room we cannot leave is logged.
                tracing::warn!(%user_id, %room_id, error = %e, "deactivated user could not leave a room");
            }
        }
    }
    tracing::info!(%user_id, erase, "deactivated through the admin API");
    Ok(())
}

/// Body of `POST /_synapse/admin/v1/deactivate/{userId}`.
#[derive(Deserialize)]
pub struct Deactivate {
    #[serde(default)]
    erase: bool,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}`
pub async fn deactivate(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<Deactivate>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    existing(&state, &user_id).await?;
    deactivate_account(&state, &user_id, body.erase).await?;
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

/// Body of `POST /_synapse/admin/v1/reset_password/{userId}`.
#[derive(Deserialize)]
pub struct ResetPassword {
    new_password: Option<String>,
    logout_devices: Option<bool>,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`
pub async fn reset_password(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<ResetPassword>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    let password = body.new_password.ok_or_else(|| Error::missing_param("Missing params: ['new_password']"))?;
    if password.is_empty() {
        return Err(Error::invalid_param("new_password must not be empty"));
    }
    existing(&state, &user_id).await?;
    if state.accounts.admin_set_password(&user_id, password, body.logout_devices.unwrap_or(true)).await? {
        state.e2ee.keys_changed(user_id.as_str()).await;
    }
    Ok(Json(json!({})))
}

/// The whois answer: each device's last connection (the user agent is not recorded).
async fn whois_of(state: &AppState, user_id: &UserId) -> Result<Value> {
    let mut devices = serde_json::Map::new();
    for d in state.accounts.devices(user_id).await? {
        let connections: Vec<Value> = match (&d.last_seen_ip, d.last_seen_ts) {
            (Some(ip), Some(ts)) => vec![json!({ "ip": ip, "last_seen": ts })],
            _ => Vec::new(),
        };
        devices.insert(d.device_id, json!({ "sessions": [{ "connections": connections }] }));
    }
    Ok(json!({ "user_id": user_id, "devices": devices }))
}

/// `GET /_synapse/admin/v1/whois/{userId}`
pub async fn whois(State(state): State<AppState>, _: Admin, AdminPath(user): AdminPath<String>) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    Ok(Json(whois_of(&state, &user_id).await?))
}

/// `GET /_matrix/client/v3/admin/whois/{userId}`: server admins about anyone, users about
/// themselves.
pub async fn client_whois(State(state): State<AppState>, req: Ruma<get_user_info::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    if req.body.user_id != s.user_id && !s.is_admin {
        return Err(Error::forbidden("You are not a server admin"));
    }
    let user_id = local_user_id(&state, req.body.user_id.as_str())?;
    Ok(Json(whois_of(&state, &user_id).await?))
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`
pub async fn get_admin(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    Ok(Json(json!({ "admin": existing(&state, &user_id).await?.is_admin })))
}

/// Body of `PUT /_synapse/admin/v1/users/{userId}/admin`.
#[derive(Deserialize)]
pub struct SetAdmin {
    admin: bool,
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin`
pub async fn set_admin(
    State(state): State<AppState>,
    Admin(caller): Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<SetAdmin>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    existing(&state, &user_id).await?;
    if !body.admin && user_id == caller.user_id {
        return Err(Error::invalid_param("You may not demote yourself."));
    }
    state.accounts.admin_set_admin(&user_id, body.admin).await?;
    Ok(Json(json!({})))
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`
pub async fn joined_rooms(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = super::user_id(&user)?;
    let rooms = state.rooms.joined_rooms(&user_id).await?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// `GET /_synapse/admin/v1/users/{userId}/memberships`: every room the user has a membership in.
pub async fn memberships(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = super::user_id(&user)?;
    let rows = state.accounts.admin_memberships(&user_id).await?;
    let memberships: serde_json::Map<String, Value> = rows.into_iter().map(|(room, m)| (room, json!(m))).collect();
    Ok(Json(json!({ "memberships": memberships })))
}

/// `GET /_synapse/admin/v1/users/{userId}/pushers`
pub async fn pushers(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = local_user_id(&state, &user)?;
    existing(&state, &user_id).await?;
    let mut body = state.accounts.pushers(&user_id).await?;
    body["total"] = json!(body["pushers"].as_array().map_or(0, Vec::len));
    Ok(Json(body))
}

//! Per-user admin endpoints that tools call besides the account itself:
//! `GET /_synapse/admin/v1/users/{userId}/accountdata` and
//! `GET`/`POST`/`DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit` and
//! `POST`/`DELETE /_synapse/admin/v1/users/{userId}/shadow_ban` (its effects: `rooms::shadow_ban`).

use axum::Json;
use axum::extract::State;
use serde_json::{Map, Value, json};

use ruma::OwnedUserId;

use super::{Admin, AdminJson, AdminPath, local_user_id};
use crate::accounts::admin::RateOverride;
use crate::api::AppState;
use crate::error::{Error, Result};

/// The local account named in the path, which must exist.
async fn existing(state: &AppState, raw: &str) -> Result<OwnedUserId> {
    let user_id = local_user_id(state, raw)?;
    if state.accounts.admin_user(&user_id).await?.is_none() {
        return Err(Error::not_found("User not found"));
    }
    Ok(user_id)
}

/// `GET /_synapse/admin/v1/users/{userId}/accountdata`: `{"account_data": {"global": {type:
/// content}, "rooms": {roomId: {type: content}}}}`, as Synapse answers it.
pub async fn account_data(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    Ok(Json(json!({ "account_data": state.sync.all_account_data(&user_id).await? })))
}

fn rate_json(rate: Option<RateOverride>) -> Value {
    match rate {
        Some(r) => json!({ "messages_per_second": r.messages_per_second, "burst_count": r.burst_count }),
        None => json!({}),
    }
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit`: the override, `{}` without one.
pub async fn get_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    Ok(Json(rate_json(state.accounts.ratelimit_override(&user_id).await?)))
}

/// Reads a non-negative integer field of the override body (absent: 0).
fn count(body: &Map<String, Value>, field: &str) -> Result<i64> {
    match body.get(field) {
        None => Ok(0),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 0)
            .ok_or_else(|| Error::invalid_param(format!("{field:?} parameter must be a positive int"))),
    }
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit`: `messages_per_second` and
/// `burst_count` (non-negative integers, default 0; both 0: not limited). Applies at once on
/// this process, within `ratelimit::OVERRIDE_TTL` on the others.
pub async fn set_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<Map<String, Value>>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    let rate = RateOverride {
        messages_per_second: count(&body, "messages_per_second")?,
        burst_count: count(&body, "burst_count")?,
    };
    state.accounts.set_ratelimit_override(&user_id, rate).await?;
    state.limits.forget_override(user_id.as_str());
    Ok(Json(rate_json(Some(rate))))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`: back to the configured rate.
pub async fn delete_ratelimit(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    state.accounts.delete_ratelimit_override(&user_id).await?;
    state.limits.forget_override(user_id.as_str());
    Ok(Json(json!({})))
}

/// `POST /_synapse/admin/v1/users/{userId}/shadow_ban`: `{}`.
pub async fn shadow_ban(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    state.accounts.set_shadow_banned(&user_id, true).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`: `{}`.
pub async fn lift_shadow_ban(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
) -> Result<Json<Value>> {
    let user_id = existing(&state, &user).await?;
    state.accounts.set_shadow_banned(&user_id, false).await?;
    Ok(Json(json!({})))
}

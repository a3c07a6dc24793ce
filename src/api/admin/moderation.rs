//! The spec's account moderation endpoints (v1.18): `GET`/`PUT
//! /_matrix/client/v1/admin/lock/{userId}` and `/admin/suspend/{userId}`, for server admins.
//! What the states do: `api::suspension`.

use axum::Json;
use axum::extract::State;
use ruma::api::client::admin::{is_user_locked, is_user_suspended, lock_user, suspend_user};
use serde_json::{Value, json};

use crate::accounts::Session;
use crate::accounts::admin::Restriction;
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

/// The caller, who must be a server admin; checked before the target is looked up.
fn admin<T>(req: &Ruma<T>) -> Result<&Session> {
    let s = req.session()?;
    if !s.is_admin {
        return Err(Error::forbidden("Requesting user is not a server administrator."));
    }
    Ok(s)
}

/// `GET /_matrix/client/v1/admin/lock/{userId}`
pub async fn is_locked(State(state): State<AppState>, req: Ruma<is_user_locked::v1::Request>) -> Result<Json<Value>> {
    let s = admin(&req)?;
    let locked = state.accounts.restriction(&s.user_id, &req.body.user_id, Restriction::Lock).await?;
    Ok(Json(json!({ "locked": locked })))
}

/// `PUT /_matrix/client/v1/admin/lock/{userId}`
pub async fn lock(State(state): State<AppState>, req: Ruma<lock_user::v1::Request>) -> Result<Json<Value>> {
    admin(&req)?;
    state.accounts.set_restriction(&req.body.user_id, Restriction::Lock, req.body.locked).await?;
    Ok(Json(json!({ "locked": req.body.locked })))
}

/// `GET /_matrix/client/v1/admin/suspend/{userId}`
pub async fn is_suspended(
    State(state): State<AppState>,
    req: Ruma<is_user_suspended::v1::Request>,
) -> Result<Json<Value>> {
    let s = admin(&req)?;
    let suspended = state.accounts.restriction(&s.user_id, &req.body.user_id, Restriction::Suspend).await?;
    Ok(Json(json!({ "suspended": suspended })))
}

/// `PUT /_matrix/client/v1/admin/suspend/{userId}`
pub async fn suspend(State(state): State<AppState>, req: Ruma<suspend_user::v1::Request>) -> Result<Json<Value>> {
    admin(&req)?;
    state.accounts.set_restriction(&req.body.user_id, Restriction::Suspend, req.body.suspended).await?;
    Ok(Json(json!({ "suspended": req.body.suspended })))
}

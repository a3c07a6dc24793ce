//! User profiles: display name and avatar, propagated into member events.

use axum::Json;
use axum::extract::State;
use ruma::api::client::profile::{delete_profile_field, get_profile, get_profile_field, set_profile_field};
use serde_json::{Value, json};

use crate::accounts::users::ProfileField;
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

fn field_of(name: &str) -> Result<ProfileField> {
    match name {
        "displayname" => Ok(ProfileField::DisplayName),
        "avatar_url" => Ok(ProfileField::AvatarUrl),
        other => Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            "M_UNRECOGNIZED",
            format!("Unsupported profile field {other}"),
        )),
    }
}

/// The public profile of a user: from the database for local users, asked of the user's server
/// over federation for remote ones (not cached: clients ask rarely, and the answer may change).
async fn profile_json(state: &AppState, user_id: &ruma::UserId) -> Result<Value> {
    if *user_id.server_name() != *state.config.server_name() {
        return remote_profile(state, user_id).await;
    }
    state.appservices.ensure_user(user_id.as_str()).await?;
    let user = state.accounts.user(user_id).await?.filter(|u| !u.deactivated);
    let Some(user) = user else { return Err(Error::not_found("Profile was not found")) };
    let mut out = json!({});
    if let Some(d) = user.displayname {
        out["displayname"] = json!(d);
    }
    if let Some(a) = user.avatar_url {
        out["avatar_url"] = json!(a);
    }
    Ok(out)
}

async fn remote_profile(state: &AppState, user_id: &ruma::UserId) -> Result<Value> {
    let Some(fed) = state.rooms.federation() else {
        return Err(Error::not_found("Profile was not found"));
    };
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        url::form_urlencoded::byte_serialize(user_id.as_str().as_bytes()).collect::<String>()
    );
    let answer = fed
        .request(user_id.server_name(), http::Method::GET, &path, None)
        .await
        .map_err(|e| if e.errcode == "M_NOT_FOUND" { Error::not_found("Profile was not found") } else { e })?;
    // Only the two fields this server knows, and only as strings: the answer is untrusted.
    let mut out = json!({});
    for key in ["displayname", "avatar_url"] {
        if let Some(v) = answer.get(key).and_then(Value::as_str).filter(|v| v.len() <= 1024) {
            out[key] = json!(v);
        }
    }
    Ok(out)
}

/// `GET /_matrix/client/v3/profile/{userId}`
pub async fn get(State(state): State<AppState>, req: Ruma<get_profile::v3::Request>) -> Result<Json<Value>> {
    Ok(Json(profile_json(&state, &req.body.user_id).await?))
}

/// `GET /_matrix/client/v3/profile/{userId}/{field}`
pub async fn get_field(
    State(state): State<AppState>,
    req: Ruma<get_profile_field::v3::Request>,
) -> Result<Json<Value>> {
    let name = req.body.field.as_str().to_owned();
    field_of(&name)?;
    let profile = profile_json(&state, &req.body.user_id).await?;
    match profile.get(&name) {
        Some(v) => Ok(Json(json!({ name: v }))),
        None => Err(Error::not_found("The requested profile field is not set")),
    }
}

/// `PUT /_matrix/client/v3/profile/{userId}/{field}`
pub async fn set_field(
    State(state): State<AppState>,
    req: Ruma<set_profile_field::v3::Request>,
) -> Result<Json<Value>> {
    let name = req.body.value.field_name().as_str().to_owned();
    let field = field_of(&name)?;
    let value = req.json.as_ref().and_then(|j| j.get(&name)).cloned().unwrap_or(Value::Null);
    let value = match value {
        Value::String(v) if v.len() <= 256 || name == "avatar_url" => Some(v),
        Value::String(_) => return Err(Error::bad_json("Display name is too long")),
        Value::Null => None,
        _ => return Err(Error::bad_json(format!("{name} must be a string"))),
    };
    store_field(&state, req.session()?, &req.body.user_id, field, value.as_deref()).await
}

/// Sets (or with None, removes) a field of the session's own profile and updates the user's
/// member events.
async fn store_field(
    state: &AppState,
    session: &crate::accounts::Session,
    user_id: &ruma::UserId,
    field: ProfileField,
    value: Option<&str>,
) -> Result<Json<Value>> {
    if *user_id != session.user_id {
        return Err(Error::forbidden("Cannot change another user's profile"));
    }
    state.accounts.set_profile_field(&session.user_id, field, value).await?;
    state.rooms.propagate_profile(&session.user_id).await?;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/profile/{userId}/{field}`
pub async fn delete_field(
    State(state): State<AppState>,
    req: Ruma<delete_profile_field::v3::Request>,
) -> Result<Json<Value>> {
    let field = field_of(req.body.field.as_str())?;
    store_field(&state, req.session()?, &req.body.user_id, field, None).await
}

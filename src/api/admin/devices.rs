//! A user's devices: `/_synapse/admin/v2/users/{userId}/devices[/{deviceId}]` and
//! `/delete_devices`. Deleting a device deletes its access tokens, keys and pushers, as a
//! logout does.

use axum::Json;
use axum::extract::State;
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminJson, AdminPath, local_user_id};
use crate::accounts::devices::DeviceRow;
use crate::api::AppState;
use crate::error::{Error, Result};

fn device_json(user_id: &str, d: &DeviceRow) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
        "last_seen_user_agent": null,
        "user_id": user_id,
    })
}

/// The local user of the path, who must exist.
async fn known_user(state: &AppState, raw: &str) -> Result<OwnedUserId> {
    let user_id = local_user_id(state, raw)?;
    if !state.accounts.user_exists(&user_id).await? {
        return Err(Error::not_found("Unknown user"));
    }
    Ok(user_id)
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`
pub async fn list(State(state): State<AppState>, _: Admin, AdminPath(user): AdminPath<String>) -> Result<Json<Value>> {
    let user_id = known_user(&state, &user).await?;
    let devices = state.accounts.devices(&user_id).await?;
    let devices: Vec<Value> = devices.iter().map(|d| device_json(user_id.as_str(), d)).collect();
    Ok(Json(json!({ "total": devices.len(), "devices": devices })))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub async fn get(
    State(state): State<AppState>,
    _: Admin,
    AdminPath((user, device)): AdminPath<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = known_user(&state, &user).await?;
    let d = state.accounts.device(&user_id, &device).await?;
    let d = d.ok_or_else(|| Error::not_found("No device found"))?;
    Ok(Json(device_json(user_id.as_str(), &d)))
}

/// Body of `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}`.
#[derive(Deserialize)]
pub struct UpdateDevice {
    display_name: Option<String>,
}

/// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}`: renames the device.
pub async fn update(
    State(state): State<AppState>,
    _: Admin,
    AdminPath((user, device)): AdminPath<(String, String)>,
    AdminJson(body): AdminJson<UpdateDevice>,
) -> Result<Json<Value>> {
    let user_id = known_user(&state, &user).await?;
    if !state.accounts.rename_device(&user_id, &device, body.display_name.as_deref()).await? {
        return Err(Error::not_found("No device found"));
    }
    Ok(Json(json!({})))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}` (a device that does not exist
/// is already deleted: 200, as on Synapse).
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    AdminPath((user, device)): AdminPath<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = known_user(&state, &user).await?;
    state.accounts.delete_devices(&user_id, &[device]).await?;
    state.e2ee.keys_changed(user_id.as_str()).await;
    Ok(Json(json!({})))
}

/// Body of `POST /_synapse/admin/v2/users/{userId}/delete_devices`.
#[derive(Deserialize)]
pub struct DeleteDevices {
    devices: Vec<String>,
}

/// `POST /_synapse/admin/v2/users/{userId}/delete_devices`
pub async fn delete_many(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(user): AdminPath<String>,
    AdminJson(body): AdminJson<DeleteDevices>,
) -> Result<Json<Value>> {
    let user_id = known_user(&state, &user).await?;
    state.accounts.delete_devices(&user_id, &body.devices).await?;
    state.e2ee.keys_changed(user_id.as_str()).await;
    Ok(Json(json!({})))
}

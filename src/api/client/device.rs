//! Device management.

use axum::Json;
use axum::extract::State;
use ruma::api::client::device::{delete_device, delete_devices, get_device, get_devices, update_device};
use serde_json::{Value, json};

use crate::accounts::devices::DeviceRow;
use crate::accounts::uia::{self, UiaRequest};
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};

fn device_json(d: &DeviceRow) -> Value {
    json!({
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
    })
}

/// `GET /_matrix/client/v3/devices`
pub async fn list(State(state): State<AppState>, req: Ruma<get_devices::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let devices = state.accounts.devices(&s.user_id).await?;
    Ok(Json(json!({ "devices": devices.iter().map(device_json).collect::<Vec<_>>() })))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub async fn get(State(state): State<AppState>, req: Ruma<get_device::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let device = state.accounts.device(&s.user_id, req.body.device_id.as_str()).await?;
    device.map(|d| Json(device_json(&d))).ok_or_else(|| Error::not_found("Device not found"))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub async fn update(State(state): State<AppState>, req: Ruma<update_device::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    if !state.accounts.rename_device(&s.user_id, req.body.device_id.as_str(), req.body.display_name.as_deref()).await? {
        return Err(Error::not_found("Device not found"));
    }
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(Json(json!({})))
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub async fn delete(State(state): State<AppState>, req: Ruma<delete_device::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    if state.accounts.device(&s.user_id, req.body.device_id.as_str()).await?.is_none() {
        return Err(Error::not_found("Device not found"));
    }
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(req.body.auth.as_ref(), UiaRequest { flows, user_id: Some(&s.user_id), operation: "delete_device" })
        .await?;
    state.accounts.delete_devices(&s.user_id, &[req.body.device_id.to_string()]).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/delete_devices`
pub async fn delete_many(State(state): State<AppState>, req: Ruma<delete_devices::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let flows = vec![vec![uia::PASSWORD]];
    state
        .accounts
        .check_uia(req.body.auth.as_ref(), UiaRequest { flows, user_id: Some(&s.user_id), operation: "delete_devices" })
        .await?;
    let ids: Vec<String> = req.body.devices.iter().map(|d| d.to_string()).collect();
    state.accounts.delete_devices(&s.user_id, &ids).await?;
    state.e2ee.keys_changed(s.user_id.as_str()).await;
    Ok(Json(json!({})))
}

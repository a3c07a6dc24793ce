//! Reporting rooms, events and users to the server's moderators. Reports are stored (table
//! `reports`) for the operator; the reporter learns nothing about who reads them.

use axum::Json;
use axum::extract::State;
use ruma::api::client::reporting::report_user;
use ruma::api::client::room::{report_content, report_room};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::rooms::admin::Reported;

/// Longest reason kept, in bytes: a report is read by a person.
const MAX_REASON: usize = 16 * 1024;

fn checked_reason(reason: Option<&str>) -> Result<Option<&str>> {
    match reason {
        Some(r) if r.len() > MAX_REASON => {
            Err(Error::invalid_param(format!("The reason is longer than {MAX_REASON} bytes")))
        }
        r => Ok(r),
    }
}

async fn store(state: &AppState, reporter: &ruma::UserId, what: Reported<'_>, reason: Option<&str>) -> Result<()> {
    let reason = checked_reason(reason)?;
    state.rooms.insert_report(reporter, what, reason).await?;
    tracing::info!(reporter = %reporter, ?what, "report received");
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
pub async fn event(State(state): State<AppState>, req: Ruma<report_content::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let (room_id, event_id) = (&req.body.room_id, &req.body.event_id);
    // Only members may report, and only what they can see (spec: 404 for both).
    if state.rooms.membership_of(room_id, &s.user_id).await?.as_deref() != Some("join") {
        return Err(Error::not_found("The event was not found or you are not joined to its room"));
    }
    state.rooms.event_for(room_id, &s.user_id, event_id.as_str()).await?;
    let what = Reported::Event { room_id: room_id.as_str(), event_id: event_id.as_str() };
    store(&state, &s.user_id, what, req.body.reason.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
pub async fn room(State(state): State<AppState>, req: Ruma<report_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let room_id = &req.body.room_id;
    if !state.rooms.exists(room_id).await? {
        return Err(Error::not_found("The room was not found on this server"));
    }
    store(&state, &s.user_id, Reported::Room { room_id: room_id.as_str() }, Some(&req.body.reason)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/users/{userId}/report`
pub async fn user(State(state): State<AppState>, req: Ruma<report_user::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let user_id = &req.body.user_id;
    if !state.rooms.user_known(user_id).await? {
        return Err(Error::not_found("The user was not found on this server"));
    }
    store(&state, &s.user_id, Reported::User { user_id: user_id.as_str() }, Some(&req.body.reason)).await?;
    Ok(Json(json!({})))
}

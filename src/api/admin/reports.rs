//! Event reports: `/_synapse/admin/v1/event_reports[/{reportId}]`, over the reports users make
//! with `POST /rooms/{roomId}/report/{eventId}` (table `reports`). Report ids are the stored
//! random strings, not Synapse's integers.

use axum::Json;
use axum::extract::State;
use ruma::RoomId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminPath, AdminQuery, direction, paging};
use crate::api::AppState;
use crate::error::{Error, Result};
use crate::rooms::admin::{EventReportRow, ReportQuery};

/// A report with the room's name and alias, as Synapse lists it.
async fn report_json(state: &AppState, r: &EventReportRow) -> Result<Value> {
    let (mut name, mut alias) = (Value::Null, Value::Null);
    if let Ok(room_id) = RoomId::parse(&r.room_id) {
        if let Some(ev) = state.rooms.current_state_event(&room_id, "m.room.name", "").await? {
            name = ev.content()["name"].clone();
        }
        if let Some(ev) = state.rooms.current_state_event(&room_id, "m.room.canonical_alias", "").await? {
            alias = ev.content()["alias"].clone();
        }
    }
    Ok(json!({
        "id": r.id,
        "received_ts": r.received_ts,
        "room_id": r.room_id,
        "name": name,
        "event_id": r.event_id,
        "user_id": r.reporter,
        "reason": r.reason,
        "score": r.score,
        "sender": r.sender,
        "canonical_alias": alias,
    }))
}

/// Query of the report list.
#[derive(Deserialize)]
pub struct ListReports {
    from: Option<i64>,
    limit: Option<i64>,
    dir: Option<String>,
    user_id: Option<String>,
    room_id: Option<String>,
}

/// `GET /_synapse/admin/v1/event_reports` (newest first unless `dir=f`).
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListReports>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let query = ReportQuery {
        user_id: q.user_id.filter(|s| !s.is_empty()),
        room_id: q.room_id.filter(|s| !s.is_empty()),
        forwards: !direction(q.dir.as_deref(), true)?,
        from,
        limit,
    };
    let (rows, total) = state.rooms.event_reports(&query).await?;
    let mut reports = Vec::with_capacity(rows.len());
    for r in &rows {
        reports.push(report_json(&state, r).await?);
    }
    let mut body = json!({ "event_reports": reports, "total": total });
    if from + (rows.len() as i64) < total {
        body["next_token"] = json!(from + rows.len() as i64);
    }
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`: the report and the event as stored.
pub async fn get(State(state): State<AppState>, _: Admin, AdminPath(id): AdminPath<String>) -> Result<Json<Value>> {
    let r = state.rooms.event_report(&id).await?;
    let r = r.ok_or_else(|| Error::not_found("Event report not found"))?;
    let mut body = report_json(&state, &r).await?;
    let pdus = state.rooms.cached_pdus(std::slice::from_ref(&r.event_id)).await?;
    body["event_json"] = pdus.get(&r.event_id).map(|p| p.federation_json()).unwrap_or(Value::Null);
    Ok(Json(body))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`
pub async fn delete(State(state): State<AppState>, _: Admin, AdminPath(id): AdminPath<String>) -> Result<Json<Value>> {
    if !state.rooms.delete_event_report(&id).await? {
        return Err(Error::not_found("Event report not found"));
    }
    Ok(Json(json!({})))
}

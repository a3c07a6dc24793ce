//! Federation destinations: `/_synapse/admin/v1/federation/destinations[/{destination}]`,
//! `.../rooms` and `.../reset_connection`, from the retry state the federation sender records
//! (`storage/destinations.rs`).

use std::cmp::Ordering;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, AdminPath, AdminQuery, direction, paging};
use crate::api::AppState;
use crate::error::{Error, Result};

/// Orders of the list (Synapse's).
const ORDERS: &[&str] =
    &["destination", "retry_last_ts", "retry_interval", "failure_ts", "last_successful_stream_ordering"];

/// Query of the list.
#[derive(Deserialize)]
pub struct ListQuery {
    from: Option<i64>,
    limit: Option<i64>,
    order_by: Option<String>,
    dir: Option<String>,
    destination: Option<String>,
}

fn compare(a: &Value, b: &Value) -> Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_i64().cmp(&y.as_i64()),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => Ordering::Equal,
    }
}

/// `GET /_synapse/admin/v1/federation/destinations`: `destinations` (each `destination`,
/// `retry_last_ts`, `retry_interval`, `failure_ts`, `last_successful_stream_ordering`),
/// `total`, `next_token`.
pub async fn list(
    State(state): State<AppState>,
    _: Admin,
    AdminQuery(q): AdminQuery<ListQuery>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let order = q.order_by.as_deref().unwrap_or("destination");
    if !ORDERS.contains(&order) {
        return Err(Error::invalid_param(format!("Unknown value for order_by: {order}")));
    }
    let backwards = direction(q.dir.as_deref(), false)?;
    let search = q.destination.filter(|d| !d.is_empty()).map(|d| d.to_lowercase());
    let mut items: Vec<Value> = state
        .federation
        .destinations()
        .await?
        .into_iter()
        .filter(|d| search.as_deref().is_none_or(|s| d.destination.to_lowercase().contains(s)))
        .map(|d| serde_json::to_value(d).unwrap_or(Value::Null))
        .collect();
    items.sort_by(|a, b| {
        let o = compare(&a[order], &b[order]);
        let o = if backwards { o.reverse() } else { o };
        o.then_with(|| compare(&a["destination"], &b["destination"]))
    });
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(from as usize).take(limit as usize).collect();
    let mut body = json!({ "total": total });
    if (from as usize).saturating_add(page.len()) < total {
        body["next_token"] = json!((from as usize + page.len()).to_string());
    }
    body["destinations"] = json!(page);
    Ok(Json(body))
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}`
pub async fn get(State(state): State<AppState>, _: Admin, AdminPath(dest): AdminPath<String>) -> Result<Json<Value>> {
    let d = state.federation.destination(&dest).await?.ok_or_else(|| Error::not_found("Unknown destination"))?;
    Ok(Json(serde_json::to_value(d)?))
}

/// Query of the rooms of a destination.
#[derive(Deserialize)]
pub struct RoomsQuery {
    from: Option<i64>,
    limit: Option<i64>,
    dir: Option<String>,
}

/// `GET /_synapse/admin/v1/federation/destinations/{destination}/rooms`: `rooms` (each `room_id`
/// and `stream_ordering`, the room's newest event at or before the destination's last
/// successful position), `total`, `next_token`.
pub async fn rooms(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(dest): AdminPath<String>,
    AdminQuery(q): AdminQuery<RoomsQuery>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let backwards = direction(q.dir.as_deref(), false)?;
    let d = state.federation.destination(&dest).await?.ok_or_else(|| Error::not_found("Unknown destination"))?;
    let mut rooms = state.federation.destination_rooms(&dest, d.last_successful_stream_ordering).await?;
    if backwards {
        rooms.reverse();
    }
    let total = rooms.len();
    let page: Vec<Value> = rooms
        .into_iter()
        .skip(from as usize)
        .take(limit as usize)
        .map(|(room_id, stream)| json!({ "room_id": room_id, "stream_ordering": stream }))
        .collect();
    let mut body = json!({ "total": total });
    if (from as usize).saturating_add(page.len()) < total {
        body["next_token"] = json!((from as usize + page.len()).to_string());
    }
    body["rooms"] = json!(page);
    Ok(Json(body))
}

/// `POST /_synapse/admin/v1/federation/destinations/{destination}/reset_connection`: ends the
/// backoff, so that the sender tries the destination again now.
pub async fn reset_connection(
    State(state): State<AppState>,
    _: Admin,
    AdminPath(dest): AdminPath<String>,
) -> Result<Json<Value>> {
    if dest == state.config.server_name() {
        return Err(Error::invalid_param("Cannot reset connection to the local server"));
    }
    if !state.federation.reset_destination(&dest).await? {
        return Err(Error::not_found("Unknown destination"));
    }
    // Wakes the sender's destination tasks (in whichever process holds the sender's lease).
    state.outbox_wakeup.notify_waiters();
    Ok(Json(json!({})))
}

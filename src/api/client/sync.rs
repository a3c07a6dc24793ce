//! `/sync` and filters. The handler only reads the request; `crate::sync` does the work.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use ruma::api::client::filter::{create_filter, get_filter};
use ruma::api::client::sync::sync_events;
use ruma::api::client::sync::sync_events::v3::Filter;
use serde_json::{Value, json};

use crate::accounts::Session;
use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::sync::SyncOptions;
use crate::sync::presence::STATES;

/// `GET /_matrix/client/v3/sync`
///
/// Not an `async fn`: a long-poll keeps its future for as long as it waits, and an `async fn`
/// keeps its arguments (the parsed request, filter definition included) in it. The request is
/// taken apart first, and the future holds only what the wait needs.
pub fn sync(
    State(state): State<AppState>,
    req: Ruma<sync_events::v3::Request>,
) -> impl Future<Output = Result<Json<Value>>> {
    let parsed = parse_sync(req);
    async move {
        let (session, filter, mut opts) = parsed?;
        opts.filter = Box::pin(state.sync.resolve_filter(&session.user_id, filter.as_deref())).await?;
        Ok(Json(state.sync.sync(&session.user_id, &session.device_id, opts).await?))
    }
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (simplified sliding
/// sync, MSC4186). Not an `async fn`, for the reason given at [`sync`].
pub fn sliding_sync(
    State(state): State<AppState>,
    req: Ruma<sync_events::v5::Request>,
) -> impl Future<Output = Result<Json<Value>>> {
    let parsed = req.session.ok_or_else(Error::missing_token).map(|s| (s, req.body));
    async move {
        let (session, body) = parsed?;
        Ok(Json(state.sync.sliding_sync(&session.user_id, &session.device_id, body).await?))
    }
}

/// The session, the filter (an id or JSON) and the options of a `/sync` request; the options'
/// filter is filled in once resolved.
fn parse_sync(req: Ruma<sync_events::v3::Request>) -> Result<(Session, Option<String>, SyncOptions)> {
    let session = req.session.ok_or_else(Error::missing_token)?;
    let b = req.body;
    let filter = match b.filter {
        None => None,
        Some(Filter::FilterId(id)) => Some(id),
        Some(Filter::FilterDefinition(def)) => Some(serde_json::to_string(&def)?),
        Some(other) => Some(serde_json::to_string(&other)?),
    };
    let set_presence = b.set_presence.as_str();
    if !STATES.contains(&set_presence) {
        return Err(Error::invalid_param(format!("Unknown set_presence value {set_presence}")));
    }
    let opts = SyncOptions {
        since: b.since,
        filter: Default::default(),
        full_state: b.full_state,
        use_state_after: b.use_state_after,
        set_presence: set_presence.to_owned(),
        timeout: b.timeout.unwrap_or(Duration::ZERO),
    };
    Ok((session, filter, opts))
}

fn require_self(session_user: &ruma::UserId, path_user: &ruma::UserId, what: &str) -> Result<()> {
    if session_user == path_user { Ok(()) } else { Err(Error::forbidden(format!("Cannot {what} for other users"))) }
}

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub async fn create(State(state): State<AppState>, req: Ruma<create_filter::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id, "create filters")?;
    // Stored as sent (ruma has checked its shape), so that GET returns what the client wrote.
    let json = req.json.clone().unwrap_or_else(|| json!({}));
    let id = state.sync.store_filter(&s.user_id, &json).await?;
    Ok(Json(json!({ "filter_id": id })))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub async fn get(State(state): State<AppState>, req: Ruma<get_filter::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    require_self(&s.user_id, &req.body.user_id, "read filters")?;
    let raw = state
        .sync
        .stored_filter(&s.user_id, &req.body.filter_id)
        .await?
        .ok_or_else(|| Error::not_found("No such filter"))?;
    Ok(Json(serde_json::from_str(&raw)?))
}

//! `POST /search`: server-side search of room events (see `rooms::search` for what is found),
//! with the context around each result, senders' profiles and rooms' state when asked for.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use ruma::api::client::search::search_events::{self, v3::OrderBy};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::rooms::StoredEvent;
use crate::rooms::filter::EventFilter;
use crate::rooms::search::{SearchKey, SearchQuery};

/// Most events of context on either side of a result.
const MAX_CONTEXT: usize = 20;
const TOKEN_PREFIX: &str = "search_";

/// `POST /_matrix/client/v3/search`
pub async fn search(State(state): State<AppState>, req: Ruma<search_events::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let Some(criteria) = &req.body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    let keys = match &criteria.keys {
        None => vec![SearchKey::Body, SearchKey::Name, SearchKey::Topic],
        Some(keys) => keys
            .iter()
            .map(|k| {
                SearchKey::parse(k.as_str()).ok_or_else(|| Error::invalid_param(format!("Unknown key {}", k.as_str())))
            })
            .collect::<Result<_>>()?,
    };
    let before = match req.body.next_batch.as_deref() {
        None => None,
        Some(t) => Some(
            t.strip_prefix(TOKEN_PREFIX)
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param("Invalid next_batch token"))?,
        ),
    };
    let query = SearchQuery {
        term: criteria.search_term.clone(),
        keys,
        filter: EventFilter::from_json(&serde_json::to_value(&criteria.filter).unwrap_or(Value::Null)),
        order_by_rank: !matches!(criteria.order_by, Some(OrderBy::Recent)),
        before,
    };
    let page = state.rooms.search_events(&s.user_id, &query).await?;

    // Context only when the request has `event_context` (ruma fills in defaults otherwise).
    let raw = req.json.as_ref().and_then(|j| j.pointer("/search_categories/room_events/event_context"));
    let context = raw.map(|_| {
        let c = &criteria.event_context;
        let n = |v: ruma::UInt| (u64::from(v) as usize).min(MAX_CONTEXT);
        (n(c.before_limit), n(c.after_limit), c.include_profile)
    });
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let mut results = Vec::new();
    for (rank, ev) in &page.results {
        let mut result = json!({ "rank": rank, "result": state.rooms.client_event(ev, viewer).await? });
        if let Some((before_n, after_n, profiles)) = context {
            result["context"] = event_context(&state, &s.user_id, ev, before_n, after_n, profiles, viewer).await?;
        }
        results.push(result);
    }
    let mut room_events = json!({ "count": page.count, "highlights": page.highlights, "results": results });
    if let Some(next) = page.next_batch {
        room_events["next_batch"] = json!(format!("{TOKEN_PREFIX}{next}"));
    }
    if criteria.include_state == Some(true) {
        let mut rooms = BTreeMap::new();
        let now = crate::storage::now_ms();
        for (_, ev) in &page.results {
            let room = ev.pdu.room_id.to_string();
            if rooms.contains_key(&room) {
                continue;
            }
            let current = state.rooms.current_state(&ev.pdu.room_id).await?;
            rooms.insert(room, current.values().map(|p| p.client_json(None, now)).collect::<Vec<_>>());
        }
        room_events["state"] = json!(rooms);
    }
    Ok(Json(json!({ "search_categories": { "room_events": room_events } })))
}

/// The events around a result, as `/context` gives them, and the senders' profiles.
async fn event_context(
    state: &AppState,
    user: &UserId,
    ev: &StoredEvent,
    before_n: usize,
    after_n: usize,
    profiles: bool,
    viewer: Option<(&UserId, &str)>,
) -> Result<Value> {
    let room_id: &RoomId = &ev.pdu.room_id;
    let around = state.rooms.around(user, ev, before_n, after_n, &|_| true).await?;
    let (before, after) = (&around.before, &around.after);
    let mut out = json!({
        "events_before": state.rooms.client_events(before, viewer).await?,
        "events_after": state.rooms.client_events(after, viewer).await?,
        "start": around.start,
        "end": around.end,
    });
    if profiles {
        let mut info: HashMap<String, Value> = HashMap::new();
        for e in before.iter().chain(after).chain(std::iter::once(ev)) {
            let sender = e.pdu.fields.sender.to_string();
            if info.contains_key(&sender) {
                continue;
            }
            let member = state.rooms.current_state_event(room_id, "m.room.member", &sender).await?;
            let content = member.map(|m| m.content()).unwrap_or_default();
            let mut profile = json!({});
            for key in ["displayname", "avatar_url"] {
                if let Some(v) = content.get(key).filter(|v| v.is_string()) {
                    profile[key] = v.clone();
                }
            }
            info.insert(sender, profile);
        }
        out["profile_info"] = json!(info);
    }
    Ok(out)
}

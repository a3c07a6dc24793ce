//! Sending and reading events: send, redact, state, `/event`, `/messages`, `/context`.

use axum::Json;
use axum::extract::State;
use axum::response::IntoResponse;
use ruma::api::client::context::get_context;
use ruma::api::client::message::{get_message_events, send_message_event};
use ruma::api::client::redact::redact_event;
use ruma::api::client::room::get_room_event;
use ruma::api::client::state::{get_state_event_for_key, get_state_events, send_state_event};
use ruma::{RoomId, UserId};
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::rooms::Origin;
use crate::rooms::StoredEvent;
use crate::rooms::build::NewEvent;
use crate::rooms::filter::EventFilter;
use crate::rooms::read::{Dir, PageRange, TopoToken};

fn content_of(json: Option<Value>) -> Result<Value> {
    match json {
        Some(v @ Value::Object(_)) => Ok(v),
        None => Ok(json!({})),
        Some(_) => Err(Error::bad_json("Event content must be a JSON object")),
    }
}

/// The `ts` query parameter, honoured for appservices only (bridges importing history, as
/// Synapse allows); ignored for everyone else.
fn massaged_ts(s: &crate::accounts::Session, ts: Option<ruma::MilliSecondsSinceUnixEpoch>) -> Option<u64> {
    s.appservice.as_ref().and(ts).map(|t| u64::from(t.get()))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}`
pub async fn send(State(state): State<AppState>, req: Ruma<send_message_event::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let content = content_of(req.json.clone())?;
    let mut ev = NewEvent::message(b.event_type.to_string(), content);
    // A redaction sent like any event names its target in `content.redacts` (v1.18, MSC4169);
    // rooms before version 11 need it at the top level too.
    if ev.kind == "m.room.redaction"
        && let Some(target) = ev.content.get("redacts")
    {
        let target = target.as_str().and_then(|t| ruma::EventId::parse(t).ok());
        let target = target.ok_or_else(|| Error::bad_json("content.redacts must be an event id"))?;
        crate::api::suspension::check_redaction(&state, s, &b.room_id, &target).await?;
        ev.redacts = Some(target);
    }
    ev.origin_server_ts = massaged_ts(s, b.timestamp);
    let origin = Origin { user_id: &s.user_id, txn: Some((s.device_id.as_str(), b.txn_id.as_str())) };
    let event_id = state.rooms.send(&b.room_id, origin, ev).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`
pub async fn redact(State(state): State<AppState>, req: Ruma<redact_event::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    crate::api::suspension::check_redaction(&state, s, &b.room_id, &b.event_id).await?;
    let content = content_of(req.json.clone())?;
    let ev = NewEvent {
        kind: "m.room.redaction".into(),
        content,
        state_key: None,
        redacts: Some(b.event_id.clone()),
        origin_server_ts: None,
    };
    let origin = Origin { user_id: &s.user_id, txn: Some((s.device_id.as_str(), b.txn_id.as_str())) };
    let event_id = state.rooms.send(&b.room_id, origin, ev).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn send_state(
    State(state): State<AppState>,
    req: Ruma<send_state_event::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let content = content_of(req.json.clone())?;
    let kind = b.event_type.to_string();
    if kind == "m.room.member" && b.state_key != s.user_id.as_str() {
        // Membership of others goes through invite/kick/ban so that their checks apply;
        // Synapse likewise routes member state through its membership handler.
        let target = UserId::parse(&b.state_key).map_err(|_| Error::invalid_param("Invalid state key"))?;
        let reason = content["reason"].as_str();
        match content["membership"].as_str() {
            Some("invite") => state.rooms.invite(&b.room_id, &s.user_id, &target, reason, false).await?,
            Some("leave") => state.rooms.kick(&b.room_id, &s.user_id, &target, reason).await?,
            Some("ban") => state.rooms.ban(&b.room_id, &s.user_id, &target, reason).await?,
            _ => return Err(Error::forbidden("Cannot set this membership for another user")),
        }
        let id = state.rooms.current_state_event_id(&b.room_id, &kind, &b.state_key).await?;
        return Ok(Json(json!({ "event_id": id })));
    }
    if kind == "m.room.canonical_alias" {
        check_canonical_alias(&state, &b.room_id, &content).await?;
    }
    let mut ev = NewEvent::state(kind, b.state_key.clone(), content);
    ev.origin_server_ts = massaged_ts(s, b.timestamp);
    let event_id = state.rooms.send(&b.room_id, Origin { user_id: &s.user_id, txn: None }, ev).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// Local aliases in `m.room.canonical_alias` must point at the room (spec requirement).
async fn check_canonical_alias(state: &AppState, room_id: &RoomId, content: &Value) -> Result<()> {
    let mut aliases: Vec<&str> =
        content["alt_aliases"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    aliases.extend(content["alias"].as_str());
    for alias in aliases {
        let parsed =
            ruma::RoomAliasId::parse(alias).map_err(|_| Error::invalid_param(format!("Invalid alias {alias}")))?;
        if parsed.server_name() == state.rooms.server_name() {
            match state.rooms.alias(alias).await? {
                Some((r, _)) if r == room_id.as_str() => {}
                _ => {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_BAD_ALIAS",
                        format!("Room alias {alias} does not point to the room"),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks that the user may read the room's current state (joined, or world-readable).
async fn require_state_access(state: &AppState, room_id: &RoomId, user: &UserId) -> Result<()> {
    if state.rooms.membership_of(room_id, user).await?.as_deref() == Some("join") {
        return Ok(());
    }
    let hv = state.rooms.current_state_event(room_id, "m.room.history_visibility", "").await?;
    if hv.is_some_and(|p| p.content()["history_visibility"] == "world_readable") {
        return Ok(());
    }
    Err(Error::forbidden(format!("User {user} not in room {room_id}")))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`
pub async fn get_state(
    State(state): State<AppState>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    require_state_access(&state, &b.room_id, &s.user_id).await?;
    let pdu = state
        .rooms
        .current_state_event(&b.room_id, &b.event_type.to_string(), &b.state_key)
        .await?
        .ok_or_else(|| Error::not_found("Event not found."))?;
    if b.format == get_state_event_for_key::v3::StateEventFormat::Event {
        return Ok(Json(pdu.client_json(None, crate::storage::now_ms())));
    }
    Ok(Json(pdu.content()))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`
pub async fn get_all_state(
    State(state): State<AppState>,
    req: Ruma<get_state_events::v3::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    require_state_access(&state, &req.body.room_id, &s.user_id).await?;
    let now = crate::storage::now_ms();
    let events: Vec<Value> =
        state.rooms.current_state(&req.body.room_id).await?.values().map(|p| p.client_json(None, now)).collect();
    Ok(Json(Value::Array(events)))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`
pub async fn get_event(State(state): State<AppState>, req: Ruma<get_room_event::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let ev = state.rooms.event_for(&req.body.room_id, &s.user_id, req.body.event_id.as_str()).await?;
    Ok(Json(state.rooms.client_event(&ev, Some((&s.user_id, s.device_id.as_str()))).await?))
}

fn filter_of(json: &Value) -> EventFilter {
    EventFilter::from_json(json)
}

/// Parses a pagination token: a topological token, or a sync token (`s<stream>`).
async fn parse_from(state: &AppState, room_id: &RoomId, token: &str, dir: Dir) -> Result<Option<TopoToken>> {
    if let Some(t) = TopoToken::parse(token) {
        return Ok(Some(t));
    }
    let stream =
        crate::sync::token::stream_of_token(token).ok_or_else(|| Error::invalid_param("Invalid pagination token"))?;
    let pos = state.rooms.position_at_stream(room_id, stream).await?;
    Ok(match (pos, dir) {
        // Backwards from a sync token includes the event at that position.
        (Some(p), Dir::Backward) => Some(TopoToken { depth: p.depth, stream: p.stream + 1 }),
        (Some(p), Dir::Forward) => Some(p),
        (None, Dir::Forward) => None,
        (None, Dir::Backward) => Some(TopoToken { depth: i64::MIN, stream: i64::MIN }),
    })
}

/// Member events for the senders of `events` (lazy-loading members), as of those events.
async fn lazy_members(state: &AppState, events: &[StoredEvent]) -> Result<Vec<Value>> {
    let now = crate::storage::now_ms();
    Ok(state.rooms.sender_members(events).await?.iter().map(|p| p.client_json(None, now)).collect())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/messages`
pub async fn messages(
    State(state): State<AppState>,
    req: Ruma<get_message_events::v3::Request>,
) -> Result<axum::response::Response> {
    let s = req.session()?;
    let b = &req.body;
    let dir = Dir::from(b.dir);
    let filter_json = serde_json::to_value(&b.filter).unwrap_or(Value::Null);
    let filter = filter_of(&filter_json);
    let limit = (u64::from(b.limit) as usize).clamp(1, 1000);
    // Some clients (matrix-nio) send `from=` empty to mean "from the latest event".
    let from_token = b.from.as_deref().filter(|t| !t.is_empty());
    let from = match from_token {
        Some(t) => parse_from(&state, &b.room_id, t, dir).await?,
        None => None,
    };
    let to = match &b.to {
        Some(t) => parse_from(&state, &b.room_id, t, dir).await?,
        None => None,
    };
    let range = PageRange { from, to, dir, limit };
    let page = state.rooms.messages(&b.room_id, &s.user_id, &range, &|e| filter.matches(e)).await?;
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    // Written as text: the events are most of the answer (see `Pdu::write_client_json`).
    let chunk = state.rooms.client_events_text(&page.events, viewer).await?;
    let start = match from_token {
        Some(t) => t.to_owned(),
        None => match dir {
            Dir::Backward => state
                .rooms
                .latest_position(&b.room_id)
                .await?
                .map(|p| TopoToken { depth: p.depth, stream: p.stream + 1 }),
            Dir::Forward => Some(TopoToken { depth: 0, stream: 0 }),
        }
        .map(TopoToken::to_token)
        .unwrap_or_else(|| "t0_0".into()),
    };
    let mut body = Vec::with_capacity(chunk.len() + 128);
    body.extend_from_slice(b"{\"start\":");
    serde_json::to_writer(&mut body, &start)?;
    body.extend_from_slice(b",\"chunk\":");
    body.extend_from_slice(&chunk);
    if let Some(end) = page.end {
        body.extend_from_slice(b",\"end\":");
        serde_json::to_writer(&mut body, &end)?;
    }
    if filter.lazy_load_members {
        body.extend_from_slice(b",\"state\":");
        serde_json::to_writer(&mut body, &lazy_members(&state, &page.events).await?)?;
    }
    body.push(b'}');
    Ok(([(http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`
pub async fn context(State(state): State<AppState>, req: Ruma<get_context::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let ev = state.rooms.event_for(&b.room_id, &s.user_id, b.event_id.as_str()).await?;
    let filter_json = serde_json::to_value(&b.filter).unwrap_or(Value::Null);
    let filter = filter_of(&filter_json);
    let limit = (u64::from(b.limit) as usize).min(100);
    let before_n = limit / 2;
    let around = state.rooms.around(&s.user_id, &ev, before_n, limit - before_n, &|e| filter.matches(e)).await?;
    let (before, after) = (&around.before, &around.after);
    let viewer = Some((&*s.user_id, s.device_id.as_str()));
    let state_events: Vec<Value> = if filter.lazy_load_members {
        let mut all = vec![ev.clone()];
        all.extend(before.iter().cloned());
        all.extend(after.iter().cloned());
        lazy_members(&state, &all).await?
    } else {
        let now = crate::storage::now_ms();
        match ev.state_group {
            Some(g) => {
                let ids = state.rooms.state_at_group(g).await?;
                state.rooms.state_pdus(&ids).await?.values().map(|p| p.client_json(None, now)).collect()
            }
            None => Vec::new(),
        }
    };
    Ok(Json(json!({
        "event": state.rooms.client_event(&ev, viewer).await?,
        "events_before": state.rooms.client_events(before, viewer).await?,
        "events_after": state.rooms.client_events(after, viewer).await?,
        "start": around.start,
        "end": around.end,
        "state": state_events,
    })))
}

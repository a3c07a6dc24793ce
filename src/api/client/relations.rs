//! Relations, threads, timestamp lookup and room upgrades.

use axum::Json;
use axum::extract::State;
use ruma::RoomId;
use ruma::api::Direction;
use ruma::api::client::relations::{
    get_relating_events, get_relating_events_with_rel_type, get_relating_events_with_rel_type_and_event_type,
};
use ruma::api::client::room::{get_event_by_timestamp, upgrade_room};
use ruma::api::client::space::get_hierarchy;
use ruma::api::client::threads::get_threads;
use serde_json::{Value, json};

use crate::api::AppState;
use crate::api::extract::Ruma;
use crate::error::{Error, Result};
use crate::rooms::read::{Dir, TopoToken};

/// What a `/relations` request asks for.
pub struct RelQuery<'a> {
    room_id: &'a RoomId,
    event_id: &'a str,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: Direction,
    limit: Option<u64>,
}

fn token(t: Option<&str>) -> Result<Option<TopoToken>> {
    t.map(|t| TopoToken::parse(t).ok_or_else(|| Error::invalid_param("Invalid pagination token"))).transpose()
}

/// The three `/relations` endpoints differ only in the filters their path carries.
pub trait RelationsRequest: ruma::api::IncomingRequest + Send + 'static {
    /// The query the request asks for.
    fn query(&self) -> RelQuery<'_>;
}

macro_rules! relations_request {
    ($($req:ty => |$b:ident| ($rel_type:expr, $event_type:expr)),* $(,)?) => {$(
        impl RelationsRequest for $req {
            fn query(&self) -> RelQuery<'_> {
                let $b = self;
                RelQuery {
                    room_id: &$b.room_id,
                    event_id: $b.event_id.as_str(),
                    rel_type: $rel_type,
                    event_type: $event_type,
                    from: $b.from.as_deref(),
                    to: $b.to.as_deref(),
                    dir: $b.dir,
                    limit: $b.limit.map(u64::from),
                }
            }
        }
    )*};
}

relations_request! {
    get_relating_events::v1::Request => |b| (None, None),
    get_relating_events_with_rel_type::v1::Request => |b| (Some(b.rel_type.to_string()), None),
    get_relating_events_with_rel_type_and_event_type::v1::Request =>
        |b| (Some(b.rel_type.to_string()), Some(b.event_type.to_string())),
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`
pub async fn relations<R: RelationsRequest>(State(state): State<AppState>, req: Ruma<R>) -> Result<Json<Value>> {
    let s = req.session()?;
    let q = req.body.query();
    let user = &s.user_id;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000) as usize;
    let page = state
        .rooms
        .relations(
            q.room_id,
            user,
            q.event_id,
            q.rel_type.as_deref(),
            q.event_type.as_deref(),
            token(q.from)?,
            token(q.to)?,
            Dir::from(q.dir),
            limit,
        )
        .await?;
    let chunk = state.rooms.client_events(&page.events, Some((user, s.device_id.as_str()))).await?;
    let mut res = json!({ "chunk": chunk });
    if let Some(next) = page.next {
        res["next_batch"] = json!(next);
    }
    if let Some(from) = q.from {
        res["prev_batch"] = json!(from);
    }
    Ok(Json(res))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`
pub async fn threads(State(state): State<AppState>, req: Ruma<get_threads::v1::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let from = b
        .from
        .as_deref()
        .map(|f| f.parse::<i64>().map_err(|_| Error::invalid_param("Invalid from token")))
        .transpose()?;
    let participated = b.include == get_threads::v1::IncludeThreads::Participated;
    let limit = b.limit.map(u64::from).unwrap_or(50).clamp(1, 500) as usize;
    let (roots, next) = state.rooms.threads(&b.room_id, &s.user_id, participated, from, limit).await?;
    let mut chunk = Vec::new();
    for (root, summary) in roots {
        let mut ev = state.rooms.client_event(&root, Some((&s.user_id, s.device_id.as_str()))).await?;
        ev["unsigned"]["m.relations"] = summary;
        chunk.push(ev);
    }
    let mut res = json!({ "chunk": chunk });
    if let Some(n) = next {
        res["next_batch"] = json!(n);
    }
    Ok(Json(res))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`
pub async fn timestamp_to_event(
    State(state): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let dir = Dir::from(b.dir);
    let ev = state.rooms.event_at_timestamp(&b.room_id, &s.user_id, i64::from(b.ts.get()), dir).await?;
    Ok(Json(json!({ "event_id": ev.pdu.event_id, "origin_server_ts": ev.pdu.fields.origin_server_ts })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`
pub async fn upgrade(State(state): State<AppState>, req: Ruma<upgrade_room::v3::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let new_room = state.rooms.upgrade(&b.room_id, &s.user_id, b.new_version.as_str(), &b.additional_creators).await?;
    Ok(Json(json!({ "replacement_room": new_room })))
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`
pub async fn hierarchy(State(state): State<AppState>, req: Ruma<get_hierarchy::v1::Request>) -> Result<Json<Value>> {
    let s = req.session()?;
    let b = &req.body;
    let from = match b.from.as_deref() {
        Some(f) => f.parse::<usize>().map_err(|_| Error::invalid_param("Invalid from token"))?,
        None => 0,
    };
    let limit = b.limit.map(u64::from).unwrap_or(50).clamp(1, 500) as usize;
    let max_depth = b.max_depth.map(|d| u64::from(d) as usize);
    let (rooms, next) = state.rooms.hierarchy(&b.room_id, &s.user_id, b.suggested_only, max_depth, limit, from).await?;
    let mut res = json!({ "rooms": rooms });
    if let Some(n) = next {
        res["next_batch"] = json!(n);
    }
    Ok(Json(res))
}

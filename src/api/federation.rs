//! Server-server API handlers (`/_matrix/federation/*`, `/_matrix/key/*`).
//!
//! Thin: every request signed with `X-Matrix` is verified by the extractor (`Ruma<T>` with
//! ruma's `ServerSignatures` scheme, origin in `req.origin`); the room logic is in
//! `rooms::federated`, keys and transport in `federation`.

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::Router;
use axum::extract::State;
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::backfill::get_backfill;
use ruma::api::federation::device::get_devices;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
use ruma::api::federation::discovery::{
    get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
};
use ruma::api::federation::event::{
    get_event, get_event_by_timestamp, get_missing_events, get_room_state, get_room_state_ids,
};
use ruma::api::federation::keys::{claim_keys, get_keys};
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};
use ruma::api::federation::openid::get_openid_userinfo;
use ruma::api::federation::query::{get_profile_information, get_room_information};
use ruma::api::federation::space::get_hierarchy;
use ruma::api::federation::thirdparty::{bind_callback, exchange_invite};
use ruma::api::federation::transactions::send_transaction_message;
use ruma::{RoomId, ServerName};
use serde_json::{Value, json};

use super::extract::{Ruma, RumaResponse};
use super::{AppState, RouterExt};
use crate::error::{Error, Result};
use crate::rooms::read::Dir;
use crate::storage::now_ms;

/// Adds the federation routes.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .ruma(server_keys)
        .ruma(notary_get)
        .ruma(notary_post)
        .ruma(version)
        .ruma(send_transaction)
        .ruma(make_join)
        .ruma(send_join)
        .ruma(make_leave)
        .ruma(send_leave)
        .ruma(make_knock)
        .ruma(send_knock)
        .ruma(invite)
        .ruma(invite_v1)
        .ruma(event)
        .ruma(timestamp_to_event)
        .ruma(state)
        .ruma(state_ids)
        .ruma(event_auth)
        .ruma(missing_events)
        .ruma(backfill)
        .ruma(query_directory)
        .ruma(query_profile)
        .ruma(openid_userinfo)
        .ruma(hierarchy)
        .ruma(public_rooms)
        .ruma(public_rooms_filtered)
        .ruma(user_devices)
        .ruma(keys_query)
        .ruma(keys_claim)
        .ruma(third_party_onbind)
        .ruma(exchange_third_party_invite)
}

/// `GET /_matrix/key/v2/server`
pub async fn server_keys(
    State(state): State<AppState>,
    _req: Ruma<get_server_keys::v2::Request>,
) -> Result<Json<Value>> {
    Ok(Json(state.federation.own_keys_json()?))
}

/// `GET /_matrix/key/v2/query/{serverName}`
pub async fn notary_get(
    State(state): State<AppState>,
    req: Ruma<get_remote_server_keys::v2::Request>,
) -> Result<Json<Value>> {
    let minimum = i64::from(req.body.minimum_valid_until_ts.get());
    let keys = state.federation.notary_keys(req.body.server_name.as_str(), minimum).await?;
    Ok(Json(json!({ "server_keys": keys })))
}

/// `POST /_matrix/key/v2/query`
pub async fn notary_post(
    State(state): State<AppState>,
    req: Ruma<get_remote_server_keys_batch::v2::Request>,
) -> Result<Json<Value>> {
    let mut out = Vec::new();
    let now = ruma::MilliSecondsSinceUnixEpoch::now();
    for (server, keys) in &req.body.server_keys {
        // The spec's default for a criterion without a time is the notary's "now".
        let minimum = keys.values().map(|c| c.minimum_valid_until_ts.unwrap_or(now)).max().unwrap_or(now);
        out.extend(state.federation.notary_keys(server.as_str(), i64::from(minimum.get())).await?);
    }
    Ok(Json(json!({ "server_keys": out })))
}

/// `GET /_matrix/federation/v1/version`
pub async fn version(_: State<AppState>, _req: Ruma<get_server_version::v1::Request>) -> Result<Json<Value>> {
    Ok(Json(json!({ "server": { "name": "myelin", "version": env!("CARGO_PKG_VERSION") } })))
}

/// `PUT /_matrix/federation/v1/send/{txnId}`: deduplicated on (origin, txnId).
pub async fn send_transaction(
    State(state): State<AppState>,
    req: Ruma<send_transaction_message::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?.to_owned();
    let txn_id = req.body.transaction_id.to_string();
    if let Some(response) = state.rooms.federation_txn_answer(origin.as_str(), &txn_id).await? {
        return Ok(Json(serde_json::from_str(&response)?));
    }
    let body = req.json.clone().unwrap_or(Value::Null);
    if body["pdus"].as_array().map_or(0, Vec::len) > 50 || body["edus"].as_array().map_or(0, Vec::len) > 100 {
        return Err(Error::bad_json("Too many PDUs or EDUs in one transaction"));
    }
    // Group by room: one room's PDUs in order, rooms in parallel.
    let mut by_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut results = serde_json::Map::new();
    for pdu in body["pdus"].as_array().cloned().unwrap_or_default() {
        match pdu["room_id"].as_str() {
            Some(r) => by_room.entry(r.to_owned()).or_default().push(pdu),
            None => tracing::info!(%origin, "PDU without room_id ignored"),
        }
    }
    let rooms = state.rooms.clone();
    let tasks = by_room.into_iter().map(|(room, pdus)| {
        let rooms = rooms.clone();
        let origin = origin.clone();
        async move {
            let mut out = Vec::new();
            let Ok(room_id) = RoomId::parse(&room) else { return out };
            for pdu in pdus {
                match rooms.handle_incoming_pdu(&origin, &room_id, pdu.clone()).await {
                    Ok(id) => out.push((id.to_string(), json!({}))),
                    Err(e) => {
                        let id = event_id_of(&rooms, &room_id, &pdu).await.unwrap_or_else(|| "unknown".into());
                        tracing::info!(%origin, event_id = %id, error = %e.message, "incoming PDU not accepted");
                        out.push((id, json!({ "error": e.message })));
                    }
                }
            }
            out
        }
    });
    for room_results in futures::future::join_all(tasks).await {
        for (id, r) in room_results {
            results.insert(id, r);
        }
    }
    for edu in body["edus"].as_array().cloned().unwrap_or_default() {
        handle_edu(&state, &origin, &edu).await;
    }
    let response = json!({ "pdus": results });
    state.rooms.record_federation_txn(origin.as_str(), &txn_id, &response.to_string()).await?;
    Ok(Json(response))
}

async fn event_id_of(rooms: &crate::rooms::Rooms, room_id: &RoomId, pdu: &Value) -> Option<String> {
    let (_, rules) = rooms.room_rules(room_id).await.ok()?;
    let object: ruma::CanonicalJsonObject = serde_json::from_value(pdu.clone()).ok()?;
    ruma::signatures::reference_hash(&object, &rules).ok().map(|h| format!("${h}"))
}

/// EDUs go to the engines that own them (sync: typing, receipts, presence, to-device; e2ee:
/// device lists, signing keys). Only users of the origin server may be the subject of an EDU.
async fn handle_edu(state: &AppState, origin: &ServerName, edu: &Value) {
    let kind = edu["edu_type"].as_str().unwrap_or("");
    let content = &edu["content"];
    if let Err(e) = handle_edu_inner(state, origin, kind, content).await {
        tracing::info!(%origin, edu_type = kind, error = %e.message, "EDU not applied");
    }
}

fn user_of(origin: &ServerName, v: &Value) -> Option<ruma::OwnedUserId> {
    let user = ruma::UserId::parse(v.as_str()?).ok()?;
    (user.server_name() == origin).then_some(user)
}

async fn handle_edu_inner(state: &AppState, origin: &ServerName, kind: &str, content: &Value) -> Result<()> {
    use crate::sync::receipts::{NewReceipt, ReceiptOrigin};
    use crate::sync::typing::TypingOrigin;
    match kind {
        "m.typing" => {
            let (Some(room), Some(user)) =
                (content["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()), user_of(origin, &content["user_id"]))
            else {
                return Err(Error::bad_json("m.typing needs room_id and a user of the origin"));
            };
            state.rooms.require_server_allowed(&room, origin).await?;
            let typing = content["typing"].as_bool().unwrap_or(false);
            state.sync.set_typing(&room, &user, typing, None, TypingOrigin::Remote).await?;
        }
        "m.receipt" => {
            for (room, by_type) in content.as_object().into_iter().flatten() {
                let Ok(room_id) = RoomId::parse(room) else { continue };
                if !state.rooms.server_allowed(&room_id, origin).await? {
                    continue;
                }
                for (receipt_type, by_user) in by_type.as_object().into_iter().flatten() {
                    for (user, data) in by_user.as_object().into_iter().flatten() {
                        let Some(user_id) = user_of(origin, &Value::String(user.clone())) else { continue };
                        let ts = data["data"]["ts"].as_i64().unwrap_or_else(now_ms);
                        let thread = data["data"]["thread_id"].as_str();
                        for ev in data["event_ids"].as_array().into_iter().flatten() {
                            let Some(event_id) = ev.as_str().and_then(|e| ruma::EventId::parse(e).ok()) else {
                                continue;
                            };
                            let receipt = NewReceipt {
                                room_id: &room_id,
                                user_id: &user_id,
                                receipt_type,
                                event_id: &event_id,
                                thread_id: thread,
                                ts,
                            };
                            state.sync.store_receipt(receipt, ReceiptOrigin::Remote).await?;
                        }
                    }
                }
            }
        }
        "m.presence" => {
            for p in content["push"].as_array().into_iter().flatten() {
                let Some(user) = user_of(origin, &p["user_id"]) else { continue };
                state
                    .sync
                    .receive_remote_presence(
                        &user,
                        p["presence"].as_str().unwrap_or("offline"),
                        p["status_msg"].as_str(),
                        p["last_active_ago"].as_i64(),
                        p["currently_active"].as_bool().unwrap_or(false),
                    )
                    .await?;
            }
        }
        "m.direct_to_device" => {
            let Some(sender) = user_of(origin, &content["sender"]) else {
                return Err(Error::bad_json("to-device sender is not a user of the origin"));
            };
            state
                .sync
                .receive_remote_to_device(
                    origin.as_str(),
                    &sender,
                    content["type"].as_str().unwrap_or(""),
                    content["message_id"].as_str().unwrap_or(""),
                    &content["messages"],
                )
                .await?;
        }
        "m.device_list_update" => {
            state.e2ee.receive_device_list_update(origin.as_str(), content).await?;
        }
        "m.signing_key_update" => {
            state.e2ee.apply_signing_key_update(origin.as_str(), content).await?;
        }
        other => tracing::debug!(%origin, edu_type = other, "EDU type not handled"),
    }
    Ok(())
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub async fn user_devices(State(state): State<AppState>, req: Ruma<get_devices::v1::Request>) -> Result<Json<Value>> {
    req.origin()?;
    Ok(Json(state.e2ee.federation_user_devices(req.body.user_id.as_str()).await?))
}

/// `POST /_matrix/federation/v1/user/keys/query`
pub async fn keys_query(State(state): State<AppState>, req: Ruma<get_keys::v1::Request>) -> Result<Json<Value>> {
    req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    let keys = body["device_keys"].as_object().cloned().unwrap_or_default();
    Ok(Json(state.e2ee.federation_query(&keys).await?))
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub async fn keys_claim(State(state): State<AppState>, req: Ruma<claim_keys::v1::Request>) -> Result<Json<Value>> {
    req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    let keys = body["one_time_keys"].as_object().cloned().unwrap_or_default();
    Ok(Json(state.e2ee.federation_claim(&keys).await?))
}

fn versions_of(req_json_query: &[ruma::RoomVersionId]) -> Vec<String> {
    if req_json_query.is_empty() {
        vec!["1".to_owned()]
    } else {
        req_json_query.iter().map(|v| v.to_string()).collect()
    }
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
pub async fn make_join(
    State(state): State<AppState>,
    req: Ruma<prepare_join_event::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let versions = versions_of(&req.body.ver);
    Ok(Json(state.rooms.make_membership(origin, &req.body.room_id, &req.body.user_id, "join", &versions).await?))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`
pub async fn send_join(
    State(state): State<AppState>,
    req: Ruma<create_join_event::v2::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    Ok(Json(state.rooms.send_membership(origin, &req.body.room_id, req.body.event_id.as_str(), "join", body).await?))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`
pub async fn make_leave(
    State(state): State<AppState>,
    req: Ruma<prepare_leave_event::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let all: Vec<String> = crate::events::version::SUPPORTED_ROOM_VERSIONS.iter().map(|v| v.to_string()).collect();
    Ok(Json(state.rooms.make_membership(origin, &req.body.room_id, &req.body.user_id, "leave", &all).await?))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`
pub async fn send_leave(
    State(state): State<AppState>,
    req: Ruma<create_leave_event::v2::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    Ok(Json(state.rooms.send_membership(origin, &req.body.room_id, req.body.event_id.as_str(), "leave", body).await?))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}`
pub async fn make_knock(
    State(state): State<AppState>,
    req: Ruma<prepare_knock_event::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let versions = versions_of(&req.body.ver);
    Ok(Json(state.rooms.make_membership(origin, &req.body.room_id, &req.body.user_id, "knock", &versions).await?))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`
pub async fn send_knock(
    State(state): State<AppState>,
    req: Ruma<create_knock_event::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    Ok(Json(state.rooms.send_membership(origin, &req.body.room_id, req.body.event_id.as_str(), "knock", body).await?))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`
pub async fn invite(State(state): State<AppState>, req: Ruma<create_invite::v2::Request>) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    Ok(Json(state.rooms.receive_invite(origin, &req.body.room_id, req.body.event_id.as_str(), &body).await?))
}

/// `PUT /_matrix/federation/v1/invite/{roomId}/{eventId}`: the v1 shapes (the PDU as the body,
/// `[200, {"event": …}]` as the answer) around the v2 path.
pub async fn invite_v1(State(state): State<AppState>, req: Ruma<create_invite::v1::Request>) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let pdu = req.json.clone().unwrap_or(Value::Null);
    let signed = state.rooms.receive_invite_v1(origin, &req.body.room_id, req.body.event_id.as_str(), pdu).await?;
    Ok(Json(json!([200, signed])))
}

/// `PUT /_matrix/federation/v1/3pid/onbind`: an identity server (unauthenticated) says one of
/// our users bound an address with pending third-party invitations.
pub async fn third_party_onbind(
    State(state): State<AppState>,
    req: Ruma<bind_callback::v1::Request>,
) -> Result<Json<Value>> {
    let body = req.json.clone().unwrap_or(Value::Null);
    state.rooms.on_bind_third_party(&body).await?;
    Ok(Json(json!({})))
}

/// `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}`: a server exchanges a
/// signed third-party invitation of its user for an invite into a room whose inviter is ours.
pub async fn exchange_third_party_invite(
    State(state): State<AppState>,
    req: Ruma<exchange_invite::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let body = req.json.clone().unwrap_or(Value::Null);
    state.rooms.exchange_third_party_invite(Some(origin), &req.body.room_id, &body).await?;
    Ok(Json(json!({})))
}

/// The origin must have a user joined to the room now to read its events, state, auth chains
/// or history (`/event`, `/state`, `/state_ids`, `/event_auth`, `/backfill`,
/// `/get_missing_events`); otherwise 403 `M_FORBIDDEN`.
///
/// This is Synapse's rule (`is_host_in_room` / `assert_host_in_room`: a joined member in the
/// current state), not a per-event one: a server all of whose users left or were banned reads
/// nothing more, also not the events of the time it was in the room, and an invited-only
/// server reads nothing before it joins. Among what a joined server reads, the events its
/// users could not see under history visibility are served redacted
/// (`Rooms::federation_json_for`, Synapse's `filter_events_for_server` with `redact=True`).
async fn require_participant(state: &AppState, room_id: &RoomId, origin: &ServerName) -> Result<()> {
    if !state.rooms.exists(room_id).await? {
        return Err(Error::not_found("Unknown room"));
    }
    state.rooms.require_server_allowed(room_id, origin).await?;
    let suffix = format!(":{origin}");
    let in_room = state.rooms.joined_members(room_id).await?.into_iter().any(|u| u.ends_with(&suffix));
    if in_room { Ok(()) } else { Err(Error::forbidden(format!("{origin} is not in room {room_id}"))) }
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}`: the event nearest a time, for a
/// server that is in the room (it jumps to a date in a room whose history it lacks).
pub async fn timestamp_to_event(
    State(state): State<AppState>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<RumaResponse<get_event_by_timestamp::v1::Response>> {
    let b = &req.body;
    require_participant(&state, &b.room_id, req.origin()?).await?;
    let dir = Dir::from(b.dir);
    let ev = state.rooms.event_at_timestamp_for_server(&b.room_id, i64::from(b.ts.get()), dir).await?;
    Ok(get_event_by_timestamp::v1::Response::new(ev.pdu.event_id.clone(), ev.pdu.fields.origin_server_ts).into())
}

/// `GET /_matrix/federation/v1/event/{eventId}`
pub async fn event(State(state): State<AppState>, req: Ruma<get_event::v1::Request>) -> Result<Json<Value>> {
    let origin = req.origin()?;
    let ev = state
        .rooms
        .stored_event(req.body.event_id.as_str())
        .await?
        .filter(|e| !e.pdu.rejected)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    require_participant(&state, &ev.pdu.room_id, origin).await?;
    Ok(Json(json!({
        "origin": state.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": [state.rooms.federation_json_for(origin, &ev).await?],
    })))
}

async fn state_at(state: &AppState, room_id: &RoomId, event_id: &str) -> Result<(Vec<String>, Vec<String>)> {
    let ev = state
        .rooms
        .stored_event(event_id)
        .await?
        .filter(|e| e.pdu.room_id == room_id && !e.pdu.rejected)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let before = state.rooms.state_before_event(&ev.pdu).await?;
    let ids: Vec<String> = before.values().cloned().collect();
    let chain: Vec<String> = state.rooms.auth_chain(&ids).await?.into_iter().map(|p| p.event_id.to_string()).collect();
    Ok((ids, chain))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}`
pub async fn state_ids(
    State(state): State<AppState>,
    req: Ruma<get_room_state_ids::v1::Request>,
) -> Result<Json<Value>> {
    require_participant(&state, &req.body.room_id, req.origin()?).await?;
    let (ids, chain) = state_at(&state, &req.body.room_id, req.body.event_id.as_str()).await?;
    Ok(Json(json!({ "pdu_ids": ids, "auth_chain_ids": chain })))
}

/// `GET /_matrix/federation/v1/state/{roomId}`
pub async fn state(State(state): State<AppState>, req: Ruma<get_room_state::v1::Request>) -> Result<Json<Value>> {
    require_participant(&state, &req.body.room_id, req.origin()?).await?;
    let (ids, chain) = state_at(&state, &req.body.room_id, req.body.event_id.as_str()).await?;
    let rooms = &state.rooms;
    let pdus: Vec<Value> = rooms.stored_events(&ids).await?.into_iter().map(|e| e.pdu.federation_json()).collect();
    let auth: Vec<Value> = rooms.stored_events(&chain).await?.into_iter().map(|e| e.pdu.federation_json()).collect();
    Ok(Json(json!({ "pdus": pdus, "auth_chain": auth })))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`
pub async fn event_auth(
    State(state): State<AppState>,
    req: Ruma<get_event_authorization::v1::Request>,
) -> Result<Json<Value>> {
    require_participant(&state, &req.body.room_id, req.origin()?).await?;
    let chain = state.rooms.auth_chain(&[req.body.event_id.to_string()]).await?;
    Ok(Json(json!({ "auth_chain": chain.iter().map(|p| p.federation_json()).collect::<Vec<_>>() })))
}

/// Walks prev_events backwards from `from`, stopping at `stop` and at events shallower than
/// `min_depth`, up to `limit` events; events `origin` may not see under history visibility
/// are served redacted.
#[allow(clippy::too_many_arguments)]
async fn walk_back(
    state: &AppState,
    origin: &ServerName,
    room_id: &RoomId,
    from: Vec<String>,
    stop: &HashSet<String>,
    limit: usize,
    min_depth: i64,
    include_from: bool,
) -> Result<Vec<Value>> {
    let rooms = &state.rooms;
    let mut seen: HashSet<String> = stop.clone();
    let mut frontier: Vec<String> = Vec::new();
    let mut out = Vec::new();
    if include_from {
        frontier = from;
    } else {
        for ev in rooms.stored_events(&from).await? {
            frontier.extend(ev.pdu.fields.prev_events.iter().map(|e| e.to_string()));
        }
    }
    while !frontier.is_empty() && out.len() < limit {
        let ids: Vec<String> = frontier.drain(..).filter(|id| seen.insert(id.clone())).collect();
        let mut evs = rooms.stored_events(&ids).await?;
        evs.sort_by_key(|e| std::cmp::Reverse(e.topo));
        for ev in evs {
            if ev.pdu.room_id != room_id || ev.pdu.rejected || ev.pdu.fields.depth < min_depth {
                continue;
            }
            if out.len() >= limit {
                break;
            }
            frontier.extend(ev.pdu.fields.prev_events.iter().map(|e| e.to_string()));
            out.push((ev.topo, state.rooms.federation_json_for(origin, &ev).await?));
        }
    }
    out.sort_by_key(|e| e.0);
    Ok(out.into_iter().map(|e| e.1).collect())
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`
pub async fn missing_events(
    State(state): State<AppState>,
    req: Ruma<get_missing_events::v1::Request>,
) -> Result<Json<Value>> {
    let origin = req.origin()?;
    require_participant(&state, &req.body.room_id, origin).await?;
    let limit = u64::from(req.body.limit).min(100) as usize;
    let stop: HashSet<String> = req.body.earliest_events.iter().map(|e| e.to_string()).collect();
    let latest: Vec<String> = req.body.latest_events.iter().map(|e| e.to_string()).collect();
    let min_depth = i64::try_from(u64::from(req.body.min_depth)).unwrap_or(i64::MAX);
    let events = walk_back(&state, origin, &req.body.room_id, latest, &stop, limit, min_depth, false).await?;
    Ok(Json(json!({ "events": events })))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}`
pub async fn backfill(State(state): State<AppState>, req: Ruma<get_backfill::v1::Request>) -> Result<Json<Value>> {
    let origin = req.origin()?;
    require_participant(&state, &req.body.room_id, origin).await?;
    let limit = u64::from(req.body.limit).min(100) as usize;
    let from: Vec<String> = req.body.v.iter().map(|e| e.to_string()).collect();
    let pdus = walk_back(&state, origin, &req.body.room_id, from, &HashSet::new(), limit, 0, true).await?;
    Ok(Json(json!({ "origin": state.config.server_name, "origin_server_ts": now_ms(), "pdus": pdus })))
}

/// `GET /_matrix/federation/v1/query/directory`
pub async fn query_directory(
    State(state): State<AppState>,
    req: Ruma<get_room_information::v1::Request>,
) -> Result<Json<Value>> {
    let alias = req.body.room_alias.as_str();
    let (room_id, _) =
        state.rooms.alias(alias).await?.ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?;
    let mut servers = vec![state.config.server_name.clone()];
    servers.extend(state.rooms.remote_destinations(&room_id).await?);
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// `GET /_matrix/federation/v1/openid/userinfo`: who an OpenID token (from `request_token`)
/// belongs to. Called by third parties (widgets, integration managers, call services) without
/// server signatures; the token itself is the credential.
pub async fn openid_userinfo(
    State(state): State<AppState>,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> Result<Json<Value>> {
    match state.accounts.openid_user(&req.body.access_token).await? {
        Some(user) => Ok(Json(json!({ "sub": user }))),
        None => Err(Error::new(http::StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", "Unknown or expired OpenID token")),
    }
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`: a space held here and its direct children,
/// as far as the asking server may see them.
pub async fn hierarchy(State(state): State<AppState>, req: Ruma<get_hierarchy::v1::Request>) -> Result<Json<Value>> {
    let origin = req.origin()?.to_owned();
    let b = &req.body;
    match state.rooms.hierarchy_for_server(&b.room_id, &origin, b.suggested_only).await? {
        Some(answer) => Ok(Json(answer)),
        None => Err(Error::not_found("Unknown room, or not visible to your server")),
    }
}

/// `GET /_matrix/federation/v1/query/profile`
pub async fn query_profile(
    State(state): State<AppState>,
    req: Ruma<get_profile_information::v1::Request>,
) -> Result<Json<Value>> {
    let user = &req.body.user_id;
    if *user.server_name() != *state.config.server_name() {
        return Err(Error::not_found("User is not on this server"));
    }
    let profile = state.accounts.user(user).await?.ok_or_else(|| Error::not_found("Profile not found"))?;
    let mut out = json!({});
    let field = req.body.field.as_ref().map(|f| f.as_str().to_owned());
    if field.as_deref().is_none_or(|f| f == "displayname")
        && let Some(d) = profile.displayname
    {
        out["displayname"] = json!(d);
    }
    if field.as_deref().is_none_or(|f| f == "avatar_url")
        && let Some(a) = profile.avatar_url
    {
        out["avatar_url"] = json!(a);
    }
    Ok(Json(out))
}

/// `GET /_matrix/federation/v1/publicRooms`
pub async fn public_rooms(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms::v1::Request>,
) -> Result<Json<Value>> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let rooms = state.rooms.public_rooms().await?;
    Ok(Json(state.rooms.public_rooms_page(rooms, limit, req.body.since.as_deref(), None).await?))
}

/// `POST /_matrix/federation/v1/publicRooms`
pub async fn public_rooms_filtered(
    State(state): State<AppState>,
    req: Ruma<get_public_rooms_filtered::v1::Request>,
) -> Result<Json<Value>> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let search = req.body.filter.generic_search_term.as_deref();
    let rooms = state.rooms.public_rooms().await?;
    Ok(Json(state.rooms.public_rooms_page(rooms, limit, req.body.since.as_deref(), search).await?))
}

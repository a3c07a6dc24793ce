//! Local users acting through other servers: joining, knocking, inviting and leaving rooms
//! this server is not (fully) in.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, EventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId};
use serde_json::{Value, json};

use super::{enc, ver_query};
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::federation::Federation;
use crate::rooms::Rooms;
use crate::rooms::build::{Appended, RoomCtx};
use crate::storage::rooms::{NewEventRow, StateIds};
use crate::storage::{Db, now_ms};

impl Rooms {
    /// Joins a room this server is not in, through one of `servers` (make_join + send_join).
    pub async fn join_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let fed = self.fed()?.clone();
        // Also the server of whoever invited us (or of our earlier membership's sender).
        let mut named = servers.to_vec();
        if let Some((_, ev_id, _)) = self.db.membership(room_id.as_str(), user.as_str()).await?
            && let Some(ev) = self.db.get_event(&ev_id).await?
        {
            named.push(ev.pdu.fields.sender.server_name().to_owned());
        }
        let candidates = self.remote_candidates(room_id, &named);
        let fed = &fed;
        try_each(room_id, "join", &candidates, |server| async move {
            self.complete_join(self.remote_membership(fed, server, room_id, user, "join", reason).await?).await
        })
        .await?;
        Ok(room_id.to_owned())
    }

    /// The servers to try for a membership change through federation: those named, then the
    /// room id's server (a hint, in room versions before 12), without us and without repeats.
    fn remote_candidates(&self, room_id: &RoomId, named: &[OwnedServerName]) -> Vec<OwnedServerName> {
        let mut candidates: Vec<OwnedServerName> = named.to_vec();
        candidates.extend(room_id.server_name().map(ToOwned::to_owned));
        let mut seen = HashSet::new();
        candidates.retain(|s| *s != self.server_name && seen.insert(s.clone()));
        candidates
    }

    /// A membership change through `server`: `GET make_{membership}`, the template filled in and
    /// signed (see [`Rooms::sign_membership_template`]), then `PUT send_{membership}` with it.
    async fn remote_membership<'a>(
        &self,
        fed: &Federation,
        server: &'a ServerName,
        room_id: &'a RoomId,
        user: &'a UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Handshake<'a>> {
        let room = enc(room_id.as_str());
        let mut path = format!("/_matrix/federation/v1/make_{membership}/{room}/{}", enc(user.as_str()));
        // make_leave takes no versions: a leave needs no support for the room's version.
        if membership != "leave" {
            path = format!("{path}?{}", ver_query());
        }
        let template = fed.request(server, http::Method::GET, &path, None).await?;
        let (version, rules, object, event_id) =
            self.sign_membership_template(&template, user, membership, reason).await?;
        let path = match membership {
            "join" => format!("/_matrix/federation/v2/send_join/{room}/{}?omit_members=false", enc(&event_id)),
            "knock" => format!("/_matrix/federation/v1/send_knock/{room}/{}", enc(&event_id)),
            _ => format!("/_matrix/federation/v2/send_{membership}/{room}/{}", enc(&event_id)),
        };
        let sent = serde_json::to_value(&object)?;
        let answer = fed.request(server, http::Method::PUT, &path, Some(&sent)).await?;
        Ok(Handshake { server, room_id, user, version, rules, object, event_id, sent, answer })
    }

    /// Stores a remote join after `send_join`: the room's state and auth chain as outliers (each
    /// signature checked), the join checked against them, then the join as the room's only
    /// extremity.
    async fn complete_join(&self, handshake: Handshake<'_>) -> Result<()> {
        let Handshake { server, room_id, user, version, rules, event_id, sent, answer, .. } = handshake;
        // The resident server may have countersigned the event (restricted joins).
        let join_value = if answer["event"].is_object() { answer["event"].clone() } else { sent };
        let join = self.verify_pdu(&rules, join_value, Some(room_id)).await?;
        if join.event_id.as_str() != event_id {
            return Err(Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "send_join returned another event"));
        }
        let mut outliers = Vec::new();
        let mut state = StateIds::new();
        for v in answer["auth_chain"].as_array().cloned().unwrap_or_default() {
            match self.verify_pdu(&rules, v, Some(room_id)).await {
                Ok(p) => outliers.push(p),
                Err(e) => tracing::info!(error = %e.message, "send_join auth chain event rejected"),
            }
        }
        for v in answer["state"].as_array().cloned().unwrap_or_default() {
            match self.verify_pdu(&rules, v, Some(room_id)).await {
                Ok(p) => {
                    if let Some(k) = &p.fields.state_key {
                        state.insert((p.fields.kind.to_string(), k.clone()), p.event_id.to_string());
                    }
                    outliers.push(p);
                }
                Err(e) => tracing::info!(error = %e.message, "send_join state event rejected"),
            }
        }
        if !state.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "send_join returned no create event"));
        }
        let _guard = self.room_lock(room_id.as_str()).await;
        self.store_outliers(outliers).await?;
        let state = self.without_rejected(state).await?;
        if !state.contains_key(&("m.room.create".to_owned(), String::new())) {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                "send_join returned no valid create event",
            ));
        }
        // The join's auth events, chosen by the resident in `make_join`, must be held and not
        // rejected (a join citing a forged event would be rejected by every honest server).
        let mut auth_ids: Vec<String> = join.fields.auth_events.iter().map(|e| e.to_string()).collect();
        auth_ids.extend(state.get(&("m.room.create".to_owned(), String::new())).cloned());
        let auth: HashMap<String, Pdu> =
            self.db.get_events(&auth_ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &join, |id: &EventId| {
            auth.get(id.as_str()).cloned()
        })
        .map_err(|e| Error::forbidden(format!("Join not allowed by its auth events: {e}")))?;
        // Check the join against the state we were given.
        let pdus = self.state_pdus(&state).await?;
        ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &join,
            |t: &StateEventType, k: &str| pdus.get(&(t.to_string(), k.to_owned())).cloned(),
        )
        .map_err(|e| Error::forbidden(format!("Join not allowed by the room's state: {e}")))?;

        let state_after = crate::rooms::state::state_after(&state, &join);
        let mut tx = self.db.begin_event_write().await?;
        Db::reserve_stream_positions(&mut tx, "events", 1).await?;
        let known = self.db.get_room(room_id.as_str()).await?.is_some();
        if !known {
            self.db.insert_room(&mut tx, room_id.as_str(), version.as_str()).await?;
        }
        let stream = Db::next_stream_position(&mut tx, "events").await?;
        let before = self.write_state_group(&mut tx, room_id.as_str(), None, &state).await?;
        let (after, after_chain) = self.write_state_after(&mut tx, &join, Some(before), &state_after).await?;
        let unsigned = self.replaces_state(&join, &state, &HashMap::new()).await?;
        // Our own join may already be stored (e.g. received back as an outlier); replace it.
        self.db.delete_event(&mut tx, join.event_id.as_str()).await?;
        self.db
            .insert_event(
                &mut tx,
                NewEventRow {
                    pdu: &join,
                    stream,
                    unsigned: unsigned.as_ref(),
                    outlier: false,
                    state_group: Some(after),
                },
            )
            .await?;
        self.db.clear_extremities(&mut tx, room_id.as_str()).await?;
        self.db.update_extremities(&mut tx, room_id.as_str(), &[], join.event_id.as_str()).await?;
        let old_current = if known { self.db.current_state_ids(room_id.as_str()).await? } else { StateIds::new() };
        self.apply_current_state(&mut tx, room_id.as_str(), &old_current, &state_after, stream, &join).await?;
        self.db.set_room_state_group(&mut tx, room_id.as_str(), after).await?;
        tx.commit().await?;
        let ctx = RoomCtx {
            room_id: Some(room_id.to_owned()),
            version: version.clone(),
            rules: rules.clone(),
            state: Arc::new(state_after),
            state_group: Some(after),
            chain_length: after_chain,
            extremities: vec![join.event_id.to_string()],
            depth: join.fields.depth,
            written: HashMap::new(),
            is_new: false,
        };
        self.after_commit(&ctx, &[Appended { pdu: join, stream }]).await;
        tracing::info!(%room_id, %user, via = %server, "joined remote room");
        Ok(())
    }

    /// Fills in a `make_join` / `make_knock` / `make_leave` template for a local user
    /// (membership, profile (not on a leave), reason, timestamp) and hashes and signs it:
    /// `(version, rules, event, event id)`.
    async fn sign_membership_template(
        &self,
        template: &Value,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<(RoomVersionId, RoomVersionRules, CanonicalJsonObject, String)> {
        let version = crate::events::version::parse(template["room_version"].as_str().unwrap_or("1"))?;
        let rules = crate::events::version::rules(&version)?;
        let mut event = template["event"].clone();
        if !event.is_object() {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("make_{membership} returned no event"),
            ));
        }
        let mut content = event["content"].clone();
        if !content.is_object() {
            content = json!({});
        }
        content["membership"] = json!(membership);
        // A leave carries no profile (Synapse's neither).
        if membership != "leave"
            && let Some(p) = self.db.get_user(user.as_str()).await?
        {
            if let Some(d) = p.displayname {
                content["displayname"] = json!(d);
            }
            if let Some(a) = p.avatar_url {
                content["avatar_url"] = json!(a);
            }
        }
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        event["content"] = content;
        event["origin_server_ts"] = json!(now_ms());
        event["sender"] = json!(user);
        event["state_key"] = json!(user);
        let mut object: CanonicalJsonObject =
            serde_json::from_value(event).map_err(|e| Error::bad_json(e.to_string()))?;
        for k in ["event_id", "hashes", "signatures", "unsigned"] {
            object.remove(k);
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.keys.current,
            &mut object,
            &rules.redaction,
        )
        .map_err(Error::internal)?;
        let hash = ruma::signatures::reference_hash(&object, &rules).map_err(Error::internal)?;
        Ok((version, rules, object, format!("${hash}")))
    }

    /// Knocks on a room this server is not in, through one of `servers` (make_knock +
    /// send_knock). The knock is kept as an outlier with the room's stripped state, which
    /// `/sync` shows under `rooms.knock`.
    pub async fn knock_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<()> {
        let fed = self.fed()?.clone();
        let candidates = self.remote_candidates(room_id, servers);
        let fed = &fed;
        try_each(room_id, "knock", &candidates, |server| async move {
            self.complete_knock(self.remote_membership(fed, server, room_id, user, "knock", reason).await?).await
        })
        .await
    }

    /// Stores a remote knock after `send_knock`: an outlier carrying the room's stripped state.
    async fn complete_knock(&self, handshake: Handshake<'_>) -> Result<()> {
        let Handshake { server, room_id, user, version, rules, object, event_id, answer, .. } = handshake;
        // The room's stripped state, from events whose signatures check out (spec: "SHOULD be
        // removed" otherwise). Servers older than spec v1.16 send stripped events, without
        // signatures to check: those are kept as they are.
        let mut stripped = Vec::new();
        for v in answer["knock_room_state"].as_array().cloned().unwrap_or_default() {
            if v.get("signatures").is_none() {
                if v["type"].is_string() && v["state_key"].is_string() && v["content"].is_object() {
                    stripped.push(json!({
                        "type": v["type"],
                        "state_key": v["state_key"],
                        "sender": v["sender"],
                        "content": v["content"],
                    }));
                }
                continue;
            }
            match self.verify_pdu(&rules, v, Some(room_id)).await {
                Ok(p) if p.fields.state_key.is_some() => stripped.push(json!({
                    "type": p.fields.kind.to_string(),
                    "state_key": p.fields.state_key,
                    "sender": p.fields.sender,
                    "content": p.content(),
                })),
                Ok(_) => {}
                Err(e) => tracing::info!(%server, error = %e.message, "knock_room_state event dropped"),
            }
        }
        let knock =
            Pdu::from_json(EventId::parse(&event_id).map_err(Error::internal)?, Some(room_id.to_owned()), object)?;
        let unsigned = json!({
            "knock_room_state": stripped,
            "room_version": version.as_str(),
            "knock_via": server.as_str(),
        });
        let mut tx = self.db.begin_event_write().await?;
        let stream = Db::next_stream_position(&mut tx, "events").await?;
        if self.db.get_event(&event_id).await?.is_none() {
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow { pdu: &knock, stream, unsigned: Some(&unsigned), outlier: true, state_group: None },
                )
                .await?;
        }
        self.db.set_membership(&mut tx, room_id.as_str(), user.as_str(), "knock", &event_id, stream).await?;
        tx.commit().await?;
        self.notifier.wake([user.as_str()]);
        tracing::info!(%room_id, %user, via = %server, "knocked on remote room");
        Ok(())
    }

    /// Invites a user of another server (v2 invite API), then persists the countersigned event.
    pub async fn invite_remote(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let fed = self.fed()?.clone();
        let _guard = self.room_lock(room_id.as_str()).await;
        let (pdu, version, stripped) = {
            let mut tx = self.db.begin_write().await?;
            let ctx = self.load_ctx(&mut tx, room_id).await?;
            let pdu = self
                .build_event(
                    &ctx,
                    sender,
                    crate::rooms::build::NewEvent::state("m.room.member", target.as_str(), content),
                )
                .await?;
            drop(tx);
            let mut stripped = Vec::new();
            for t in [
                "m.room.create",
                "m.room.join_rules",
                "m.room.name",
                "m.room.canonical_alias",
                "m.room.avatar",
                "m.room.encryption",
                "m.room.topic",
            ] {
                // Whole PDUs, the create event among them (spec v1.16, MSC4311): the invited
                // server can check their signatures and that they belong to the room.
                if let Some(p) = self.current_state_event(room_id, t, "").await? {
                    stripped.push(p.federation_json());
                }
            }
            if let Some(p) = self.current_state_event(room_id, "m.room.member", sender.as_str()).await? {
                stripped.push(p.federation_json());
            }
            (pdu, ctx.version.clone(), stripped)
        };
        let rules = crate::events::version::rules(&version)?;
        let path = format!("/_matrix/federation/v2/invite/{}/{}", enc(room_id.as_str()), enc(pdu.event_id.as_str()));
        let body =
            json!({ "room_version": version.as_str(), "event": pdu.federation_json(), "invite_room_state": stripped });
        let answer = fed.request(target.server_name(), http::Method::PUT, &path, Some(&body)).await?;
        let signed = self.verify_pdu(&rules, answer["event"].clone(), Some(room_id)).await?;
        if signed.event_id != pdu.event_id {
            return Err(Error::new(http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", "invite answered with another event"));
        }
        let mut tx = self.db.begin_event_write().await?;
        Db::reserve_stream_positions(&mut tx, "events", 1).await?;
        let mut ctx = self.load_ctx(&mut tx, room_id).await?;
        let appended = self.persist_local(&mut tx, &mut ctx, signed, None).await?;
        tx.commit().await?;
        self.after_commit(&ctx, &[appended]).await;
        Ok(())
    }

    /// Leaves (rejects an invite to) a room we do not participate in, via make_leave/send_leave.
    pub async fn leave_remote(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let fed = self.fed()?.clone();
        let (_, ev_id, _) = self
            .db
            .membership(room_id.as_str(), user.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Not invited to this room"))?;
        let invite = self.db.get_event(&ev_id).await?.ok_or_else(|| Error::not_found("Invite not found"))?;
        // An invite names its sender's server; our own knock, the server it went through.
        let mut server = invite.pdu.fields.sender.server_name().to_owned();
        if server == self.server_name
            && let Some(via) = invite.unsigned.as_ref().and_then(|u| u["knock_via"].as_str())
        {
            server = ServerName::parse(via).map_err(Error::internal)?;
        }
        let result: Result<()> = async {
            self.remote_membership(&fed, &server, room_id, user, "leave", None).await?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::info!(%room_id, error = %e.message, "remote leave failed; rejecting the invite locally");
        }
        let mut tx = self.db.begin_event_write().await?;
        let stream = Db::next_stream_position(&mut tx, "events").await?;
        self.db.set_membership(&mut tx, room_id.as_str(), user.as_str(), "leave", &ev_id, stream).await?;
        tx.commit().await?;
        self.notifier.wake([user.as_str()]);
        Ok(())
    }
}

/// A membership event sent to `server` (`send_join`, `send_knock`, `send_leave`) and its answer.
struct Handshake<'a> {
    server: &'a ServerName,
    room_id: &'a RoomId,
    user: &'a UserId,
    version: RoomVersionId,
    rules: RoomVersionRules,
    object: CanonicalJsonObject,
    event_id: String,
    /// The event as sent, `object` as JSON.
    sent: Value,
    answer: Value,
}

/// Runs `attempt` on each candidate server in turn until one succeeds; the last failure (or
/// "no known servers") otherwise.
async fn try_each<'a, F, Fut>(room_id: &RoomId, what: &str, candidates: &'a [OwnedServerName], attempt: F) -> Result<()>
where
    F: Fn(&'a ServerName) -> Fut,
    Fut: std::future::Future<Output = Result<()>> + 'a,
{
    let mut last_err = Error::not_found(format!("No known servers to {what} this room through"));
    for server in candidates {
        match attempt(server).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::info!(%room_id, %server, error = %e.message, "remote {what} failed");
                last_err = e;
            }
        }
    }
    Err(last_err)
}

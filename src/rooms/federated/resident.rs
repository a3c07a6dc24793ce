//! The resident side: answering other servers' `make_*`/`send_*` for joins, leaves and
//! knocks, countersigning restricted joins, receiving invites, and serving auth chains.

use std::collections::HashSet;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, EventId, RoomId, ServerName, UserId};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::rooms::Rooms;
use crate::rooms::membership::RestrictedJoin;
use crate::storage::rooms::NewEventRow;
use crate::storage::{Db, now_ms};

impl Rooms {
    /// `make_join` / `make_leave` / `make_knock`: an unsigned membership event template.
    pub async fn make_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        versions: &[String],
    ) -> Result<Value> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden("The user is not from the requesting server"));
        }
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        self.require_server_allowed(room_id, origin).await?;
        let (version, rules) = self.room_rules(room_id).await?;
        if membership != "leave" && !versions.iter().any(|v| v == version.as_str()) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_INCOMPATIBLE_ROOM_VERSION",
                format!("Your server does not support room version {version}"),
            )
            .with("room_version", json!(version.as_str())));
        }
        let mut content = json!({ "membership": membership });
        if membership == "join" {
            match self.restricted_join_check(room_id, user_id).await? {
                RestrictedJoin::Authorised(via) => content["join_authorised_via_users_server"] = json!(via),
                RestrictedJoin::NoLocalAuthoriser => {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_UNABLE_TO_GRANT_JOIN",
                        "No user of this server can authorise the join; try another server",
                    ));
                }
                RestrictedJoin::NotAllowed { knows_allowed_room: false } => {
                    return Err(Error::new(
                        http::StatusCode::BAD_REQUEST,
                        "M_UNABLE_TO_AUTHORISE_JOIN",
                        "This server cannot check the room's join conditions",
                    ));
                }
                _ => {}
            }
        }
        let state = self.db.current_state_ids(room_id.as_str()).await?;
        let raw = serde_json::value::to_raw_value(&content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &TimelineEventType::RoomMember,
            user_id,
            Some(user_id.as_str()),
            &raw,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;
        let auth_events: Vec<String> =
            auth_types.iter().filter_map(|(t, k)| state.get(&(t.to_string(), k.clone())).cloned()).collect();
        let ext = self.db.pool_extremities_with_depth(room_id.as_str()).await?;
        let depth = (ext.iter().map(|e| e.1).max().unwrap_or(0) + 1).min(crate::rooms::build::MAX_DEPTH);
        let prev: Vec<String> = ext.into_iter().map(|e| e.0).take(20).collect();
        // Check now that the membership would be allowed, so the joining server gets a clear 403.
        let state_pdus = self.state_pdus(&state).await?;
        let mut probe = json!({
            "type": "m.room.member",
            "state_key": user_id,
            "sender": user_id,
            "room_id": room_id,
            "origin_server_ts": now_ms(),
            "depth": depth,
            "prev_events": prev,
            "auth_events": auth_events,
            "content": content,
        });
        let probe_obj: CanonicalJsonObject = serde_json::from_value(probe.clone()).map_err(Error::internal)?;
        let probe_pdu =
            Pdu::from_json(EventId::parse("$probe").map_err(Error::internal)?, Some(room_id.to_owned()), probe_obj)?;
        ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &probe_pdu,
            |t: &StateEventType, k: &str| state_pdus.get(&(t.to_string(), k.to_owned())).cloned(),
        )
        .map_err(|e| Error::forbidden(format!("You are not allowed to {membership} this room: {e}")))?;
        probe["origin"] = json!(origin);
        Ok(json!({ "room_version": version.as_str(), "event": probe }))
    }

    /// `send_join` / `send_leave` / `send_knock`: accepts the signed membership event and
    /// returns the state before it (for joins).
    pub async fn send_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &str,
        membership: &str,
        body: Value,
    ) -> Result<Value> {
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        self.require_server_allowed(room_id, origin).await?;
        let (version, rules) = self.room_rules(room_id).await?;
        let body =
            if membership == "join" { self.countersign_restricted_join(room_id, &rules, body).await? } else { body };
        let pdu = self.verify_pdu(&rules, body, Some(room_id)).await?;
        if pdu.event_id.as_str() != event_id {
            return Err(Error::bad_json("Event id does not match the event"));
        }
        let Some(target) = pdu.fields.state_key.clone() else { return Err(Error::bad_json("Not a membership event")) };
        if pdu.fields.kind != TimelineEventType::RoomMember
            || pdu.content()["membership"].as_str() != Some(membership)
            || target != pdu.fields.sender.as_str()
            || pdu.fields.sender.server_name() != origin
        {
            return Err(Error::bad_json(format!("Not a {membership} event of a user of {origin}")));
        }
        let processed = {
            let _guard = self.room_lock(room_id.as_str()).await;
            self.process_pdu(origin, &version, &rules, pdu, true, Some(origin)).await?
        };
        if processed.soft_failed {
            return Err(Error::forbidden(format!("The {membership} is not allowed by the room's current state")));
        }
        if membership == "knock" {
            return Ok(json!({ "knock_room_state": self.knock_room_state(room_id).await? }));
        }
        if membership != "join" {
            return Ok(json!({}));
        }
        let state_ids: Vec<String> = processed.state_before.values().cloned().collect();
        let state: Vec<Value> =
            self.db.get_events(&state_ids).await?.into_iter().map(|e| e.pdu.federation_json()).collect();
        let mut chain_ids = state_ids.clone();
        chain_ids.push(processed.pdu.event_id.to_string());
        let auth_chain: Vec<Value> =
            self.auth_chain(&chain_ids).await?.into_iter().map(|p| p.federation_json()).collect();
        let mut servers: Vec<String> = self.remote_destinations(room_id.as_str()).await?;
        servers.push(self.server_name.to_string());
        servers.sort();
        servers.dedup();
        Ok(json!({
            "origin": self.server_name.as_str(),
            "state": state,
            "auth_chain": auth_chain,
            "event": processed.pdu.federation_json(),
            "members_omitted": false,
            "servers_in_room": servers,
        }))
    }

    /// The state shown to a knocking server (spec: `knock_room_state`): the current state
    /// events of the stripped-state types, as PDUs, the create event first.
    async fn knock_room_state(&self, room_id: &RoomId) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for t in crate::events::STRIPPED_STATE_TYPES {
            if let Some(p) = self.current_state_event(room_id, t, "").await? {
                out.push(p.federation_json());
            }
        }
        Ok(out)
    }

    /// Inbound v1 `invite` (`PUT /_matrix/federation/v1/invite`, for room versions 1 and 2): the
    /// body is the invite PDU itself, its stripped state in `unsigned.invite_room_state`, and no
    /// room version is given: the room's if it is held here, else version 1, as Synapse
    /// assumes. Otherwise the v2 path ([`Rooms::receive_invite`]).
    pub async fn receive_invite_v1(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &str,
        pdu: Value,
    ) -> Result<Value> {
        let version = match self.db.get_room(room_id.as_str()).await? {
            Some((version, _)) => version,
            None => "1".to_owned(),
        };
        let invite_room_state = pdu["unsigned"]["invite_room_state"].clone();
        let body = json!({ "room_version": version, "event": pdu, "invite_room_state": invite_room_state });
        self.receive_invite(origin, room_id, event_id, &body).await
    }

    /// Inbound v2 `invite`: countersigns an invite for a local user and records it.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &str,
        body: &Value,
    ) -> Result<Value> {
        let version = crate::events::version::parse(body["room_version"].as_str().unwrap_or("1"))?;
        let rules = crate::events::version::rules(&version)?;
        let pdu = self.verify_pdu(&rules, body["event"].clone(), Some(room_id)).await?;
        if pdu.event_id.as_str() != event_id {
            return Err(Error::bad_json("Event id does not match the event"));
        }
        let Some(target) = pdu.fields.state_key.clone() else { return Err(Error::bad_json("Not an invite")) };
        let target = UserId::parse(&target).map_err(|e| Error::bad_json(e.to_string()))?;
        if pdu.fields.kind != TimelineEventType::RoomMember
            || pdu.content()["membership"].as_str() != Some("invite")
            || target.server_name() != self.server_name
            || pdu.fields.sender.server_name() != origin
        {
            return Err(Error::bad_json("Not an invite of a local user"));
        }
        let exists = self.appservices().ensure_user(target.as_str()).await?;
        if !exists {
            return Err(Error::not_found("Unknown user"));
        }
        // A room we know has its ACL; of a room we do not know we cannot tell (Synapse:
        // `check_server_matches_acl` on the stored state).
        let known = self.db.get_room(room_id.as_str()).await?.is_some();
        if known {
            self.require_server_allowed(room_id, origin).await?;
        }
        let mut object = pdu.json().clone();
        ruma::signatures::sign_event(self.server_name.as_str(), &self.keys.current, &mut object, &rules.redaction)
            .map_err(Error::internal)?;
        let signed = Pdu::from_json(pdu.event_id.clone(), Some(room_id.to_owned()), object)?;
        // In a room this server participates in, the invite enters the timeline and the state
        // at once, like any PDU: the invited user may join at once, without waiting for the
        // inviting server's `/send` (which then finds the event held). If that fails (e.g. a
        // gap the inviting server cannot fill yet), it is held as an outlier and promoted when
        // it arrives over `/send`.
        if known && self.local_server_joined(room_id).await? {
            let (room_version, room_rules) = self.room_rules(room_id).await?;
            if room_version == version {
                let _guard = self.room_lock(room_id.as_str()).await;
                match self.process_pdu(origin, &room_version, &room_rules, signed.clone(), true, None).await {
                    Ok(p) if !p.soft_failed => return Ok(json!({ "event": signed.federation_json() })),
                    Ok(_) => return Err(Error::forbidden("The invite is not allowed by the room's current state")),
                    Err(e) => {
                        // Rejected by the auth rules: the invite is not valid in this room. Any
                        // other failure (an auth chain or state the inviter cannot serve yet,
                        // as it stores the invite only after our answer) is not the invite's.
                        if self.db.get_event(event_id).await?.is_some_and(|held| held.pdu.rejected) {
                            return Err(e);
                        }
                        tracing::info!(%room_id, event_id, error = %e.message, "invite kept as an outlier");
                    }
                }
            }
        }
        // Kept as the stripped state clients are shown: servers send whole PDUs since v1.16
        // (MSC4311), of which clients get type, state key, sender and content.
        let invite_state: Vec<Value> = body["invite_room_state"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.is_object())
            .map(|e| json!({ "type": e["type"], "state_key": e["state_key"], "sender": e["sender"], "content": e["content"] }))
            .collect();
        let mut tx = self.db.begin_event_write().await?;
        if self.db.get_event(event_id).await?.is_none() {
            let stream = Db::next_stream_position(&mut tx, "events").await?;
            let unsigned = json!({ "invite_room_state": invite_state, "room_version": version.as_str() });
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow { pdu: &signed, stream, unsigned: Some(&unsigned), outlier: true, state_group: None },
                )
                .await?;
            self.db.set_membership(&mut tx, room_id.as_str(), target.as_str(), "invite", event_id, stream).await?;
            // An invite of an appservice's user to a room held elsewhere: the bridge hears of it.
            {
                let appservices = self.appservices();
                appservices.queue_event(&mut tx, &signed, &[]).await?;
            }
        }
        tx.commit().await?;
        self.notifier.wake([target.as_str()]);
        self.outbox_wakeup.notify_waiters();
        Ok(json!({ "event": signed.federation_json() }))
    }

    /// A restricted join authorised by one of our users (`join_authorised_via_users_server`):
    /// checked again (the joiner is in an allowed room, the named user is ours) and signed by
    /// this server, as the auth rules of room versions 8+ require.
    async fn countersign_restricted_join(
        &self,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        body: Value,
    ) -> Result<Value> {
        let Some(via) = body["content"]["join_authorised_via_users_server"].as_str() else { return Ok(body) };
        let via = UserId::parse(via).map_err(|e| Error::bad_json(format!("join_authorised_via_users_server: {e}")))?;
        if via.server_name() != self.server_name || !rules.authorization.restricted_join_rule {
            return Ok(body);
        }
        let joiner = body["state_key"]
            .as_str()
            .and_then(|u| UserId::parse(u).ok())
            .ok_or_else(|| Error::bad_json("Not a membership event"))?;
        match self.restricted_join_check(room_id, &joiner).await? {
            RestrictedJoin::Authorised(_) | RestrictedJoin::AlreadyMember => {}
            _ => return Err(Error::forbidden("The join does not meet the room's join conditions")),
        }
        if self.membership_of(room_id, &via).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("{via} cannot authorise joins to this room")));
        }
        let mut object: CanonicalJsonObject =
            serde_json::from_value(body).map_err(|e| Error::bad_json(format!("Event is not canonical JSON: {e}")))?;
        ruma::signatures::sign_event(self.server_name.as_str(), &self.keys.current, &mut object, &rules.redaction)
            .map_err(Error::internal)?;
        Ok(serde_json::to_value(&object)?)
    }

    /// The full auth chain of the given events (not including them), oldest first.
    pub async fn auth_chain(&self, ids: &[String]) -> Result<Vec<Pdu>> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut frontier: Vec<String> = Vec::new();
        for ev in self.db.get_events(ids).await? {
            frontier.extend(ev.pdu.fields.auth_events.iter().map(|e| e.to_string()));
        }
        while !frontier.is_empty() {
            let next_ids: Vec<String> = frontier.drain(..).filter(|id| seen.insert(id.clone())).collect();
            for ev in self.db.get_events(&next_ids).await? {
                frontier.extend(ev.pdu.fields.auth_events.iter().map(|e| e.to_string()));
                out.push(ev.pdu);
            }
        }
        out.sort_by_key(|p| p.fields.depth);
        Ok(out)
    }
}

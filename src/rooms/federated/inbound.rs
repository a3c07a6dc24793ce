//! PDUs pushed to us in transactions: verification (format, signatures, content hash), the auth
//! checks against the event's own auth events, the state before it and the current state (soft
//! failure), and persisting the accepted, soft-failed or rejected event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId};
use serde_json::{Value, json};

use super::Processed;
use crate::error::{Error, Result};
use crate::events::pdu::{MAX_PDU_BYTES, Pdu};
use crate::rooms::Rooms;
use crate::rooms::build::{Appended, RoomCtx};
use crate::rooms::state;
use crate::storage::Db;
use crate::storage::outbox::Outbox;
use crate::storage::rooms::{NewEventRow, StateIds};

impl Rooms {
    /// Checks a PDU received over federation: format, signatures (fetching keys) and content
    /// hash (a bad hash yields the redacted form). Returns the PDU with its computed id.
    pub async fn verify_pdu(&self, rules: &RoomVersionRules, value: Value, room_id: Option<&RoomId>) -> Result<Pdu> {
        let fed = self.fed()?;
        let mut object: CanonicalJsonObject =
            serde_json::from_value(value).map_err(|e| Error::bad_json(format!("PDU is not canonical JSON: {e}")))?;
        object.remove("unsigned");
        object.remove("event_id");
        let size = serde_json::to_vec(&object)?.len();
        if size > MAX_PDU_BYTES {
            return Err(Error::too_large("PDU too large"));
        }
        if size == MAX_PDU_BYTES {
            // ruma-state-res 0.18 refuses PDUs over 65,535 bytes, one fewer than the spec's
            // 65,536 (which Synapse accepts). The size is checked above; its other checks do
            // not read the signatures, so it gets the event without them.
            let mut without_signatures = object.clone();
            without_signatures.remove("signatures");
            ruma::state_res::check_pdu_format(&without_signatures, &rules.event_format).map_err(Error::bad_json)?;
        } else {
            ruma::state_res::check_pdu_format(&object, &rules.event_format).map_err(Error::bad_json)?;
        }
        let servers = ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| Error::forbidden(format!("Signatures: {e}")))?;
        let mut wanted = Vec::new();
        for server in servers {
            let ids: Vec<String> = match object.get("signatures") {
                Some(CanonicalJsonValue::Object(sigs)) => match sigs.get(server.as_str()) {
                    Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            wanted.push((server.to_string(), ids));
        }
        let map = fed
            .key_map(&wanted, crate::federation::keys::event_key_validity_time(rules, &object)?)
            .await
            .map_err(|e| Error::forbidden(format!("Keys: {}", e.message)))?;
        let verified = ruma::signatures::verify_event(&map, &object, rules)
            .map_err(|e| Error::forbidden(format!("Bad signature: {e}")))?;
        let hash = ruma::signatures::reference_hash(&object, rules).map_err(|e| Error::bad_json(e.to_string()))?;
        let event_id = EventId::parse(format!("${hash}")).map_err(Error::internal)?;
        if verified == ruma::signatures::Verified::Signatures {
            tracing::info!(%event_id, "content hash mismatch: keeping the redacted form");
            object = ruma::canonical_json::redact(object, &rules.redaction, None).map_err(Error::internal)?;
        }
        let pdu = Pdu::from_json(event_id, room_id.map(ToOwned::to_owned), object)?;
        if let Some(r) = room_id
            && pdu.room_id != r
        {
            return Err(Error::bad_json("PDU is for another room"));
        }
        Ok(pdu)
    }

    /// Processes one PDU that `origin` sent in a transaction.
    pub async fn handle_incoming_pdu(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        value: Value,
    ) -> Result<OwnedEventId> {
        if self.db.get_room(room_id.as_str()).await?.is_none() {
            return self.receive_membership_outside_room(origin, room_id, value).await;
        }
        let (version, rules) = self.room_rules(room_id).await?;
        let pdu = self.verify_pdu(&rules, value, Some(room_id)).await?;
        let event_id = pdu.event_id.clone();
        if !self.server_allowed(room_id, origin).await?
            || !self.server_allowed(room_id, pdu.fields.sender.server_name()).await?
        {
            return Err(Error::forbidden("Server denied by the room's server ACL"));
        }
        let _guard = self.room_lock(room_id.as_str()).await;
        self.process_pdu(origin, &version, &rules, pdu, true, None).await?;
        Ok(event_id)
    }

    /// A PDU for a room we are not in: only the resident's answer to a local user's knock or
    /// invite (a kick: knock rejected, invite revoked; or a ban) is taken. It must be a
    /// `leave` / `ban` of that user, signed by the origin, and name the knock or invite among
    /// its auth events; the user's membership becomes it (an outlier, like the invite).
    async fn receive_membership_outside_room(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        value: Value,
    ) -> Result<OwnedEventId> {
        let unknown = || Error::not_found("Unknown room");
        let target = value["state_key"].as_str().and_then(|u| UserId::parse(u).ok()).ok_or_else(unknown)?;
        if value["type"] != "m.room.member" || target.server_name() != self.server_name {
            return Err(unknown());
        }
        let Some((membership, current_id, _)) = self.db.membership(room_id.as_str(), target.as_str()).await? else {
            return Err(unknown());
        };
        if membership != "knock" && membership != "invite" {
            return Err(unknown());
        }
        let current = self.db.get_event(&current_id).await?.ok_or_else(unknown)?;
        let version = current
            .unsigned
            .as_ref()
            .and_then(|u| u["room_version"].as_str())
            .map(crate::events::version::parse)
            .transpose()?
            .ok_or_else(unknown)?;
        let rules = crate::events::version::rules(&version)?;
        let pdu = self.verify_pdu(&rules, value, Some(room_id)).await?;
        let new_membership = pdu.content()["membership"].as_str().unwrap_or("").to_owned();
        if (new_membership != "leave" && new_membership != "ban")
            || pdu.fields.sender.server_name() != origin
            || !pdu.fields.auth_events.iter().any(|e| e.as_str() == current_id)
        {
            return Err(Error::forbidden("Not an answer to this server's knock or invite"));
        }
        let mut tx = self.db.begin_event_write().await?;
        if self.db.get_event(pdu.event_id.as_str()).await?.is_none() {
            let stream = Db::next_stream_position(&mut tx, "events").await?;
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow { pdu: &pdu, stream, unsigned: None, outlier: true, state_group: None },
                )
                .await?;
            self.db
                .set_membership(
                    &mut tx,
                    room_id.as_str(),
                    target.as_str(),
                    &new_membership,
                    pdu.event_id.as_str(),
                    stream,
                )
                .await?;
        }
        tx.commit().await?;
        self.notifier.wake([target.as_str()]);
        tracing::info!(%room_id, user = %target, membership = %new_membership, "{membership} answered by {origin}");
        Ok(pdu.event_id)
    }

    /// The checks and persistence of one verified PDU; the caller holds the room lock.
    /// `forward_except` makes us relay the event to the room's other servers (send_join).
    pub async fn process_pdu(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: Pdu,
        fetch_missing: bool,
        forward_except: Option<&ServerName>,
    ) -> Result<Processed> {
        let room_id = pdu.room_id.clone();
        // Known in the timeline, or soft-failed before: not evaluated again (as Synapse, which
        // deduplicates both), so that a soft-failed event cannot enter the state later by
        // being sent again.
        if let Some(existing) = self.db.get_event(pdu.event_id.as_str()).await?
            && (!existing.outlier || existing.is_soft_failed())
        {
            if existing.pdu.rejected {
                return Err(Error::forbidden("Event was rejected"));
            }
            let soft_failed = existing.is_soft_failed();
            let state_before = self.state_before_event(&existing.pdu).await.unwrap_or_default();
            return Ok(Processed { pdu: existing.pdu, state_before, soft_failed });
        }
        // Auth against the event's own auth events.
        self.check_auth_events(origin, rules, &pdu).await?;

        // The state before the event.
        let mut prev_groups = self.prev_groups(&pdu).await?;
        if prev_groups.is_none() && fetch_missing {
            self.fetch_missing_prevs(origin, version, rules, &pdu).await;
            prev_groups = self.prev_groups(&pdu).await?;
        }
        let (state_before, before_group) = self.state_before(origin, rules, &pdu, prev_groups).await?;
        let pdus = self.state_pdus(&state_before).await?;
        let by_key: HashMap<(String, String), Pdu> = pdus;
        if let Err(e) = ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &pdu,
            |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
        ) {
            tracing::info!(event_id = %pdu.event_id, error = %e, "rejecting event: fails auth against the state before it");
            inbound_pdu("rejected");
            self.persist_rejected(&pdu).await?;
            return Err(Error::forbidden(format!("Event fails auth: {e}")));
        }
        // Soft fail: a valid event that the current state no longer allows is not shown.
        let current = self.db.current_state_ids(room_id.as_str()).await?;
        let current_pdus = self.state_pdus(&current).await?;
        if let Err(e) = ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &pdu,
            |t: &StateEventType, k: &str| current_pdus.get(&(t.to_string(), k.to_owned())).cloned(),
        ) {
            tracing::info!(event_id = %pdu.event_id, error = %e, "soft-failing event against the current state");
            self.persist_soft_failed(&pdu, &state_before, before_group).await?;
            inbound_pdu("soft_failed");
            return Ok(Processed { pdu, state_before, soft_failed: true });
        }
        // A room with a policy server: events it did not sign are treated as spam.
        if let Some(policy) = super::policy::enabled_policy_in(&current_pdus)
            && !super::policy::policy_signed(&policy, &pdu, rules)
        {
            tracing::info!(event_id = %pdu.event_id, via = %policy.via, "soft-failing event without the policy server's signature");
            self.persist_soft_failed(&pdu, &state_before, before_group).await?;
            inbound_pdu("soft_failed");
            return Ok(Processed { pdu, state_before, soft_failed: true });
        }
        Db::while_holding_write_lock(self.persist_remote(
            origin,
            version,
            rules,
            &pdu,
            &state_before,
            before_group,
            forward_except,
        ))
        .await?;
        inbound_pdu("accepted");
        Ok(Processed { pdu, state_before, soft_failed: false })
    }

    /// Fetches the auth events of `pdu` if needed and checks it against them (the state
    /// independent auth rules); an event failing them is stored as rejected.
    pub(in crate::rooms) async fn check_auth_events(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<()> {
        self.ensure_auth_events(origin, rules, pdu).await?;
        let mut auth_ids: Vec<String> = pdu.fields.auth_events.iter().map(|e| e.to_string()).collect();
        if let Some(create) = self.db.current_state_event_id(pdu.room_id.as_str(), "m.room.create", "").await? {
            auth_ids.push(create);
        }
        let auth: HashMap<String, Pdu> =
            self.db.get_events(&auth_ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        if let Err(e) =
            ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
                auth.get(id.as_str()).filter(|p| !p.rejected).cloned()
            })
        {
            tracing::info!(event_id = %pdu.event_id, error = %e, "rejecting event: fails auth against its auth events");
            inbound_pdu("rejected");
            self.persist_rejected(pdu).await?;
            return Err(Error::forbidden(format!("Event fails auth: {e}")));
        }
        Ok(())
    }

    /// Persists an accepted remote event: state groups, extremities, current state (resolved
    /// with the other forks), memberships; then wakes local members. Run it inside
    /// `Db::while_holding_write_lock`: its reads while holding the write transaction use the
    /// connections reserved for lock holders.
    #[allow(clippy::too_many_arguments)]
    async fn persist_remote(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        state_before: &StateIds,
        before_group: Option<(i64, i64)>,
        forward_except: Option<&ServerName>,
    ) -> Result<()> {
        let room_id = pdu.room_id.as_str();
        let state_after = state::state_after(state_before, pdu);
        // Read the room's current state and extremities inside the write transaction, after
        // taking the locks in the writer's order (event counter, then room row): local events
        // are appended by the writer task without the room lock.
        let mut tx = self.db.begin_event_write().await?;
        Db::reserve_stream_positions(&mut tx, "events", 1).await?;
        let (_, current_group) =
            self.db.lock_room(&mut tx, room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let (current, current_chain) = match current_group {
            Some(g) => {
                let (s, c) = self.state_cache.load(&self.db, g).await?;
                ((*s).clone(), c)
            }
            None => (StateIds::new(), 0),
        };
        let old_ext: Vec<String> = self.db.extremities(&mut tx, room_id).await?.into_iter().map(|e| e.0).collect();
        let prevs: HashSet<String> = pdu.fields.prev_events.iter().map(|e| e.to_string()).collect();
        let remaining: Vec<String> = old_ext.iter().filter(|e| !prevs.contains(*e)).cloned().collect();
        // A late ancestor (an event that a timeline event already names as a prev event) is
        // not a forward extremity: new local events must not point back at it, and the current
        // state (the resolution of the extremities' states) does not change.
        let late = self.db.has_timeline_child(&mut tx, pdu.event_id.as_str()).await?;
        // The new current state (spec): the resolution of the states after every forward
        // extremity, i.e. the event's state if it supersedes every extremity, otherwise its
        // state resolved with the other extremities' (not with the previous current state, so
        // that an event that lost an earlier resolution is reconsidered and the result does not
        // depend on arrival order: issue 16, defect 2).
        let new_current = if late {
            current.clone()
        } else if remaining.is_empty() {
            state_after.clone()
        } else {
            self.state_at_extremities(rules, &remaining, &state_after, pdu).await?
        };
        let stream = Db::next_stream_position(&mut tx, "events").await?;
        let (group_after, chain_after) = self.write_state_after(&mut tx, pdu, before_group, &state_after).await?;
        let (cur_group, cur_chain) = if new_current == state_after {
            (group_after, chain_after)
        } else {
            let base = current_group.map(|g| (g, current_chain, &current));
            self.write_state_group(&mut tx, room_id, base, &new_current).await?
        };
        let unsigned = self.replaces_state(pdu, state_before, &HashMap::new()).await?;
        // An event we hold as an outlier (an invite received on `/invite`, an event fetched
        // for an auth chain or a state; not a soft-failed one, which `process_pdu` does not
        // evaluate again) enters the timeline in place: its row keeps the JSON and the
        // server-computed data it had (e.g. `invite_room_state`).
        let held = self.db.get_event(pdu.event_id.as_str()).await?;
        let unsigned = match &held {
            Some(held) => {
                let mut merged = held.unsigned.clone().unwrap_or_else(|| json!({}));
                if let (Some(m), Some(Value::Object(new))) = (merged.as_object_mut(), unsigned) {
                    m.extend(new);
                }
                merged.as_object().is_some_and(|m| !m.is_empty()).then_some(merged)
            }
            None => unsigned,
        };
        self.db.put_timeline_event(&mut tx, pdu, stream, group_after, unsigned.as_ref(), held.is_some()).await?;
        let removed: Vec<String> = old_ext.iter().filter(|e| prevs.contains(*e)).cloned().collect();
        if late {
            self.db.remove_extremities(&mut tx, room_id, &removed).await?;
        } else {
            self.db.update_extremities(&mut tx, room_id, &removed, pdu.event_id.as_str()).await?;
        }
        self.apply_current_state(&mut tx, room_id, &current, &new_current, stream, pdu).await?;
        self.db.set_room_state_group(&mut tx, room_id, cur_group).await?;
        let mut ctx = RoomCtx {
            room_id: Some(pdu.room_id.clone()),
            version: version.clone(),
            rules: rules.clone(),
            state: Arc::new(new_current),
            state_group: Some(cur_group),
            chain_length: cur_chain,
            extremities: Vec::new(),
            depth: pdu.fields.depth,
            written: HashMap::new(),
            is_new: false,
        };
        if pdu.fields.kind == TimelineEventType::RoomRedaction
            && let Some(target) = &pdu.redacts_target
        {
            self.apply_redaction(&mut tx, &ctx, pdu, target).await?;
        }
        // Push rules see the room as it was before the event.
        let rows = self.push_actions(&ctx, state_before, before_group.map(|(g, _)| g), pdu, stream).await?;
        self.db.insert_push_actions(&mut tx, rows).await?;
        ctx.written.insert(pdu.event_id.to_string(), pdu.clone());
        self.apply_held_redactions(&mut tx, &ctx, pdu).await?;
        if let Some(except) = forward_except {
            for dest in self.remote_destinations(room_id).await? {
                if dest != except.as_str() && dest != origin.as_str() {
                    self.db.queue_outbox(&mut tx, &dest, Outbox::Pdu(pdu.event_id.as_str())).await?;
                }
            }
        }
        // After the federation outbox rows, as for local events: counters are locked in one order.
        if self.appservices().any_receivers() {
            let members = self.read_members(room_id).await?;
            self.appservices().queue_event(&mut tx, pdu, &members.joined_local).await?;
        }
        tx.commit().await?;
        self.state_cache.insert(group_after, Arc::new(state_after), chain_after);
        ctx.written.clear();
        self.after_commit(&ctx, &[Appended { pdu: pdu.clone(), stream }]).await;
        Ok(())
    }

    /// Stores a soft-failed event (spec: "Soft failure"): an outlier, so that no client reads
    /// it and it is never a forward extremity nor in the current state, but with the state
    /// group after it, so that it is served to servers and later events may name it among
    /// their prev events (their state before is computed through it) and auth events. An
    /// outlier held before (fetched for an auth chain or a state) gets the state group.
    async fn persist_soft_failed(
        &self,
        pdu: &Pdu,
        state_before: &StateIds,
        before_group: Option<(i64, i64)>,
    ) -> Result<()> {
        let state_after = state::state_after(state_before, pdu);
        // What it replaces, so that the state before it can be told from the state after it
        // (`state_before_event`).
        let unsigned = self.replaces_state(pdu, state_before, &HashMap::new()).await?;
        let (group, chain) = Db::while_holding_write_lock(async {
            let mut tx = self.db.begin_write().await?;
            let (group, chain) = self.write_state_after(&mut tx, pdu, before_group, &state_after).await?;
            if self.db.get_event(pdu.event_id.as_str()).await?.is_some() {
                self.db.mark_soft_failed(&mut tx, pdu.event_id.as_str(), group).await?;
            } else {
                // Outliers get negative positions so that they never appear in stream ranges.
                let stream = -Db::next_stream_position(&mut tx, "outliers").await?;
                self.db
                    .insert_event(
                        &mut tx,
                        NewEventRow {
                            pdu,
                            stream,
                            unsigned: unsigned.as_ref(),
                            outlier: true,
                            state_group: Some(group),
                        },
                    )
                    .await?;
            }
            tx.commit().await?;
            Ok::<_, Error>((group, chain))
        })
        .await?;
        self.state_cache.insert(group, Arc::new(state_after), chain);
        Ok(())
    }

    pub(in crate::rooms) async fn persist_rejected(&self, pdu: &Pdu) -> Result<()> {
        if self.db.get_event(pdu.event_id.as_str()).await?.is_some() {
            return Ok(());
        }
        let mut pdu = pdu.clone();
        pdu.rejected = true;
        let mut tx = self.db.begin_write().await?;
        let stream = -Db::next_stream_position(&mut tx, "outliers").await?;
        self.db
            .insert_event(&mut tx, NewEventRow { pdu: &pdu, stream, unsigned: None, outlier: true, state_group: None })
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Counts an inbound PDU's outcome (`myelin_federation_inbound_pdus_total`).
fn inbound_pdu(outcome: &'static str) {
    metrics::counter!("myelin_federation_inbound_pdus_total", "outcome" => outcome).increment(1);
}

//! Rooms across servers: incoming PDUs, the resident side of joins/leaves/invites, and local
//! users joining, inviting into and leaving rooms through other servers.
//!
//! Every incoming PDU goes through the same checks (spec: "Checks performed on receipt of a
//! PDU"): format, signatures of the origin and sender servers, content hash (a mismatch means
//! the redacted form is kept), auth against its own `auth_events`, auth against the state
//! before it (state resolution over its prev events' states), and a soft-fail check against
//! the current state (a soft-failed event is stored as an outlier with its state group: served
//! to servers and usable as a prev or auth event, never shown to clients nor applied to the
//! current state). Missing prev events are fetched with `get_missing_events`; when a gap
//! remains, the state after each missing prev event comes from the origin's `state_ids` at it.
//! The current state is the resolution of the states at every forward extremity. A room's
//! events are processed one at a time under `room_lock`; rooms proceed in parallel.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::state_res::StateMap;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::{Value, json};

use super::Rooms;
use super::build::{Appended, RoomCtx};
use super::membership::RestrictedJoin;
use super::pdu::{MAX_PDU_BYTES, Pdu};
use super::state::MAX_CHAIN;
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::storage::rooms::{NewEventRow, StateIds, StoredEvent};
use crate::storage::{Db, WriteTx, now_ms};

/// Room versions we offer in `make_join` (`ver=`).
fn ver_query() -> String {
    super::version::SUPPORTED_ROOM_VERSIONS.iter().map(|v| format!("ver={v}")).collect::<Vec<_>>().join("&")
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// What processing one PDU established.
pub struct Processed {
    /// The event.
    pub pdu: Pdu,
    /// The state before it.
    pub state_before: StateIds,
    /// Whether it was soft-failed: stored and served to servers, but not applied to the
    /// current state, not a forward extremity and not shown to local clients.
    pub soft_failed: bool,
}

impl Rooms {
    fn fed(&self) -> Result<&Arc<Federation>> {
        self.federation().ok_or_else(|| Error::forbidden("Federation is disabled on this server"))
    }

    /// Room version and rules of a known room.
    pub async fn room_rules(&self, room_id: &RoomId) -> Result<(RoomVersionId, RoomVersionRules)> {
        let (version, _) = self.db.get_room(room_id.as_str()).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
        let rules = super::version::rules(&version)?;
        Ok((version, rules))
    }

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

    /// Whether `server` may take part in the room under its `m.room.server_acl`.
    pub async fn server_allowed(&self, room_id: &RoomId, server: &ServerName) -> Result<bool> {
        let Some(acl) = self.current_state_event(room_id, "m.room.server_acl", "").await? else { return Ok(true) };
        Ok(acl_allows(&acl.content(), server.as_str()))
    }

    /// Fails with 403 when the ACL denies `server`.
    pub async fn require_server_allowed(&self, room_id: &RoomId, server: &ServerName) -> Result<()> {
        if self.server_allowed(room_id, server).await? {
            Ok(())
        } else {
            Err(Error::forbidden(format!("Server {server} is denied by the room's server ACL")))
        }
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
            .map(super::version::parse)
            .transpose()?
            .ok_or_else(unknown)?;
        let rules = super::version::rules(&version)?;
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
            return Ok(Processed { pdu, state_before, soft_failed: true });
        }
        self.persist_remote(origin, version, rules, &pdu, &state_before, before_group, forward_except).await?;
        Ok(Processed { pdu, state_before, soft_failed: false })
    }

    /// Fetches the auth events of `pdu` if needed and checks it against them (the state
    /// independent auth rules); an event failing them is stored as rejected.
    pub(super) async fn check_auth_events(
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
            self.persist_rejected(pdu).await?;
            return Err(Error::forbidden(format!("Event fails auth: {e}")));
        }
        Ok(())
    }

    /// The state before `pdu` from the state groups after its prev events (`prev_groups`): one
    /// group's state as is (with the group and its delta-chain length, for storing the state
    /// after as a delta), several resolved together. `None` (a prev event missing, held without
    /// a state, or rejected): see [`Rooms::state_before_with_gaps`].
    pub(super) async fn state_before(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        prev_groups: Option<Vec<i64>>,
    ) -> Result<(StateIds, Option<(i64, i64)>)> {
        Ok(match prev_groups {
            Some(groups) if groups.len() == 1 => {
                let (state, chain) = self.state_cache.load(&self.db, groups[0]).await?;
                ((*state).clone(), Some((groups[0], chain)))
            }
            Some(groups) => {
                let mut states = Vec::new();
                for g in groups {
                    states.push((*self.state_at_group(g).await?).clone());
                }
                (self.resolve_states(rules, states).await?, None)
            }
            None => match self.state_before_with_gaps(origin, rules, pdu).await {
                Ok(state) => (state, None),
                Err(e) => {
                    // The origin could not give the state at one of the prevs (e.g. it does not
                    // serve that event): its answer for the event itself is the best left.
                    tracing::info!(event_id = %pdu.event_id, error = %e.message, "state at the prev events unavailable; asking the state at the event");
                    (self.fetch_state_before(origin, rules, pdu).await?, None)
                }
            },
        })
    }

    /// The state before `pdu` when some prev events are not held with a state (spec: the
    /// resolution of the states after each prev event; issue 16, defect 7). Each prev event
    /// contributes the state after it:
    /// - held with a state group (a timeline or soft-failed event): that group, as usual;
    /// - rejected: the state *before* it (as Synapse, whose state group for a rejected event is
    ///   the one before it), from its own prev events when we hold them with a state, otherwise
    ///   the origin's `/state_ids` at it;
    /// - missing, or an outlier whose state we do not know: the origin's `/state_ids` at it
    ///   (the state before it) plus the event itself, fetched with `/event` as an outlier.
    ///
    /// Only what is missing is asked: the states of the prevs we hold stay ours, so a state
    /// event of our own branch is not lost when the origin's view of it differs.
    async fn state_before_with_gaps(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<StateIds> {
        let ids: Vec<String> = pdu.fields.prev_events.iter().map(|e| e.to_string()).collect();
        let held: HashMap<String, StoredEvent> =
            self.db.get_events(&ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e)).collect();
        let mut states: Vec<StateIds> = Vec::new();
        for id in &ids {
            let state = match held.get(id) {
                Some(StoredEvent { pdu, state_group: Some(group), .. }) if !pdu.rejected => {
                    (*self.state_at_group(*group).await?).clone()
                }
                Some(e) if e.pdu.rejected => match self.prev_groups(&e.pdu).await? {
                    Some(groups) => {
                        let mut prev_states = Vec::new();
                        for g in groups {
                            prev_states.push((*self.state_at_group(g).await?).clone());
                        }
                        self.resolve_states(rules, prev_states).await?
                    }
                    None => self.fetch_state_at(origin, rules, &pdu.room_id, id).await?,
                },
                _ => {
                    let mut state = self.fetch_state_at(origin, rules, &pdu.room_id, id).await?;
                    self.fetch_events_as_outliers(origin, rules, &pdu.room_id, std::slice::from_ref(id)).await?;
                    let prev = self
                        .db
                        .get_event(id)
                        .await?
                        .ok_or_else(|| Error::forbidden(format!("{origin} did not serve prev event {id}")))?;
                    // The prev itself enters the state only if the state before it allows it:
                    // a prev that fails the auth rules counts as rejected (the state before it),
                    // so that a peer cannot slip a forbidden state event in through a gap.
                    if let Some(k) = prev.pdu.fields.state_key.as_ref().filter(|_| !prev.pdu.rejected) {
                        let by_key = self.state_pdus(&state).await?;
                        match ruma::state_res::check_state_dependent_auth_rules(
                            &rules.authorization,
                            &prev.pdu,
                            |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
                        ) {
                            Ok(()) => {
                                state.insert((prev.pdu.fields.kind.to_string(), k.clone()), id.clone());
                            }
                            Err(e) => {
                                tracing::info!(event_id = %id, error = %e, "missing prev event fails auth against the state before it; counted as rejected");
                            }
                        }
                    }
                    state
                }
            };
            if !states.contains(&state) {
                states.push(state);
            }
        }
        if states.len() == 1 {
            return Ok(states.pop().unwrap_or_default());
        }
        self.resolve_states(rules, states).await
    }

    /// State groups of all prev events, or None if one is missing or has no state.
    pub(super) async fn prev_groups(&self, pdu: &Pdu) -> Result<Option<Vec<i64>>> {
        let ids: Vec<String> = pdu.fields.prev_events.iter().map(|e| e.to_string()).collect();
        let evs = self.db.get_events(&ids).await?;
        let mut groups = Vec::new();
        for id in &ids {
            match evs.iter().find(|e| e.pdu.event_id.as_str() == id) {
                // Timeline events, and soft-failed ones (outliers with a state group).
                Some(e) if !e.pdu.rejected && e.state_group.is_some() => groups.push(e.state_group.unwrap_or_default()),
                Some(e) if e.pdu.rejected && !e.outlier && e.state_group.is_none() => {
                    // A rejected prev: use the state before it is not known; skip it.
                }
                _ => return Ok(None),
            }
        }
        groups.sort();
        groups.dedup();
        if groups.is_empty() {
            return Ok(None);
        }
        Ok(Some(groups))
    }

    /// Fetches the events between our forward extremities and `pdu` with `get_missing_events`
    /// and processes them oldest first.
    async fn fetch_missing_prevs(
        &self,
        origin: &ServerName,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) {
        let Ok(fed) = self.fed() else { return };
        let earliest: Vec<String> = match self.db.pool_extremities(pdu.room_id.as_str()).await {
            Ok(e) => e,
            Err(_) => return,
        };
        let body = json!({
            "earliest_events": earliest,
            "latest_events": [pdu.event_id],
            "limit": 50,
            "min_depth": 0,
        });
        let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(pdu.room_id.as_str()));
        let answer = match fed.request(origin, http::Method::POST, &path, Some(&body)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%origin, error = %e.message, "get_missing_events failed");
                return;
            }
        };
        let mut events = Vec::new();
        for v in answer["events"].as_array().cloned().unwrap_or_default() {
            match self.verify_pdu(rules, v, Some(&pdu.room_id)).await {
                Ok(p) => events.push(p),
                Err(e) => tracing::info!(error = %e.message, "missing event failed verification"),
            }
        }
        events.sort_by_key(|p| p.fields.depth);
        for ev in events {
            if ev.event_id == pdu.event_id {
                continue;
            }
            let id = ev.event_id.clone();
            if let Err(e) = Box::pin(self.process_pdu(origin, version, rules, ev, false, None)).await {
                tracing::info!(event_id = %id, error = %e.message, "missing event not accepted");
            }
        }
    }

    /// The state before `pdu` as the origin reports it (`state_ids` + `event`), for gaps that
    /// `get_missing_events` could not close.
    pub(super) async fn fetch_state_before(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<StateIds> {
        self.fetch_state_at(origin, rules, &pdu.room_id, pdu.event_id.as_str()).await
    }

    /// The state before event `event_id` as the origin reports it (`state_ids` + `event`), its
    /// events we lack stored as outliers.
    async fn fetch_state_at(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        event_id: &str,
    ) -> Result<StateIds> {
        let fed = self.fed()?;
        let path = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(room_id.as_str()), enc(event_id));
        let answer = fed.request(origin, http::Method::GET, &path, None).await?;
        let mut ids: Vec<String> =
            answer["pdu_ids"].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
        let auth_ids: Vec<String> = answer["auth_chain_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        let state_ids = ids.clone();
        ids.extend(auth_ids);
        self.fetch_events_as_outliers(origin, rules, room_id, &ids).await?;
        let mut state = StateIds::new();
        for ev in self.db.get_events(&state_ids).await? {
            if let Some(k) = &ev.pdu.fields.state_key {
                state.insert((ev.pdu.fields.kind.to_string(), k.clone()), ev.pdu.event_id.to_string());
            }
        }
        self.without_rejected(state).await
    }

    /// Fetches the listed events we lack from `origin` with `GET /event` and stores them as outliers.
    async fn fetch_events_as_outliers(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        ids: &[String],
    ) -> Result<()> {
        let fed = self.fed()?;
        let have: HashSet<String> =
            self.db.get_events(ids).await?.into_iter().map(|e| e.pdu.event_id.to_string()).collect();
        let mut fetched = Vec::new();
        for id in ids.iter().filter(|i| !have.contains(*i)) {
            let path = format!("/_matrix/federation/v1/event/{}", enc(id));
            let answer = fed.request(origin, http::Method::GET, &path, None).await?;
            let Some(v) = answer["pdus"].as_array().and_then(|a| a.first()).cloned() else { continue };
            let p = self.verify_pdu(rules, v, Some(room_id)).await?;
            if p.event_id.as_str() != id {
                return Err(Error::forbidden(format!("{origin} served a different event for {id}")));
            }
            fetched.push(p);
        }
        self.store_outliers(fetched).await
    }

    /// Makes sure every auth event of `pdu` is stored, fetching the auth chain from `origin`.
    pub(super) async fn ensure_auth_events(
        &self,
        origin: &ServerName,
        rules: &RoomVersionRules,
        pdu: &Pdu,
    ) -> Result<()> {
        let ids: Vec<String> = pdu.fields.auth_events.iter().map(|e| e.to_string()).collect();
        let have = self.db.get_events(&ids).await?;
        if have.len() == ids.len() {
            return Ok(());
        }
        let fed = self.fed()?;
        let path =
            format!("/_matrix/federation/v1/event_auth/{}/{}", enc(pdu.room_id.as_str()), enc(pdu.event_id.as_str()));
        let answer = fed.request(origin, http::Method::GET, &path, None).await?;
        let mut chain = Vec::new();
        for v in answer["auth_chain"].as_array().cloned().unwrap_or_default() {
            chain.push(self.verify_pdu(rules, v, Some(&pdu.room_id)).await?);
        }
        self.store_outliers(chain).await?;
        if self.db.get_events(&ids).await?.len() != ids.len() {
            return Err(Error::forbidden("Auth events unavailable"));
        }
        Ok(())
    }

    /// Stores verified events received as a state or an auth chain (a `send_join` answer,
    /// `/state_ids`, `/event_auth`) as outliers, after checking each against the auth rules
    /// (issue 16, defect 6; Synapse's `_auth_and_persist_outliers`): in topological order of
    /// their auth events, an event must pass the state-independent and state-dependent auth
    /// rules against its own `auth_events`, each of them held or in the batch and not rejected.
    /// An event failing them is stored as rejected, so that nothing uses it as state and every
    /// event citing it as an auth event is rejected too. Events already held are kept as they are.
    pub async fn store_outliers(&self, pdus: Vec<Pdu>) -> Result<()> {
        let Some(room_id) = pdus.first().map(|p| p.room_id.clone()) else { return Ok(()) };
        let (_, rules) = self.room_rules(&room_id).await.or_else(|_| {
            // A room we are joining is not known yet: its create event gives the version.
            let create = pdus.iter().find(|p| p.fields.kind == TimelineEventType::RoomCreate);
            let version = create.and_then(|c| c.content()["room_version"].as_str().map(str::to_owned));
            let version = super::version::parse(version.as_deref().unwrap_or("1"))?;
            Ok::<_, Error>((version.clone(), super::version::rules(&version)?))
        })?;
        let batch: HashMap<String, Pdu> = pdus.into_iter().map(|p| (p.event_id.to_string(), p)).collect();
        let mut lookup: Vec<String> = batch.keys().cloned().collect();
        lookup.extend(batch.values().flat_map(|p| p.fields.auth_events.iter().map(|a| a.to_string())));
        if rules.authorization.room_create_event_id_as_room_id {
            // From room version 12 the room id names the create event, which is not an auth event.
            lookup.push(format!("${}", &room_id.as_str()[1..]));
        }
        lookup.sort_unstable();
        lookup.dedup();
        // Held events (accepted or rejected) and the batch's events once judged, by id.
        let mut judged: HashMap<String, Pdu> =
            self.db.get_events(&lookup).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        let create_id =
            rules.authorization.room_create_event_id_as_room_id.then(|| format!("${}", &room_id.as_str()[1..]));
        let mut tx = self.db.begin_write().await?;
        for id in auth_order(&batch) {
            if judged.contains_key(&id) {
                continue;
            }
            let mut pdu = batch[&id].clone();
            let checked =
                ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |e: &EventId| {
                    judged.get(e.as_str()).cloned()
                })
                .and_then(|()| {
                    let mut by_key: HashMap<(String, String), Pdu> = HashMap::new();
                    let auth = pdu.fields.auth_events.iter().map(|a| a.to_string()).chain(create_id.clone());
                    for p in auth.filter_map(|a| judged.get(&a)) {
                        if let Some(k) = &p.fields.state_key {
                            by_key.insert((p.fields.kind.to_string(), k.clone()), p.clone());
                        }
                    }
                    ruma::state_res::check_state_dependent_auth_rules(
                        &rules.authorization,
                        &pdu,
                        |t: &StateEventType, k: &str| by_key.get(&(t.to_string(), k.to_owned())).cloned(),
                    )
                });
            if let Err(e) = checked {
                tracing::info!(event_id = %id, error = %e, "rejecting state or auth chain event: fails auth against its auth events");
                pdu.rejected = true;
            }
            // Outliers get negative positions so that they never appear in stream ranges.
            let stream = -Db::next_stream_position(&mut tx, "outliers").await?;
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow { pdu: &pdu, stream, unsigned: None, outlier: true, state_group: None },
                )
                .await?;
            judged.insert(id, pdu);
        }
        tx.commit().await?;
        Ok(())
    }

    /// A state received from another server (a `send_join` answer, `/state_ids`) without the
    /// events that failed the auth rules ([`Rooms::store_outliers`] stored them as rejected):
    /// such an entry falls back to the event of the same type and state key among the rejected
    /// event's auth events (the one it claimed to replace, e.g. the previous power levels), if
    /// that one was accepted, and is dropped otherwise. The events must be stored.
    pub(super) async fn without_rejected(&self, state: StateIds) -> Result<StateIds> {
        let ids: Vec<String> = state.values().cloned().collect();
        let rejected: Vec<Pdu> =
            self.db.get_events(&ids).await?.into_iter().map(|e| e.pdu).filter(|p| p.rejected).collect();
        let mut state = state;
        for bad in rejected {
            let Some(k) = bad.fields.state_key.clone() else { continue };
            let key = (bad.fields.kind.to_string(), k);
            state.remove(&key);
            let mut current = bad;
            // Walk back through same-key auth events while they are rejected too (bounded:
            // auth events are older, and a hostile loop in v1/v2 ids stops at a visited one).
            let mut visited = HashSet::new();
            while visited.insert(current.event_id.to_string()) {
                let auth: Vec<String> = current.fields.auth_events.iter().map(|a| a.to_string()).collect();
                let Some(prev) = self.db.get_events(&auth).await?.into_iter().map(|e| e.pdu).find(|p| {
                    p.fields.kind.to_string() == key.0 && p.fields.state_key.as_deref() == Some(key.1.as_str())
                }) else {
                    break;
                };
                if !prev.rejected {
                    state.insert(key.clone(), prev.event_id.to_string());
                    break;
                }
                current = prev;
            }
        }
        Ok(state)
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
        let mut state_after = state_before.clone();
        if let Some(k) = &pdu.fields.state_key {
            state_after.insert((pdu.fields.kind.to_string(), k.clone()), pdu.event_id.to_string());
        }
        // What it replaces, so that the state before it can be told from the state after it
        // (`state_before_event`).
        let unsigned = pdu
            .fields
            .state_key
            .as_ref()
            .and_then(|k| state_before.get(&(pdu.fields.kind.to_string(), k.clone())))
            .map(|prev_id| json!({ "replaces_state": prev_id }));
        let room_id = pdu.room_id.as_str();
        let (group, chain) = Db::while_holding_write_lock(async {
            let mut tx = self.db.begin_write().await?;
            let before_base = before_group.map(|(g, c)| (g, c, state_before));
            let (group, chain) = self.write_group(&mut tx, room_id, before_base, &state_after).await?;
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

    pub(super) async fn persist_rejected(&self, pdu: &Pdu) -> Result<()> {
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

    /// Resolves several states with the room version's state resolution algorithm.
    pub async fn resolve_states(&self, rules: &RoomVersionRules, states: Vec<StateIds>) -> Result<StateIds> {
        self.resolve_states_with(rules, states, None).await
    }

    /// Same, with one event that is not stored yet.
    async fn resolve_states_with(
        &self,
        rules: &RoomVersionRules,
        states: Vec<StateIds>,
        pending: Option<&Pdu>,
    ) -> Result<StateIds> {
        if states.windows(2).all(|w| w[0] == w[1]) {
            return Ok(states.into_iter().next().unwrap_or_default());
        }
        // Load every event of every state and its full auth chain.
        let mut loaded: HashMap<String, Pdu> = HashMap::new();
        if let Some(p) = pending {
            loaded.insert(p.event_id.to_string(), p.clone());
        }
        let mut chains = Vec::new();
        for state in &states {
            let mut chain: HashSet<String> = HashSet::new();
            let mut frontier: Vec<String> = state.values().cloned().collect();
            while !frontier.is_empty() {
                let missing: Vec<String> = frontier.iter().filter(|id| !loaded.contains_key(*id)).cloned().collect();
                for ev in self.db.get_events(&missing).await? {
                    loaded.insert(ev.pdu.event_id.to_string(), ev.pdu);
                }
                let mut next = Vec::new();
                for id in frontier {
                    let Some(p) = loaded.get(&id) else { continue };
                    for a in &p.fields.auth_events {
                        if chain.insert(a.to_string()) {
                            next.push(a.to_string());
                        }
                    }
                }
                frontier = next;
            }
            chains.push(chain);
        }
        let events: HashMap<OwnedEventId, Pdu> = loaded.into_values().map(|p| (p.event_id.clone(), p)).collect();
        let auth_chains: Vec<_> = chains
            .into_iter()
            .map(|c| c.into_iter().filter_map(|id| EventId::parse(id.as_str()).ok()).collect())
            .collect();
        let maps: Vec<StateMap<OwnedEventId>> = states
            .iter()
            .map(|s| {
                s.iter()
                    .filter_map(|((t, k), id)| {
                        EventId::parse(id.as_str()).ok().map(|e| ((StateEventType::from(t.as_str()), k.clone()), e))
                    })
                    .collect()
            })
            .collect();
        let fetch = |id: &EventId| events.get(id).cloned();
        let subgraph = |conflicted: &StateMap<Vec<OwnedEventId>>| {
            // Events on auth paths between conflicted events (room version 12).
            let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
            let mut memo: HashMap<OwnedEventId, bool> = HashMap::new();
            fn reaches(
                id: &OwnedEventId,
                targets: &HashSet<OwnedEventId>,
                events: &HashMap<OwnedEventId, Pdu>,
                memo: &mut HashMap<OwnedEventId, bool>,
                top: bool,
            ) -> bool {
                if !top && targets.contains(id) {
                    return true;
                }
                if let Some(r) = memo.get(id) {
                    return *r;
                }
                memo.insert(id.clone(), false);
                let mut r = false;
                if let Some(p) = events.get(id) {
                    for a in &p.fields.auth_events {
                        if reaches(a, targets, events, memo, false) {
                            r = true;
                        }
                    }
                }
                if !top {
                    memo.insert(id.clone(), r);
                }
                r
            }
            let mut out: HashSet<OwnedEventId> = HashSet::new();
            for t in &targets {
                out.insert(t.clone());
                // Walk the ancestors of t; keep those that reach another conflicted event.
                let mut stack = vec![t.clone()];
                let mut visited = HashSet::new();
                while let Some(id) = stack.pop() {
                    if !visited.insert(id.clone()) {
                        continue;
                    }
                    if let Some(p) = events.get(&id) {
                        for a in &p.fields.auth_events {
                            if reaches(a, &targets, &events, &mut memo, false) {
                                out.insert(a.clone());
                            }
                            stack.push(a.clone());
                        }
                    }
                }
            }
            Some(out.into_iter().collect())
        };
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            rules.state_res.v2_rules().unwrap_or(&ruma::room_version_rules::StateResolutionV2Rules::V2_0),
            maps.iter(),
            auth_chains,
            fetch,
            subgraph,
        )
        .map_err(|e| Error::internal(format!("state resolution: {e}")))?;
        Ok(resolved.into_iter().map(|((t, k), id)| ((t.to_string(), k), id.to_string())).collect())
    }

    /// Writes the state group for `state`, as a delta on `base` when possible.
    pub(super) async fn write_group(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        base: Option<(i64, i64, &StateIds)>,
        state: &StateIds,
    ) -> Result<(i64, i64)> {
        if let Some((g, chain, base_state)) = base {
            if base_state == state {
                return Ok((g, chain));
            }
            if chain < MAX_CHAIN && base_state.keys().all(|k| state.contains_key(k)) {
                let delta: StateIds = state
                    .iter()
                    .filter(|(k, v)| base_state.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let id = self.db.insert_state_group(tx, room_id, Some(g), chain + 1, &delta).await?;
                return Ok((id, chain + 1));
            }
        }
        Ok((self.db.insert_state_group(tx, room_id, None, 0, state).await?, 0))
    }

    /// Persists an accepted remote event; its reads while holding the write transaction use the
    /// connections reserved for lock holders (see `Db::while_holding_write_lock`).
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
        Db::while_holding_write_lock(self.persist_remote_locked(
            origin,
            version,
            rules,
            pdu,
            state_before,
            before_group,
            forward_except,
        ))
        .await
    }

    /// Persists an accepted remote event: state groups, extremities, current state (resolved
    /// with the other forks), memberships; then wakes local members.
    #[allow(clippy::too_many_arguments)]
    async fn persist_remote_locked(
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
        let mut state_after = state_before.clone();
        if let Some(k) = &pdu.fields.state_key {
            state_after.insert((pdu.fields.kind.to_string(), k.clone()), pdu.event_id.to_string());
        }
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
        let before_base = before_group.map(|(g, c)| (g, c, state_before));
        let (group_after, chain_after) = self.write_group(&mut tx, room_id, before_base, &state_after).await?;
        let (cur_group, cur_chain) = if new_current == state_after {
            (group_after, chain_after)
        } else {
            let base = current_group.map(|g| (g, current_chain, &current));
            self.write_group(&mut tx, room_id, base, &new_current).await?
        };
        let mut unsigned = None;
        if let Some(k) = &pdu.fields.state_key
            && let Some(prev_id) = state_before.get(&(pdu.fields.kind.to_string(), k.clone()))
            && let Some(prev) = self.db.get_event(prev_id).await?
        {
            unsigned = Some(json!({
                "replaces_state": prev_id,
                "prev_content": prev.pdu.content(),
                "prev_sender": prev.pdu.fields.sender,
            }));
        }
        // An event we hold as an outlier (an invite received on `/invite`, an event fetched
        // for an auth chain or a state; not a soft-failed one, which `process_pdu` does not
        // evaluate again) enters the timeline in place: its row keeps the JSON and the
        // server-computed data it had (e.g. `invite_room_state`).
        if let Some(held) = self.db.get_event(pdu.event_id.as_str()).await? {
            let mut merged = held.unsigned.unwrap_or_else(|| json!({}));
            if let (Some(m), Some(Value::Object(new))) = (merged.as_object_mut(), unsigned.clone()) {
                m.extend(new);
            }
            let merged = merged.as_object().is_some_and(|m| !m.is_empty()).then_some(merged);
            self.db.promote_outlier(&mut tx, pdu.event_id.as_str(), stream, group_after, merged.as_ref()).await?;
        } else {
            self.db
                .insert_event(
                    &mut tx,
                    NewEventRow {
                        pdu,
                        stream,
                        unsigned: unsigned.as_ref(),
                        outlier: false,
                        state_group: Some(group_after),
                    },
                )
                .await?;
        }
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
        ctx.written.insert(pdu.event_id.to_string(), pdu.clone());
        self.apply_held_redactions(&mut tx, &ctx, pdu).await?;
        if let Some(except) = forward_except {
            for dest in self.remote_destinations(room_id).await? {
                if dest != except.as_str() && dest != origin.as_str() {
                    self.db.insert_outbox(&mut tx, &dest, "pdu", pdu.event_id.as_str()).await?;
                }
            }
        }
        tx.commit().await?;
        self.state_cache.insert(group_after, Arc::new(state_after), chain_after);
        ctx.written.clear();
        self.after_commit(&ctx, &[Appended { pdu: pdu.clone(), stream }]).await;
        Ok(())
    }

    /// The resolution of the states after the forward extremities `others` and `new_state`
    /// (the state after `pending`, the event being persisted). Extremities sharing a state
    /// (the common case: one fork that sent a message) count once; when all share it, there is
    /// nothing to resolve.
    async fn state_at_extremities(
        &self,
        rules: &RoomVersionRules,
        others: &[String],
        new_state: &StateIds,
        pending: &Pdu,
    ) -> Result<StateIds> {
        let mut groups: Vec<i64> =
            self.db.get_events(others).await?.into_iter().filter_map(|e| e.state_group).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut states = vec![new_state.clone()];
        for g in groups {
            let state = self.state_at_group(g).await?;
            if !states.contains(&state) {
                states.push((*state).clone());
            }
        }
        if states.len() == 1 {
            return Ok(new_state.clone());
        }
        self.resolve_states_with(rules, states, Some(pending)).await
    }

    /// Writes the difference between two current states into `current_state` and memberships.
    async fn apply_current_state(
        &self,
        tx: &mut WriteTx,
        room_id: &str,
        old: &StateIds,
        new: &StateIds,
        stream: i64,
        pending: &Pdu,
    ) -> Result<()> {
        let changed: Vec<(&(String, String), &String)> = new.iter().filter(|(k, v)| old.get(*k) != Some(*v)).collect();
        let ids: Vec<String> = changed.iter().map(|(_, v)| (*v).clone()).collect();
        let mut evs: HashMap<String, Pdu> =
            self.db.get_events(&ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        evs.insert(pending.event_id.to_string(), pending.clone());
        for ((t, k), id) in changed {
            self.db.set_current_state(tx, room_id, t, k, id).await?;
            if t == "m.room.member" {
                let membership = evs
                    .get(id)
                    .and_then(|p| p.content()["membership"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "leave".to_owned());
                self.db.set_membership(tx, room_id, k, &membership, id, stream).await?;
            }
        }
        for k in old.keys().filter(|k| !new.contains_key(*k)) {
            sqlx::query("DELETE FROM current_state WHERE room_id = $1 AND event_type = $2 AND state_key = $3")
                .bind(room_id)
                .bind(&k.0)
                .bind(&k.1)
                .execute(&mut *tx.tx)
                .await?;
        }
        Ok(())
    }

    /// The state before a stored event (`/state_ids`, `/state`).
    ///
    /// An event held with a state group (the state after it) gets that state with its own entry
    /// put back to what it replaced (`unsigned.replaces_state`, written with every state event
    /// we accept; as Synapse's `get_state_ids_for_pdu`). This is the state it was accepted
    /// against, also when its prev events are outliers or unknown (a gap bridged with the
    /// origin's state): recomputing it from the prevs' states answered a partial or empty
    /// state then (issue 16, defect 8). An event without a state group gets the resolution of
    /// its prev events' states when all of them have one; otherwise its state is not known
    /// (404), never partial.
    pub async fn state_before_event(&self, pdu: &Pdu) -> Result<StateIds> {
        let stored = self.db.get_event(pdu.event_id.as_str()).await?;
        if let Some(ev) = stored.as_ref().filter(|e| !e.pdu.rejected)
            && let Some(group) = ev.state_group
        {
            let mut state = (*self.state_at_group(group).await?).clone();
            if let Some(k) = &pdu.fields.state_key {
                let key = (pdu.fields.kind.to_string(), k.clone());
                if state.get(&key).map(String::as_str) == Some(pdu.event_id.as_str()) {
                    match ev.unsigned.as_ref().and_then(|u| u["replaces_state"].as_str()) {
                        Some(replaced) => state.insert(key, replaced.to_owned()),
                        None => state.remove(&key),
                    };
                }
            }
            return Ok(state);
        }
        let (_, rules) = self.room_rules(&pdu.room_id).await?;
        let groups =
            self.prev_groups(pdu).await?.ok_or_else(|| Error::not_found("The state at this event is not known"))?;
        let mut states = Vec::new();
        for g in groups {
            states.push((*self.state_at_group(g).await?).clone());
        }
        self.resolve_states(&rules, states).await
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

    // ----- The resident side -----

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
        let depth = (ext.iter().map(|e| e.1).max().unwrap_or(0) + 1).min(super::build::MAX_DEPTH);
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
        for t in crate::sync::rooms::STRIPPED_STATE_TYPES {
            if let Some(p) = self.current_state_event(room_id, t, "").await? {
                out.push(p.federation_json());
            }
        }
        Ok(out)
    }

    /// Inbound v2 `invite`: countersigns an invite for a local user and records it.
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &str,
        body: &Value,
    ) -> Result<Value> {
        let version = super::version::parse(body["room_version"].as_str().unwrap_or("1"))?;
        let rules = super::version::rules(&version)?;
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
        if self.db.get_user(target.as_str()).await?.is_none() {
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
        let invite_state = body["invite_room_state"].clone();
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
        }
        tx.commit().await?;
        self.notifier.wake([target.as_str()]);
        Ok(json!({ "event": signed.federation_json() }))
    }

    // ----- Local users acting through other servers -----

    /// Joins a room this server is not in, through one of `servers` (make_join + send_join).
    pub async fn join_remote(
        &self,
        room_id: &RoomId,
        user: &UserId,
        servers: &[OwnedServerName],
        reason: Option<&str>,
    ) -> Result<OwnedRoomId> {
        let fed = self.fed()?.clone();
        let mut candidates: Vec<OwnedServerName> =
            servers.iter().filter(|s| **s != self.server_name).cloned().collect();
        if let Some(s) = room_id.server_name()
            && s != self.server_name
        {
            candidates.push(s.to_owned());
        }
        if let Some((_, ev_id, _)) = self.db.membership(room_id.as_str(), user.as_str()).await?
            && let Some(ev) = self.db.get_event(&ev_id).await?
        {
            let s = ev.pdu.fields.sender.server_name().to_owned();
            if s != self.server_name {
                candidates.push(s);
            }
        }
        candidates.dedup();
        if candidates.is_empty() {
            return Err(Error::not_found("No known servers to join this room through"));
        }
        let mut last_err = Error::not_found("No known servers to join this room through");
        for server in candidates {
            match self.join_via(&fed, &server, room_id, user, reason).await {
                Ok(()) => return Ok(room_id.to_owned()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e.message, "remote join failed");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    async fn join_via(
        &self,
        fed: &Federation,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/federation/v1/make_join/{}/{}?{}",
            enc(room_id.as_str()),
            enc(user.as_str()),
            ver_query()
        );
        let template = fed.request(server, http::Method::GET, &path, None).await?;
        let (version, rules, object, event_id) = self.sign_membership_template(&template, user, "join", reason).await?;
        let path =
            format!("/_matrix/federation/v2/send_join/{}/{}?omit_members=false", enc(room_id.as_str()), enc(&event_id));
        let body = serde_json::to_value(&object)?;
        let answer = fed.request(server, http::Method::PUT, &path, Some(&body)).await?;
        // The resident server may have countersigned the event (restricted joins).
        let join_value = if answer["event"].is_object() { answer["event"].clone() } else { body };
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

        let mut state_after = state.clone();
        state_after.insert(("m.room.member".to_owned(), user.to_string()), join.event_id.to_string());
        let mut tx = self.db.begin_event_write().await?;
        Db::reserve_stream_positions(&mut tx, "events", 1).await?;
        let known = self.db.get_room(room_id.as_str()).await?.is_some();
        if !known {
            self.db.insert_room(&mut tx, room_id.as_str(), version.as_str()).await?;
        }
        let stream = Db::next_stream_position(&mut tx, "events").await?;
        let before = self.db.insert_state_group(&mut tx, room_id.as_str(), None, 0, &state).await?;
        let after = self
            .db
            .insert_state_group(
                &mut tx,
                room_id.as_str(),
                Some(before),
                1,
                &StateIds::from([(("m.room.member".to_owned(), user.to_string()), join.event_id.to_string())]),
            )
            .await?;
        // Our own join may already be stored (e.g. received back as an outlier); replace it.
        sqlx::query("DELETE FROM events WHERE event_id = $1").bind(join.event_id.as_str()).execute(&mut *tx.tx).await?;
        self.db
            .insert_event(
                &mut tx,
                NewEventRow { pdu: &join, stream, unsigned: None, outlier: false, state_group: Some(after) },
            )
            .await?;
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1")
            .bind(room_id.as_str())
            .execute(&mut *tx.tx)
            .await?;
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
            chain_length: 1,
            extremities: vec![join.event_id.to_string()],
            depth: join.fields.depth,
            written: HashMap::new(),
            is_new: false,
        };
        self.after_commit(&ctx, &[Appended { pdu: join, stream }]).await;
        tracing::info!(%room_id, %user, via = %server, "joined remote room");
        Ok(())
    }

    /// Fills in a `make_join` / `make_knock` template for a local user (membership, profile,
    /// reason, timestamp) and hashes and signs it: `(version, rules, event, event id)`.
    async fn sign_membership_template(
        &self,
        template: &Value,
        user: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<(RoomVersionId, RoomVersionRules, CanonicalJsonObject, String)> {
        let version = super::version::parse(template["room_version"].as_str().unwrap_or("1"))?;
        let rules = super::version::rules(&version)?;
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
        if let Some(p) = self.db.get_user(user.as_str()).await? {
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
        let mut candidates: Vec<OwnedServerName> =
            servers.iter().filter(|s| **s != self.server_name).cloned().collect();
        if let Some(s) = room_id.server_name()
            && s != self.server_name
        {
            candidates.push(s.to_owned());
        }
        let mut seen = HashSet::new();
        candidates.retain(|s| seen.insert(s.clone()));
        let mut last_err = Error::not_found("No known servers to knock through");
        for server in candidates {
            match self.knock_via(&fed, &server, room_id, user, reason).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e.message, "remote knock failed");
                    last_err = e;
                }
            }
        }
        Err(last_err)
    }

    async fn knock_via(
        &self,
        fed: &Federation,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let path = format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{}",
            enc(room_id.as_str()),
            enc(user.as_str()),
            ver_query()
        );
        let template = fed.request(server, http::Method::GET, &path, None).await?;
        let (version, rules, object, event_id) =
            self.sign_membership_template(&template, user, "knock", reason).await?;
        let path = format!("/_matrix/federation/v1/send_knock/{}/{}", enc(room_id.as_str()), enc(&event_id));
        let body = serde_json::to_value(&object)?;
        let answer = fed.request(server, http::Method::PUT, &path, Some(&body)).await?;
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
                .build_event(&ctx, sender, super::build::NewEvent::state("m.room.member", target.as_str(), content))
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
                if let Some(p) = self.current_state_event(room_id, t, "").await? {
                    stripped
                        .push(json!({ "type": t, "state_key": "", "content": p.content(), "sender": p.fields.sender }));
                }
            }
            if let Some(p) = self.current_state_event(room_id, "m.room.member", sender.as_str()).await? {
                stripped.push(
                    json!({ "type": "m.room.member", "state_key": sender, "content": p.content(), "sender": sender }),
                );
            }
            (pdu, ctx.version.clone(), stripped)
        };
        let rules = super::version::rules(&version)?;
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
            let path = format!("/_matrix/federation/v1/make_leave/{}/{}", enc(room_id.as_str()), enc(user.as_str()));
            let template = fed.request(&server, http::Method::GET, &path, None).await?;
            let version = super::version::parse(template["room_version"].as_str().unwrap_or("1"))?;
            let rules = super::version::rules(&version)?;
            let mut event = template["event"].clone();
            event["origin_server_ts"] = json!(now_ms());
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
            let path =
                format!("/_matrix/federation/v2/send_leave/{}/{}", enc(room_id.as_str()), enc(&format!("${hash}")));
            fed.request(&server, http::Method::PUT, &path, Some(&serde_json::to_value(&object)?)).await?;
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
}

/// `m.room.server_acl` evaluation (spec: "Server Access Control Lists").
pub fn acl_allows(content: &Value, server: &str) -> bool {
    let host = match server.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => server,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let allow_ip = content["allow_ip_literals"].as_bool().unwrap_or(true);
    if !allow_ip && host.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let list = |k: &str| -> Vec<String> {
        content[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
    };
    if list("deny").iter().any(|g| glob(g, host)) {
        return false;
    }
    list("allow").iter().any(|g| glob(g, host))
}

fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let t: Vec<char> = text.to_lowercase().chars().collect();
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl Db {
    /// Forward extremities of a room, read outside a write transaction.
    pub async fn pool_extremities(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(self.pool_extremities_with_depth(room_id).await?.into_iter().map(|e| e.0).collect())
    }

    /// Forward extremities with their depths, newest first.
    pub async fn pool_extremities_with_depth(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT f.event_id, e.topological_ordering FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = $1 ORDER BY e.topological_ordering DESC, e.stream_ordering DESC",
        )
        .bind(room_id)
        .fetch_all(self.pool())
        .await?)
    }
}

/// The events of `batch` in topological order of their auth events (each after the ones it
/// cites), the create event first. A cycle (possible only with the free-form event ids of room versions 1 and 2) is
/// cut where it is found; the auth check then rejects its events for a missing auth event.
fn auth_order(batch: &HashMap<String, Pdu>) -> Vec<String> {
    let mut roots: Vec<&String> = batch.keys().collect();
    // The create event first: from room version 12 it is no event's auth event, yet every
    // event's check needs it.
    roots.sort_by_key(|id| {
        let p = &batch[*id];
        (p.fields.kind != TimelineEventType::RoomCreate, p.fields.depth, (*id).clone())
    });
    let mut entered = HashSet::new();
    let mut order = Vec::with_capacity(batch.len());
    for root in roots {
        let mut stack = vec![(root.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if !entered.insert(id.clone()) {
                continue;
            }
            stack.push((id.clone(), true));
            for a in &batch[&id].fields.auth_events {
                if batch.contains_key(a.as_str()) && !entered.contains(a.as_str()) {
                    stack.push((a.to_string(), false));
                }
            }
        }
    }
    order
}

//! Appending local events: build the PDU for the room version, sign it, authorise it against
//! the state before it, and persist it with all of its effects in the caller's transaction.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
};
use serde_json::{Value, json};

use super::{Rooms, cache};
use crate::error::{Error, Result};
use crate::events::pdu::{MAX_PDU_BYTES, Pdu};
use crate::storage::WriteTx;
use crate::storage::outbox::Outbox;
use crate::storage::rooms::{NewEventRow, StateIds};

/// The largest depth we give an event: 2^53 - 1, the largest integer of canonical JSON.
///
/// The spec caps depth at 2^63 - 1 ("if the room's depth is already at the limit, the depth
/// must be set to the limit") and Synapse uses that `MAX_DEPTH`, but an event is hashed and
/// signed as canonical JSON, whose integers stop at 2^53 - 1 (strictly enforced from room
/// version 6, and by ruma's `CanonicalJsonValue` in every version): a depth above it cannot be
/// signed, nor accepted by a server that checks canonical JSON. A peer may legally send an
/// event of depth 2^53 - 1; our next events then keep that depth instead of failing (their
/// order among themselves is kept by stream position).
pub const MAX_DEPTH: i64 = 9_007_199_254_740_991;

/// An event a local user wants to add.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Event type.
    pub kind: String,
    /// Content from the client.
    pub content: Value,
    /// State key for state events.
    pub state_key: Option<String>,
    /// Target of a redaction.
    pub redacts: Option<OwnedEventId>,
    /// `origin_server_ts` chosen by an appservice importing history (the `ts` query
    /// parameter); `None`: now.
    pub origin_server_ts: Option<u64>,
}

impl NewEvent {
    /// A state event.
    pub fn state(kind: impl Into<String>, state_key: impl Into<String>, content: Value) -> Self {
        Self { kind: kind.into(), content, state_key: Some(state_key.into()), redacts: None, origin_server_ts: None }
    }
    /// A message-like event.
    pub fn message(kind: impl Into<String>, content: Value) -> Self {
        Self { kind: kind.into(), content, state_key: None, redacts: None, origin_server_ts: None }
    }
}

/// The room as seen by a writer holding the room's lock.
pub struct RoomCtx {
    /// Room id (set once the create event exists).
    pub room_id: Option<OwnedRoomId>,
    /// Room version.
    pub version: RoomVersionId,
    /// Its rules.
    pub rules: RoomVersionRules,
    /// Current state, shared with the state cache until an event of this batch changes it (a
    /// batch of messages into a room with thousands of members copies nothing).
    pub state: Arc<StateIds>,
    /// Group of the current state.
    pub state_group: Option<i64>,
    /// Delta chain length of that group.
    pub chain_length: i64,
    /// Forward extremities.
    pub extremities: Vec<String>,
    /// Largest depth among the extremities.
    pub depth: i64,
    /// Events written in this transaction, not yet visible to other connections.
    pub written: HashMap<String, Pdu>,
    /// The room's row is still to be written (by its create event).
    pub is_new: bool,
}

/// What one appended event did, for after-commit work.
pub struct Appended {
    /// The event.
    pub pdu: Pdu,
    /// Its stream position.
    pub stream: i64,
}

fn to_canonical(value: Value) -> Result<CanonicalJsonValue> {
    CanonicalJsonValue::try_from(value).map_err(|e| {
        Error::bad_json(format!("Content is not canonical JSON (floats and integers beyond 2^53 are not allowed): {e}"))
    })
}

impl Rooms {
    /// Loads the writer's view of a room inside `tx` (locks the room row on PostgreSQL).
    pub async fn load_ctx(&self, tx: &mut WriteTx, room_id: &RoomId) -> Result<RoomCtx> {
        let mut ctxs = self.load_ctxs(tx, &[room_id]).await?;
        ctxs.remove(room_id.as_str()).ok_or_else(|| Error::not_found("Unknown room"))
    }

    /// The contexts of several rooms, read (and locked) with two statements for all of them: an
    /// event writer's batch spans many rooms. Rooms that do not exist are absent.
    pub async fn load_ctxs(&self, tx: &mut WriteTx, room_ids: &[&RoomId]) -> Result<HashMap<String, RoomCtx>> {
        let ids: Vec<&str> = room_ids.iter().map(|r| r.as_str()).collect();
        let rows = self.db.lock_rooms(tx, &ids).await?;
        let mut extremities = self.db.extremities_of(tx, &ids).await?;
        let mut out = HashMap::new();
        for room_id in room_ids {
            let Some((version, group)) = rows.get(room_id.as_str()) else { continue };
            let version = RoomVersionId::try_from(version.as_str()).map_err(Error::internal)?;
            let rules = crate::events::version::rules(&version)?;
            let (state, chain_length) = match *group {
                Some(g) => self.state_cache.load(&self.db, g).await?,
                None => (Arc::new(StateIds::new()), 0),
            };
            let ext = extremities.remove(room_id.as_str()).unwrap_or_default();
            let depth = ext.iter().map(|e| e.1).max().unwrap_or(0);
            let ctx = RoomCtx {
                room_id: Some((*room_id).to_owned()),
                version,
                rules,
                state,
                state_group: *group,
                chain_length,
                extremities: ext.into_iter().map(|e| e.0).take(20).collect(),
                depth,
                written: HashMap::new(),
                is_new: false,
            };
            out.insert(room_id.as_str().to_owned(), ctx);
        }
        Ok(out)
    }

    /// A context for a room that does not exist yet.
    pub fn new_room_ctx(&self, version: RoomVersionId) -> Result<RoomCtx> {
        let rules = crate::events::version::rules(&version)?;
        // Before v12 the room id is chosen by the creating server; from v12 it is derived from
        // the create event's reference hash.
        let room_id = match rules.room_id_format {
            ruma::room_version_rules::RoomIdFormatVersion::V1 => Some(
                RoomId::parse(format!("!{}:{}", crate::ids::random_alpha(18), self.server_name))
                    .map_err(Error::internal)?,
            ),
            _ => None,
        };
        Ok(RoomCtx {
            room_id,
            version,
            rules,
            state: Arc::new(StateIds::new()),
            state_group: None,
            chain_length: 0,
            extremities: Vec::new(),
            depth: 0,
            written: HashMap::new(),
            is_new: true,
        })
    }

    /// Loads PDUs by id, looking first at those written in this transaction, then the cache.
    pub async fn pdus_for(&self, ctx: &RoomCtx, ids: &[String]) -> Result<HashMap<String, Pdu>> {
        let mut out = HashMap::new();
        let mut rest = Vec::new();
        for id in ids {
            match ctx.written.get(id) {
                Some(p) => {
                    out.insert(id.clone(), p.clone());
                }
                None => rest.push(id.clone()),
            }
        }
        out.extend(self.cached_pdus(&rest).await?);
        Ok(out)
    }

    /// Builds, signs and authorises an event on top of `ctx`.
    pub async fn build_event(&self, ctx: &RoomCtx, sender: &UserId, ev: NewEvent) -> Result<Pdu> {
        let rules = &ctx.rules;
        let kind = TimelineEventType::from(ev.kind.as_str());
        let content_raw = serde_json::value::to_raw_value(&ev.content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &kind,
            sender,
            ev.state_key.as_deref(),
            &content_raw,
            &rules.authorization,
        )
        .map_err(Error::bad_json)?;
        let mut auth_events: Vec<String> =
            auth_types.iter().filter_map(|(t, k)| ctx.state.get(&(t.to_string(), k.clone())).cloned()).collect();
        if kind == TimelineEventType::RoomCreate {
            auth_events.clear();
        }

        let mut object = CanonicalJsonObject::new();
        let mut content = ev.content;
        if let Some(redacts) = &ev.redacts {
            if rules.redaction.keep_room_redaction_redacts {
                content["redacts"] = json!(redacts);
            } else {
                object.insert("redacts".into(), CanonicalJsonValue::String(redacts.to_string()));
            }
        }
        object.insert("content".into(), to_canonical(content)?);
        object.insert("auth_events".into(), to_canonical(json!(auth_events))?);
        object.insert("prev_events".into(), to_canonical(json!(ctx.extremities))?);
        object.insert(
            "depth".into(),
            CanonicalJsonValue::Integer((ctx.depth + 1).min(MAX_DEPTH).try_into().map_err(Error::internal)?),
        );
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(
                ev.origin_server_ts
                    .map_or(crate::storage::now_ms(), |ts| ts as i64)
                    .try_into()
                    .map_err(Error::internal)?,
            ),
        );
        if let Some(room_id) = &ctx.room_id {
            object.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
        } else if !(kind == TimelineEventType::RoomCreate
            && rules.room_id_format == ruma::room_version_rules::RoomIdFormatVersion::V2)
        {
            return Err(Error::internal("room id needed before the create event"));
        }
        object.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
        object.insert("type".into(), CanonicalJsonValue::String(ev.kind.clone()));
        if let Some(k) = &ev.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(k.clone()));
        }

        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.keys.current,
            &mut object,
            &rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::too_large("Event is larger than 65536 bytes"),
            other => Error::internal(other),
        })?;
        if serde_json::to_vec(&object)?.len() > MAX_PDU_BYTES {
            return Err(Error::too_large("Event is larger than 65536 bytes"));
        }
        let hash = ruma::signatures::reference_hash(&object, rules).map_err(Error::internal)?;
        let event_id = EventId::parse(format!("${hash}")).map_err(Error::internal)?;
        let pdu = Pdu::from_json(event_id, ctx.room_id.clone(), object)?;
        self.authorize(ctx, &pdu, &auth_events).await?;
        Ok(pdu)
    }

    /// Checks the auth rules for a local event against its auth events and the current state.
    async fn authorize(&self, ctx: &RoomCtx, pdu: &Pdu, auth_events: &[String]) -> Result<()> {
        let mut ids: Vec<String> = auth_events.to_vec();
        if let Some(create) = ctx.state.get(&("m.room.create".to_owned(), String::new())) {
            ids.push(create.clone());
        }
        let pdus = self.pdus_for(ctx, &ids).await?;
        let rules = &ctx.rules.authorization;
        ruma::state_res::check_state_independent_auth_rules(rules, pdu, |id: &EventId| pdus.get(id.as_str()).cloned())
            .map_err(Error::forbidden)?;
        ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |t: &StateEventType, k: &str| {
            ctx.state.get(&(t.to_string(), k.to_owned())).and_then(|id| pdus.get(id)).cloned()
        })
        .map_err(Error::forbidden)
    }

    /// Writes an authorised local event and its effects inside `tx`, and advances `ctx`.
    pub async fn persist_local(
        &self,
        tx: &mut WriteTx,
        ctx: &mut RoomCtx,
        pdu: Pdu,
        txn: Option<(&str, &str, &str)>,
    ) -> Result<Appended> {
        let db = &self.db;
        let room_id = pdu.room_id.clone();
        let group_before = ctx.state_group;
        let stream = crate::storage::Db::next_stream_position(tx, "events").await?;
        // Push rules see the room as it was before the event.
        let state_before = ctx.state.clone();
        let push_rows = self.push_actions(ctx, &state_before, group_before, &pdu, stream).await?;
        db.insert_push_actions(tx, push_rows).await?;
        if ctx.is_new {
            db.insert_room(tx, room_id.as_str(), ctx.version.as_str()).await?;
            ctx.room_id = Some(room_id.clone());
            ctx.is_new = false;
        }

        let unsigned = self.replaces_state(&pdu, &ctx.state, &ctx.written).await?;
        if let Some(key) = &pdu.fields.state_key {
            let slot = (pdu.fields.kind.to_string(), key.clone());
            // The state is changed in place: a batch's writers share it with the state cache
            // until a state event, and copying it per event would be linear in the room's state.
            Arc::make_mut(&mut ctx.state).insert(slot.clone(), pdu.event_id.to_string());
            let before = ctx.state_group.map(|g| (g, ctx.chain_length));
            let (group, chain) = self.write_state_after(tx, &pdu, before, &ctx.state).await?;
            ctx.state_group = Some(group);
            ctx.chain_length = chain;
            db.set_room_state_group(tx, room_id.as_str(), group).await?;
            db.set_current_state(tx, room_id.as_str(), &slot.0, &slot.1, pdu.event_id.as_str()).await?;
            if pdu.fields.kind == TimelineEventType::RoomMember {
                let membership = pdu.content()["membership"].as_str().unwrap_or("leave").to_owned();
                db.set_membership(tx, room_id.as_str(), key, &membership, pdu.event_id.as_str(), stream).await?;
            }
        }

        db.insert_event(
            tx,
            NewEventRow {
                pdu: &pdu,
                stream,
                unsigned: unsigned.as_ref(),
                outlier: false,
                state_group: ctx.state_group,
            },
        )
        .await?;
        db.update_extremities(tx, room_id.as_str(), &ctx.extremities, pdu.event_id.as_str()).await?;
        ctx.extremities = vec![pdu.event_id.to_string()];
        ctx.depth = pdu.fields.depth;

        if let Some((user, device, txn_id)) = txn {
            db.insert_txn(tx, user, device, txn_id, pdu.event_id.as_str()).await?;
        }
        if pdu.fields.kind == TimelineEventType::RoomRedaction
            && let Some(target) = &pdu.redacts_target
        {
            self.apply_redaction(tx, ctx, &pdu, target).await?;
        }
        let members = self.members_before(ctx, room_id.as_str(), group_before).await?;
        crate::storage::Db::reserve_stream_positions(tx, "federation_outbox", members.remote_servers.len() as i64)
            .await?;
        for destination in &members.remote_servers {
            db.queue_outbox(tx, destination, Outbox::Pdu(pdu.event_id.as_str())).await?;
        }
        // A remote user's knock rejected or invite revoked: their server, which may have no
        // member in the room, hears of it too.
        if let Some(server) = Self::answered_server(&pdu, unsigned.as_ref())
            && server != self.server_name.as_str()
            && !members.remote_servers.contains(&server)
        {
            crate::storage::Db::reserve_stream_positions(tx, "federation_outbox", 1).await?;
            db.queue_outbox(tx, &server, Outbox::Pdu(pdu.event_id.as_str())).await?;
        }
        {
            let appservices = &self.appservices;
            appservices.queue_event(tx, &pdu, &members.joined_local).await?;
        }
        ctx.written.insert(pdu.event_id.to_string(), pdu.clone());
        Ok(Appended { pdu, stream })
    }

    /// The server of a user whose knock or invite this member event answers (leave or ban).
    fn answered_server(pdu: &Pdu, unsigned: Option<&Value>) -> Option<String> {
        if pdu.fields.kind != TimelineEventType::RoomMember {
            return None;
        }
        let now = pdu.content()["membership"].as_str().map(str::to_owned)?;
        let before = unsigned.and_then(|u| u["prev_content"]["membership"].as_str())?;
        if (now != "leave" && now != "ban") || (before != "knock" && before != "invite") {
            return None;
        }
        let target = pdu.fields.state_key.as_deref()?;
        target.split_once(':').map(|(_, server)| server.to_owned())
    }

    /// Rewrites the target's stored JSON to its redacted form, if the redaction rules let the
    /// redaction take effect ([`Rooms::redaction_takes_effect`]). The one place where local,
    /// remote and backfilled redactions (and redactions held before their target) are applied.
    pub(crate) async fn apply_redaction(
        &self,
        tx: &mut WriteTx,
        ctx: &RoomCtx,
        redaction: &Pdu,
        target: &OwnedEventId,
    ) -> Result<()> {
        // The target may have been written earlier in this same transaction.
        let (target_pdu, target_stream) = match ctx.written.get(target.as_str()) {
            Some(p) => (p.clone(), None),
            None => match self.db.get_event(target.as_str()).await? {
                Some(stored) => (stored.pdu, Some(stored.stream)),
                None => return Ok(()),
            },
        };
        if target_pdu.room_id != redaction.room_id || !self.redaction_takes_effect(ctx, redaction, &target_pdu).await? {
            return Ok(());
        }
        // A redacted event no longer counts as unread nor is listed in `/notifications`. Its
        // rows are keyed by user: those of the room's local users (any membership) are removed.
        let local = self.members_before(ctx, redaction.room_id.as_str(), ctx.state_group).await?;
        let thread = super::push_actions::thread_of(&target_pdu);
        self.db
            .delete_push_actions(tx, redaction.room_id.as_str(), &thread, target.as_str(), target_stream, &local.local)
            .await?;
        let redacted = ruma::canonical_json::redact(target_pdu.json().clone(), &ctx.rules.redaction, None)
            .map_err(Error::internal)?;
        self.caches.evict_pdu(target.as_str());
        // Sent with the commit: another process evicting earlier could cache the old copy again.
        self.db.bus().publish_in(tx, vec![crate::storage::bus::Signal::Redacted { e: target.to_string() }]).await?;
        self.db
            .redact_event_json(tx, target.as_str(), &serde_json::to_string(&redacted)?, redaction.event_id.as_str())
            .await
    }

    /// Applies the redactions held before `target` arrived (they name it, it came later), as
    /// far as the redaction rules let them: the target must be in `ctx.written` or committed.
    pub(crate) async fn apply_held_redactions(&self, tx: &mut WriteTx, ctx: &RoomCtx, target: &Pdu) -> Result<()> {
        for held in self.db.redactions_of(target.room_id.as_str(), target.event_id.as_str()).await? {
            self.apply_redaction(tx, ctx, &held.pdu, &target.event_id).await?;
        }
        Ok(())
    }

    /// Whether `redaction` takes effect on `target` (spec: "Handling redactions" of room
    /// versions 3 and later; Synapse's `recheck_redaction`). In versions 1 and 2 the auth rules
    /// already decided, so an accepted redaction applies. From version 3 a redaction is a valid
    /// event whatever its target, but it applies only if its sender is on the server of the
    /// target's sender or has the `redact` power level. The power levels are those of the
    /// redaction's own auth events (the state it was authorised against, as Synapse), so that a
    /// redaction held before its target arrives is judged the same way when it does.
    pub(crate) async fn redaction_takes_effect(&self, ctx: &RoomCtx, redaction: &Pdu, target: &Pdu) -> Result<bool> {
        if ctx.rules.authorization.special_case_room_redaction
            || redaction.fields.sender.server_name() == target.fields.sender.server_name()
        {
            return Ok(true);
        }
        let mut ids: Vec<String> = redaction.fields.auth_events.iter().map(|e| e.to_string()).collect();
        // From room version 12 the create event is not among the auth events.
        if let Some(create) = self.db.current_state_event_id(redaction.room_id.as_str(), "m.room.create", "").await? {
            ids.push(create);
        }
        let auth = self.pdus_for(ctx, &ids).await?;
        let find = |kind: TimelineEventType| {
            auth.values().find(|p| p.fields.kind == kind && p.fields.state_key.as_deref() == Some(""))
        };
        let pl = super::read::PowerLevels::from_events(
            find(TimelineEventType::RoomPowerLevels),
            find(TimelineEventType::RoomCreate),
            &ctx.rules,
        );
        Ok(pl.user_level(&redaction.fields.sender) >= pl.level("redact", 50))
    }

    /// Servers other than ours with joined members in the room (committed state).
    pub async fn remote_destinations(&self, room_id: &str) -> Result<Vec<String>> {
        Ok(self.read_members(room_id).await?.remote_servers)
    }

    pub(crate) async fn read_members(&self, room_id: &str) -> Result<cache::RoomMembers> {
        let suffix = format!(":{}", self.server_name);
        let mut members = cache::RoomMembers::default();
        for (user, membership) in self.db.all_memberships(room_id).await? {
            if user.ends_with(&suffix) {
                if membership == "join" {
                    members.joined_local.push(user.clone());
                }
                members.local.push(user);
            } else if membership == "join"
                && let Some((_, server)) = user.split_once(':')
            {
                members.remote_servers.push(server.to_owned());
            }
        }
        members.remote_servers.sort();
        members.remote_servers.dedup();
        Ok(members)
    }

    /// Members as of the committed state `group` (the state before the event being written).
    /// Membership rows written earlier in this transaction are not visible to the pool, so
    /// results are cached only when the transaction has not written to the room yet.
    async fn members_before(
        &self,
        ctx: &RoomCtx,
        room_id: &str,
        group: Option<i64>,
    ) -> Result<Arc<cache::RoomMembers>> {
        if let Some(g) = group
            && let Some(m) = self.caches.members(room_id, g)
        {
            return Ok(m);
        }
        let members = Arc::new(self.read_members(room_id).await?);
        if let Some(g) = group
            && ctx.written.is_empty()
        {
            self.caches.put_members(room_id, g, members.clone());
        }
        Ok(members)
    }

    /// After commit: cache new state and wake local members' `/sync`.
    pub async fn after_commit(&self, ctx: &RoomCtx, appended: &[Appended]) {
        if let Some(group) = ctx.state_group {
            self.state_cache.insert(group, ctx.state.clone(), ctx.chain_length);
        }
        let Some(room_id) = &ctx.room_id else { return };
        let suffix = format!(":{}", self.server_name);
        let mut users: Vec<String> = match ctx.state_group {
            Some(g) => match self.caches.members(room_id.as_str(), g) {
                Some(m) => m.local.clone(),
                None => match self.read_members(room_id.as_str()).await {
                    Ok(m) => {
                        let local = m.local.clone();
                        self.caches.put_members(room_id.as_str(), g, Arc::new(m));
                        local
                    }
                    Err(_) => Vec::new(),
                },
            },
            None => Vec::new(),
        };
        for a in appended {
            if let Some(k) = &a.pdu.fields.state_key
                && a.pdu.fields.kind == TimelineEventType::RoomMember
                && k.ends_with(&suffix)
            {
                users.push(k.clone());
            }
        }
        // The room's signal also wakes the senders of the other processes.
        self.notifier.wake_room(room_id.as_str(), ctx.state_group, users.iter().map(String::as_str));
        if !appended.is_empty() {
            self.outbox_wakeup.notify_local();
        }
    }
}

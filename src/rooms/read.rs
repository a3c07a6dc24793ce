//! Reading rooms: events, state and members as a given user may see them, power levels,
//! and the timeline in topological order for `/messages` and `/context`.
//!
//! History visibility is applied here for every read (spec: "History visibility"), using the
//! state after each event from its state group.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::power_levels::NotificationPowerLevels;
use ruma::push::PushConditionPowerLevelsCtx;
use ruma::room_version_rules::{AuthorizationRules, RoomPowerLevelsRules, RoomVersionRules};
use ruma::{Int, OwnedUserId, RoomId, UserId};
use serde_json::Value;

use super::Rooms;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::storage::rooms::{StateIds, StoredEvent};

/// Power levels as clients and the server read them.
#[derive(Debug, Clone)]
pub struct PowerLevels {
    content: Value,
    creators: Vec<String>,
    authorization: AuthorizationRules,
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

impl PowerLevels {
    /// From the power levels and create events of a room's state.
    pub fn from_events(pl: Option<&Pdu>, create: Option<&Pdu>, rules: &RoomVersionRules) -> Self {
        let mut creators = Vec::new();
        if let Some(create) = create {
            creators.push(create.fields.sender.to_string());
            if rules.authorization.additional_room_creators
                && let Some(extra) = create.content()["additional_creators"].as_array()
            {
                creators.extend(extra.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
        Self {
            content: pl.map(Pdu::content).unwrap_or(Value::Null),
            creators,
            authorization: rules.authorization.clone(),
        }
    }

    /// The power levels as push rule conditions need them (`sender_notification_permission`).
    pub fn push_ctx(&self) -> PushConditionPowerLevelsCtx {
        let int = |v: i64| Int::new(v).unwrap_or(Int::MAX);
        let users = if self.content.is_null() {
            // Without a power levels event the creator has 100.
            self.creators
                .first()
                .and_then(|c| UserId::parse(c.as_str()).ok())
                .map(|c| (c, int(100)))
                .into_iter()
                .collect()
        } else {
            self.content["users"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(u, l)| Some((UserId::parse(u.as_str()).ok()?, int(as_int(l)?))))
                .collect()
        };
        let mut notifications = NotificationPowerLevels::new();
        if let Some(room) = as_int(&self.content["notifications"]["room"]) {
            notifications.room = int(room);
        }
        let creators = self.creators.iter().filter_map(|c| OwnedUserId::try_from(c.as_str()).ok());
        let rules = RoomPowerLevelsRules::new(&self.authorization, creators);
        PushConditionPowerLevelsCtx::new(
            users,
            int(as_int(&self.content["users_default"]).unwrap_or(0)),
            notifications,
            rules,
        )
    }

    /// The level of a user (`i64::MAX` for v12 creators).
    pub fn user_level(&self, user: &UserId) -> i64 {
        if self.authorization.explicitly_privilege_room_creators && self.creators.iter().any(|c| c == user.as_str()) {
            return i64::MAX;
        }
        if self.content.is_null() {
            // Without a power levels event the creator has 100, everyone else 0.
            return if self.creators.first().is_some_and(|c| c == user.as_str()) { 100 } else { 0 };
        }
        self.content["users"]
            .get(user.as_str())
            .and_then(as_int)
            .or_else(|| as_int(&self.content["users_default"]))
            .unwrap_or(0)
    }

    /// A named level (`invite`, `kick`, `ban`, `redact`, ...), with the spec's default.
    pub fn level(&self, name: &str, default: i64) -> i64 {
        as_int(&self.content[name]).unwrap_or(default)
    }

    /// The level needed to send an event of this type.
    pub fn event_level(&self, kind: &str, is_state: bool) -> i64 {
        as_int(&self.content["events"][kind]).unwrap_or_else(|| {
            if is_state {
                as_int(&self.content["state_default"]).unwrap_or(if self.content.is_null() { 0 } else { 50 })
            } else {
                as_int(&self.content["events_default"]).unwrap_or(0)
            }
        })
    }
}

/// Backfill rounds one backward page may start (each asks for up to 100 events).
const MAX_BACKFILL_ROUNDS: usize = 10;

/// The events around one event (see [`Rooms::around`]).
pub struct Around {
    /// Events before it, nearest first.
    pub before: Vec<StoredEvent>,
    /// Events after it, nearest first.
    pub after: Vec<StoredEvent>,
    /// Token to page on backwards from the first of `before`.
    pub start: String,
    /// Token to page on forwards from the last of `after`.
    pub end: String,
}

/// A page of the timeline.
pub struct Page {
    /// Events in the requested direction.
    pub events: Vec<StoredEvent>,
    /// Token after the last event returned, if there may be more.
    pub end: Option<String>,
}

/// Which part of the timeline a page covers: from `from` (exclusive) in `dir`, up to `to`
/// (exclusive), at most `limit` visible events.
pub struct PageRange {
    /// Where the page starts (exclusive); None from the newest (backwards) or oldest event.
    pub from: Option<TopoToken>,
    /// Where the page stops (exclusive).
    pub to: Option<TopoToken>,
    /// Which way the page goes.
    pub dir: Dir,
    /// The most events the page holds.
    pub limit: usize,
}

/// A position in the room's topological order: `t<depth>_<stream>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopoToken {
    /// Depth.
    pub depth: i64,
    /// Stream position.
    pub stream: i64,
}

impl TopoToken {
    /// Parses `t<depth>_<stream>`; also accepts a sync token `s<stream>...` as a stream position
    /// (the depth is then looked up by the caller).
    pub fn parse(token: &str) -> Option<Self> {
        let rest = token.strip_prefix('t')?;
        let (d, s) = rest.split_once('_')?;
        Some(Self { depth: d.parse().ok()?, stream: s.parse().ok()? })
    }

    /// The token text.
    pub fn to_token(self) -> String {
        format!("t{}_{}", self.depth, self.stream)
    }

    /// The position of an event.
    pub fn of(ev: &StoredEvent) -> Self {
        Self { depth: ev.topo, stream: ev.stream }
    }
}

/// A position given by a client token: topological (`t<depth>_<stream>`) or a sync token's
/// stream position.
#[derive(Debug, Clone, Copy)]
pub enum Position {
    /// In the room's topological order.
    Topo(TopoToken),
    /// In the stream order.
    Stream(i64),
}

/// Direction of pagination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Forwards in time.
    Forward,
    /// Backwards in time.
    Backward,
}

impl From<ruma::api::Direction> for Dir {
    fn from(dir: ruma::api::Direction) -> Self {
        match dir {
            ruma::api::Direction::Forward => Dir::Forward,
            ruma::api::Direction::Backward => Dir::Backward,
        }
    }
}

impl From<Dir> for ruma::api::Direction {
    fn from(dir: Dir) -> Self {
        match dir {
            Dir::Forward => ruma::api::Direction::Forward,
            Dir::Backward => ruma::api::Direction::Backward,
        }
    }
}

impl Rooms {
    /// The state of a state group, loaded through the cache.
    pub async fn state_at_group(&self, group: i64) -> Result<Arc<StateIds>> {
        Ok(self.state_cache.load(&self.db, group).await?.0)
    }

    /// Loads the states of several groups into the cache at once (see `StateCache::load_many`).
    pub async fn preload_state_groups(&self, groups: &[i64]) -> Result<()> {
        self.state_cache.load_many(&self.db, groups).await.map(|_| ())
    }

    /// The room's current state as PDUs keyed by `(type, state_key)`.
    pub async fn current_state(&self, room_id: &RoomId) -> Result<HashMap<(String, String), Pdu>> {
        let ids = self.db.current_state_ids(room_id.as_str()).await?;
        self.state_pdus(&ids).await
    }

    /// PDUs for a state map.
    pub async fn state_pdus(&self, ids: &StateIds) -> Result<HashMap<(String, String), Pdu>> {
        let list: Vec<String> = ids.values().cloned().collect();
        let mut by_id: HashMap<String, Pdu> =
            self.db.get_events(&list).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e.pdu)).collect();
        Ok(ids.iter().filter_map(|(k, id)| by_id.remove(id).map(|p| (k.clone(), p))).collect())
    }

    /// One event of the current state.
    pub async fn current_state_event(&self, room_id: &RoomId, kind: &str, key: &str) -> Result<Option<Pdu>> {
        match self.db.current_state_event_id(room_id.as_str(), kind, key).await? {
            Some(id) => Ok(self.db.get_event(&id).await?.map(|e| e.pdu)),
            None => Ok(None),
        }
    }

    /// Current power levels of a room.
    pub async fn power_levels(&self, room_id: &RoomId) -> Result<PowerLevels> {
        let (version, _) = self.db.get_room(room_id.as_str()).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = crate::events::version::rules(&version.as_str().try_into().map_err(Error::internal)?)?;
        let pl = self.current_state_event(room_id, "m.room.power_levels", "").await?;
        let create = self.current_state_event(room_id, "m.room.create", "").await?;
        Ok(PowerLevels::from_events(pl.as_ref(), create.as_ref(), &rules))
    }

    /// The user's current membership, if any.
    pub async fn membership_of(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self.db.membership(room_id.as_str(), user_id.as_str()).await?.map(|m| m.0))
    }

    /// Fails with 403 unless the user is joined.
    pub async fn require_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership_of(room_id, user_id).await?.as_deref() {
            Some("join") => Ok(()),
            _ => Err(Error::forbidden(format!("User {user_id} not in room {room_id}"))),
        }
    }

    /// The user's membership as history reads see it, `(membership, membership event id)`, or
    /// 403 `M_FORBIDDEN`. A user without membership, or who forgot the room, reads only
    /// world-readable rooms, like any stranger: the spec's `/forget` says the user "will no
    /// longer be able to retrieve history for this room" (Synapse: `check_user_in_room_or_world_readable`
    /// skips forgotten memberships the same way).
    pub async fn require_read_access(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<(String, String)>> {
        if let Some((m, ev, _)) = self.db.remembered_membership(room_id.as_str(), user_id.as_str()).await? {
            return Ok(Some((m, ev)));
        }
        let hv = self.current_state_event(room_id, "m.room.history_visibility", "").await?;
        if hv.is_some_and(|p| p.content()["history_visibility"] == "world_readable") {
            return Ok(None);
        }
        Err(Error::forbidden(format!("User {user_id} not in room {room_id}")))
    }

    /// Whether `user` may see `ev` under the room's history visibility.
    pub async fn can_see(&self, user_id: &UserId, ev: &StoredEvent, current_membership: Option<&str>) -> Result<bool> {
        // The state after a user's own membership event shows that membership: a user sees the
        // event that made them leave, and the join that let them in.
        let own_member_event = ev.pdu.fields.kind.to_string() == "m.room.member"
            && ev.pdu.fields.state_key.as_deref() == Some(user_id.as_str());
        self.can_see_at(user_id, ev.state_group, own_member_event, current_membership).await
    }

    /// [`Rooms::can_see`] for an event known by the state group after it and whether it is the
    /// user's own member event (readers that do not load the event itself).
    pub async fn can_see_at(
        &self,
        user_id: &UserId,
        group: Option<i64>,
        own_member_event: bool,
        current_membership: Option<&str>,
    ) -> Result<bool> {
        let Some(group) = group else { return Ok(false) };
        let state = self.state_at_group(group).await?;
        let hv_id = state.get(&("m.room.history_visibility".to_owned(), String::new()));
        let member_id = state.get(&("m.room.member".to_owned(), user_id.to_string()));
        let mut ids = Vec::new();
        ids.extend(hv_id.cloned());
        ids.extend(member_id.cloned());
        let pdus = self.cached_pdus(&ids).await?;
        let visibility = hv_id
            .and_then(|id| pdus.get(id))
            .and_then(|p| p.content()["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".to_owned());
        let membership_at =
            member_id.and_then(|id| pdus.get(id)).and_then(|p| p.content()["membership"].as_str().map(str::to_owned));
        Ok(match visibility.as_str() {
            "world_readable" => true,
            _ if membership_at.as_deref() == Some("join") || own_member_event => true,
            "invited" => membership_at.as_deref() == Some("invite"),
            "joined" => false,
            _ => current_membership == Some("join"),
        })
    }

    /// The member events of the senders of `events` as of those events, for lazy-loading
    /// members in `/messages` and `/context`: for each sender, its member event in the state
    /// after the first of `events` it sent. The caller has checked that the user may see
    /// `events`, so this state is theirs to see; the current state is not (a banned user would
    /// read the display names members chose after the ban). Synapse likewise reads the state
    /// at the returned events.
    pub async fn sender_members(&self, events: &[StoredEvent]) -> Result<Vec<Pdu>> {
        let mut seen = std::collections::HashSet::new();
        let mut ids = Vec::new();
        for ev in events {
            let sender = ev.pdu.fields.sender.as_str();
            let Some(group) = ev.state_group else { continue };
            if !seen.insert(sender.to_owned()) {
                continue;
            }
            let state = self.state_at_group(group).await?;
            if let Some(id) = state.get(&("m.room.member".to_owned(), sender.to_owned())) {
                ids.push(id.clone());
            }
        }
        let pdus = self.cached_pdus(&ids).await?;
        Ok(ids.iter().filter_map(|id| pdus.get(id).cloned()).collect())
    }

    /// Whether another server may see an event (history visibility applied to servers, as
    /// Synapse does for events it serves over federation): `world_readable` and `shared`
    /// events, and `invited` / `joined` events when one of the server's users was invited or
    /// joined (joined) at the event. Events without state (outliers: auth chains) are visible.
    pub async fn server_can_see(&self, server: &ruma::ServerName, ev: &StoredEvent) -> Result<bool> {
        let Some(group) = ev.state_group else { return Ok(true) };
        let state = self.state_at_group(group).await?;
        let hv_id = state.get(&("m.room.history_visibility".to_owned(), String::new()));
        let hv = match hv_id {
            Some(id) => self
                .cached_pdus(std::slice::from_ref(id))
                .await?
                .remove(id)
                .and_then(|p| p.content()["history_visibility"].as_str().map(str::to_owned)),
            None => None,
        };
        let allowed: &[&str] = match hv.as_deref().unwrap_or("shared") {
            "world_readable" | "shared" => return Ok(true),
            "invited" => &["invite", "join"],
            _ => &["join"],
        };
        let suffix = format!(":{server}");
        let ids: Vec<String> = state
            .iter()
            .filter(|((t, k), _)| t == "m.room.member" && k.ends_with(&suffix))
            .map(|(_, id)| id.clone())
            .collect();
        let pdus = self.cached_pdus(&ids).await?;
        Ok(pdus.values().any(|p| p.content()["membership"].as_str().is_some_and(|m| allowed.contains(&m))))
    }

    /// An event as served to `server`: whole, or redacted when the server may not see it.
    pub async fn federation_json_for(&self, server: &ruma::ServerName, ev: &StoredEvent) -> Result<Value> {
        if self.server_can_see(server, ev).await? {
            return Ok(ev.pdu.federation_json());
        }
        let (_, rules) = self.room_rules(&ev.pdu.room_id).await?;
        let redacted =
            ruma::canonical_json::redact(ev.pdu.json().clone(), &rules.redaction, None).map_err(Error::internal)?;
        Ok(serde_json::to_value(&redacted)?)
    }

    /// PDUs by id through the PDU cache (state events read on every visibility check).
    pub async fn cached_pdus(&self, ids: &[String]) -> Result<HashMap<String, Pdu>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        for id in ids {
            match self.caches.pdu(id) {
                Some(p) => {
                    out.insert(id.clone(), p);
                }
                None => missing.push(id.clone()),
            }
        }
        for ev in self.db.get_events(&missing).await? {
            self.caches.put_pdu(&ev.pdu);
            out.insert(ev.pdu.event_id.to_string(), ev.pdu);
        }
        Ok(out)
    }

    /// One event, if the user may see it: 403 when the user may not read the room at all
    /// ([`Rooms::require_read_access`]), 404 when the event is not there or not visible.
    pub async fn event_for(&self, room_id: &RoomId, user_id: &UserId, event_id: &str) -> Result<StoredEvent> {
        let access = self.require_read_access(room_id, user_id).await?;
        let ev = self.db.get_event(event_id).await?.filter(|e| e.pdu.room_id == room_id && !e.pdu.rejected);
        let Some(ev) = ev else { return Err(Error::not_found("Event not found")) };
        if ev.outlier {
            // Outliers have no place in the timeline to judge visibility at. One that is part
            // of the room's current state (the state a join through another server adopted, the
            // create event say) is what `/state` already shows a joined user or anyone in a
            // world-readable room, so it is served to them too, as Synapse does; others,
            // soft-failed events among them, stay hidden.
            let in_current_state = !ev.is_soft_failed()
                && match &ev.pdu.fields.state_key {
                    Some(key) => {
                        let kind = ev.pdu.fields.kind.to_string();
                        self.db.current_state_event_id(room_id.as_str(), &kind, key).await?.as_deref() == Some(event_id)
                    }
                    None => false,
                };
            let may_read_state = access.as_ref().is_none_or(|(membership, _)| membership == "join");
            return if in_current_state && may_read_state { Ok(ev) } else { Err(Error::not_found("Event not found")) };
        }
        if self.can_see(user_id, &ev, access.as_ref().map(|a| a.0.as_str())).await? {
            Ok(ev)
        } else {
            Err(Error::not_found("Event not found"))
        }
    }

    /// The events around `ev` that `user` may see and `filter` passes, as `/context` (and the
    /// context of a search result) shows them: up to `before_n` before it (nearest first) and
    /// `after_n` after it, with the tokens that page on beyond them.
    pub async fn around(
        &self,
        user: &UserId,
        ev: &StoredEvent,
        before_n: usize,
        after_n: usize,
        filter: &(dyn Fn(&StoredEvent) -> bool + Sync),
    ) -> Result<Around> {
        let room_id: &RoomId = &ev.pdu.room_id;
        let pos = TopoToken::of(ev);
        let before = match before_n {
            0 => Vec::new(),
            n => {
                let range = PageRange { from: Some(pos), to: None, dir: Dir::Backward, limit: n };
                self.messages(room_id, user, &range, filter).await?.events
            }
        };
        let after = match after_n {
            0 => Vec::new(),
            n => {
                let range = PageRange { from: Some(pos), to: None, dir: Dir::Forward, limit: n };
                self.messages(room_id, user, &range, filter).await?.events
            }
        };
        let start = before.last().map(TopoToken::of).unwrap_or(pos).to_token();
        let end = after.last().map(TopoToken::of).unwrap_or(pos).to_token();
        Ok(Around { before, after, start, end })
    }

    /// Pages the timeline over `range`, returning the visible events. Going backwards into
    /// history this server does not hold (the events before it joined, or a hole), it
    /// backfills from other servers first (see [`super::backfill`]) and pages again.
    pub async fn messages(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        range: &PageRange,
        filter: &(dyn Fn(&StoredEvent) -> bool + Sync),
    ) -> Result<Page> {
        let PageRange { from, dir, limit, .. } = *range;
        let mut rounds = 0;
        loop {
            let (page, mut scanned) = self.messages_page(room_id, user_id, range, filter).await?;
            if dir == Dir::Forward
                || self.federation().is_none()
                || rounds == MAX_BACKFILL_ROUNDS
                || (rounds > 0 && page.events.len() >= limit)
            {
                return Ok(page);
            }
            if page.events.len() < limit
                && let Some(f) = from
            {
                // A short page reached the oldest events we hold before `from`; the events at
                // `from` itself (e.g. our join, where a sync's `prev_batch` points) were not
                // scanned but may have the gap behind them.
                scanned.extend(self.events_from(room_id, f).await?);
            }
            let gaps = self.backfill_gaps(&scanned).await?;
            if gaps.is_empty() || !self.backfill(room_id, &gaps).await {
                return Ok(page);
            }
            rounds += 1;
        }
    }

    /// One pass of [`Rooms::messages`] over what we hold; also returns the `(prev event, event)`
    /// edges of the events it scanned (visible or not), whose gaps a backfill would fill.
    async fn messages_page(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        range: &PageRange,
        filter: &(dyn Fn(&StoredEvent) -> bool + Sync),
    ) -> Result<(Page, Vec<(String, String)>)> {
        let PageRange { from, to, dir, limit } = *range;
        let batch = (limit + 1).clamp(20, 500) as i64;
        // The access check and the first batch are independent reads: asked together, a page
        // waits for one round trip to the database instead of two (on PostgreSQL under load,
        // each is a wake-up of another process). The batch is dropped unread if access is refused.
        let (access, mut rows) =
            tokio::try_join!(self.require_read_access(room_id, user_id), self.page_rows(room_id, from, dir, batch))?;
        let membership = access.as_ref().map(|a| a.0.as_str());
        // A user who left sees history only up to their leave.
        let cap = match access.as_ref() {
            Some((m, ev_id)) if m == "leave" || m == "ban" => {
                self.db.get_event(ev_id).await?.map(|e| TopoToken::of(&e))
            }
            _ => None,
        };
        let mut out = Vec::new();
        let mut scanned = Vec::new();
        let mut cursor = from;
        let mut visibility = VisibilityMemo::new(user_id, membership);
        loop {
            let exhausted = (rows.len() as i64) < batch;
            for ev in rows {
                let pos = TopoToken::of(&ev);
                cursor = Some(pos);
                push_edges(&mut scanned, &ev);
                let past_to = to.is_some_and(|t| match dir {
                    Dir::Forward => pos >= t,
                    Dir::Backward => pos <= t,
                });
                let past_cap = cap.is_some_and(|c| pos > c);
                if past_to || (dir == Dir::Forward && past_cap) {
                    return Ok((Page { events: out, end: None }, scanned));
                }
                if past_cap || !filter(&ev) {
                    continue;
                }
                let visible = visibility.check(self, &ev).await?;
                if !visible {
                    continue;
                }
                out.push(ev);
                if out.len() >= limit {
                    return Ok((Page { events: out, end: cursor.map(TopoToken::to_token) }, scanned));
                }
            }
            if exhausted {
                return Ok((Page { events: out, end: None }, scanned));
            }
            rows = self.page_rows(room_id, cursor, dir, batch).await?;
        }
    }

    /// Up to `batch` timeline events of the room after `cursor` (exclusive) in `dir`.
    async fn page_rows(
        &self,
        room_id: &RoomId,
        cursor: Option<TopoToken>,
        dir: Dir,
        batch: i64,
    ) -> Result<Vec<StoredEvent>> {
        self.db.timeline_batch(room_id.as_str(), cursor.map(|c| (c.depth, c.stream)), dir.into(), batch).await
    }

    /// The `(prev event, event)` edges of the first timeline events at or after a position.
    async fn events_from(&self, room_id: &RoomId, from: TopoToken) -> Result<Vec<(String, String)>> {
        let rows = self.db.timeline_from(room_id.as_str(), (from.depth, from.stream), 20).await?;
        let mut edges = Vec::new();
        for ev in &rows {
            push_edges(&mut edges, ev);
        }
        Ok(edges)
    }

    /// The latest topological position of a room (for `/messages` without `from`).
    pub async fn latest_position(&self, room_id: &RoomId) -> Result<Option<TopoToken>> {
        Ok(self.db.last_in_topological_order(room_id.as_str()).await?.as_ref().map(TopoToken::of))
    }

    /// The topological position of the last event at or before a stream position (for sync
    /// `prev_batch` tokens used with `/messages`).
    pub async fn position_at_stream(&self, room_id: &RoomId, stream: i64) -> Result<Option<TopoToken>> {
        Ok(self.db.last_at_stream(room_id.as_str(), stream).await?.as_ref().map(TopoToken::of))
    }

    /// The last timeline event at or before a position, as `/members?at=` reads the state at it.
    pub async fn last_event_at(&self, room_id: &RoomId, at: Position) -> Result<Option<StoredEvent>> {
        match at {
            Position::Topo(t) => self.db.last_accepted_at_topo(room_id.as_str(), (t.depth, t.stream)).await,
            Position::Stream(stream) => self.db.last_accepted_at_stream(room_id.as_str(), stream).await,
        }
    }

    /// Client JSON for a stored event, with `transaction_id` for the sending device.
    pub async fn client_event(&self, ev: &StoredEvent, viewer: Option<(&UserId, &str)>) -> Result<Value> {
        Ok(self.client_events(std::slice::from_ref(ev), viewer).await?.pop().expect("one event in, one out"))
    }

    /// Client JSON for several events; the sending device's transaction ids are looked up in one
    /// query rather than one per event, and only for events that can have one.
    pub async fn client_events(&self, evs: &[StoredEvent], viewer: Option<(&UserId, &str)>) -> Result<Vec<Value>> {
        let txns = self.txn_ids(&evs.iter().collect::<Vec<_>>(), viewer).await?;
        self.client_events_with(evs, &txns).await
    }

    /// The viewing device's transaction ids of `evs`: event id → txn id (one query; none when
    /// no event can carry one). Sync asks once for the events of all its rooms.
    pub async fn txn_ids(
        &self,
        evs: &[&StoredEvent],
        viewer: Option<(&UserId, &str)>,
    ) -> Result<HashMap<String, String>> {
        let Some((user, device)) = viewer else { return Ok(HashMap::new()) };
        // Events this process wrote are answered from memory (a `/messages` page otherwise
        // spends a third of its database time here); the others from the database.
        let mut found = HashMap::new();
        let mut ask = Vec::new();
        for id in may_have_txn(evs.iter().copied(), user) {
            match self.caches.txn(&id) {
                Some((u, d, t)) => {
                    if u == user.as_str() && d == device {
                        found.insert(id, t);
                    }
                }
                None => ask.push(id),
            }
        }
        if !ask.is_empty() {
            found.extend(self.db.txns_of_events(user.as_str(), device, &ask).await?);
        }
        Ok(found)
    }

    /// [`Rooms::client_events`] as the text of a JSON array, written without building a tree
    /// per event (see [`Pdu::write_client_json`]); for answers that are mostly events
    /// (`/messages`).
    pub async fn client_events_text(&self, evs: &[StoredEvent], viewer: Option<(&UserId, &str)>) -> Result<Vec<u8>> {
        let txns = self.txn_ids(&evs.iter().collect::<Vec<_>>(), viewer).await?;
        let now = crate::storage::now_ms();
        let size: usize = evs.iter().map(|e| e.pdu.fields.content.get().len() + 400).sum();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'[');
        for (i, ev) in evs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let mut extra = Vec::new();
            if let Some(txn) = txns.get(ev.pdu.event_id.as_str()) {
                extra.push(("transaction_id", Value::String(txn.clone())));
            }
            if let Some(by) = &ev.redacted_by
                && let Some(redaction) = self.db.get_event(by).await?
            {
                extra.push(("redacted_because", redaction.pdu.client_json(None, now)));
            }
            ev.pdu.write_client_json(&mut out, ev.unsigned.as_ref(), &extra, now);
        }
        out.push(b']');
        Ok(out)
    }

    /// Client JSON for events whose transaction ids were looked up with [`Rooms::txn_ids`].
    pub async fn client_events_with(&self, evs: &[StoredEvent], txns: &HashMap<String, String>) -> Result<Vec<Value>> {
        let now = crate::storage::now_ms();
        let mut out = Vec::with_capacity(evs.len());
        for ev in evs {
            let mut unsigned = ev.unsigned.clone().unwrap_or_else(|| Value::Object(Default::default()));
            if let Some(txn) = txns.get(ev.pdu.event_id.as_str()) {
                unsigned["transaction_id"] = Value::String(txn.clone());
            }
            if let Some(by) = &ev.redacted_by
                && let Some(redaction) = self.db.get_event(by).await?
            {
                unsigned["redacted_because"] = redaction.pdu.client_json(None, now);
            }
            out.push(ev.pdu.client_json(Some(&unsigned), now));
        }
        Ok(out)
    }
}

/// Appends an event's `(prev event, event)` edges.
fn push_edges(edges: &mut Vec<(String, String)>, ev: &StoredEvent) {
    let id = ev.pdu.event_id.as_str();
    edges.extend(ev.pdu.fields.prev_events.iter().map(|p| (p.to_string(), id.to_owned())));
}

/// Ids of the events in `evs` that can carry `user`'s transaction id: theirs and without a state
/// key (txn ids come only with `/send` and `/redact`; state events are sent without one).
fn may_have_txn<'a>(evs: impl Iterator<Item = &'a StoredEvent>, user: &UserId) -> Vec<String> {
    evs.filter(|e| e.pdu.fields.sender == user && e.pdu.fields.state_key.is_none())
        .map(|e| e.pdu.event_id.to_string())
        .collect()
}

/// History visibility of a run of events for one user, remembered per state group: it depends
/// only on the state after the event, except for the user's own membership events, which are
/// judged one by one (see [`Rooms::can_see`]).
pub struct VisibilityMemo<'a> {
    user: &'a UserId,
    membership: Option<&'a str>,
    by_group: HashMap<i64, bool>,
}

impl<'a> VisibilityMemo<'a> {
    /// For `user`, whose current membership in the room is `membership`.
    pub fn new(user: &'a UserId, membership: Option<&'a str>) -> Self {
        Self { user, membership, by_group: HashMap::new() }
    }

    /// Whether the user may see `ev`.
    pub async fn check(&mut self, rooms: &Rooms, ev: &StoredEvent) -> Result<bool> {
        let own = ev.pdu.fields.kind == ruma::events::TimelineEventType::RoomMember
            && ev.pdu.fields.state_key.as_deref() == Some(self.user.as_str());
        self.check_at(rooms, ev.state_group, own).await
    }

    /// Whether the user may see the event with state group `group` after it; `own` when it is
    /// the user's own member event.
    pub async fn check_at(&mut self, rooms: &Rooms, group: Option<i64>, own: bool) -> Result<bool> {
        let memo_group = group.filter(|_| !own);
        if let Some(v) = memo_group.and_then(|g| self.by_group.get(&g)) {
            return Ok(*v);
        }
        let v = rooms.can_see_at(self.user, group, own, self.membership).await?;
        if let Some(g) = memo_group {
            self.by_group.insert(g, v);
        }
        Ok(v)
    }
}

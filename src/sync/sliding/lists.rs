//! The room lists of a sliding sync request: which of the user's rooms each list holds (its
//! `filters`), their order, the rooms in the requested `ranges`, and the room subscriptions.
//!
//! A list holds the rooms the user is joined to, invited to or knocking on, and, once the
//! connection has a position, the rooms they left or were banned from since it (so the client
//! learns of the leave). Rooms are sorted by `bump_stamp`, newest first (ties by room id): for
//! a joined room the stream position of its latest event of a [`BUMP_TYPES`] type (or of the
//! user's join when there is none), for other memberships the position of the membership
//! event, since the user cannot see later events. Bump stamps are remembered per room as of a
//! position and carried forward with the recent-events log, so a woken long-poll sorts a
//! thousand rooms without a query.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock};

use ruma::api::client::sync::sync_events::v5;
use ruma::directory::RoomTypeFilter;
use ruma::events::TimelineEventType;
use ruma::{DeviceId, UserId};
use serde_json::Value;

use crate::error::Result;
use crate::storage::sliding_sync::RoomFacts;
use crate::storage::sync::MembershipRow;
use crate::sync::memo::FastMap;
use crate::sync::recent::View;
use crate::sync::token::SyncToken;
use crate::sync::{Ctx, SyncEngine, SyncOptions};

/// Event types that move a room up the list (Synapse's `DEFAULT_BUMP_EVENT_TYPES`).
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

/// [`BUMP_TYPES`] as event types, compared without formatting each event's type.
static BUMP_KINDS: LazyLock<Vec<TimelineEventType>> =
    LazyLock::new(|| BUMP_TYPES.iter().map(|t| TimelineEventType::from(*t)).collect());

/// Remembered bump stamps and room facts are as of a position, and a woken request checks the
/// log's events after it. Writing every room's entry back at each request (a map write per
/// room, a thousand for a big account) is skipped until that scan grows past this many events.
const REFRESH_AFTER: usize = 256;

/// The request-independent inputs of one computation.
pub struct Base<'a> {
    /// The syncing user.
    pub user: &'a UserId,
    /// Their device.
    pub device: &'a DeviceId,
    /// Positions this response brings the client to.
    pub now: SyncToken,
    /// Positions of the connection's previous response (None: a new connection).
    pub prev: Option<SyncToken>,
    /// The recent-events log, complete up to `now.events`.
    pub view: &'a View,
    /// The user's membership rows.
    pub memberships: &'a [MembershipRow],
}

impl Base<'_> {
    /// The `/sync` reading context for this response with `opts` (the per-room readers of
    /// `/sync` serve sliding sync too).
    pub fn ctx<'b>(&'b self, opts: &'b SyncOptions) -> Ctx<'b> {
        Ctx {
            user: self.user,
            device: self.device,
            opts,
            since: self.prev,
            now: self.now,
            now_ms: crate::storage::now_ms(),
            view: self.view,
        }
    }
}

/// What a room is sent with: the union of the lists and subscription that include it.
#[derive(Debug, Clone, Default)]
pub struct RoomConfig {
    /// The largest `timeline_limit`.
    pub timeline_limit: u64,
    /// Every `required_state` pair, sorted, without duplicates.
    pub required_state: Vec<(String, String)>,
}

impl RoomConfig {
    fn add(&mut self, limit: u64, required: &[(ruma::events::StateEventType, String)]) {
        self.timeline_limit = self.timeline_limit.max(limit);
        self.required_state.extend(required.iter().map(|(t, k)| (t.to_string(), k.clone())));
        self.required_state.sort();
        self.required_state.dedup();
    }
}

/// The rooms of one request.
pub struct Selection<'a> {
    /// Each list's count (rooms that pass its filters).
    pub counts: BTreeMap<String, u64>,
    /// Each list's rooms within its ranges, in order.
    pub in_ranges: BTreeMap<String, Vec<&'a str>>,
    /// Subscribed rooms the user may see.
    pub subscribed: Vec<&'a str>,
    /// Every room to consider sending, with its configuration.
    pub configs: BTreeMap<&'a str, RoomConfig>,
    /// The user's membership row of each candidate room.
    pub membership: FastMap<&'a str, &'a MembershipRow>,
    /// Bump stamps of candidate rooms.
    pub bumps: FastMap<&'a str, i64>,
    /// Rooms `m.direct` (or an invite's `is_direct`) marks as direct chats.
    pub dms: HashSet<String>,
}

/// Whether a room's type passes a list's `room_types` / `not_room_types`.
fn type_allowed(filters: &v5::request::ListFilters, room_type: Option<&str>) -> bool {
    let matches = |f: &RoomTypeFilter| match f {
        RoomTypeFilter::Default => room_type.is_none(),
        other => other.as_str() == room_type,
    };
    (filters.room_types.is_empty() || filters.room_types.iter().any(matches))
        && !filters.not_room_types.iter().any(matches)
}

impl SyncEngine {
    /// Lists, ranges and subscriptions of a request (see the module doc).
    pub(super) async fn sliding_lists<'a>(&self, base: &Base<'a>, req: &v5::Request) -> Result<Selection<'a>> {
        let membership: FastMap<&'a str, &'a MembershipRow> =
            base.memberships.iter().filter(|m| !m.forgotten).map(|m| (m.room_id.as_str(), m)).collect();
        // Rooms a list may hold.
        let mut candidates: Vec<&'a MembershipRow> = base
            .memberships
            .iter()
            .filter(|m| !m.forgotten)
            .filter(|m| match m.membership.as_str() {
                "join" | "invite" | "knock" => true,
                "leave" | "ban" => base.prev.is_some_and(|p| m.stream > p.events),
                _ => false,
            })
            .collect();
        let bumps = self.bump_stamps(base, &candidates).await?;
        // Newest first; each room's stamp looked up once, not at every comparison.
        candidates
            .sort_by_cached_key(|m| (std::cmp::Reverse(bumps.get(m.room_id.as_str()).copied()), m.room_id.as_str()));

        let filters: Vec<&v5::request::ListFilters> = req.lists.values().filter_map(|l| l.filters.as_ref()).collect();
        let dms = if filters.iter().any(|f| f.is_dm.is_some()) || !req.lists.is_empty() {
            self.direct_rooms(base, &candidates).await?
        } else {
            HashSet::new()
        };
        let need_facts = filters
            .iter()
            .any(|f| f.is_encrypted.is_some() || !f.room_types.is_empty() || !f.not_room_types.is_empty());
        let facts: FastMap<&'a str, RoomFacts> = if need_facts {
            let ids: Vec<&str> = candidates.iter().map(|m| m.room_id.as_str()).collect();
            let mut facts = self.room_facts(base.view, &ids).await?;
            // An invite from another server: what its stripped state says.
            for m in candidates.iter().filter(|m| m.membership == "invite" || m.membership == "knock") {
                if facts.get(m.room_id.as_str()).is_some_and(|f| f.known) {
                    continue;
                }
                let key = if m.membership == "invite" { "invite_room_state" } else { "knock_room_state" };
                let mut f = RoomFacts::default();
                for ev in self.stripped_state(m, key).await? {
                    match ev["type"].as_str() {
                        Some("m.room.encryption") => f.encrypted = true,
                        Some("m.room.create") => f.room_type = ev["content"]["type"].as_str().map(str::to_owned),
                        _ => {}
                    }
                }
                facts.insert(m.room_id.as_str(), f);
            }
            facts
        } else {
            FastMap::default()
        };

        let mut counts = BTreeMap::new();
        let mut in_ranges = BTreeMap::new();
        let mut configs: BTreeMap<&'a str, RoomConfig> = BTreeMap::new();
        for (name, list) in &req.lists {
            let passes = |m: &&&'a MembershipRow| {
                let Some(f) = &list.filters else { return true };
                let room = m.room_id.as_str();
                let fact = facts.get(room);
                f.is_dm.is_none_or(|want| dms.contains(room) == want)
                    && f.is_invite.is_none_or(|want| (m.membership == "invite") == want)
                    && f.is_encrypted.is_none_or(|want| fact.is_some_and(|x| x.encrypted) == want)
                    && type_allowed(f, fact.and_then(|x| x.room_type.as_deref()))
            };
            let rooms: Vec<&'a MembershipRow> = candidates.iter().filter(passes).copied().collect();
            counts.insert(name.clone(), rooms.len() as u64);
            let mut window = Vec::new();
            let mut seen = HashSet::new();
            for (start, end) in &list.ranges {
                let start = u64::from(*start) as usize;
                let end = (u64::from(*end) as usize).min(rooms.len().saturating_sub(1));
                if rooms.is_empty() || start > end {
                    continue;
                }
                for m in &rooms[start..=end] {
                    if seen.insert(m.room_id.as_str()) {
                        window.push(m.room_id.as_str());
                        configs
                            .entry(m.room_id.as_str())
                            .or_default()
                            .add(u64::from(list.room_details.timeline_limit), &list.room_details.required_state);
                    }
                }
            }
            in_ranges.insert(name.clone(), window);
        }
        let mut subscribed = Vec::new();
        for (room, sub) in &req.room_subscriptions {
            // Only rooms the user has a membership in (a left room up to the leave).
            let Some(m) = membership.get(room.as_str()) else { continue };
            subscribed.push(m.room_id.as_str());
            configs.entry(m.room_id.as_str()).or_default().add(u64::from(sub.timeline_limit), &sub.required_state);
        }
        let mut bumps_of_configs = FastMap::default();
        for room in configs.keys() {
            let bump = match bumps.get(room) {
                Some(b) => *b,
                None => self.bump_of(base, membership[room]).await?,
            };
            bumps_of_configs.insert(*room, bump);
        }
        Ok(Selection { counts, in_ranges, subscribed, configs, membership, bumps: bumps_of_configs, dms })
    }

    /// Bump stamps of rooms (see the module doc).
    async fn bump_stamps<'a>(&self, base: &Base<'a>, rooms: &[&'a MembershipRow]) -> Result<FastMap<&'a str, i64>> {
        let view = base.view;
        let mut out = FastMap::with_capacity_and_hasher(rooms.len(), Default::default());
        let mut known = Vec::new();
        let mut missing = Vec::new();
        let joined: Vec<&'a MembershipRow> = rooms.iter().copied().filter(|m| m.membership == "join").collect();
        for m in rooms.iter().filter(|m| m.membership != "join") {
            out.insert(m.room_id.as_str(), m.stream);
        }
        let remembered = self.sliding.bumps.get_many(joined.iter().map(|m| m.room_id.as_str()));
        for (m, memo) in joined.iter().zip(remembered) {
            match memo {
                Some((as_of, bump)) if view.covers(as_of) && as_of <= view.end => known.push((*m, as_of, bump)),
                _ => missing.push(*m),
            }
        }
        let mut remember = Vec::with_capacity(joined.len());
        if !known.is_empty() {
            // One pass over the log since the oldest remembered position.
            let from = known.iter().map(|k| k.1).min().unwrap_or(view.end);
            let mut newest: FastMap<&str, i64> = FastMap::default();
            let mut scanned = 0;
            for e in view.events_after(from) {
                scanned += 1;
                if BUMP_KINDS.contains(&e.pdu.fields.kind) {
                    newest.insert(e.pdu.room_id.as_str(), e.stream);
                }
            }
            let refresh = scanned > REFRESH_AFTER;
            for (m, as_of, bump) in known {
                let b = match newest.get(m.room_id.as_str()) {
                    Some(&s) if s > as_of => s.max(bump),
                    _ => bump,
                };
                // An entry left as it was stays true: the next scan starts at or before it.
                if refresh || b != bump {
                    remember.push((m.room_id.as_str(), (view.end, b)));
                }
                out.insert(m.room_id.as_str(), if b == 0 { m.stream } else { b });
            }
        }
        if !missing.is_empty() {
            let ids: Vec<&str> = missing.iter().map(|m| m.room_id.as_str()).collect();
            let found = self.db.latest_of_types(&ids, BUMP_TYPES, view.end).await?;
            for m in missing {
                let b = found.get(&m.room_id).copied().unwrap_or(0);
                remember.push((m.room_id.as_str(), (view.end, b)));
                out.insert(m.room_id.as_str(), if b == 0 { m.stream } else { b });
            }
        }
        self.sliding.bumps.set_many(remember);
        Ok(out)
    }

    /// The bump stamp of one room (a subscription outside the lists).
    async fn bump_of<'a>(&self, base: &Base<'a>, m: &'a MembershipRow) -> Result<i64> {
        Ok(self.bump_stamps(base, &[m]).await?.get(m.room_id.as_str()).copied().unwrap_or(m.stream))
    }

    /// Encryption and room type of rooms, remembered per room as of an events position: valid
    /// while the recent-events log shows no `m.room.create` or `m.room.encryption` event of the
    /// room since (a woken long-poll then filters a thousand rooms without a query).
    async fn room_facts<'r>(&self, view: &View, rooms: &[&'r str]) -> Result<FastMap<&'r str, RoomFacts>> {
        let mut out = FastMap::with_capacity_and_hasher(rooms.len(), Default::default());
        let mut known = Vec::new();
        let mut missing = Vec::new();
        for (r, memo) in rooms.iter().zip(self.sliding.facts.get_many(rooms.iter().copied())) {
            match memo {
                Some((as_of, f)) if view.covers(as_of) && as_of <= view.end => known.push((*r, as_of, f)),
                _ => missing.push(*r),
            }
        }
        let mut remember = Vec::with_capacity(rooms.len());
        if let Some(from) = known.iter().map(|k| k.1).min() {
            let mut touched: FastMap<&str, i64> = FastMap::default();
            let mut scanned = 0;
            for e in view.events_after(from) {
                scanned += 1;
                if matches!(e.pdu.fields.kind, TimelineEventType::RoomCreate | TimelineEventType::RoomEncryption)
                    && e.pdu.fields.state_key.as_deref() == Some("")
                {
                    touched.insert(e.pdu.room_id.as_str(), e.stream);
                }
            }
            let refresh = scanned > REFRESH_AFTER;
            for (r, as_of, f) in known {
                if touched.get(r).is_some_and(|&s| s > as_of) {
                    missing.push(r);
                } else {
                    if refresh {
                        remember.push((r, (view.end, f.clone())));
                    }
                    out.insert(r, f);
                }
            }
        }
        if !missing.is_empty() {
            let mut read = self.db.room_facts(&missing).await?;
            for r in missing {
                let f = read.remove(r).unwrap_or_default();
                // Current state may be newer than the view: a change after it is seen in the log.
                remember.push((r, (view.end, f.clone())));
                out.insert(r, f);
            }
        }
        self.sliding.facts.set_many(remember);
        Ok(out)
    }

    /// Rooms that `m.direct` names, and invites marked `is_direct`.
    async fn direct_rooms(&self, base: &Base<'_>, candidates: &[&MembershipRow]) -> Result<HashSet<String>> {
        let user = base.user.as_str();
        // `m.direct` is remembered as of the account data position it was read at.
        let direct = match self.sliding.direct.get(user) {
            Some((at, rooms)) if at == base.now.account_data => rooms,
            _ => {
                let mut rooms = HashSet::new();
                if let Some(raw) = self.db.get_account_data(user, "", "m.direct").await? {
                    let content: Value = serde_json::from_str(&raw).unwrap_or_default();
                    for ids in content.as_object().into_iter().flat_map(|o| o.values()) {
                        rooms.extend(ids.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned));
                    }
                }
                let rooms = Arc::new(rooms);
                self.sliding.direct.insert(user.to_owned(), (base.now.account_data, rooms.clone()));
                rooms
            }
        };
        let mut out = HashSet::clone(&direct);
        // The invites' member events, read together (one round trip, not one per invite).
        let invites: FastMap<&str, &str> = candidates
            .iter()
            .filter(|m| m.membership == "invite" && !out.contains(&m.room_id))
            .map(|m| (m.event_id.as_str(), m.room_id.as_str()))
            .collect();
        if !invites.is_empty() {
            let ids: Vec<String> = invites.keys().map(|id| (*id).to_owned()).collect();
            for ev in self.recent.events(&ids).await? {
                if ev.pdu.content()["is_direct"].as_bool() == Some(true)
                    && let Some(room) = invites.get(ev.pdu.event_id.as_str())
                {
                    out.insert((*room).to_owned());
                }
            }
        }
        Ok(out)
    }
}

//! One room's entry in a sliding sync response.
//!
//! A room the client does not hold yet, or whose membership of the user changed since it got
//! it (an invite accepted, a leave), is sent afresh (`initial: true`): the last
//! `timeline_limit` events, `required_state` from the state at the end of the timeline, name,
//! avatar, heroes, member counts. A room it holds is sent again only when something happened
//! since the position it holds the room at (events, or a notification count that a receipt
//! reset), with the events since then and the changed state that `required_state` asks for; a
//! larger `timeline_limit` resends the timeline (`unstable_expanded_timeline`, as in Synapse)
//! and a wider `required_state` resends the state. Invites and knocks carry their stripped
//! state in `invite_state`.
//!
//! `required_state` pairs: `*` matches any type or state key, `$ME` the user's id, and
//! `$LAZY` (for `m.room.member`) the senders of the timeline being sent.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};

use super::lists::{Base, RoomConfig, Selection};
use super::{ConnState, RoomSent};
use crate::error::Result;
use crate::storage::rooms::{StateIds, StoredEvent};
use crate::sync::filter::SyncFilter;
use crate::sync::rooms::{PREFETCH_ROOMS, Plan, Prefetched, Timeline};
use crate::sync::{Ctx, SyncEngine, SyncOptions};

/// Rooms computed concurrently in one response.
const ROOMS_AT_ONCE: usize = 8;

/// A computed room whose events are not rendered yet (transaction ids are looked up for all
/// rooms at once).
struct RoomOut {
    room_id: String,
    entry: Map<String, Value>,
    timeline: Vec<StoredEvent>,
    state: Vec<StoredEvent>,
    sent: RoomSent,
}

/// Whether `required_state` asks for the state entry `(kind, key)`.
fn wanted(cfg: &[(String, String)], kind: &str, key: &str, user: &str, senders: &HashSet<&str>) -> bool {
    cfg.iter().any(|(t, k)| {
        (t == "*" || t == kind)
            && (k == "*"
                || k == key
                || (k == "$ME" && key == user)
                || (k == "$LAZY" && kind == "m.room.member" && senders.contains(key)))
    })
}

/// Who a timeline shows: its senders and the targets of its member events (`$LAZY`).
fn people(timeline: &[StoredEvent]) -> HashSet<&str> {
    timeline
        .iter()
        .flat_map(|e| {
            let target = (e.pdu.fields.kind.to_string() == "m.room.member")
                .then_some(e.pdu.fields.state_key.as_deref())
                .flatten();
            std::iter::once(e.pdu.fields.sender.as_str()).chain(target)
        })
        .collect()
}

/// Options whose filter carries a timeline limit (the `/sync` timeline reader takes it there).
/// `required_state` is the state at the end of the timeline: `use_state_after`, which tells
/// the shared prefetch which state to read ahead.
fn options(limit: u64) -> SyncOptions {
    let filter = SyncFilter::from_json(&json!({ "room": { "timeline": { "limit": limit } } }));
    SyncOptions {
        since: None,
        filter: Arc::new(filter),
        full_state: false,
        use_state_after: true,
        set_presence: "offline".into(),
        timeout: Default::default(),
    }
}

impl SyncEngine {
    /// The `rooms` object of a response; records what is sent in `state`.
    pub(super) async fn sliding_rooms(
        &self,
        base: &Base<'_>,
        sel: &Selection<'_>,
        state: &mut ConnState,
    ) -> Result<Map<String, Value>> {
        let held = &state.rooms;
        let configs: Vec<(&str, &RoomConfig)> = sel.configs.iter().map(|(r, c)| (*r, c)).collect();
        let mut outs = Vec::new();
        // A chunk at a time, its reads batched first (as `/sync` does, see `prefetch`), so that
        // the state groups it loads are still cached when its rooms read them.
        for chunk in configs.chunks(PREFETCH_ROOMS) {
            let pre = self.sliding_prefetch(base, sel, chunk, held).await?;
            let pre = &pre;
            let computations: Vec<_> = chunk
                .iter()
                .map(|(room, cfg)| Box::pin(self.sliding_room(base, sel, room, cfg, held.get(*room), pre)))
                .collect();
            let mut stream = futures::stream::iter(computations).buffered(ROOMS_AT_ONCE);
            while let Some(out) = stream.try_next().await? {
                outs.extend(out);
            }
        }
        let all: Vec<&StoredEvent> = outs.iter().flat_map(|o| o.timeline.iter().chain(&o.state)).collect();
        let txns = self.rooms.txn_ids(&all, Some((base.user, base.device.as_str()))).await?;
        drop(all);
        let mut rooms = Map::new();
        for o in outs {
            let mut entry = o.entry;
            if !o.timeline.is_empty() {
                entry.insert("timeline".into(), Value::Array(self.rooms.client_events_with(&o.timeline, &txns).await?));
            }
            if !o.state.is_empty() {
                let events = self.rooms.client_events_with(&o.state, &txns).await?;
                entry.insert("required_state".into(), Value::Array(events));
            }
            state.rooms.insert(o.room_id.clone(), o.sent);
            rooms.insert(o.room_id, Value::Object(entry));
        }
        Ok(rooms)
    }

    /// Reads ahead, for all the joined rooms of a chunk that will be sent afresh, what each
    /// would read on its own (`SyncEngine::prefetch`, shared with `/sync`): timelines the log
    /// cannot answer, state groups and their states, summaries, unread counts and the state
    /// events `required_state` (with name, avatar and heroes) picks. Rooms are grouped by
    /// timeline limit, which the prefetch takes from its options.
    async fn sliding_prefetch(
        &self,
        base: &Base<'_>,
        sel: &Selection<'_>,
        chunk: &[(&str, &RoomConfig)],
        held: &std::collections::BTreeMap<String, RoomSent>,
    ) -> Result<Prefetched> {
        let mut by_limit: std::collections::BTreeMap<u64, Vec<Plan<'_>>> = Default::default();
        for (room, cfg) in chunk {
            let m = sel.membership[room];
            // A changed membership row of a joined user may be only a profile change (then the
            // room is incremental); guessing fresh costs reads, not answers.
            if m.membership != "join" || held.get(*room).is_some_and(|h| h.member == m.stream) {
                continue;
            }
            by_limit.entry(cfg.timeline_limit).or_default().push(Plan {
                room_id: room,
                after: None,
                upto: base.now.events,
                full_state: true,
                membership: &m.membership,
                membership_changed: true,
                member_stream: m.stream,
            });
        }
        let user = base.user.as_str();
        let want = |p: &Plan<'_>, shown: &[StoredEvent], state: &StateIds, heroes: &[String], out: &mut Vec<String>| {
            let Some(cfg) = sel.configs.get(p.room_id) else { return };
            let senders = people(shown);
            for ((kind, key), id) in state.iter() {
                let meta = key.is_empty() && (kind == "m.room.name" || kind == "m.room.avatar");
                let hero = kind == "m.room.member" && heroes.contains(key);
                if meta || hero || wanted(&cfg.required_state, kind, key, user, &senders) {
                    out.push(id.clone());
                }
            }
        };
        let mut pre = Prefetched::default();
        for (limit, plans) in by_limit {
            let opts = options(limit);
            let ctx = base.ctx(&opts);
            let read = self.prefetch(&ctx, &plans, &want, 1).await?;
            pre.timelines.extend(read.timelines);
            pre.events.extend(read.events);
        }
        Ok(pre)
    }

    /// One room, or None when the client holds everything of it.
    async fn sliding_room(
        &self,
        base: &Base<'_>,
        sel: &Selection<'_>,
        room: &str,
        cfg: &RoomConfig,
        held: Option<&RoomSent>,
        pre: &Prefetched,
    ) -> Result<Option<RoomOut>> {
        let m = sel.membership[room];
        let user = base.user.as_str();
        let fresh = match held {
            None => true,
            Some(h) if h.member == m.stream => false,
            // A new member event of a joined user that was joined before it (a profile
            // change) keeps the room incremental; any other change sends it afresh.
            Some(_) => !(m.membership == "join" && self.was_joined_before(&m.event_id).await?),
        };
        let mut entry = Map::new();
        let sent = RoomSent {
            at: m.stream,
            member: m.stream,
            timeline_limit: cfg.timeline_limit,
            required_state: std::sync::Arc::new(cfg.required_state.clone()),
            notifications: 0,
        };
        let bump = sel.bumps.get(room).copied().unwrap_or(m.stream);
        if m.membership == "invite" || m.membership == "knock" {
            if !fresh {
                return Ok(None);
            }
            let key = if m.membership == "invite" { "invite_room_state" } else { "knock_room_state" };
            entry.insert("initial".into(), json!(true));
            entry.insert("invite_state".into(), json!(self.stripped_state(m, key).await?));
            entry.insert("bump_stamp".into(), json!(bump));
            entry.insert("is_dm".into(), json!(sel.dms.contains(room)));
            return Ok(Some(RoomOut {
                room_id: room.to_owned(),
                entry,
                timeline: Vec::new(),
                state: Vec::new(),
                sent,
            }));
        }
        let joined = m.membership == "join";
        let upto = if joined { base.now.events } else { m.stream };
        let opts = options(cfg.timeline_limit);
        let ctx = base.ctx(&opts);
        let plan_after = |after| Plan {
            room_id: room,
            after,
            upto,
            full_state: after.is_none(),
            membership: &m.membership,
            membership_changed: fresh,
            member_stream: m.stream,
        };
        let held_at = held.filter(|_| !fresh).map(|h| h.at);
        let expanded = held.is_some_and(|h| !fresh && cfg.timeline_limit > h.timeline_limit);
        let wider_state = held
            .is_some_and(|h| !fresh && cfg.required_state.iter().any(|p| h.required_state.binary_search(p).is_err()));
        let has_events = match held_at {
            None => true,
            Some(at) if at >= upto => false,
            Some(at) if base.view.covers(at) && upto <= base.view.end => {
                base.view.events_after(at).any(|e| e.stream <= upto && e.pdu.room_id.as_str() == room)
            }
            Some(at) => self.db.latest_in_room(room, upto).await?.is_some_and(|l| l > at),
        };
        let plan = plan_after(held_at);
        let count = if joined { Some(self.unread_count(&ctx, &plan).await?.total()) } else { None };
        let count_changed = held.is_some_and(|h| count.is_some_and(|c| c.notifications != h.notifications));
        if !fresh && !expanded && !wider_state && !has_events && !count_changed {
            return Ok(None);
        }
        let sent = RoomSent { at: upto, notifications: count.map_or(0, |c| c.notifications), ..sent };

        // Timeline: from the start of the room when fresh or expanded, else since the client's.
        let tl = if cfg.timeline_limit == 0 || (!has_events && !expanded) {
            None
        } else if expanded {
            Some(self.timeline(&ctx, &plan_after(None)).await?)
        } else {
            Some(self.timeline_from(&ctx, &plan, pre.timelines.get(room).map(Vec::as_slice)).await?)
        };
        let Timeline { events: timeline, limited, prev_batch, .. } = match tl {
            Some(t) => t,
            None => Timeline { events: Vec::new(), limited: false, prev_batch: String::new(), skipped: false },
        };

        // State: all that `required_state` asks for, or what changed of it since the client's.
        // Who the timeline shows: its senders and the targets of its member events.
        let senders = people(&timeline);
        let target = self.state_at(&ctx, room, upto).await?;
        let old = match held_at {
            Some(at) if !wider_state => Some(self.state_at(&ctx, room, at).await?),
            _ => None,
        };
        let changed = |k: &(String, String), id: &String| old.as_ref().is_none_or(|o| o.get(k) != Some(id));
        let lazy_members = cfg.required_state.iter().any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY");
        let mut ids = Vec::new();
        for (k, id) in target.iter() {
            let is_new = changed(k, id);
            // A lazy-loaded member goes with each timeline event of theirs (whether the client
            // got it earlier is not tracked), and, as in Synapse, a timeline that is not limited
            // brings every member change, so that a client holding the member list keeps it.
            let member = k.0 == "m.room.member" && lazy_members;
            let lazy = member && (senders.contains(k.1.as_str()) || (is_new && old.is_some() && !limited));
            if (is_new && wanted(&cfg.required_state, &k.0, &k.1, user, &senders)) || lazy {
                ids.push(id.clone());
            }
        }
        let mut state = self.prefetched_events(pre, ids).await?;
        state.sort_by_key(|e| e.stream);

        // Name and avatar: when fresh, or when they changed.
        let meta_ids: Vec<String> = ["m.room.name", "m.room.avatar"]
            .iter()
            .filter_map(|t| {
                target
                    .get(&((*t).to_owned(), String::new()))
                    .filter(|id| changed(&((*t).to_owned(), String::new()), id))
            })
            .cloned()
            .collect();
        for ev in self.prefetched_events(pre, meta_ids).await? {
            let content = ev.pdu.content();
            match ev.pdu.fields.kind.to_string().as_str() {
                "m.room.name" => {
                    entry.insert("name".into(), json!(content["name"].as_str().unwrap_or_default()));
                }
                _ => {
                    entry.insert("avatar".into(), content["url"].as_str().map_or(Value::Null, |u| json!(u)));
                }
            }
        }

        // Heroes and member counts: when fresh or when members moved.
        let is_member = |e: &StoredEvent| e.pdu.fields.kind.to_string() == "m.room.member";
        let members_moved = fresh
            || timeline.iter().any(is_member)
            || old
                .as_ref()
                .is_some_and(|o| target.iter().any(|(k, id)| k.0 == "m.room.member" && o.get(k) != Some(id)));
        if members_moved && joined {
            let (summary, hero_ids) = self.summary(&ctx, &plan).await?;
            entry.insert("joined_count".into(), summary["m.joined_member_count"].clone());
            entry.insert("invited_count".into(), summary["m.invited_member_count"].clone());
            // Heroes name a room that has no name (an empty one counts as none).
            let name_id = target.get(&("m.room.name".to_owned(), String::new())).cloned();
            let named = match name_id {
                Some(id) => self
                    .prefetched_events(pre, vec![id])
                    .await?
                    .first()
                    .is_some_and(|e| e.pdu.content()["name"].as_str().is_some_and(|n| !n.is_empty())),
                None => false,
            };
            if !named {
                entry.insert("heroes".into(), Value::Array(self.heroes(&target, &hero_ids, pre).await?));
            }
        }

        if fresh {
            entry.insert("initial".into(), json!(true));
        }
        if expanded {
            entry.insert("unstable_expanded_timeline".into(), json!(true));
        }
        if !prev_batch.is_empty() {
            entry.insert("prev_batch".into(), json!(prev_batch));
        }
        if limited {
            entry.insert("limited".into(), json!(true));
        }
        let live_from = base.prev.map(|p| p.events);
        let num_live = live_from.map_or(0, |p| timeline.iter().filter(|e| e.stream > p).count());
        entry.insert("num_live".into(), json!(num_live));
        entry.insert("bump_stamp".into(), json!(bump));
        entry.insert("is_dm".into(), json!(sel.dms.contains(room)));
        if let Some(c) = count {
            entry.insert("notification_count".into(), json!(c.notifications));
            entry.insert("highlight_count".into(), json!(c.highlights));
        }
        Ok(Some(RoomOut { room_id: room.to_owned(), entry, timeline, state, sent }))
    }

    /// Whether a member event's sender was joined before it (its `prev_content`).
    async fn was_joined_before(&self, event_id: &str) -> Result<bool> {
        let ev = self.recent.events(&[event_id.to_owned()]).await?;
        Ok(ev.first().and_then(|e| e.unsigned.as_ref()).is_some_and(|u| u["prev_content"]["membership"] == "join"))
    }

    /// The room's state after its last event at or before `pos`.
    async fn state_at(&self, ctx: &Ctx<'_>, room: &str, pos: i64) -> Result<Arc<StateIds>> {
        match self.group_at(ctx, room, pos).await? {
            Some(g) => self.rooms.state_at_group(g).await,
            None => Ok(Arc::new(StateIds::new())),
        }
    }

    /// Heroes with their display names and avatars from the room's member events.
    async fn heroes(&self, state: &StateIds, ids: &[String], pre: &Prefetched) -> Result<Vec<Value>> {
        let event_ids: Vec<String> =
            ids.iter().filter_map(|u| state.get(&("m.room.member".to_owned(), u.clone())).cloned()).collect();
        let by_user: HashMap<String, Value> = self
            .prefetched_events(pre, event_ids)
            .await?
            .iter()
            .filter_map(|e| Some((e.pdu.fields.state_key.clone()?, e.pdu.content())))
            .collect();
        Ok(ids
            .iter()
            .map(|u| {
                let mut hero = json!({ "user_id": u });
                if let Some(c) = by_user.get(u) {
                    if let Some(name) = c["displayname"].as_str() {
                        hero["displayname"] = json!(name);
                    }
                    if let Some(url) = c["avatar_url"].as_str() {
                        hero["avatar_url"] = json!(url);
                    }
                }
                hero
            })
            .collect())
    }
}

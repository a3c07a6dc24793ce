//! The `rooms` part of a sync response: joined rooms (timeline, state, ephemeral, account data,
//! unread counts, summary), invites and knocks (stripped state) and left rooms.
//!
//! Which rooms: the user's membership rows say which rooms were joined, left, invited or
//! knocked since the token (`room_memberships.stream_ordering`); rooms joined before it are
//! included when they have events in `(since, now]` or new ephemeral events or account data.
//! A room joined since the token (not merely a profile change) is sent like in an initial sync.
//!
//! Timeline: the last `limit` events of the window that pass the filter and history
//! visibility, read newest first and reversed; `limited` when more precede them. `prev_batch`
//! is the topological token of the first timeline event, from which `/messages?dir=b` continues
//! exclusively, so the client can close the gap without holes or repeats.
//!
//! State: the state at the start of the timeline minus the state at the token (all of it for a
//! full-state room), without events that are in the timeline; with `use_state_after`, the state
//! at the end of the timeline in `state_after`. Lazy-loading keeps member events for timeline
//! senders, the user and the room heroes (full state), or the changed ones plus those of
//! timeline senders (incremental: the spec requires member changes in the gap).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use ruma::UserId;
use ruma::events::TimelineEventType;
use serde_json::{Map, Value, json};

use super::token::SyncToken;
use super::{Ctx, SyncEngine, filter, receipts};
use crate::error::Result;
use crate::events::STRIPPED_STATE_TYPES;
use crate::rooms::read::{TopoToken, VisibilityMemo};
use crate::storage::push::{Counts, UnreadCounts};
use crate::storage::rooms::{StateIds, StoredEvent};
use crate::storage::sync::{AccountDataRow, MembershipRow, ReceiptRow, by_room};

/// How many batches of events a timeline scan reads before it gives up looking for visible
/// events and reports the timeline as limited (the client pages on with `/messages`).
const MAX_SCAN_BATCHES: usize = 5;
/// One joined room being computed (borrowing its chunk's prefetched reads): its id and its
/// entry, if any.
type RoomComputation<'a, 'r> = futures::future::BoxFuture<'a, Result<(&'r str, Option<RoomEntry>)>>;
/// Joined rooms computed concurrently in one sync.
const ROOMS_AT_ONCE: usize = 8;
/// Rooms whose reads are batched together (see `SyncEngine::prefetch`).
pub(super) const PREFETCH_ROOMS: usize = 100;
/// Unread counts stop at this number.
const UNREAD_CAP: i64 = 1000;

/// How one room is synced (also by sliding sync, `super::sliding`).
pub(super) struct Plan<'a> {
    pub(super) room_id: &'a str,
    /// Timeline and state changes after this position (None: from the start of the room).
    pub(super) after: Option<i64>,
    /// Up to this position (now, or the user's leave).
    pub(super) upto: i64,
    /// Send the full state rather than the change since `after`.
    pub(super) full_state: bool,
    /// The user's membership now (for history visibility).
    pub(super) membership: &'a str,
    /// The user's membership event changed in the window.
    pub(super) membership_changed: bool,
    /// Stream position of the user's current membership.
    pub(super) member_stream: i64,
}

/// What [`SyncEngine::prefetch`] read for all rooms at once and the per-room code takes.
#[derive(Default)]
pub(super) struct Prefetched {
    /// Each room's newest `limit + 1` events up to the sync's end, newest first, for rooms the
    /// recent-events log cannot answer.
    pub(super) timelines: HashMap<String, Vec<StoredEvent>>,
    /// The state events the rooms will send, as far as they could be told in advance.
    pub(super) events: HashMap<String, StoredEvent>,
}

/// Which state events of a room [`SyncEngine::prefetch`] reads ahead: given the room's plan, the
/// newest events its timeline will show (newest first), its state where the entry's state is
/// taken from (the timeline's start, or its end with `use_state_after`) and its first members
/// (the heroes of its summary), pushes the ids of the events the room will send. `/sync` and
/// sliding sync (whose `required_state` decides) each pass their own; a wrong guess only costs
/// the one-room read it would have saved.
pub(super) type WantState<'w> =
    dyn Fn(&Plan<'_>, &[StoredEvent], &StateIds, &[String], &mut Vec<String>) + Send + Sync + 'w;

/// A room's entry whose timeline and state events are not rendered yet: the transaction ids of
/// the syncing device's events are looked up for all rooms in one query (one per room was half
/// the queries of an initial sync), then every room is rendered.
struct RoomEntry {
    entry: Value,
    timeline: Vec<StoredEvent>,
    state: Vec<StoredEvent>,
}

pub(super) struct Timeline {
    pub(super) events: Vec<StoredEvent>,
    pub(super) limited: bool,
    pub(super) prev_batch: String,
    /// Some event of the window was left out (filter or visibility).
    pub(super) skipped: bool,
}

fn stripped(ev: &StoredEvent) -> Value {
    json!({
        "type": ev.pdu.fields.kind.to_string(),
        "state_key": ev.pdu.fields.state_key,
        "sender": ev.pdu.fields.sender,
        "content": ev.pdu.content(),
    })
}

/// Every entry of `target` with whether it differs from `base` (all differ without a base),
/// walking both sorted maps side by side.
fn diff<'a>(
    target: &'a StateIds,
    base: Option<&'a StateIds>,
) -> impl Iterator<Item = (&'a (String, String), &'a String, bool)> + 'a {
    let mut base = base.map(|b| b.iter().peekable());
    target.iter().map(move |(k, id)| {
        let changed = match base.as_mut() {
            None => true,
            Some(b) => {
                while b.next_if(|(bk, _)| *bk < k).is_some() {}
                b.peek().is_none_or(|(bk, bid)| *bk != k || *bid != id)
            }
        };
        (k, id, changed)
    })
}

fn events_obj(events: Vec<Value>) -> Value {
    json!({ "events": events })
}

fn account_data_events(ctx: &Ctx<'_>, rows: Option<&Vec<AccountDataRow>>) -> Vec<Value> {
    rows.into_iter()
        .flatten()
        .filter(|r| filter::allows(&ctx.opts.filter.room_account_data, &r.data_type, None))
        .map(|r| json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_default() }))
        .collect()
}

impl SyncEngine {
    /// The `rooms` object; empty when nothing changed for the user's rooms.
    pub(super) async fn room_updates(
        &self,
        ctx: &Ctx<'_>,
        memberships: &[MembershipRow],
        room_data: Vec<AccountDataRow>,
    ) -> Result<Map<String, Value>> {
        let f = &ctx.opts.filter;
        let now = ctx.now;
        let since = ctx.since.map(|s| s.events);
        let mut plans = Vec::new();
        let mut unchanged: Vec<&MembershipRow> = Vec::new();
        let mut invites = Vec::new();
        let mut knocks = Vec::new();
        let mut leaves = Vec::new();
        for m in memberships.iter().filter(|m| f.room_allowed(&m.room_id)) {
            let changed = since.is_none_or(|s| m.stream > s);
            let plan = |after, upto, full_state| Plan {
                room_id: &m.room_id,
                after,
                upto,
                full_state,
                membership: &m.membership,
                membership_changed: changed,
                member_stream: m.stream,
            };
            match (m.membership.as_str(), since) {
                ("join", None) => plans.push(plan(None, now.events, true)),
                ("join", Some(s)) if changed => {
                    // A profile change keeps the room incremental; a new join starts it afresh.
                    if self.membership_at(&m.room_id, ctx.user, s).await?.as_deref() == Some("join") {
                        plans.push(plan(Some(s), now.events, ctx.opts.full_state));
                    } else {
                        plans.push(plan(None, now.events, true));
                    }
                }
                ("join", Some(s)) if ctx.opts.full_state => plans.push(plan(Some(s), now.events, true)),
                ("join", Some(_)) => unchanged.push(m),
                ("invite", _) if changed => invites.push(m),
                ("knock", _) if changed => knocks.push(m),
                ("leave" | "ban", _) if m.forgotten => {}
                ("leave" | "ban", None) if f.include_leave => leaves.push(plan(None, m.stream, true)),
                ("leave" | "ban", Some(s)) if changed => leaves.push(plan(Some(s), m.stream, ctx.opts.full_state)),
                _ => {}
            }
        }

        // Ephemeral events and account data of joined rooms.
        let joined: Vec<&str> = memberships
            .iter()
            .filter(|m| m.membership == "join" && f.room_allowed(&m.room_id))
            .map(|m| m.room_id.as_str())
            .collect();
        let typing = if filter::allows(&f.ephemeral, "m.typing", None) {
            self.typing.changed_since(joined.iter().copied(), ctx.since.map(|s| s.typing))
        } else {
            HashMap::new()
        };
        let receipt_rows = match ctx.since {
            _ if !filter::allows(&f.ephemeral, "m.receipt", None) => Vec::new(),
            Some(s) if s.receipts >= now.receipts => Vec::new(),
            s => self.db.receipts_since(&joined, ctx.user.as_str(), s.map_or(0, |s| s.receipts), now.receipts).await?,
        };
        let receipts = by_room(receipt_rows, |r| &r.room_id);
        let room_data = by_room(room_data, |r| &r.room_id);

        if let Some(s) = since {
            let candidates: Vec<&str> = unchanged.iter().map(|m| m.room_id.as_str()).collect();
            let with_events: HashSet<String> = if s >= now.events {
                HashSet::new()
            } else if ctx.view.covers(s) && ctx.view.end == now.events {
                ctx.view.rooms_with_events(&candidates, s)
            } else {
                self.db.rooms_with_events(&candidates, s, now.events).await?.into_iter().collect()
            };
            for m in unchanged {
                let r = m.room_id.as_str();
                if with_events.contains(r)
                    || typing.contains_key(r)
                    || receipts.contains_key(r)
                    || room_data.contains_key(r)
                {
                    plans.push(Plan {
                        room_id: r,
                        after: Some(s),
                        upto: now.events,
                        full_state: false,
                        membership: "join",
                        membership_changed: false,
                        member_stream: m.stream,
                    });
                }
            }
        }

        let mut out = Map::new();
        let mut join = Map::new();
        // Several rooms at a time: their database reads overlap (an initial sync of a user in
        // many rooms is mostly waiting for them); answers keep the plans' order. The reads of a
        // chunk of rooms are batched first (`prefetch`); a chunk at a time, so that the state
        // groups it loads are still cached when its rooms read them.
        let (typing, receipts, room_data) = (&typing, &receipts, &room_data);
        // The state each room will send (see `room_state`): all of it at the timeline's start
        // but the timeline's own events; lazily loaded members only for the user, the timeline's
        // senders and the heroes.
        let lazy = ctx.opts.filter.lazy_load_members();
        let user = ctx.user.as_str();
        let want =
            move |_: &Plan<'_>, shown: &[StoredEvent], state: &StateIds, heroes: &[String], out: &mut Vec<String>| {
                let senders: HashSet<&str> = shown.iter().map(|e| e.pdu.fields.sender.as_str()).collect();
                for ((kind, key), id) in state.iter() {
                    if !lazy
                        || kind != "m.room.member"
                        || key == user
                        || senders.contains(key.as_str())
                        || heroes.contains(key)
                    {
                        out.push(id.clone());
                    }
                }
            };
        let mut entries = Vec::new();
        for chunk in plans.chunks(PREFETCH_ROOMS) {
            let pre = self.prefetch(ctx, chunk, &want, 2).await?;
            let pre = &pre;
            let computations: Vec<RoomComputation<'_, '_>> = chunk
                .iter()
                .map(|plan| {
                    let room = plan.room_id;
                    let f = self.joined_room(
                        ctx,
                        plan,
                        Some(pre),
                        typing.get(room),
                        receipts.get(room),
                        room_data.get(room),
                    );
                    Box::pin(async move { Ok((room, f.await?)) }) as futures::future::BoxFuture<'_, _>
                })
                .collect();
            let mut rooms = futures::stream::iter(computations).buffered(ROOMS_AT_ONCE);
            while let Some((room, v)) = rooms.try_next().await? {
                entries.extend(v.map(|v| (room, v)));
            }
        }
        let mut lefts = Vec::new();
        for plan in leaves {
            lefts.push((plan.room_id, self.left_room(ctx, &plan, room_data.get(plan.room_id)).await?));
        }
        let viewer = Some((ctx.user, ctx.device.as_str()));
        let all_events: Vec<&StoredEvent> =
            entries.iter().chain(&lefts).flat_map(|(_, e)| e.timeline.iter().chain(&e.state)).collect();
        let txns = self.rooms.txn_ids(&all_events, viewer).await?;
        drop(all_events);
        let state_key = if ctx.opts.use_state_after { "state_after" } else { "state" };
        for (room, e) in entries {
            join.insert(room.to_owned(), self.render(e, &txns, state_key).await?);
        }
        if !join.is_empty() {
            out.insert("join".into(), Value::Object(join));
        }
        let mut invite = Map::new();
        for m in invites {
            let state = self.stripped_state(m, "invite_room_state").await?;
            invite.insert(m.room_id.clone(), json!({ "invite_state": events_obj(state) }));
        }
        if !invite.is_empty() {
            out.insert("invite".into(), Value::Object(invite));
        }
        let mut knock = Map::new();
        for m in knocks {
            let state = self.stripped_state(m, "knock_room_state").await?;
            knock.insert(m.room_id.clone(), json!({ "knock_state": events_obj(state) }));
        }
        if !knock.is_empty() {
            out.insert("knock".into(), Value::Object(knock));
        }
        let mut leave = Map::new();
        for (room, e) in lefts {
            leave.insert(room.to_owned(), self.render(e, &txns, state_key).await?);
        }
        if !leave.is_empty() {
            out.insert("leave".into(), Value::Object(leave));
        }
        Ok(out)
    }

    /// Reads what the full-state rooms of a sync (all rooms of an initial sync, the fresh rooms
    /// of a sliding sync window) would each ask the database for, in a few statements for all
    /// of them, and leaves the answers where the per-room code looks first: the state group at
    /// the newest position and the room summary (`groups`, `summaries`), the unread counts
    /// (`unread`), the state events `want` picks (returned, and in the recent-events memo). A
    /// user in 1,000 rooms otherwise pays five round trips per room before the first byte of
    /// the answer. Nothing is read for fewer than `min_rooms` such rooms: `/sync` leaves a
    /// single room to the one-room reads, while sliding sync batches even one room's reads
    /// (a room that a new message brings into a window is one such room, on every wake-up).
    pub(super) async fn prefetch(
        &self,
        ctx: &Ctx<'_>,
        plans: &[Plan<'_>],
        want: &WantState<'_>,
        min_rooms: usize,
    ) -> Result<Prefetched> {
        let mut pre = Prefetched::default();
        let min_rooms = min_rooms.max(1);
        let full: Vec<&Plan<'_>> =
            plans.iter().filter(|p| p.full_state && p.after.is_none() && p.upto == ctx.now.events).collect();
        if full.len() < min_rooms {
            return Ok(pre);
        }
        let end = ctx.view.end;
        let user = ctx.user.as_str();
        // Two chains of reads that need nothing of each other run at once (on PostgreSQL each
        // statement is a round trip to another process; on SQLite each runs on its own reader
        // thread): the unread counts, and the timelines -> state groups -> (their states and
        // the PDUs history visibility reads, with the summaries beside them).
        let unread = async {
            // Unread counts not carried forward from an earlier sync.
            let uncounted: Vec<(&str, i64)> = full
                .iter()
                .filter(|p| self.unread.get(&(user.to_owned(), p.room_id.to_owned())).is_none())
                .map(|p| (p.room_id, p.member_stream))
                .collect();
            if uncounted.len() >= min_rooms {
                let counts = self.db.unread_counts_of(user, &uncounted, ctx.now.events, UNREAD_CAP).await?;
                for (room, member_stream) in uncounted {
                    let counts = counts.get(room).cloned().unwrap_or_default();
                    let entry = super::Unread {
                        upto: ctx.now.events,
                        receipts: ctx.now.receipts,
                        member_stream,
                        counts: Arc::new(counts),
                    };
                    self.unread.insert((user.to_owned(), room.to_owned()), entry);
                }
            }
            Ok::<(), crate::error::Error>(())
        };
        let timelines_and_state = async {
            // Timelines the recent-events log cannot answer (see `timeline_from`).
            let limit = ctx.opts.filter.timeline_limit();
            let batch = limit + 1;
            let in_log = ctx.view.counts_by_room();
            let from_db: Vec<&str> = full
                .iter()
                .filter(|p| !ctx.view.covers(0) && in_log.get(p.room_id).copied().unwrap_or(0) < batch)
                .map(|p| p.room_id)
                .collect();
            let timelines = if from_db.is_empty() {
                HashMap::new()
            } else {
                self.db.newest_events_of(&from_db, ctx.now.events, batch as i64).await?
            };
            // The state before each timeline's first event, as it will be when no event is
            // hidden or filtered out (a wrong guess costs the one-room read it saves), and the
            // state groups the timelines' events carry.
            let mut starts = Vec::new();
            let mut groups = Vec::new();
            for p in &full {
                let rows = match timelines.get(p.room_id) {
                    Some(rows) => rows.clone(),
                    None => ctx.view.window(p.room_id, ctx.view.start, p.upto, batch),
                };
                groups.extend(rows.iter().filter_map(|e| e.state_group));
                if !ctx.opts.use_state_after
                    && let Some(oldest) = rows.get(limit.min(rows.len()).saturating_sub(1))
                {
                    starts.push((p.room_id, oldest.stream - 1));
                }
            }
            let mut unknown: Vec<(&str, i64)> = full.iter().map(|p| (p.room_id, end)).collect();
            unknown.extend(starts);
            unknown
                .retain(|(room, pos)| self.groups.get(&((*room).to_owned(), *pos)).is_none_or(|c| c.get().is_none()));
            if !unknown.is_empty() {
                let found = self.db.state_groups_at_streams(&unknown).await?;
                for (room, pos) in unknown {
                    let cell = self.groups.get_or_insert_with((room.to_owned(), pos), Default::default);
                    let _ = cell.set(found.get(&(room.to_owned(), pos)).copied());
                }
                groups.extend(found.into_values());
            }
            groups.sort_unstable();
            groups.dedup();
            futures::try_join!(self.prefetch_states(ctx, &groups), self.prefetch_summaries(&full, end))?;
            Ok::<_, crate::error::Error>(timelines)
        };
        let ((), timelines) = futures::try_join!(unread, timelines_and_state)?;
        pre.timelines = timelines;
        let limit = ctx.opts.filter.timeline_limit();
        let batch = limit + 1;
        // The state events each room will send (see `want`).
        let mut wanted = Vec::new();
        for p in &full {
            let rows = match pre.timelines.get(p.room_id) {
                Some(rows) => rows.clone(),
                None => ctx.view.window(p.room_id, ctx.view.start, p.upto, batch),
            };
            let shown = &rows[..limit.min(rows.len())];
            let at = if ctx.opts.use_state_after { p.upto } else { shown.last().map_or(p.upto, |e| e.stream - 1) };
            let Some(Some(g)) = self.groups.get(&(p.room_id.to_owned(), at)).and_then(|c| c.get().copied()) else {
                continue;
            };
            let state = self.rooms.state_at_group(g).await?;
            let heroes = self.summaries.get(p.room_id).map(|s| s.1.first.clone()).unwrap_or_default();
            want(p, shown, &state, &heroes, &mut wanted);
        }
        if !wanted.is_empty() {
            wanted.sort_unstable();
            wanted.dedup();
            pre.events =
                self.recent.events(&wanted).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e)).collect();
        }
        Ok(pre)
    }

    /// Loads state groups into the state cache, and the PDUs history visibility reads at each
    /// of them (its setting and the user's membership) into the PDU cache it reads from.
    async fn prefetch_states(&self, ctx: &Ctx<'_>, groups: &[i64]) -> Result<()> {
        self.rooms.preload_state_groups(groups).await?;
        let user_key = ("m.room.member".to_owned(), ctx.user.to_string());
        let hv_key = ("m.room.history_visibility".to_owned(), String::new());
        let mut pdus = Vec::new();
        for g in groups {
            let state = self.rooms.state_at_group(*g).await?;
            pdus.extend(state.get(&hv_key).cloned());
            pdus.extend(state.get(&user_key).cloned());
        }
        pdus.sort_unstable();
        pdus.dedup();
        self.rooms.cached_pdus(&pdus).await?;
        Ok(())
    }

    /// Remembers the summaries of the rooms whose summary is not remembered at their state
    /// group at `end` (member counts and the first members, read together).
    async fn prefetch_summaries(&self, full: &[&Plan<'_>], end: i64) -> Result<()> {
        let mut stale = Vec::new();
        for p in full {
            let Some(Some(g)) = self.groups.get(&(p.room_id.to_owned(), end)).and_then(|c| c.get().copied()) else {
                continue;
            };
            if self.summaries.get(p.room_id).is_none_or(|s| s.0 != g) {
                stale.push((p.room_id, g));
            }
        }
        if stale.is_empty() {
            return Ok(());
        }
        let rooms: Vec<&str> = stale.iter().map(|(r, _)| *r).collect();
        let (counts, mut members) =
            futures::try_join!(self.db.member_counts_of(&rooms), self.db.members_in_order_of(&rooms, 6))?;
        for (room, g) in stale {
            let (joined, invited) = counts.get(room).copied().unwrap_or_default();
            let (first, former) = members.remove(room).unwrap_or_default();
            let former = if first.len() <= 1 { former } else { Vec::new() };
            let entry = Arc::new(super::Summary { joined, invited, first, former });
            self.summaries.insert(room.to_owned(), (g, entry));
        }
        Ok(())
    }

    /// A room's entry with its events in client form.
    async fn render(&self, e: RoomEntry, txns: &HashMap<String, String>, state_key: &str) -> Result<Value> {
        let mut entry = e.entry;
        entry["timeline"]["events"] = Value::Array(self.rooms.client_events_with(&e.timeline, txns).await?);
        entry[state_key] = events_obj(self.rooms.client_events_with(&e.state, txns).await?);
        Ok(entry)
    }

    /// One joined room, or None when an incremental sync has nothing to say about it.
    async fn joined_room(
        &self,
        ctx: &Ctx<'_>,
        plan: &Plan<'_>,
        pre: Option<&Prefetched>,
        typing: Option<&Vec<String>>,
        receipts: Option<&Vec<ReceiptRow>>,
        account_data: Option<&Vec<AccountDataRow>>,
    ) -> Result<Option<RoomEntry>> {
        let first = pre.and_then(|p| p.timelines.get(plan.room_id)).map(Vec::as_slice);
        let tl = self.timeline_from(ctx, plan, first).await?;
        // A full-state room carries its summary; lazy-loading then also sends the heroes.
        let mut summary = if plan.full_state { Some(self.summary(ctx, plan).await?) } else { None };
        let heroes = summary.as_ref().map(|(_, h)| h.as_slice()).unwrap_or_default();
        let state = self.room_state(ctx, plan, &tl, heroes, pre).await?;

        let mut ephemeral = Vec::new();
        if let Some(users) = typing {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        if let Some(rows) = receipts.filter(|r| !r.is_empty()) {
            ephemeral.push(receipts::receipt_event(rows));
        }
        let account_data = account_data_events(ctx, account_data);
        if !plan.full_state
            && !plan.membership_changed
            && tl.events.is_empty()
            && state.is_empty()
            && ephemeral.is_empty()
            && account_data.is_empty()
        {
            return Ok(None);
        }
        let is_member = |e: &StoredEvent| e.pdu.fields.kind == TimelineEventType::RoomMember;
        if summary.is_none() && (plan.membership_changed || tl.events.iter().chain(&state).any(is_member)) {
            summary = Some(self.summary(ctx, plan).await?);
        }
        let counts = self.unread_count(ctx, plan).await?;
        let count_json = |c: Counts| json!({ "notification_count": c.notifications, "highlight_count": c.highlights });

        let mut room = json!({
            "timeline": { "limited": tl.limited, "prev_batch": tl.prev_batch },
            "ephemeral": events_obj(ephemeral),
            "account_data": events_obj(account_data),
        });
        if ctx.opts.filter.unread_thread_notifications {
            room["unread_notifications"] = count_json(counts.main);
            let threads: Map<String, Value> = counts.threads.iter().map(|(t, c)| (t.clone(), count_json(*c))).collect();
            if !threads.is_empty() {
                room["unread_thread_notifications"] = Value::Object(threads);
            }
        } else {
            room["unread_notifications"] = count_json(counts.total());
        }
        room["summary"] = summary.map(|(s, _)| s).unwrap_or_else(|| json!({}));
        Ok(Some(RoomEntry { entry: room, timeline: tl.events, state }))
    }

    /// The user's unread counts in the room (push actions after their read receipts, see
    /// `Db::unread_count`) up to the plan's end. Counts remembered from an earlier sync are
    /// carried forward while no receipt (of anyone: the receipts stream) and not the user's
    /// membership moved since, adding the push actions of the room's newer events that the
    /// room engine evaluated in this process (`PushEval::recent`): a message that wakes a
    /// thousand long-polls costs no count query. Otherwise they are counted in the database.
    pub(super) async fn unread_count(&self, ctx: &Ctx<'_>, plan: &Plan<'_>) -> Result<UnreadCounts> {
        let key = (ctx.user.to_string(), plan.room_id.to_owned());
        if let Some(u) = self.unread.get(&key)
            && u.receipts == ctx.now.receipts
            && u.member_stream == plan.member_stream
            && u.upto <= plan.upto
            && ctx.view.covers(u.upto)
            && plan.upto <= ctx.view.end
            && let Some(counts) = self.carry_forward(ctx, plan, &u)
        {
            if u.upto < plan.upto {
                self.unread.insert(key, super::Unread { upto: plan.upto, counts: Arc::new(counts.clone()), ..u });
            }
            return Ok(counts);
        }
        let counts =
            self.db.unread_count(plan.room_id, ctx.user.as_str(), plan.member_stream, plan.upto, UNREAD_CAP).await?;
        let entry = super::Unread {
            upto: plan.upto,
            receipts: ctx.now.receipts,
            member_stream: plan.member_stream,
            counts: Arc::new(counts.clone()),
        };
        self.unread.insert(key, entry);
        Ok(counts)
    }

    /// Remembered counts plus the push actions of the room's events in `(u.upto, plan.upto]`,
    /// if every one of them is known (None: count in the database).
    fn carry_forward(&self, ctx: &Ctx<'_>, plan: &Plan<'_>, u: &super::Unread) -> Option<UnreadCounts> {
        let mut counts = (*u.counts).clone();
        for e in ctx.view.events_in(plan.room_id, u.upto, plan.upto) {
            // A redaction takes its target's push actions away: count again.
            if e.pdu.fields.kind == TimelineEventType::RoomRedaction {
                return None;
            }
            if e.pdu.fields.sender == *ctx.user {
                continue;
            }
            let actions = self.rooms.push.recent(e.pdu.event_id.as_str())?;
            let Some(highlight) = actions.for_user(ctx.user.as_str()) else { continue };
            let c = if actions.thread.is_empty() {
                &mut counts.main
            } else {
                counts.threads.entry(actions.thread.clone()).or_default()
            };
            c.notifications += 1;
            c.highlights += i64::from(highlight);
        }
        counts.main.notifications = counts.main.notifications.min(UNREAD_CAP);
        counts.main.highlights = counts.main.highlights.min(counts.main.notifications);
        Some(counts)
    }

    /// One left (or banned) room: the timeline up to the leave, and state.
    async fn left_room(
        &self,
        ctx: &Ctx<'_>,
        plan: &Plan<'_>,
        account_data: Option<&Vec<AccountDataRow>>,
    ) -> Result<RoomEntry> {
        let tl = self.timeline(ctx, plan).await?;
        let state = self.room_state(ctx, plan, &tl, &[], None).await?;
        let entry = json!({
            "timeline": { "limited": tl.limited, "prev_batch": tl.prev_batch },
            "account_data": events_obj(account_data_events(ctx, account_data)),
        });
        Ok(RoomEntry { entry, timeline: tl.events, state })
    }

    /// The last `limit` visible, matching events of `(after, upto]`, oldest first.
    pub(super) async fn timeline(&self, ctx: &Ctx<'_>, plan: &Plan<'_>) -> Result<Timeline> {
        self.timeline_from(ctx, plan, None).await
    }

    /// [`Self::timeline`], given the room's newest `limit + 1` events up to the plan's end when
    /// [`Self::prefetch`] read them.
    pub(super) async fn timeline_from(
        &self,
        ctx: &Ctx<'_>,
        plan: &Plan<'_>,
        first: Option<&[StoredEvent]>,
    ) -> Result<Timeline> {
        let filter = &ctx.opts.filter.timeline;
        let limit = ctx.opts.filter.timeline_limit();
        // The first batch is just enough for a full timeline and the `limited` flag, which is what
        // it nearly always turns out to be; later ones are larger, for filtered or hidden events.
        let mut batch = limit as i64 + 1;
        let floor = plan.after.unwrap_or(0);
        let mut cursor = plan.upto;
        let mut vis = VisibilityMemo::new(ctx.user, Some(plan.membership));
        let mut events = Vec::new();
        let mut limited = false;
        let mut skipped = false;
        let mut oldest_scanned = None;
        'scan: for round in 0..MAX_SCAN_BATCHES {
            if cursor <= floor {
                break;
            }
            if round > 0 {
                batch = (2 * limit as i64 + 1).clamp(20, 1000);
            }
            // The recent-events log answers when it covers the whole window, and also when it
            // holds a full batch of the room's newest events: nothing older is then needed (an
            // initial sync of rooms with recent activity reads no timeline from the database).
            let from_log = (cursor <= ctx.view.end)
                .then(|| ctx.view.window(plan.room_id, floor.max(ctx.view.start), cursor, batch as usize))
                .filter(|rows| ctx.view.covers(floor) || rows.len() as i64 == batch);
            let prefetched = first.filter(|_| round == 0 && floor == 0 && cursor == plan.upto);
            let rows = if let Some(rows) = from_log {
                rows
            } else if let Some(rows) = prefetched {
                rows.to_vec()
            } else {
                self.db.room_events_in_range(plan.room_id, floor, cursor, batch).await?
            };
            let exhausted = (rows.len() as i64) < batch;
            for ev in rows {
                cursor = ev.stream - 1;
                oldest_scanned = Some(TopoToken::of(&ev));
                if !filter.matches(&ev) || !vis.check(&self.rooms, &ev).await? {
                    skipped = true;
                    continue;
                }
                if events.len() == limit {
                    limited = true;
                    break 'scan;
                }
                events.push(ev);
            }
            if exhausted {
                cursor = floor;
            }
        }
        // The scan stopped before the start of the window: there may be more.
        limited |= cursor > floor;
        events.reverse();
        let prev_batch = match (events.first(), oldest_scanned) {
            (Some(first), _) => TopoToken::of(first).to_token(),
            (None, Some(oldest)) if limited => oldest.to_token(),
            _ => SyncToken { events: plan.upto, ..ctx.now }.to_token(),
        };
        Ok(Timeline { events, limited, prev_batch, skipped })
    }

    /// The state events of a room's sync entry (see the module doc).
    async fn room_state(
        &self,
        ctx: &Ctx<'_>,
        plan: &Plan<'_>,
        tl: &Timeline,
        heroes: &[String],
        pre: Option<&Prefetched>,
    ) -> Result<Vec<StoredEvent>> {
        let after_state = ctx.opts.use_state_after;
        let lazy = ctx.opts.filter.lazy_load_members();
        let base_pos = if plan.full_state { None } else { plan.after };
        // A timeline holding every event of the window starts at the token's state.
        if base_pos.is_some() && !after_state && !lazy && !tl.limited && !tl.skipped {
            return Ok(Vec::new());
        }
        let at = if after_state {
            tl.events.last().map_or(plan.upto, |e| e.stream)
        } else {
            tl.events.first().map_or(plan.upto, |e| e.stream - 1)
        };
        let mut target_group = self.group_at(ctx, plan.room_id, at).await?;
        // A room joined over federation has no event of ours before the join (the state it was
        // joined with is stored as outliers): the state before the first timeline event is then
        // the state after it, less the event itself, which the timeline already carries.
        if target_group.is_none() && !after_state {
            target_group = tl.events.first().and_then(|first| first.state_group);
        }
        let target = match target_group {
            Some(g) => self.rooms.state_at_group(g).await?,
            None => Arc::new(StateIds::new()),
        };
        let base_group = match base_pos {
            Some(p) => Some(self.group_at(ctx, plan.room_id, p).await?),
            None => None,
        };
        let in_timeline: HashSet<&str> =
            if after_state { HashSet::new() } else { tl.events.iter().map(|e| e.pdu.event_id.as_str()).collect() };
        let senders: HashSet<&str> = tl.events.iter().map(|e| e.pdu.fields.sender.as_str()).collect();
        let mut ids = Vec::new();
        if base_group.is_some() && base_group == Some(target_group) {
            // The state did not change in the gap (the common case: messages only). Nothing to
            // send but, when lazy-loading, the timeline senders' member events.
            if lazy {
                for sender in &senders {
                    if let Some(id) = target.get(&("m.room.member".to_owned(), (*sender).to_owned()))
                        && !in_timeline.contains(id.as_str())
                    {
                        ids.push(id.clone());
                    }
                }
            }
        } else {
            let base = match base_group.flatten() {
                Some(g) => Some(self.rooms.state_at_group(g).await?),
                None if base_pos.is_some() => Some(Arc::new(StateIds::new())),
                None => None,
            };
            for ((kind, key), id, changed) in diff(&target, base.as_deref()) {
                if in_timeline.contains(id.as_str()) {
                    continue;
                }
                let wanted = if !lazy || kind != "m.room.member" {
                    changed
                } else if plan.full_state {
                    key == ctx.user.as_str() || senders.contains(key.as_str()) || heroes.iter().any(|h| h == key)
                } else {
                    changed || senders.contains(key.as_str())
                };
                if wanted {
                    ids.push(id.clone());
                }
            }
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = match pre {
            Some(pre) => self.prefetched_events(pre, ids).await?,
            None => self.recent.events(&ids).await?,
        };
        events.retain(|e| ctx.opts.filter.state.matches(e));
        events.sort_by_key(|e| e.stream);
        Ok(events)
    }

    /// Events by id, those the chunk's prefetch read taken from it (in the order asked, then
    /// the others).
    pub(super) async fn prefetched_events(&self, pre: &Prefetched, mut ids: Vec<String>) -> Result<Vec<StoredEvent>> {
        let mut events = Vec::with_capacity(ids.len());
        ids.retain(|id| match pre.events.get(id) {
            Some(ev) => {
                events.push(ev.clone());
                false
            }
            None => true,
        });
        if !ids.is_empty() {
            events.extend(self.recent.events(&ids).await?);
        }
        Ok(events)
    }

    /// The state group after the last event of a room at or before `pos`. Answers for committed
    /// positions never change, so the woken long-polls of one room share them: the first asks
    /// the database while the others (a thousand, after a message to a big room) wait for it.
    pub(super) async fn group_at(&self, ctx: &Ctx<'_>, room_id: &str, pos: i64) -> Result<Option<i64>> {
        // Only positions known to be committed: a client's token may name a future one.
        if pos > ctx.view.end {
            return self.db.state_group_at_stream(room_id, pos).await;
        }
        let cell = self.groups.get_or_insert_with((room_id.to_owned(), pos), Default::default);
        cell.get_or_try_init(|| self.db.state_group_at_stream(room_id, pos)).await.copied()
    }

    /// The state after the last event of a room at or before `pos`.
    async fn state_at_stream(&self, room_id: &str, pos: i64) -> Result<Arc<StateIds>> {
        match self.db.state_group_at_stream(room_id, pos).await? {
            Some(g) => self.rooms.state_at_group(g).await,
            None => Ok(Arc::new(StateIds::new())),
        }
    }

    /// The user's membership in a room as of stream position `pos`.
    async fn membership_at(&self, room_id: &str, user: &UserId, pos: i64) -> Result<Option<String>> {
        let state = self.state_at_stream(room_id, pos).await?;
        let Some(id) = state.get(&("m.room.member".to_owned(), user.to_string())) else { return Ok(None) };
        Ok(self.db.get_event(id).await?.and_then(|e| e.pdu.content()["membership"].as_str().map(str::to_owned)))
    }

    /// The room summary and its heroes. Member counts and the first members change only with
    /// the room's state, so they are remembered per state group of the room's last event.
    pub(super) async fn summary(&self, ctx: &Ctx<'_>, plan: &Plan<'_>) -> Result<(Value, Vec<String>)> {
        let (room_id, user) = (plan.room_id, ctx.user.as_str());
        // Only at the room's newest event does its state match the membership table read here.
        let group = match self.group_at(ctx, room_id, ctx.view.end).await? {
            Some(g) if plan.upto == ctx.now.events => Some(g),
            _ => None,
        };
        let known = group.and_then(|g| self.summaries.get(room_id).filter(|s| s.0 == g));
        let s = match known {
            Some((_, s)) => s,
            None => {
                let (joined, invited) = self.db.member_counts(room_id).await?;
                // One more than shown: the syncing user is left out below.
                let first = self.db.members_in_order(room_id, &["join", "invite"], 6).await?;
                let former = if first.len() <= 1 {
                    self.db.members_in_order(room_id, &["leave", "ban"], 6).await?
                } else {
                    Vec::new()
                };
                let entry = Arc::new(super::Summary { joined, invited, first, former });
                if let Some(g) = group {
                    self.summaries.insert(room_id.to_owned(), (g, entry.clone()));
                }
                entry
            }
        };
        let (joined, invited) = (s.joined, s.invited);
        let mut heroes: Vec<String> = s.first.iter().filter(|u| *u != user).take(5).cloned().collect();
        if heroes.is_empty() {
            heroes = s.former.iter().filter(|u| *u != user).take(5).cloned().collect();
        }
        let summary = json!({
            "m.heroes": heroes,
            "m.joined_member_count": joined,
            "m.invited_member_count": invited,
        });
        Ok((summary, heroes))
    }

    /// Stripped state for an invite or knock: what the membership event carries in `unsigned`
    /// (invites from other servers), else the room's current state, plus the membership event.
    pub(super) async fn stripped_state(&self, m: &MembershipRow, unsigned_key: &str) -> Result<Vec<Value>> {
        let member = self.db.get_event(&m.event_id).await?;
        let carried = member
            .as_ref()
            .and_then(|e| e.unsigned.as_ref())
            .and_then(|u| u.get(unsigned_key))
            .and_then(Value::as_array)
            .cloned();
        let mut events = match carried {
            Some(list) => list,
            None => {
                let current = self.db.current_state_ids(&m.room_id).await?;
                let mut ids: Vec<String> = current
                    .iter()
                    .filter(|((t, k), _)| k.is_empty() && STRIPPED_STATE_TYPES.contains(&t.as_str()))
                    .map(|(_, id)| id.clone())
                    .collect();
                // The inviter's (or knocker's room mate's) own membership, as Synapse sends it:
                // clients show "Bob invited you" from its display name and avatar.
                if let Some(ev) = &member
                    && ev.pdu.fields.state_key.as_deref() != Some(ev.pdu.fields.sender.as_str())
                    && let Some(id) = current.get(&("m.room.member".to_owned(), ev.pdu.fields.sender.to_string()))
                {
                    ids.push(id.clone());
                }
                self.db.get_events(&ids).await?.iter().map(stripped).collect()
            }
        };
        if let Some(ev) = &member {
            let mut own = stripped(ev);
            own["event_id"] = json!(ev.pdu.event_id);
            own["origin_server_ts"] = json!(ev.pdu.fields.origin_server_ts);
            events.push(own);
        }
        Ok(events)
    }
}

//! Push actions of each new event for the room's local members, evaluated once per user in the
//! transaction that stores the event (local events in the writer, remote ones in
//! `federated/inbound.rs`) and stored in `event_push_actions`: unread counts, `/notifications`
//! and the push sender read them, so no reader evaluates rules again.
//!
//! Cost on the hot path: the event is flattened once; the room's facts that push conditions
//! need (joined member count, local members' display names, power levels) are kept per room at
//! a state group and, when the state moves, updated from the member events that changed (only
//! those are read); each user's ruleset is parsed once and cached (`push::rules::RulesCache`).
//! What remains per event is one rule walk per local member.
//!
//! Rows: when most members share one outcome (a plain `notify` for an ordinary message), the
//! event gets one broadcast row (`user_id = ''`) for that outcome, and rows only for the members
//! whose outcome differs (a mention, a muted room); otherwise one row per notified member. A
//! message in a room of N members writes a few rows instead of N - 1 (issue 23).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ruma::events::TimelineEventType;
use ruma::push::{PushConditionPowerLevelsCtx, PushConditionRoomCtx};
use ruma::{OwnedUserId, UInt, UserId};

use super::Rooms;
use super::build::RoomCtx;
use super::read::PowerLevels;
use crate::error::Result;
use crate::events::pdu::Pdu;
use crate::push::rules::{self, PreparedEvent, RulesCache};
use crate::storage::push::PushActionRow;
use crate::storage::rooms::StateIds;

/// Rooms whose push facts are remembered at most (emptied when it would grow past this).
const MAX_ROOMS: usize = 10_000;

/// One member as the push conditions see them.
#[derive(Clone)]
struct Member {
    event_id: String,
    joined: bool,
    /// Local users only: their display name in the room (`""` without one).
    display_name: Option<String>,
}

/// What push conditions need of a room at one state.
struct PushRoom {
    /// The committed state group described (`None`: not to be reused as is).
    group: Option<i64>,
    members: HashMap<String, Member>,
    joined: u64,
    /// Local joined members and their display names, sorted by user id.
    local: Vec<(OwnedUserId, String)>,
    /// Event ids of the power levels and create events the power context was made from.
    power_from: (Option<String>, Option<String>),
    power: PushConditionPowerLevelsCtx,
}

/// Per-user entries of recently evaluated events kept at most (see [`PushEval::recent`]).
const MAX_RECENT_ENTRIES: usize = 262_144;

/// The push actions of one event, as evaluated.
#[derive(Debug)]
pub struct EventActions {
    /// `""` (main timeline) or the thread root.
    pub thread: String,
    /// With a broadcast row: whether it highlights, and the event's sender (whom it skips).
    common: Option<(bool, String)>,
    /// Users with their own outcome, sorted: None for "does not notify", else whether the
    /// event highlights for them.
    users: Vec<(String, Option<bool>)>,
}

impl EventActions {
    /// None when the event does not notify `user` (a member of its room), else whether it
    /// highlights.
    pub fn for_user(&self, user: &str) -> Option<bool> {
        match self.users.binary_search_by(|(u, _)| u.as_str().cmp(user)) {
            Ok(i) => self.users[i].1,
            Err(_) => self.common.as_ref().filter(|(_, sender)| sender != user).map(|(h, _)| *h),
        }
    }
}

/// Push actions of the events this process evaluated last, oldest first.
#[derive(Default)]
struct Recent {
    by_event: HashMap<String, Arc<EventActions>>,
    order: std::collections::VecDeque<String>,
    entries: usize,
}

/// The push evaluation state of the room engine.
#[derive(Default)]
pub struct PushEval {
    /// Users' parsed rulesets.
    pub rules: RulesCache,
    rooms: Mutex<HashMap<String, Arc<PushRoom>>>,
    recent: Mutex<Recent>,
}

impl PushEval {
    /// The push actions of a recently evaluated event (None: not evaluated by this process
    /// lately; the database has them). `/sync` carries unread counts forward with these.
    pub fn recent(&self, event_id: &str) -> Option<Arc<EventActions>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner()).by_event.get(event_id).cloned()
    }

    fn remember(&self, event_id: &str, thread: &str, rows: &[PushActionRow]) {
        let mut common = None;
        let mut users = Vec::with_capacity(rows.len());
        for r in rows {
            if r.user_id.is_empty() {
                common = Some((r.highlight, r.sender.clone()));
            } else {
                users.push((r.user_id.clone(), r.notify.then_some(r.highlight)));
            }
        }
        users.sort();
        let size = users.len() + 1;
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        while recent.entries + size > MAX_RECENT_ENTRIES
            && let Some(old) = recent.order.pop_front()
        {
            if let Some(a) = recent.by_event.remove(&old) {
                recent.entries -= a.users.len() + 1;
            }
        }
        let actions = Arc::new(EventActions { thread: thread.to_owned(), common, users });
        if recent.by_event.insert(event_id.to_owned(), actions).is_none() {
            recent.order.push_back(event_id.to_owned());
            recent.entries += size;
        }
    }
}

/// The outcome to store once for the members (broadcast row), if that writes fewer rows than
/// one row per notified member: the most common notifying outcome, when the members who do not
/// share it (each then needs a row of their own) are fewer than those who do, less one.
fn common_outcome(outcomes: &[Option<(bool, Option<String>)>]) -> Option<(bool, Option<String>)> {
    let mut groups: HashMap<&(bool, Option<String>), usize> = HashMap::new();
    for o in outcomes.iter().flatten() {
        *groups.entry(o).or_default() += 1;
    }
    let (best, shared) = groups.into_iter().max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(a.0)))?;
    let notified = outcomes.iter().flatten().count();
    // Rows: 1 + (members - shared) with a broadcast row, `notified` without.
    (1 + outcomes.len() - shared < notified).then(|| best.clone())
}

/// The thread an event belongs to: its root for `m.thread` relations, else `""` (main).
pub fn thread_of(pdu: &Pdu) -> String {
    let content = pdu.content();
    let rel = &content["m.relates_to"];
    if rel["rel_type"].as_str() == Some("m.thread")
        && let Some(root) = rel["event_id"].as_str()
    {
        return root.to_owned();
    }
    String::new()
}

impl Rooms {
    /// The push action rows of `pdu` (stored at `stream`) for the room's local members as of
    /// `state` (the state before the event, whose group is `group` when committed), and for a
    /// local user it invites.
    pub(crate) async fn push_actions(
        &self,
        ctx: &RoomCtx,
        state: &StateIds,
        group: Option<i64>,
        pdu: &Pdu,
        stream: i64,
    ) -> Result<Vec<PushActionRow>> {
        let room = self.push_room(ctx, state, group, pdu.room_id.as_str()).await?;
        let suffix = format!(":{}", self.server_name);
        let mut users: Vec<(&UserId, &str)> =
            room.local.iter().filter(|(u, _)| *u != pdu.fields.sender).map(|(u, n)| (u.as_ref(), n.as_str())).collect();
        // The joined members, whom a broadcast row may stand for, come first.
        let members = users.len();
        // An invited local user hears of the invite (`.m.rule.invite_for_me`).
        let invitee;
        if pdu.fields.kind == TimelineEventType::RoomMember
            && let Some(key) = pdu.fields.state_key.as_deref()
            && key.ends_with(&suffix)
            && pdu.content()["membership"].as_str() == Some("invite")
            && let Ok(user) = UserId::parse(key)
        {
            invitee = user;
            if !users.iter().any(|(u, _)| *u == invitee) {
                users.push((&invitee, ""));
            }
        }
        let thread = thread_of(pdu);
        if users.is_empty() {
            self.push.remember(pdu.event_id.as_str(), &thread, &[]);
            return Ok(Vec::new());
        }
        let now = crate::storage::now_ms();
        let event = PreparedEvent::new(&pdu.client_json(None, now))?;
        let all: Vec<&UserId> = users.iter().map(|(u, _)| *u).collect();
        let rulesets = self.push.rules.get_many(&self.db, &all).await?;
        let mut cond = PushConditionRoomCtx::new(
            pdu.room_id.clone(),
            UInt::try_from(room.joined).unwrap_or(UInt::MAX),
            users[0].0.to_owned(),
            String::new(),
        )
        .with_power_levels(room.power.clone());
        // Each user's outcome: None when the event does not notify them, else the highlight
        // flag and the stored actions.
        let mut outcomes = Vec::with_capacity(users.len());
        for ((user, name), ruleset) in users.iter().zip(&rulesets) {
            cond.user_id = (*user).to_owned();
            cond.user_display_name = (*name).to_owned();
            let actions = event.actions(ruleset, &cond).await;
            let (notify, highlight) = rules::notify_highlight(actions);
            outcomes.push(notify.then(|| (highlight, rules::stored_actions(actions))));
        }
        let common = common_outcome(&outcomes[..members]);
        let row = |user: String, outcome: Option<&(bool, Option<String>)>, sender: String| PushActionRow {
            user_id: user,
            room_id: pdu.room_id.to_string(),
            thread_id: thread.clone(),
            stream,
            event_id: pdu.event_id.to_string(),
            highlight: outcome.is_some_and(|o| o.0),
            actions: outcome.and_then(|o| o.1.clone()),
            notify: outcome.is_some(),
            sender,
            ts: now,
        };
        let mut rows = Vec::new();
        if let Some(common) = &common {
            rows.push(row(String::new(), Some(common), pdu.fields.sender.to_string()));
        }
        for (i, ((user, _), outcome)) in users.iter().zip(&outcomes).enumerate() {
            // Members sharing the broadcast outcome need no row; a user it does not stand for
            // (the invitee) gets one only when notified.
            let covered = common.is_some() && i < members;
            let own = if covered { outcome.as_ref() != common.as_ref() } else { outcome.is_some() };
            if own {
                rows.push(row(user.to_string(), outcome.as_ref(), String::new()));
            }
        }
        self.push.remember(pdu.event_id.as_str(), &thread, &rows);
        Ok(rows)
    }

    /// The room's push facts at `state`, from the remembered ones when they describe the same
    /// committed group, else updated from them with the member events that differ.
    async fn push_room(
        &self,
        ctx: &RoomCtx,
        state: &StateIds,
        group: Option<i64>,
        room_id: &str,
    ) -> Result<Arc<PushRoom>> {
        let known = self.push.rooms.lock().unwrap_or_else(|e| e.into_inner()).get(room_id).cloned();
        if let (Some(k), Some(g)) = (&known, group)
            && k.group == Some(g)
        {
            return Ok(k.clone());
        }
        let member_type = "m.room.member".to_owned();
        let entries =
            state.range((member_type.clone(), String::new())..).take_while(|((kind, _), _)| *kind == member_type);
        let mut members = HashMap::new();
        let mut missing = Vec::new();
        for ((_, user), id) in entries {
            match known.as_ref().and_then(|k| k.members.get(user)).filter(|m| &m.event_id == id) {
                Some(m) => {
                    members.insert(user.clone(), m.clone());
                }
                None => missing.push(id.clone()),
            }
        }
        let suffix = format!(":{}", self.server_name);
        for (id, pdu) in self.pdus_for(ctx, &missing).await? {
            let Some(user) = pdu.fields.state_key.clone() else { continue };
            let content = pdu.content();
            let joined = content["membership"].as_str() == Some("join");
            let display_name =
                user.ends_with(&suffix).then(|| content["displayname"].as_str().unwrap_or_default().to_owned());
            members.insert(user, Member { event_id: id, joined, display_name });
        }
        let joined = members.values().filter(|m| m.joined).count() as u64;
        let mut local: Vec<(OwnedUserId, String)> = members
            .iter()
            .filter(|(_, m)| m.joined)
            .filter_map(|(u, m)| Some((UserId::parse(u.as_str()).ok()?, m.display_name.clone()?)))
            .collect();
        local.sort();
        let pl_id = state.get(&("m.room.power_levels".to_owned(), String::new())).cloned();
        let create_id = state.get(&("m.room.create".to_owned(), String::new())).cloned();
        let power_from = (pl_id, create_id);
        let power = match known.as_ref().filter(|k| k.power_from == power_from) {
            Some(k) => k.power.clone(),
            None => {
                let ids: Vec<String> = [&power_from.0, &power_from.1].into_iter().flatten().cloned().collect();
                let pdus = self.pdus_for(ctx, &ids).await?;
                let get = |id: &Option<String>| id.as_ref().and_then(|i| pdus.get(i));
                PowerLevels::from_events(get(&power_from.0), get(&power_from.1), &ctx.rules).push_ctx()
            }
        };
        // Only a committed group may be trusted later: a batch that fails gives its group ids
        // out again. The entry is kept as the base of the next update either way.
        let committed = group.filter(|_| ctx.written.is_empty());
        let room = Arc::new(PushRoom { group: committed, members, joined, local, power_from, power });
        let mut rooms = self.push.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.len() >= MAX_ROOMS {
            rooms.clear();
        }
        rooms.insert(room_id.to_owned(), room.clone());
        Ok(room)
    }
}

/// Notifications per `/notifications` page when the client gives no `limit`, and at most.
const DEFAULT_NOTIFICATIONS: i64 = 50;
const MAX_NOTIFICATIONS: i64 = 1000;

/// One page of `/notifications`.
pub struct NotificationsPage {
    /// The notifications, newest first, in the spec's shape.
    pub notifications: Vec<serde_json::Value>,
    /// Where the next page starts, if there may be one.
    pub next_token: Option<String>,
}

impl Rooms {
    /// `GET /notifications`: the user's notifying events newest first, from `from` (a
    /// `next_token`), highlights only when `only` is `highlight`.
    pub async fn notifications(
        &self,
        user: &UserId,
        from: Option<&str>,
        limit: Option<i64>,
        only: Option<&str>,
    ) -> Result<NotificationsPage> {
        let before = match from {
            None => None,
            Some(t) => Some(t.parse::<i64>().map_err(|_| crate::error::Error::invalid_param("Invalid from token"))?),
        };
        let limit = limit.unwrap_or(DEFAULT_NOTIFICATIONS).clamp(1, MAX_NOTIFICATIONS);
        let only_highlight = only.is_some_and(|o| o.contains("highlight"));
        let rows = self.db.notifications(user.as_str(), before, limit, only_highlight).await?;
        let ids: Vec<String> = rows.iter().map(|(r, _)| r.event_id.clone()).collect();
        let events: HashMap<String, crate::storage::rooms::StoredEvent> =
            self.db.get_events(&ids).await?.into_iter().map(|e| (e.pdu.event_id.to_string(), e)).collect();
        let next_token = (rows.len() as i64 == limit).then(|| rows.last().map(|(r, _)| r.stream.to_string())).flatten();
        let mut notifications = Vec::with_capacity(rows.len());
        for (row, read) in rows {
            let Some(ev) = events.get(&row.event_id) else { continue };
            let event = self.client_events(std::slice::from_ref(ev), None).await?.pop().unwrap_or_default();
            notifications.push(serde_json::json!({
                "actions": rules::actions_from_stored(row.actions.as_deref()),
                "event": event,
                "read": read,
                "room_id": row.room_id,
                "ts": row.ts,
            }));
        }
        Ok(NotificationsPage { notifications, next_token })
    }
}

#[cfg(test)]
mod tests {
    use super::common_outcome;

    fn plain() -> Option<(bool, Option<String>)> {
        Some((false, None))
    }

    #[test]
    fn a_broadcast_row_only_when_it_writes_fewer_rows() {
        // One notified member: one row either way, so no broadcast row.
        assert_eq!(common_outcome(&[plain()]), None);
        // Two alike: one broadcast row instead of two.
        assert_eq!(common_outcome(&[plain(), plain()]), Some((false, None)));
        // Two alike and one silent: a broadcast row and the silent member's (2 = 2, no gain).
        assert_eq!(common_outcome(&[plain(), plain(), None]), None);
        // The most common outcome wins, here a highlight.
        let hl = Some((true, Some("[\"notify\"]".to_owned())));
        assert_eq!(common_outcome(&[hl.clone(), hl.clone(), hl.clone(), plain(), None]), hl);
        // Nobody notified: nothing to share.
        assert_eq!(common_outcome(&[None, None, None]), None);
    }
}

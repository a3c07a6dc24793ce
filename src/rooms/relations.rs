//! Relations (annotations, edits, replies, threads), thread listings, timestamp lookup and
//! room upgrades.

use std::collections::HashMap;

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::Rooms;
use super::build::NewEvent;
use super::create::CreateRoom;
use super::read::{Dir, TopoToken};
use crate::error::{Error, Result};
use crate::storage::rooms::StoredEvent;

/// What `/threads` tells of one thread, from the replies the user may see.
struct ThreadSummary {
    latest: String,
    latest_stream: i64,
    count: u64,
    participated: bool,
}

/// A page of relations.
pub struct RelationsPage {
    /// Child events, in the requested direction.
    pub events: Vec<StoredEvent>,
    /// Token to continue from.
    pub next: Option<String>,
}

/// State copied into the replacement room on upgrade (spec: "Server behaviour" of room upgrades).
const UPGRADE_COPIED_STATE: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl Rooms {
    /// Events relating to `parent`, optionally by relation and event type, visible to `user`.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        room_id: &RoomId,
        user: &UserId,
        parent: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<TopoToken>,
        to: Option<TopoToken>,
        dir: Dir,
        limit: usize,
    ) -> Result<RelationsPage> {
        // The parent must be visible to the user (and the room readable: not forgotten).
        self.event_for(room_id, user, parent).await?;
        let membership = self.require_read_access(room_id, user).await?.map(|a| a.0);
        let from = from.map(|f| (f.depth, f.stream));
        let rows = self
            .db
            .relations_batch(room_id.as_str(), parent, rel_type, event_type, from, dir.into(), limit as i64 + 1)
            .await?;
        let more = rows.len() > limit;
        let mut events = Vec::new();
        for ev in rows.into_iter().take(limit) {
            let pos = TopoToken::of(&ev);
            if to.is_some_and(|t| match dir {
                Dir::Forward => pos >= t,
                Dir::Backward => pos <= t,
            }) {
                return Ok(RelationsPage { events, next: None });
            }
            if self.can_see(user, &ev, membership.as_deref()).await? {
                events.push(ev);
            }
        }
        let next = if more { events.last().map(|e| TopoToken::of(e).to_token()) } else { None };
        Ok(RelationsPage { events, next })
    }

    /// Thread roots of a room the user may see, most recently active first; `from` is a stream
    /// position. Each root's summary (latest event, count, participation) and its place in the
    /// order are computed from the replies the user may see only: a departed or banned user
    /// learns nothing of the replies sent after they left, not even that there were some.
    pub async fn threads(
        &self,
        room_id: &RoomId,
        user: &UserId,
        participated_only: bool,
        from: Option<i64>,
        limit: usize,
    ) -> Result<(Vec<(StoredEvent, Value)>, Option<String>)> {
        let access = self.require_read_access(room_id, user).await?;
        let mut vis = super::read::VisibilityMemo::new(user, access.as_ref().map(|a| a.0.as_str()));
        // Per root, newest first: (latest visible reply, visible count, user participated).
        let mut summaries: Vec<(String, ThreadSummary)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for reply in self.db.thread_replies(room_id.as_str()).await? {
            let own = reply.own_member_of.as_deref() == Some(user.as_str());
            if !vis.check_at(self, reply.state_group, own).await? {
                continue;
            }
            // Replies come newest first, so a root's first visible reply is its latest.
            let i = *index.entry(reply.root.clone()).or_insert_with(|| {
                summaries.push((
                    reply.root.clone(),
                    ThreadSummary {
                        latest: reply.event_id.clone(),
                        latest_stream: reply.stream,
                        count: 0,
                        participated: false,
                    },
                ));
                summaries.len() - 1
            });
            let summary = &mut summaries[i].1;
            summary.count += 1;
            summary.participated |= reply.sender == user.as_str();
        }
        let mut out = Vec::new();
        let mut next = None;
        for (root_id, summary) in summaries {
            if from.is_some_and(|f| summary.latest_stream >= f) {
                continue;
            }
            if out.len() >= limit {
                next = Some(format!("{}", summary.latest_stream + 1));
                break;
            }
            let root = match self.event_for(room_id, user, &root_id).await {
                Ok(root) => root,
                Err(e) if e.errcode == "M_NOT_FOUND" => continue,
                Err(e) => return Err(e),
            };
            let participated = summary.participated || root.pdu.fields.sender == user;
            if participated_only && !participated {
                continue;
            }
            let latest_json = match self.db.get_event(&summary.latest).await? {
                Some(e) => self.client_event(&e, None).await?,
                None => Value::Null,
            };
            let summary = json!({ "m.thread": {
                "latest_event": latest_json,
                "count": summary.count,
                "current_user_participated": participated,
            }});
            out.push((root, summary));
        }
        Ok((out, next))
    }

    /// The event closest to `ts` in direction `dir` that the user may see.
    pub async fn event_at_timestamp(&self, room_id: &RoomId, user: &UserId, ts: i64, dir: Dir) -> Result<StoredEvent> {
        let membership = self.require_read_access(room_id, user).await?.map(|a| a.0);
        for ev in self.events_near_timestamp(room_id, ts, dir).await? {
            if self.can_see(user, &ev, membership.as_deref()).await? {
                return Ok(ev);
            }
        }
        Err(Error::not_found(format!("Unable to find event from {ts} in direction {dir:?}")))
    }

    /// The timeline event closest to `ts` in direction `dir`, for another server that is in
    /// the room (`/_matrix/federation/v1/timestamp_to_event`): as Synapse, no per-event
    /// visibility (a server that is in the room reads its timeline).
    pub async fn event_at_timestamp_for_server(&self, room_id: &RoomId, ts: i64, dir: Dir) -> Result<StoredEvent> {
        let found = self.events_near_timestamp(room_id, ts, dir).await?.into_iter().next();
        found.ok_or_else(|| Error::not_found(format!("Unable to find event from {ts} in direction {dir:?}")))
    }

    /// Up to 50 timeline events at or after (`Forward`) or at or before (`Backward`) `ts`,
    /// nearest first.
    async fn events_near_timestamp(&self, room_id: &RoomId, ts: i64, dir: Dir) -> Result<Vec<StoredEvent>> {
        self.db.events_near_timestamp(room_id.as_str(), ts, dir.into(), 50).await
    }

    /// Upgrades a room: a new room with the old room's important state, a tombstone in the old
    /// room, and the old room's power levels restricted so that only moderators can speak.
    pub async fn upgrade(
        &self,
        old: &RoomId,
        user: &UserId,
        new_version: &str,
        extra_creators: &[ruma::OwnedUserId],
    ) -> Result<OwnedRoomId> {
        crate::events::version::parse(new_version)?;
        self.require_joined(old, user).await?;
        let pl = self.power_levels(old).await?;
        if pl.user_level(user) < pl.event_level("m.room.tombstone", true) {
            return Err(Error::forbidden("You don't have permission to upgrade the room"));
        }
        let state = self.current_state(old).await?;
        let last = self.latest_position(old).await?;
        let mut predecessor = json!({ "room_id": old });
        if let Some(pos) = last
            && let Some(e) = self.db.event_at_stream(old.as_str(), pos.stream).await?
        {
            predecessor["event_id"] = json!(e.pdu.event_id);
        }
        let mut creation = Map::new();
        creation.insert("predecessor".into(), predecessor);
        if let Some(create) = state.get(&("m.room.create".to_owned(), String::new())) {
            let c = create.content();
            for key in ["m.federate", "type"] {
                if let Some(v) = c.get(key) {
                    creation.insert(key.into(), v.clone());
                }
            }
        }
        if !extra_creators.is_empty() {
            creation.insert("additional_creators".into(), json!(extra_creators));
        }
        let mut initial_state = Vec::new();
        for kind in UPGRADE_COPIED_STATE {
            if let Some(p) = state.get(&((*kind).to_owned(), String::new())) {
                initial_state.push(((*kind).to_owned(), String::new(), p.content()));
            }
        }
        let new_rules = crate::events::version::rules(&crate::events::version::parse(new_version)?)?;
        let mut pl_override: Option<Map<String, Value>> = state
            .get(&("m.room.power_levels".to_owned(), String::new()))
            .and_then(|p| p.content().as_object().cloned());
        if let Some(pl) = pl_override.as_mut() {
            let users = pl.entry("users").or_insert_with(|| json!({}));
            if new_rules.authorization.explicitly_privilege_room_creators {
                // In v12 rooms creators hold infinite power and must not be listed.
                if let Some(u) = users.as_object_mut() {
                    u.remove(user.as_str());
                    for c in extra_creators {
                        u.remove(c.as_str());
                    }
                }
            } else {
                users[user.as_str()] = json!(pl_level_max(users));
            }
        }
        let req = CreateRoom {
            preset: Some("private_chat".into()),
            initial_state,
            power_level_override: pl_override,
            creation_content: Some(creation),
            room_version: Some(new_version.to_owned()),
            ..Default::default()
        };
        let new_room = self.create_room(user, req).await?;
        let origin = super::Origin { user_id: user, txn: None };
        self.send(
            old,
            origin,
            NewEvent::state(
                "m.room.tombstone",
                "",
                json!({ "body": "This room has been replaced", "replacement_room": new_room }),
            ),
        )
        .await?;
        // Restrict the old room: only users above the default may send or invite.
        if let Some(p) = state.get(&("m.room.power_levels".to_owned(), String::new())) {
            let mut content = p.content();
            let users_default = content["users_default"].as_i64().unwrap_or(0);
            let restricted = 50.max(users_default + 1);
            content["events_default"] = json!(restricted);
            content["invite"] = json!(restricted);
            if let Err(e) = self.send(old, origin, NewEvent::state("m.room.power_levels", "", content)).await {
                tracing::warn!(room_id = %old, error = %e, "could not restrict the old room after upgrade");
            }
        }
        // Move local aliases and publication to the new room.
        for alias in self.db.room_aliases(old.as_str()).await? {
            self.db.move_alias(&alias, new_room.as_str()).await?;
        }
        if self.db.is_room_public(old.as_str()).await? {
            self.db.set_room_public(old.as_str(), false).await?;
            self.db.set_room_public(new_room.as_str(), true).await?;
        }
        Ok(new_room)
    }
}

fn pl_level_max(users: &Value) -> i64 {
    users.as_object().and_then(|u| u.values().filter_map(Value::as_i64).max()).unwrap_or(100).max(100)
}

//! Room summaries (the public room directory's chunk, `/room_summary`) and the space hierarchy.

use std::collections::{HashSet, VecDeque};

use ruma::{OwnedRoomId, RoomId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use crate::error::{Error, Result};

/// Largest number of rooms one hierarchy request walks.
const HIERARCHY_WALK_LIMIT: usize = 1000;

impl Rooms {
    /// The summary of a room from its current state (the `PublicRoomsChunk` shape).
    pub async fn summary(&self, room_id: &RoomId) -> Result<Value> {
        let current = self.current_state(room_id).await?;
        let get = |t: &str| current.get(&(t.to_owned(), String::new())).map(|p| p.content()).unwrap_or(Value::Null);
        let joined =
            current.iter().filter(|((t, _), p)| t == "m.room.member" && p.content()["membership"] == "join").count();
        let mut entry = json!({
            "room_id": room_id,
            "num_joined_members": joined,
            "world_readable": get("m.room.history_visibility")["history_visibility"] == "world_readable",
            "guest_can_join": get("m.room.guest_access")["guest_access"] == "can_join",
            "join_rule": get("m.room.join_rules")["join_rule"].as_str().unwrap_or("invite"),
        });
        for (key, t, field) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ] {
            if let Some(v) = get(t)[field].as_str() {
                entry[key] = json!(v);
            }
        }
        Ok(entry)
    }

    /// A page of the public room directory (`publicRooms`, client and federation API): the
    /// summaries of `rooms` matching `search` (in name, topic or alias), most members first,
    /// from the offset token `since` (`o<n>`).
    pub async fn public_rooms_page(
        &self,
        rooms: Vec<String>,
        limit: Option<usize>,
        since: Option<&str>,
        search: Option<&str>,
    ) -> Result<Value> {
        let mut chunk = Vec::new();
        for room in rooms {
            let Ok(room_id) = RoomId::parse(&room) else { continue };
            let entry = self.summary(&room_id).await?;
            if let Some(term) = search {
                let term = term.to_lowercase();
                let hay = format!("{} {} {}", entry["name"], entry["topic"], entry["canonical_alias"]).to_lowercase();
                if !hay.contains(&term) {
                    continue;
                }
            }
            chunk.push(entry);
        }
        chunk.sort_by(|a, b| {
            b["num_joined_members"]
                .as_u64()
                .cmp(&a["num_joined_members"].as_u64())
                .then(a["room_id"].as_str().cmp(&b["room_id"].as_str()))
        });
        let total = chunk.len();
        let offset: usize = since.and_then(|s| s.strip_prefix("o")).and_then(|s| s.parse().ok()).unwrap_or(0);
        let limit = limit.unwrap_or(usize::MAX).max(1);
        let page: Vec<Value> = chunk.into_iter().skip(offset).take(limit).collect();
        let mut res = json!({ "chunk": page, "total_room_count_estimate": total });
        if offset + limit < total {
            res["next_batch"] = json!(format!("o{}", offset + limit));
        }
        if offset > 0 {
            res["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
        }
        Ok(res)
    }

    /// Whether `user` may see a room's summary in a hierarchy: members and invitees, anyone for
    /// public, knockable or world-readable rooms, and members of a room that a restricted join
    /// rule allows.
    async fn may_preview(&self, room_id: &RoomId, user: &UserId, summary: &Value) -> Result<bool> {
        if matches!(self.membership_of(room_id, user).await?.as_deref(), Some("join") | Some("invite")) {
            return Ok(true);
        }
        if summary["world_readable"] == true {
            return Ok(true);
        }
        match summary["join_rule"].as_str() {
            Some("public") | Some("knock") => Ok(true),
            Some("restricted") | Some("knock_restricted") => {
                let rules = self.current_state_event(room_id, "m.room.join_rules", "").await?;
                for allow in
                    rules.map(|p| p.content()["allow"].clone()).and_then(|a| a.as_array().cloned()).unwrap_or_default()
                {
                    if let Some(r) = allow["room_id"].as_str().and_then(|r| RoomId::parse(r).ok())
                        && self.membership_of(&r, user).await?.as_deref() == Some("join")
                    {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// `GET /room_summary`: the summary of a room this server holds, with its version,
    /// encryption and (for restricted rooms) the rooms that allow joining, and the user's
    /// membership; None when the room is unknown here or `user` may not preview it. Without a
    /// user (unauthenticated) only rooms anyone may join or knock on, or read, are shown (spec).
    pub async fn room_summary(&self, room_id: &RoomId, user: Option<&UserId>) -> Result<Option<Value>> {
        let Some((version, _)) = self.db.get_room(room_id.as_str()).await? else { return Ok(None) };
        let mut summary = self.summary(room_id).await?;
        let open = summary["world_readable"] == true
            || matches!(summary["join_rule"].as_str(), Some("public" | "knock" | "knock_restricted"));
        let membership = match user {
            Some(u) => self.membership_of(room_id, u).await?,
            None => None,
        };
        let allowed = match (user, membership.as_deref()) {
            _ if open => true,
            (Some(_), Some("join" | "invite" | "knock")) => true,
            (Some(u), _) => self.may_preview(room_id, u, &summary).await?,
            (None, _) => false,
        };
        if !allowed {
            return Ok(None);
        }
        self.add_details(room_id, &version, &mut summary).await?;
        if let Some(m) = membership {
            summary["membership"] = json!(m);
        }
        Ok(Some(summary))
    }

    /// Adds the room version, the encryption algorithm and, for restricted rooms, the rooms
    /// whose members may join, to a summary.
    async fn add_details(&self, room_id: &RoomId, version: &str, summary: &mut Value) -> Result<()> {
        summary["room_version"] = json!(version);
        if let Some(alg) = self
            .current_state_event(room_id, "m.room.encryption", "")
            .await?
            .and_then(|e| e.content()["algorithm"].as_str().map(str::to_owned))
        {
            summary["encryption"] = json!(alg);
        }
        if matches!(summary["join_rule"].as_str(), Some("restricted" | "knock_restricted")) {
            let rules = self.current_state_event(room_id, "m.room.join_rules", "").await?;
            let allow =
                rules.map(|p| p.content()["allow"].clone()).and_then(|a| a.as_array().cloned()).unwrap_or_default();
            let rooms: Vec<&str> = allow.iter().filter_map(|a| a["room_id"].as_str()).collect();
            summary["allowed_room_ids"] = json!(rooms);
        }
        Ok(())
    }

    /// A space's `m.space.child` events (stripped, as `children_state`) in the spec's order
    /// ("Ordering of children"), without removed children (no `via`).
    async fn space_children(&self, room_id: &RoomId, suggested_only: bool) -> Result<Vec<(String, Value)>> {
        let state = self.current_state(room_id).await?;
        let mut children: Vec<(Option<String>, u64, String, Value)> = Vec::new();
        for ((t, key), pdu) in &state {
            if t != "m.space.child" {
                continue;
            }
            let content = pdu.content();
            if content["via"].as_array().is_none_or(|v| v.is_empty()) {
                continue;
            }
            if suggested_only && content["suggested"] != true {
                continue;
            }
            // Valid `order` strings first, then by timestamp.
            let order = content["order"]
                .as_str()
                .filter(|o| o.len() <= 50 && o.chars().all(|c| (' '..='~').contains(&c)))
                .map(str::to_owned);
            let ts = u64::from(pdu.fields.origin_server_ts.get());
            let event = json!({
                "type": "m.space.child",
                "state_key": key,
                "content": content,
                "sender": pdu.fields.sender,
                "origin_server_ts": pdu.fields.origin_server_ts,
            });
            children.push((order, ts, key.clone(), event));
        }
        children.sort_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1).then(a.2.cmp(&b.2)),
        });
        Ok(children.into_iter().map(|(_, _, key, event)| (key, event)).collect())
    }

    /// `GET /_matrix/federation/v1/hierarchy/{roomId}` for `server`: the space and its direct
    /// children, as far as that server may see them (rooms anyone may join or knock on, or read,
    /// restricted rooms with the rooms that allow joining, and rooms it has members in); None
    /// when the space is unknown here or hidden from it.
    pub async fn hierarchy_for_server(
        &self,
        root: &RoomId,
        server: &ruma::ServerName,
        suggested_only: bool,
    ) -> Result<Option<Value>> {
        let Some(mut room) = self.server_summary(root, server).await? else { return Ok(None) };
        let mut children_state = Vec::new();
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for (key, event) in self.space_children(root, suggested_only).await? {
            children_state.push(event);
            let Ok(child) = RoomId::parse(&key) else { continue };
            if !self.exists(&child).await? {
                continue;
            }
            match self.server_summary(&child, server).await? {
                Some(summary) => children.push(summary),
                None => inaccessible.push(child),
            }
        }
        room["children_state"] = Value::Array(children_state);
        Ok(Some(json!({ "room": room, "children": children, "inaccessible_children": inaccessible })))
    }

    /// A room's summary with its details, if `server` may see it.
    async fn server_summary(&self, room_id: &RoomId, server: &ruma::ServerName) -> Result<Option<Value>> {
        let Some((version, _)) = self.db.get_room(room_id.as_str()).await? else { return Ok(None) };
        let mut summary = self.summary(room_id).await?;
        let open = summary["world_readable"] == true
            || matches!(summary["join_rule"].as_str(), Some("public" | "knock" | "knock_restricted" | "restricted"));
        if !open && !self.remote_destinations(room_id.as_str()).await?.iter().any(|s| s == server.as_str()) {
            return Ok(None);
        }
        self.add_details(room_id, &version, &mut summary).await?;
        Ok(Some(summary))
    }

    /// The rooms of a space, breadth first from `root`, as the user may see them. `from` is the
    /// number of rooms already returned (the pagination token).
    pub async fn hierarchy(
        &self,
        root: &RoomId,
        user: &UserId,
        suggested_only: bool,
        max_depth: Option<usize>,
        limit: usize,
        from: usize,
    ) -> Result<(Vec<Value>, Option<String>)> {
        if !self.exists(root).await? {
            return Err(Error::not_found("Unknown room"));
        }
        let root_summary = self.summary(root).await?;
        if !self.may_preview(root, user, &root_summary).await? {
            return Err(Error::forbidden("You cannot see this space"));
        }
        let mut queue: VecDeque<(OwnedRoomId, usize)> = VecDeque::from([(root.to_owned(), 0)]);
        let mut seen: HashSet<OwnedRoomId> = HashSet::new();
        let mut visible = Vec::new();
        while let Some((room_id, depth)) = queue.pop_front() {
            if !seen.insert(room_id.clone()) || seen.len() > HIERARCHY_WALK_LIMIT {
                continue;
            }
            // Rooms this server does not hold (other servers' rooms) are not walked yet.
            if !self.exists(&room_id).await? {
                continue;
            }
            let mut summary = self.summary(&room_id).await?;
            if !self.may_preview(&room_id, user, &summary).await? {
                continue;
            }
            let children = self.space_children(&room_id, suggested_only).await?;
            let mut children_state = Vec::new();
            for (key, event) in children {
                children_state.push(event);
                if max_depth.is_none_or(|m| depth < m)
                    && let Ok(child) = RoomId::parse(&key)
                {
                    queue.push_back((child, depth + 1));
                }
            }
            summary["children_state"] = Value::Array(children_state);
            visible.push(summary);
        }
        let next = (visible.len() > from + limit).then(|| (from + limit).to_string());
        Ok((visible.into_iter().skip(from).take(limit).collect(), next))
    }
}

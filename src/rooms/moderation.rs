//! Room moderation by the server's admins (`/_synapse/admin/v1/rooms/{roomId}/block`,
//! `DELETE /_synapse/admin/v2/rooms/{roomId}`, `make_room_admin`, `/v1/join`): blocking,
//! shutting a room down (every local user leaves, aliases go, optionally a new room to move them
//! to) and purging its history. Every membership change is an ordinary event built by this
//! engine, so federation, sync and push see them as any other.

use std::sync::Arc;

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Value, json};

use super::Rooms;
use super::build::NewEvent;
use super::create::CreateRoom;
use crate::error::{Error, Result};

/// Synapse's defaults for the room users are moved to.
const DEFAULT_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

/// What `DELETE /_synapse/admin/v2/rooms/{roomId}` asked for.
#[derive(Debug, Clone, Default)]
pub struct DeleteRoom {
    /// A local user who creates a room the local members are moved to.
    pub new_room_user_id: Option<OwnedUserId>,
    /// Name of that room.
    pub room_name: Option<String>,
    /// First message in that room.
    pub message: Option<String>,
    /// Block the room for local users afterwards.
    pub block: bool,
    /// Delete the room's events and state from the database.
    pub purge: bool,
    /// Purge even if local users could not be made to leave.
    pub force_purge: bool,
}

/// The outcome of the shutdown part of a deletion (Synapse's `shutdown_room`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShutdownResult {
    /// Local users who left the room.
    pub kicked_users: Vec<String>,
    /// Local users who could not be made to leave.
    pub failed_to_kick_users: Vec<String>,
    /// The room's local aliases (moved to the new room if there is one, else deleted).
    pub local_aliases: Vec<String>,
    /// The room users were moved to.
    pub new_room_id: Option<String>,
}

/// Longest a purge waits for the federation sender to take the room's queued events.
const PURGE_WAIT_FOR_OUTBOX: std::time::Duration = std::time::Duration::from_secs(30);

/// Deletions older than this that still say they are running were interrupted.
const STALE_DELETION_MS: i64 = 60 * 60 * 1000;

impl Rooms {
    /// Refuses local users a room the admins blocked.
    pub async fn ensure_not_blocked(&self, room_id: &RoomId) -> Result<()> {
        if self.db.room_blocked_by(room_id.as_str()).await?.is_some() {
            return Err(Error::forbidden("This room has been blocked on this server"));
        }
        Ok(())
    }

    /// Starts deleting a room in the background; returns the `delete_id` to poll.
    pub async fn start_delete(self: &Arc<Self>, room_id: &RoomId, admin: &UserId, req: DeleteRoom) -> Result<String> {
        let exists = self.exists(room_id).await?;
        if !exists && !req.block {
            return Err(Error::not_found(format!("Unknown room id {room_id}")));
        }
        if let Some(user) = &req.new_room_user_id {
            if user.server_name() != self.server_name {
                return Err(Error::invalid_param("User must be our own"));
            }
            if self.db.get_user(user.as_str()).await?.is_none() {
                return Err(Error::not_found(format!("User {user} does not exist")));
            }
        }
        self.db.fail_stale_room_deletions(room_id.as_str(), STALE_DELETION_MS).await?;
        if self
            .db
            .room_deletions_of(room_id.as_str())
            .await?
            .iter()
            .any(|d| d.status == "shutting_down" || d.status == "purging")
        {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("History purge already in progress for {room_id}"),
            ));
        }
        let delete_id = crate::ids::random_alpha(16);
        let empty = serde_json::to_string(&ShutdownResult::default())?;
        self.db.insert_room_deletion(&delete_id, room_id.as_str(), "shutting_down", &empty).await?;
        let (rooms, room_id, admin, id) = (self.clone(), room_id.to_owned(), admin.to_owned(), delete_id.clone());
        tokio::spawn(async move {
            let mut result = ShutdownResult::default();
            let outcome = rooms.run_delete(&id, &room_id, &admin, &req, exists, &mut result).await;
            let json = serde_json::to_string(&result).unwrap_or_default();
            let (status, error) = match &outcome {
                Ok(()) => ("complete", None),
                Err(e) => ("failed", Some(e.message.as_str())),
            };
            if let Err(e) = outcome.as_ref() {
                tracing::warn!(%room_id, error = %e.message, "room deletion failed");
            } else {
                tracing::info!(%room_id, %admin, purge = req.purge, block = req.block, "room deleted");
            }
            if let Err(e) = rooms.db.update_room_deletion(&id, status, error, &json).await {
                tracing::warn!(%room_id, error = %e.message, "recording the end of a room deletion failed");
            }
        });
        Ok(delete_id)
    }

    async fn run_delete(
        &self,
        delete_id: &str,
        room_id: &RoomId,
        admin: &UserId,
        req: &DeleteRoom,
        exists: bool,
        result: &mut ShutdownResult,
    ) -> Result<()> {
        if req.block {
            self.db.set_room_blocked(room_id.as_str(), admin.as_str(), true).await?;
        }
        if !exists {
            return Ok(());
        }
        self.shutdown(room_id, req, result).await?;
        if req.purge {
            let json = serde_json::to_string(&result)?;
            self.db.update_room_deletion(delete_id, "purging", None, &json).await?;
            let suffix = format!(":{}", self.server_name);
            let still_in =
                self.db.members_with(room_id.as_str(), "join").await?.into_iter().any(|u| u.ends_with(&suffix));
            if still_in && !req.force_purge {
                return Err(Error::invalid_param("Local users are still in the room: not purging (force_purge)"));
            }
            // The members' leave events must reach the room's other servers: the sender packs
            // queued PDUs into transactions (which keep them) within moments, unless it is
            // stopped; so wait for that, a bounded time.
            let deadline = tokio::time::Instant::now() + PURGE_WAIT_FOR_OUTBOX;
            while self.db.room_pdus_queued(room_id.as_str()).await? > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let _lock = self.room_lock(room_id.as_str()).await;
            self.db.purge_room(room_id.as_str()).await?;
        }
        Ok(())
    }

    /// Makes every local user leave, moves them (and the aliases) to a new room if asked, and
    /// takes the room out of the directory.
    async fn shutdown(&self, room_id: &RoomId, req: &DeleteRoom, result: &mut ShutdownResult) -> Result<()> {
        let new_room = match &req.new_room_user_id {
            Some(owner) => {
                let create = CreateRoom {
                    preset: Some("public_chat".to_owned()),
                    name: Some(req.room_name.clone().unwrap_or_else(|| DEFAULT_ROOM_NAME.to_owned())),
                    // Users moved there may read but not speak (Synapse's `users_default: -10`).
                    power_level_override: json!({ "users_default": -10 }).as_object().cloned(),
                    ..Default::default()
                };
                let new_room = self.create_room(owner, create).await?;
                let message = req.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
                let ev = NewEvent::message("m.room.message", json!({ "msgtype": "m.text", "body": message }));
                self.send(&new_room, super::Origin { user_id: owner, txn: None }, ev).await?;
                result.new_room_id = Some(new_room.to_string());
                Some((owner.clone(), new_room))
            }
            None => None,
        };
        self.db.set_room_public(room_id.as_str(), false).await?;
        let suffix = format!(":{}", self.server_name);
        for membership in ["join", "invite", "knock"] {
            for member in self.db.members_with(room_id.as_str(), membership).await? {
                let Ok(user) = UserId::parse(&member) else { continue };
                if !member.ends_with(&suffix) {
                    continue;
                }
                match self.leave(room_id, &user, None).await {
                    Ok(()) => {
                        let _ = self.db.forget_room(room_id.as_str(), user.as_str()).await;
                        if membership == "join"
                            && let Some((owner, new_room)) = &new_room
                            && user != *owner
                            && let Err(e) = self.move_user(new_room, owner, &user).await
                        {
                            tracing::warn!(%user, error = %e.message, "could not move a user to the new room");
                        }
                        result.kicked_users.push(member);
                    }
                    Err(e) => {
                        tracing::warn!(%room_id, %user, error = %e.message, "could not remove a user from a room");
                        result.failed_to_kick_users.push(member);
                    }
                }
            }
        }
        for alias in self.db.room_aliases(room_id.as_str()).await? {
            self.db.delete_alias(&alias).await?;
            if let Some((owner, new_room)) = &new_room {
                self.db.insert_alias(&alias, new_room.as_str(), owner.as_str()).await?;
            }
            result.local_aliases.push(alias);
        }
        Ok(())
    }

    /// Invites a user to the room they are moved to and joins them.
    async fn move_user(&self, new_room: &RoomId, owner: &UserId, user: &UserId) -> Result<()> {
        self.invite(new_room, owner, user, None, false).await?;
        self.join(new_room, user, None).await?;
        Ok(())
    }

    /// Joins a local user to a room on an admin's behalf (`POST /_synapse/admin/v1/join`): public
    /// rooms directly, others after an invite from the admin, who must be joined.
    pub async fn admin_join(&self, room_id: &RoomId, admin: &UserId, user: &UserId) -> Result<()> {
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Room not found"));
        }
        if self.membership_of(room_id, user).await?.as_deref() == Some("join") {
            return Ok(());
        }
        let rule = self.current_state_event(room_id, "m.room.join_rules", "").await?;
        let public = rule.is_some_and(|r| r.content()["join_rule"] == "public");
        if !public {
            if self.membership_of(room_id, admin).await?.as_deref() != Some("join") {
                return Err(Error::forbidden("The room is not public and you are not in it to invite the user"));
            }
            if self.membership_of(room_id, user).await?.as_deref() != Some("invite") {
                self.invite(room_id, admin, user, None, false).await?;
            }
        }
        self.join(room_id, user, None).await?;
        Ok(())
    }

    /// Gives `user` the highest power level a local member of the room holds, set by that member
    /// (Synapse's `make_room_admin`); invites the user if the room is not public.
    pub async fn make_room_admin(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Room not found"));
        }
        let pl = self.power_levels(room_id).await?;
        let suffix = format!(":{}", self.server_name);
        let mut best: Option<(i64, OwnedUserId)> = None;
        for member in self.db.members_with(room_id.as_str(), "join").await? {
            let Ok(m) = UserId::parse(&member) else { continue };
            if !member.ends_with(&suffix) {
                continue;
            }
            let level = pl.user_level(&m);
            if best.as_ref().is_none_or(|(l, _)| level > *l) {
                best = Some((level, m));
            }
        }
        let needed = pl.event_level("m.room.power_levels", true);
        let Some((level, by)) = best.filter(|(l, _)| *l >= needed) else {
            return Err(Error::invalid_param("No local admin user in room"));
        };
        let event = self.current_state_event(room_id, "m.room.power_levels", "").await?;
        let mut content = event.map(|e| e.content()).unwrap_or_else(|| json!({}));
        if by != user {
            // A creator of a version 12 room has unlimited power, which no entry can grant:
            // the user gets the highest level anything in the room needs (at least 100).
            let level = if level == i64::MAX { highest_needed(&content) } else { level };
            if !content["users"].is_object() {
                content["users"] = json!({});
            }
            if pl.user_level(user) < level {
                content["users"][user.as_str()] = Value::from(level);
                let ev = NewEvent::state("m.room.power_levels", "", content);
                self.send(room_id, super::Origin { user_id: &by, txn: None }, ev).await?;
            }
        }
        let rule = self.current_state_event(room_id, "m.room.join_rules", "").await?;
        let public = rule.is_some_and(|r| r.content()["join_rule"] == "public");
        let membership = self.membership_of(room_id, user).await?;
        if !public
            && !matches!(membership.as_deref(), Some("join") | Some("invite"))
            && user.server_name() == self.server_name
        {
            self.invite(room_id, &by, user, None, false).await?;
        }
        Ok(())
    }

    /// Resolves a room id or a local alias of a path.
    pub async fn admin_resolve_room(&self, raw: &str) -> Result<OwnedRoomId> {
        if raw.starts_with('#') {
            let alias = ruma::RoomAliasId::parse(raw)
                .map_err(|e| Error::invalid_param(format!("Invalid room alias {raw:?}: {e}")))?;
            let (room, _) =
                self.db.get_alias(alias.as_str()).await?.ok_or_else(|| Error::not_found("Room alias not found"))?;
            return OwnedRoomId::try_from(room).map_err(Error::internal);
        }
        RoomId::parse(raw).map_err(|e| Error::invalid_param(format!("Invalid room ID {raw:?}: {e}")))
    }
}

/// The highest level any user or action has in a power levels content, at least 100.
fn highest_needed(content: &Value) -> i64 {
    let mut levels: Vec<i64> = vec![100];
    for key in ["users", "events"] {
        if let Some(map) = content[key].as_object() {
            levels.extend(map.values().filter_map(Value::as_i64));
        }
    }
    for key in ["ban", "kick", "redact", "invite", "state_default", "events_default"] {
        levels.extend(content[key].as_i64());
    }
    levels.into_iter().max().unwrap_or(100)
}

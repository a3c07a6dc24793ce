//! Membership changes by local users: join, leave, invite, kick, ban, unban, knock, forget,
//! and profile changes reflected into member events.

use ruma::{OwnedEventId, RoomId, UserId};
use serde_json::{Value, json};

use super::build::NewEvent;
use super::{Origin, Rooms};
use crate::error::{Error, Result};

/// The standing of a join under a room's restricted join rule (see
/// [`Rooms::restricted_join_check`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestrictedJoin {
    /// The join rule is not `restricted` / `knock_restricted`.
    NotRestricted,
    /// The user is joined or invited: no authorisation needed.
    AlreadyMember,
    /// The user is in an allowed room; this local user (joined, with invite power) authorises.
    Authorised(String),
    /// The user is in an allowed room, but no local user may authorise the join.
    NoLocalAuthoriser,
    /// The user is in none of the allowed rooms that we know (`knows_allowed_room`: whether we
    /// participate in any of them at all).
    NotAllowed {
        /// Whether this server participates in any allowed room.
        knows_allowed_room: bool,
    },
}

impl Rooms {
    fn member_event(target: &UserId, membership: &str, reason: Option<&str>) -> NewEvent {
        let mut content = json!({ "membership": membership });
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        NewEvent::state("m.room.member", target.as_str(), content)
    }

    async fn with_profile(&self, user: &UserId, mut ev: NewEvent) -> Result<NewEvent> {
        if let Some(p) = self.db.get_user(user.as_str()).await? {
            if let Some(d) = p.displayname {
                ev.content["displayname"] = json!(d);
            }
            if let Some(a) = p.avatar_url {
                ev.content["avatar_url"] = json!(a);
            }
        }
        Ok(ev)
    }

    /// Joins a local room. Restricted rooms are joined through a local member with invite power.
    pub async fn join(&self, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<OwnedEventId> {
        self.join_with_servers(room_id, user, reason, &[]).await
    }

    /// Joins a room; a room this server is not in is joined over federation through `servers`
    /// (or the room id's server, or the inviting server).
    pub async fn join_with_servers(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        servers: &[ruma::OwnedServerName],
    ) -> Result<OwnedEventId> {
        self.ensure_not_blocked(room_id).await?;
        let exists = self.exists(room_id).await?;
        // A room we know but in which no local user is joined any more: our copy is stale, so
        // join through a resident server as for an unknown room.
        let stale = exists && self.federation().is_some() && !self.local_server_joined(room_id).await?;
        // A restricted room where none of our users may authorise the join, or whose allowed
        // rooms we are not in: a resident server that can must (spec: "Restricted rooms").
        let needs_authoriser = exists
            && !stale
            && self.federation().is_some()
            && matches!(
                self.restricted_join_check(room_id, user).await?,
                RestrictedJoin::NoLocalAuthoriser | RestrictedJoin::NotAllowed { knows_allowed_room: false }
            )
            && !self.remote_destinations(room_id.as_str()).await?.is_empty();
        if !exists || stale || needs_authoriser {
            if self.federation().is_none() {
                return Err(Error::not_found("No known servers to join this room through"));
            }
            let mut servers = servers.to_vec();
            if stale || needs_authoriser {
                for s in self.remote_destinations(room_id.as_str()).await? {
                    if let Ok(s) = ruma::ServerName::parse(&s) {
                        servers.push(s);
                    }
                }
            }
            self.join_remote(room_id, user, &servers, reason).await?;
            let (_, event_id, _) = self
                .db
                .membership(room_id.as_str(), user.as_str())
                .await?
                .ok_or_else(|| Error::internal("membership missing after remote join"))?;
            return OwnedEventId::try_from(event_id).map_err(Error::internal);
        }
        let mut ev = self.with_profile(user, Self::member_event(user, "join", reason)).await?;
        // Joining again with an unchanged profile changes nothing; like Synapse, answer with the
        // existing join rather than growing the DAG.
        if let Some(current) = self.current_state_event(room_id, "m.room.member", user.as_str()).await?
            && current.content() == ev.content
        {
            return Ok(current.event_id);
        }
        if let Some(via) = self.restricted_join_authoriser(room_id, user).await? {
            ev.content["join_authorised_via_users_server"] = json!(via);
        }
        self.send(room_id, Origin { user_id: user, txn: None }, ev).await
    }

    /// Whether any local user is joined (this server participates in the room).
    pub async fn local_server_joined(&self, room_id: &RoomId) -> Result<bool> {
        let suffix = format!(":{}", self.server_name);
        Ok(self.db.members_with(room_id.as_str(), "join").await?.iter().any(|u| u.ends_with(&suffix)))
    }

    /// For restricted join rules: a local joined user with invite power, if the joiner is in
    /// one of the allowed rooms and not already invited or joined.
    async fn restricted_join_authoriser(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        Ok(match self.restricted_join_check(room_id, user).await? {
            RestrictedJoin::Authorised(via) => Some(via),
            _ => None,
        })
    }

    /// How a `restricted` / `knock_restricted` room's allow rules stand for `user`, as far as
    /// this server knows (spec: "Restricted rooms"): whether the user is in an allowed room
    /// (one we participate in), and which local user could authorise the join.
    pub(crate) async fn restricted_join_check(&self, room_id: &RoomId, user: &UserId) -> Result<RestrictedJoin> {
        let Some(rules) = self.current_state_event(room_id, "m.room.join_rules", "").await? else {
            return Ok(RestrictedJoin::NotRestricted);
        };
        let content = rules.content();
        let rule = content["join_rule"].as_str().unwrap_or("");
        if rule != "restricted" && rule != "knock_restricted" {
            return Ok(RestrictedJoin::NotRestricted);
        }
        if matches!(self.membership_of(room_id, user).await?.as_deref(), Some("join") | Some("invite")) {
            return Ok(RestrictedJoin::AlreadyMember);
        }
        let mut in_allowed_room = false;
        let mut knows_allowed_room = false;
        for a in content["allow"].as_array().cloned().unwrap_or_default() {
            if a["type"] != "m.room_membership" {
                continue;
            }
            let Some(r) = a["room_id"].as_str().and_then(|r| RoomId::parse(r).ok()) else { continue };
            if self.exists(&r).await? && self.local_server_joined(&r).await? {
                knows_allowed_room = true;
            }
            if self.membership_of(&r, user).await?.as_deref() == Some("join") {
                in_allowed_room = true;
                break;
            }
        }
        if !in_allowed_room {
            return Ok(RestrictedJoin::NotAllowed { knows_allowed_room });
        }
        let pl = self.power_levels(room_id).await?;
        let invite = pl.level("invite", 0);
        let suffix = format!(":{}", self.server_name);
        for member in self.db.members_with(room_id.as_str(), "join").await? {
            if member.ends_with(&suffix)
                && let Ok(uid) = UserId::parse(&member)
                && pl.user_level(&uid) >= invite
            {
                return Ok(RestrictedJoin::Authorised(member));
            }
        }
        Ok(RestrictedJoin::NoLocalAuthoriser)
    }

    /// Leaves (or rejects an invite, or withdraws a knock).
    pub async fn leave(&self, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
        if self.federation().is_some()
            && matches!(self.membership_of(room_id, user).await?.as_deref(), Some("invite") | Some("knock"))
            && (!self.exists(room_id).await? || !self.local_server_joined(room_id).await?)
        {
            // An invite to (or a knock on) a room on another server: reject (rescind) it there.
            return self.leave_remote(room_id, user).await;
        }
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        match self.membership_of(room_id, user).await?.as_deref() {
            Some("join") | Some("invite") | Some("knock") => {}
            Some("leave") => return Ok(()),
            _ => return Err(Error::forbidden(format!("User {user} is not in room {room_id}"))),
        }
        self.send(room_id, Origin { user_id: user, txn: None }, Self::member_event(user, "leave", reason)).await?;
        Ok(())
    }

    /// Invites a local user.
    pub async fn invite(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        reason: Option<&str>,
        is_direct: bool,
    ) -> Result<()> {
        let remote = target.server_name() != self.server_name;
        if remote && self.federation().is_none() {
            return Err(Error::forbidden("Federation is disabled: cannot invite users on other servers"));
        }
        let exists = remote || self.appservices().ensure_user(target.as_str()).await?;
        if !exists {
            return Err(Error::not_found(format!("User {target} does not exist")));
        }
        self.ensure_not_blocked(room_id).await?;
        self.require_joined(room_id, sender).await?;
        match self.membership_of(room_id, target).await?.as_deref() {
            Some("join") => return Err(Error::forbidden(format!("{target} is already in the room."))),
            Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room"))),
            _ => {}
        }
        let mut ev = self.with_profile(target, Self::member_event(target, "invite", reason)).await?;
        if is_direct {
            ev.content["is_direct"] = Value::Bool(true);
        }
        // Dropped unseen (`shadow_ban`); checked here so that remote invites are dropped too.
        if self.is_shadow_banned(sender).await? {
            return Ok(());
        }
        if remote {
            return self.invite_remote(room_id, sender, target, ev.content).await;
        }
        self.send(room_id, Origin { user_id: sender, txn: None }, ev).await?;
        Ok(())
    }

    /// Kicks a member (or revokes an invite).
    pub async fn kick(&self, room_id: &RoomId, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<()> {
        self.require_joined(room_id, sender).await?;
        match self.membership_of(room_id, target).await?.as_deref() {
            Some("join") | Some("invite") | Some("knock") => {}
            _ => return Err(Error::forbidden(format!("The target user {target} is not in the room"))),
        }
        self.send(room_id, Origin { user_id: sender, txn: None }, Self::member_event(target, "leave", reason)).await?;
        Ok(())
    }

    /// Bans a user.
    pub async fn ban(&self, room_id: &RoomId, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<()> {
        self.require_joined(room_id, sender).await?;
        self.send(room_id, Origin { user_id: sender, txn: None }, Self::member_event(target, "ban", reason)).await?;
        Ok(())
    }

    /// Lifts a ban.
    pub async fn unban(&self, room_id: &RoomId, sender: &UserId, target: &UserId, reason: Option<&str>) -> Result<()> {
        self.require_joined(room_id, sender).await?;
        if self.membership_of(room_id, target).await?.as_deref() != Some("ban") {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.send(room_id, Origin { user_id: sender, txn: None }, Self::member_event(target, "leave", reason)).await?;
        Ok(())
    }

    /// Knocks on a room; a room this server is not in is knocked on over federation through
    /// `servers` (or the room id's server).
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
        servers: &[ruma::OwnedServerName],
    ) -> Result<()> {
        let exists = self.exists(room_id).await?;
        if self.federation().is_some() && (!exists || !self.local_server_joined(room_id).await?) {
            return self.knock_remote(room_id, user, servers, reason).await;
        }
        if !exists {
            return Err(Error::not_found("No known servers to knock through"));
        }
        let ev = self.with_profile(user, Self::member_event(user, "knock", reason)).await?;
        self.send(room_id, Origin { user_id: user, txn: None }, ev).await?;
        Ok(())
    }

    /// Forgets a room the user has left.
    pub async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        match self.membership_of(room_id, user).await?.as_deref() {
            Some("join") | Some("invite") | Some("knock") => Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "User must leave the room before forgetting it",
            )),
            Some(_) => self.db.forget_room(room_id.as_str(), user.as_str()).await,
            None => Err(Error::not_found("Room not found")),
        }
    }

    /// Re-sends the user's join event in every joined room after a profile change.
    pub async fn propagate_profile(&self, user: &UserId) -> Result<()> {
        for room in self.db.rooms_with_membership(user.as_str(), "join").await? {
            let Ok(room_id) = RoomId::parse(&room) else { continue };
            let Some(current) = self.current_state_event(&room_id, "m.room.member", user.as_str()).await? else {
                continue;
            };
            let mut content = current.content();
            let profile = self.db.get_user(user.as_str()).await?;
            let (d, a) = profile.map(|p| (p.displayname, p.avatar_url)).unwrap_or_default();
            match d {
                Some(d) => content["displayname"] = json!(d),
                None => {
                    content.as_object_mut().map(|m| m.remove("displayname"));
                }
            }
            match a {
                Some(a) => content["avatar_url"] = json!(a),
                None => {
                    content.as_object_mut().map(|m| m.remove("avatar_url"));
                }
            }
            content.as_object_mut().map(|m| m.remove("reason"));
            let ev = NewEvent::state("m.room.member", user.as_str(), content);
            if let Err(e) = self.send(&room_id, Origin { user_id: user, txn: None }, ev).await {
                tracing::warn!(%room_id, %user, error = %e, "could not update member event after profile change");
            }
        }
        Ok(())
    }
}

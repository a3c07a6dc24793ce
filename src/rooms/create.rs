//! `createRoom`: the initial events of a room, written in one transaction.

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::Rooms;
use super::build::{Appended, NewEvent};
use crate::error::{Error, Result};

/// What a client asked for in `POST /createRoom`, already parsed by the API layer.
#[derive(Debug, Default)]
pub struct CreateRoom {
    /// `private_chat`, `trusted_private_chat` or `public_chat`.
    pub preset: Option<String>,
    /// Publish in the directory.
    pub public: bool,
    /// Local alias localpart.
    pub alias_localpart: Option<String>,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<OwnedUserId>,
    /// Extra initial state events: `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    /// Keys replacing the default power levels content.
    pub power_level_override: Option<Map<String, Value>>,
    /// Extra create-event content.
    pub creation_content: Option<Map<String, Value>>,
    /// Mark invites as direct chats.
    pub is_direct: bool,
    /// Room version (default from config).
    pub room_version: Option<String>,
}

fn invalid_state(e: Error) -> Error {
    if e.status == http::StatusCode::FORBIDDEN || e.errcode == "M_BAD_JSON" {
        Error::new(http::StatusCode::BAD_REQUEST, "M_INVALID_ROOM_STATE", e.message)
    } else {
        e
    }
}

impl Rooms {
    /// Creates a room and returns its id once every initial event is committed.
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        crate::storage::Db::while_holding_write_lock(self.create_room_locked(creator, req)).await
    }

    async fn create_room_locked(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        let version =
            crate::events::version::parse(req.room_version.as_deref().unwrap_or(&self.config.rooms.default_version))?;
        let alias = match &req.alias_localpart {
            Some(local) => {
                let alias = format!("#{local}:{}", self.server_name);
                ruma::RoomAliasId::parse(&alias).map_err(|e| Error::invalid_param(format!("Invalid alias: {e}")))?;
                if local.contains(':') || local.contains(char::is_whitespace) {
                    return Err(Error::invalid_param("Invalid characters in room alias"));
                }
                {
                    let appservices = self.appservices();
                    appservices.check_exclusive(crate::appservice::Kind::Aliases, &alias, Some(creator.as_str()))?;
                }
                if self.db.get_alias(&alias).await?.is_some() {
                    return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", "Room alias already taken"));
                }
                Some(alias)
            }
            None => None,
        };
        for (t, _, _) in &req.initial_state {
            if t == "m.room.create" || t == "m.room.member" {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_INVALID_ROOM_STATE",
                    format!("{t} cannot be set through initial_state"),
                ));
            }
        }
        let preset =
            req.preset.clone().unwrap_or_else(|| if req.public { "public_chat" } else { "private_chat" }.to_owned());
        let mut ctx = self.new_room_ctx(version.clone())?;
        let rules = ctx.rules.clone();
        let trusted = preset == "trusted_private_chat";

        // m.room.create
        let mut create = req.creation_content.clone().unwrap_or_default();
        create.insert("room_version".into(), json!(version.as_str()));
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(creator));
        }
        if trusted && rules.authorization.additional_room_creators && !req.invite.is_empty() {
            let mut extra: Vec<Value> =
                create.get("additional_creators").and_then(|v| v.as_array().cloned()).unwrap_or_default();
            extra.extend(req.invite.iter().map(|u| json!(u)));
            create.insert("additional_creators".into(), Value::Array(extra));
        }
        let mut events = vec![NewEvent::state("m.room.create", "", Value::Object(create))];

        let profile = self.db.get_user(creator.as_str()).await?;
        let mut member = json!({ "membership": "join" });
        if let Some(p) = &profile {
            if let Some(d) = &p.displayname {
                member["displayname"] = json!(d);
            }
            if let Some(a) = &p.avatar_url {
                member["avatar_url"] = json!(a);
            }
        }
        events.push(NewEvent::state("m.room.member", creator.as_str(), member));

        let mut users = Map::new();
        if !rules.authorization.explicitly_privilege_room_creators {
            users.insert(creator.to_string(), json!(100));
            if trusted {
                for u in &req.invite {
                    users.insert(u.to_string(), json!(100));
                }
            }
        }
        let mut pl = json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50,
                "m.room.power_levels": 100,
                "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50,
                "m.room.avatar": 50,
                "m.room.tombstone": 100,
                "m.room.server_acl": 100,
                "m.room.encryption": 100,
            },
            "events_default": 0,
            "state_default": 50,
            "ban": 50,
            "kick": 50,
            "redact": 50,
            "invite": if preset == "public_chat" { 50 } else { 0 },
            "notifications": { "room": 50 },
        });
        if let Some(over) = &req.power_level_override {
            for (k, v) in over {
                pl[k] = v.clone();
            }
        }
        events.push(NewEvent::state("m.room.power_levels", "", pl));
        if let Some(alias) = &alias {
            events.push(NewEvent::state("m.room.canonical_alias", "", json!({ "alias": alias })));
        }
        let join_rule = if preset == "public_chat" { "public" } else { "invite" };
        events.push(NewEvent::state("m.room.join_rules", "", json!({ "join_rule": join_rule })));
        events.push(NewEvent::state("m.room.history_visibility", "", json!({ "history_visibility": "shared" })));
        if preset != "public_chat" {
            events.push(NewEvent::state("m.room.guest_access", "", json!({ "guest_access": "can_join" })));
        }
        for (t, k, c) in &req.initial_state {
            events.push(NewEvent::state(t.clone(), k.clone(), c.clone()));
        }
        if let Some(name) = &req.name {
            events.push(NewEvent::state("m.room.name", "", json!({ "name": name })));
        }
        if let Some(topic) = &req.topic {
            events.push(NewEvent::state(
                "m.room.topic",
                "",
                json!({ "topic": topic, "m.topic": [{ "body": topic, "mimetype": "text/plain" }] }),
            ));
        }
        let mut invites = Vec::new();
        // A shadow-banned creator's room is made, its invites are dropped (`shadow_ban`).
        let invitees = if self.is_shadow_banned(creator).await? { &[][..] } else { &req.invite[..] };
        for invitee in invitees {
            if invitee.server_name() != self.server_name {
                return Err(Error::forbidden(
                    "Inviting users on other servers while creating a room is not supported yet",
                ));
            }
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            if let Some(d) = self.db.get_user(invitee.as_str()).await?.and_then(|p| p.displayname) {
                content["displayname"] = json!(d);
            }
            invites.push(NewEvent::state("m.room.member", invitee.as_str(), content));
        }
        events.extend(invites);

        let mut tx = self.db.begin_event_write().await?;
        tx.defer_rows();
        crate::storage::Db::reserve_stream_positions(&mut tx, "events", events.len() as i64).await?;
        let mut appended: Vec<Appended> = Vec::new();
        for (i, ev) in events.into_iter().enumerate() {
            // Events after the creator's own (preset, overrides, initial_state) map auth
            // failures to M_INVALID_ROOM_STATE, as Synapse does.
            let pdu = match self.build_event(&ctx, creator, ev).await {
                Ok(p) => p,
                Err(e) if i >= 2 => return Err(invalid_state(e)),
                Err(e) => return Err(e),
            };
            appended.push(self.persist_local(&mut tx, &mut ctx, pdu, None).await?);
        }
        let room_id = ctx.room_id.clone().ok_or_else(|| Error::internal("room id not set"))?;
        if req.public {
            self.db.publish_room_in(&mut tx, room_id.as_str()).await?;
        }
        if let Some(alias) = &alias
            && !self.db.insert_alias_in(&mut tx, alias, room_id.as_str(), creator.as_str()).await?
        {
            return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", "Room alias already taken"));
        }
        tx.commit().await?;
        self.after_commit(&ctx, &appended).await;
        tracing::info!(%room_id, %creator, version = %version, "room created");
        Ok(room_id)
    }

    /// Whether a room exists here.
    pub async fn exists(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.db.get_room(room_id.as_str()).await?.is_some())
    }
}

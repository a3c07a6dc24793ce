//! Third-party invites: inviting by email address through an identity server (spec: client-server
//! "Third-party invites", server-server "Third-party invites", identity service API v2).
//!
//! Three steps, each on the server that can check it:
//! - **Invite** ([`Rooms::invite_third_party`], the inviter's server): the address is looked up
//!   at the identity server the client names (`hash_details`, then `lookup` with the sha256
//!   pepper); a bound address is invited as that user. Otherwise the identity server stores the
//!   invitation (`store-invite`, with what it needs for its mail) and answers a token and its
//!   public keys, which become the room's `m.room.third_party_invite` state event (state key =
//!   token). The identity server is asked before anything is written: if it cannot be reached
//!   or refuses, the client gets the error and the room is unchanged.
//! - **Bind** ([`Rooms::on_bind_third_party`], `PUT /_matrix/federation/v1/3pid/onbind`, the
//!   invitee's server, called by the identity server without authentication): only invitations
//!   for one of our users are taken; each is exchanged where its sender lives, here or through
//!   `PUT /_matrix/federation/v1/exchange_third_party_invite/{roomId}` on the sender's server.
//! - **Exchange** ([`Rooms::exchange_third_party_invite`], the inviter's server): the signed
//!   block must carry a valid ed25519 signature by one of the public keys of the room's
//!   `m.room.third_party_invite` for its token, name the invited user, and the key must still be
//!   valid at its `key_validity_url` (a MUST of the spec for the server admitting the invitee).
//!   Then the `m.room.member` invite (sender: the original inviter, content:
//!   `third_party_invite` with the identity server's display name and the signed block) is built
//!   and authorised like any event (ruma's auth rules check the third-party invite again) and
//!   sent like an invite; the `m.room.third_party_invite` is then replaced by an empty one, as
//!   clients revoke it: the token was exchanged for the member event and is used up.
//!
//! Every request to an identity server goes through the SSRF guard (`[identity] ip_allowlist`,
//! or any address with `federation.allow_private_addresses`).

use ruma::serde::Base64;
use ruma::serde::base64::{Standard, UrlSafe};
use ruma::{OwnedUserId, RoomId, ServerName, UserId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::enc;
use crate::error::{Error, Result};
use crate::media::preview::Fetcher;
use crate::rooms::build::NewEvent;
use crate::rooms::{Origin, Rooms};
use crate::ssrf::IpRange;

/// Largest answer read from an identity server.
const MAX_ANSWER: usize = 64 * 1024;
/// Most invitations taken from one `onbind` call.
const MAX_BOUND_INVITES: usize = 100;

/// A client's `/invite` by third-party identifier.
#[derive(Debug, Clone)]
pub struct ThirdPartyInvitee<'a> {
    /// The identity server, `host[:port]`.
    pub id_server: &'a str,
    /// The client's access token for that identity server.
    pub id_access_token: &'a str,
    /// `email` (the only medium identity servers look up for invites).
    pub medium: &'a str,
    /// The address.
    pub address: &'a str,
}

/// The guarded HTTP client for identity servers, from `[identity]`.
pub fn identity_fetcher(config: &crate::config::Config) -> Fetcher {
    let ranges: Vec<IpRange> = if config.federation.allow_private_addresses {
        ["0.0.0.0/0", "::/0"].iter().filter_map(|r| IpRange::parse(r)).collect()
    } else {
        config.identity.ip_allowlist.iter().filter_map(|r| IpRange::parse(r)).collect()
    };
    Fetcher::new(ranges)
}

fn unreachable(id_server: &str, e: &Error) -> Error {
    Error::new(
        http::StatusCode::BAD_GATEWAY,
        "M_UNKNOWN",
        format!("The identity server {id_server} could not be reached: {}", e.message),
    )
}

impl Rooms {
    /// The base URL of an identity server named by a client (`host[:port]`, nothing else).
    fn identity_base(&self, id_server: &str) -> Result<String> {
        let valid = !id_server.is_empty()
            && id_server.len() <= 255
            && id_server.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !valid {
            return Err(Error::invalid_param("id_server must be a host name with an optional port"));
        }
        let scheme = if self.config.identity.plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{id_server}");
        url::Url::parse(&base)
            .map_err(|_| Error::invalid_param("id_server must be a host name with an optional port"))?;
        Ok(base)
    }

    /// One JSON request to an identity server; a failure to reach it is 502, a refusal 403
    /// naming the identity server's error (its 401 must not read as our token being bad).
    async fn identity_call(
        &self,
        id_server: &str,
        method: http::Method,
        url: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let (status, answer) = self
            .identity
            .request_json(method, url, token, body, MAX_ANSWER)
            .await
            .map_err(|e| unreachable(id_server, &e))?;
        match status {
            200..=299 if answer.is_object() => Ok(answer),
            200..=299 => Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The identity server {id_server} answered something that is not a JSON object"),
            )),
            400..=499 => Err(Error::forbidden(format!(
                "The identity server {id_server} refused the request ({status} {}: {})",
                answer["errcode"].as_str().unwrap_or("no errcode"),
                answer["error"].as_str().unwrap_or("")
            ))),
            _ => Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The identity server {id_server} failed ({status})"),
            )),
        }
    }

    /// The user bound to `medium`/`address` at the identity server, if any (identity service
    /// API v2: `hash_details`, then `lookup` hashed with the server's pepper, or in the clear
    /// when it offers only `none`).
    async fn identity_lookup(&self, invitee: &ThirdPartyInvitee<'_>, base: &str) -> Result<Option<OwnedUserId>> {
        let (id_server, token) = (invitee.id_server, Some(invitee.id_access_token));
        let details = self
            .identity_call(
                id_server,
                http::Method::GET,
                &format!("{base}/_matrix/identity/v2/hash_details"),
                token,
                None,
            )
            .await?;
        let algorithms: Vec<&str> =
            details["algorithms"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let pepper = details["lookup_pepper"].as_str().unwrap_or("");
        let (algorithm, key) = if algorithms.contains(&"sha256") && !pepper.is_empty() {
            let digest = Sha256::digest(format!("{} {} {pepper}", invitee.address, invitee.medium).as_bytes());
            ("sha256", Base64::<UrlSafe, _>::new(digest.to_vec()).encode())
        } else if algorithms.contains(&"none") {
            ("none", format!("{} {}", invitee.address, invitee.medium))
        } else {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_UNKNOWN",
                format!("The identity server {id_server} offers no lookup algorithm this server knows"),
            ));
        };
        let body = json!({ "addresses": [key], "algorithm": algorithm, "pepper": pepper });
        let answer = self
            .identity_call(
                id_server,
                http::Method::POST,
                &format!("{base}/_matrix/identity/v2/lookup"),
                token,
                Some(&body),
            )
            .await?;
        match answer["mappings"][&key].as_str() {
            None => Ok(None),
            Some(mxid) => UserId::parse(mxid).map(Some).map_err(|_| {
                Error::new(
                    http::StatusCode::BAD_GATEWAY,
                    "M_UNKNOWN",
                    format!("The identity server {id_server} answered an invalid user id"),
                )
            }),
        }
    }

    /// `POST /rooms/{roomId}/invite` with a third-party identifier: invites the bound user, or
    /// stores the invitation at the identity server and sends `m.room.third_party_invite`.
    pub async fn invite_third_party(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        invitee: ThirdPartyInvitee<'_>,
    ) -> Result<()> {
        if invitee.medium != "email" {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_THREEPID_MEDIUM_NOT_SUPPORTED",
                "Only email addresses can be invited",
            ));
        }
        if invitee.address.is_empty() || invitee.address.len() > 512 || !invitee.address.contains('@') {
            return Err(Error::invalid_param("address must be an email address"));
        }
        let address = invitee.address.to_lowercase();
        let invitee = ThirdPartyInvitee { address: &address, ..invitee };
        let base = self.identity_base(invitee.id_server)?;
        self.ensure_not_blocked(room_id).await?;
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        // Checked before the identity server is asked to store (and mail) anything.
        self.require_joined(room_id, sender).await?;
        let pl = self.power_levels(room_id).await?;
        if pl.user_level(sender) < pl.level("invite", 0) {
            return Err(Error::forbidden("You don't have permission to invite users to this room"));
        }
        if let Some(user) = self.identity_lookup(&invitee, &base).await? {
            return self.invite(room_id, sender, &user, None, false).await;
        }
        if self.is_shadow_banned(sender).await? {
            return Ok(());
        }
        let state = |kind: &'static str| async move {
            Ok::<_, Error>(self.current_state_event(room_id, kind, "").await?.map(|p| p.content()))
        };
        let name = state("m.room.name").await?.and_then(|c| c["name"].as_str().map(str::to_owned));
        let avatar = state("m.room.avatar").await?.and_then(|c| c["url"].as_str().map(str::to_owned));
        let alias = state("m.room.canonical_alias").await?.and_then(|c| c["alias"].as_str().map(str::to_owned));
        let join_rule = state("m.room.join_rules").await?.and_then(|c| c["join_rule"].as_str().map(str::to_owned));
        let room_type = state("m.room.create").await?.and_then(|c| c["type"].as_str().map(str::to_owned));
        let profile = self.db.get_user(sender.as_str()).await?;
        let (display_name, avatar_url) = profile.map(|p| (p.displayname, p.avatar_url)).unwrap_or_default();
        // What Synapse sends: the identity server words its invitation mail with it.
        let body = json!({
            "medium": invitee.medium,
            "address": invitee.address,
            "room_id": room_id,
            "sender": sender,
            "room_alias": alias.unwrap_or_default(),
            "room_avatar_url": avatar.unwrap_or_default(),
            "room_join_rules": join_rule.unwrap_or_default(),
            "room_name": name.unwrap_or_default(),
            "room_type": room_type.unwrap_or_default(),
            "sender_display_name": display_name.unwrap_or_default(),
            "sender_avatar_url": avatar_url.unwrap_or_default(),
        });
        let stored = self
            .identity_call(
                invitee.id_server,
                http::Method::POST,
                &format!("{base}/_matrix/identity/v2/store-invite"),
                Some(invitee.id_access_token),
                Some(&body),
            )
            .await?;
        let content = invite_content(invitee.id_server, &stored)?;
        let token = stored["token"].as_str().unwrap_or_default();
        self.send(
            room_id,
            Origin { user_id: sender, txn: None },
            NewEvent::state("m.room.third_party_invite", token, content),
        )
        .await?;
        Ok(())
    }

    /// `PUT /_matrix/federation/v1/3pid/onbind`: an identity server says that `mxid` bound an
    /// address with pending invitations. Each invitation for that user (one of ours) is
    /// exchanged on its sender's server; the first failure is answered after all were tried.
    pub async fn on_bind_third_party(&self, body: &Value) -> Result<()> {
        let mxid = body["mxid"].as_str().ok_or_else(|| Error::missing_param("mxid is required"))?;
        let mxid = UserId::parse(mxid).map_err(|_| Error::invalid_param("mxid is not a user id"))?;
        if mxid.server_name() != self.server_name || self.db.get_user(mxid.as_str()).await?.is_none() {
            return Err(Error::forbidden(format!("{mxid} is not a user of this server")));
        }
        let invites = body["invites"].as_array().ok_or_else(|| Error::missing_param("invites is required"))?;
        if invites.len() > MAX_BOUND_INVITES {
            return Err(Error::invalid_param(format!("At most {MAX_BOUND_INVITES} invites at once")));
        }
        let mut first_error = None;
        for invite in invites {
            if let Err(e) = self.bind_one(&mxid, invite).await {
                tracing::info!(%mxid, room_id = %invite["room_id"], error = %e.message, "third-party invite not exchanged");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn bind_one(&self, mxid: &UserId, invite: &Value) -> Result<()> {
        if invite["mxid"].as_str() != Some(mxid.as_str()) || invite["signed"]["mxid"].as_str() != Some(mxid.as_str()) {
            return Err(Error::forbidden("The invitation is not for the user who bound the address"));
        }
        let room_id = invite["room_id"].as_str().and_then(|r| RoomId::parse(r).ok());
        let room_id = room_id.ok_or_else(|| Error::invalid_param("room_id is not a room id"))?;
        let sender = invite["sender"].as_str().and_then(|s| UserId::parse(s).ok());
        let sender = sender.ok_or_else(|| Error::invalid_param("sender is not a user id"))?;
        if !invite["signed"].is_object() {
            return Err(Error::bad_json("signed must be an object"));
        }
        let partial = json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender,
            "state_key": mxid,
            "content": { "membership": "invite", "third_party_invite": { "signed": invite["signed"] } },
        });
        if sender.server_name() == self.server_name {
            return self.exchange_third_party_invite(None, &room_id, &partial).await;
        }
        let path = format!("/_matrix/federation/v1/exchange_third_party_invite/{}", enc(room_id.as_str()));
        self.fed()?.request(sender.server_name(), http::Method::PUT, &path, Some(&partial)).await?;
        Ok(())
    }

    /// Turns a signed third-party invitation into an `m.room.member` invite (see the module
    /// doc). `origin` is the server asking (`None`: this one, for its own user).
    pub async fn exchange_third_party_invite(
        &self,
        origin: Option<&ServerName>,
        room_id: &RoomId,
        partial: &Value,
    ) -> Result<()> {
        if partial["type"] != "m.room.member" || partial["content"]["membership"] != "invite" {
            return Err(Error::bad_json("The event must be an m.room.member invite"));
        }
        if partial["room_id"].as_str().is_some_and(|r| r != room_id.as_str()) {
            return Err(Error::bad_json("room_id does not match the path"));
        }
        let sender = partial["sender"].as_str().and_then(|s| UserId::parse(s).ok());
        let sender = sender.ok_or_else(|| Error::bad_json("sender must be a user id"))?;
        let target = partial["state_key"].as_str().and_then(|s| UserId::parse(s).ok());
        let target = target.ok_or_else(|| Error::bad_json("state_key must be a user id"))?;
        if sender.server_name() != self.server_name {
            return Err(Error::forbidden(format!("{sender} is not a user of this server")));
        }
        if origin.is_some_and(|o| o != target.server_name()) {
            return Err(Error::forbidden("A server can exchange invitations for its own users only"));
        }
        if !self.exists(room_id).await? {
            return Err(Error::not_found("Unknown room"));
        }
        let signed = &partial["content"]["third_party_invite"]["signed"];
        let token = signed["token"].as_str().ok_or_else(|| Error::bad_json("signed.token is required"))?;
        if signed["mxid"].as_str() != Some(target.as_str()) {
            return Err(Error::forbidden("The signed invitation names another user"));
        }
        let invite = self.current_state_event(room_id, "m.room.third_party_invite", token).await?;
        let invite = invite.ok_or_else(|| Error::forbidden("No third-party invitation with this token in the room"))?;
        let invite_content = invite.content();
        if invite.fields.sender != sender {
            return Err(Error::forbidden("The invitation was not sent by this sender"));
        }
        match self.membership_of(room_id, &target).await?.as_deref() {
            Some("join") => return Err(Error::forbidden(format!("{target} is already in the room"))),
            Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room"))),
            _ => {}
        }
        let key = verified_key(&invite_content, signed)
            .ok_or_else(|| Error::forbidden("No signature of the invitation matches the invitation's public keys"))?;
        self.check_key_validity(&key).await?;
        let content = json!({
            "membership": "invite",
            "third_party_invite": { "display_name": invite_content["display_name"], "signed": signed },
        });
        if target.server_name() == self.server_name {
            let ev = NewEvent::state("m.room.member", target.as_str(), content);
            self.send(room_id, Origin { user_id: &sender, txn: None }, ev).await?;
        } else {
            self.invite_remote(room_id, &sender, &target, content).await?;
        }
        // The token was exchanged for the member event: revoke it as clients do (an empty
        // `m.room.third_party_invite`), so that it cannot invite again. The inviter may have
        // lost the power to; the invite stands either way.
        let revoke = NewEvent::state("m.room.third_party_invite", token, json!({}));
        if let Err(e) = self.send(room_id, Origin { user_id: &sender, txn: None }, revoke).await {
            tracing::info!(%room_id, token, error = %e.message, "could not revoke an exchanged third-party invite");
        }
        Ok(())
    }

    /// The spec's MUST for the server admitting a third-party invitee: the identity server's
    /// key is still valid (`GET key_validity_url?public_key=…` answers `valid: true`).
    async fn check_key_validity(&self, key: &SigningKey) -> Result<()> {
        if key.validity_url.is_empty() {
            return Ok(());
        }
        let mut url = url::Url::parse(&key.validity_url)
            .map_err(|_| Error::forbidden("The invitation's key_validity_url is not a URL"))?;
        url.query_pairs_mut().append_pair("public_key", &key.public_key);
        let host = url.host_str().unwrap_or("").to_owned();
        let answer = self.identity_call(&host, http::Method::GET, url.as_str(), None, None).await?;
        if answer["valid"] == true {
            Ok(())
        } else {
            Err(Error::forbidden("The identity server's key of this invitation is no longer valid"))
        }
    }
}

/// A public key of an `m.room.third_party_invite` and where its validity is checked.
#[derive(Debug, Clone)]
struct SigningKey {
    public_key: String,
    validity_url: String,
}

/// The content of `m.room.third_party_invite` from a `store-invite` answer.
fn invite_content(id_server: &str, stored: &Value) -> Result<Value> {
    let bad = |what: &str| {
        Error::new(
            http::StatusCode::BAD_GATEWAY,
            "M_UNKNOWN",
            format!("The identity server {id_server} answered store-invite without a valid {what}"),
        )
    };
    stored["token"].as_str().filter(|t| !t.is_empty() && t.len() <= 255).ok_or_else(|| bad("token"))?;
    let mut keys = Vec::new();
    for k in stored["public_keys"].as_array().into_iter().flatten() {
        let (Some(public_key), Some(url)) = (k["public_key"].as_str(), k["key_validity_url"].as_str()) else {
            return Err(bad("public_keys"));
        };
        if Base64::<Standard, Vec<u8>>::parse(public_key).ok().map(|b| b.as_bytes().len()) != Some(32) {
            return Err(bad("public key"));
        }
        keys.push(json!({ "public_key": public_key, "key_validity_url": url }));
    }
    let first = keys.first().cloned().ok_or_else(|| bad("public_keys"))?;
    let display_name = stored["display_name"].as_str().ok_or_else(|| bad("display_name"))?;
    Ok(json!({
        "display_name": display_name,
        "key_validity_url": first["key_validity_url"],
        "public_key": first["public_key"],
        "public_keys": keys,
    }))
}

/// The key of `invite` (an `m.room.third_party_invite`'s content: `public_keys` and the older
/// `public_key`) whose ed25519 signature of `signed` verifies, if any.
fn verified_key(invite: &Value, signed: &Value) -> Option<SigningKey> {
    let mut keys: Vec<SigningKey> = invite["public_keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| {
            Some(SigningKey {
                public_key: k["public_key"].as_str()?.to_owned(),
                validity_url: k["key_validity_url"].as_str().unwrap_or("").to_owned(),
            })
        })
        .collect();
    if let Some(k) = invite["public_key"].as_str() {
        keys.push(SigningKey {
            public_key: k.to_owned(),
            validity_url: invite["key_validity_url"].as_str().unwrap_or("").to_owned(),
        });
    }
    let object: ruma::CanonicalJsonObject = serde_json::from_value(signed.clone()).ok()?;
    let message = ruma::signatures::to_canonical_json_string_for_signing(&object).ok()?;
    for by_entity in signed["signatures"].as_object()?.values() {
        for (key_id, signature) in by_entity.as_object()? {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            let Some(signature) = signature.as_str().and_then(|s| Base64::<Standard, Vec<u8>>::parse(s).ok()) else {
                continue;
            };
            for key in &keys {
                let Ok(public) = Base64::<Standard, Vec<u8>>::parse(&key.public_key) else { continue };
                if ruma::signatures::verify_canonical_json_bytes(
                    &ruma::SigningKeyAlgorithm::Ed25519,
                    public.as_bytes(),
                    signature.as_bytes(),
                    message.as_bytes(),
                )
                .is_ok()
                {
                    return Some(key.clone());
                }
            }
        }
    }
    None
}

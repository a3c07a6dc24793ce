//! Application services: bridges and bots registered by file (issue #20).
//!
//! This module owns:
//! - the **registrations** (`registration.rs`): parsed and cross-checked at start-up, all or
//!   nothing, and the appservices' sender users, created on first start and owned by their
//!   appservice (`users.appservice_id`);
//! - **namespaces**: who may masquerade as whom (`?user_id=` through the one extractor), which
//!   names ordinary users may not take (`M_EXCLUSIVE`), which events an appservice is sent;
//! - the **outbox** written in the event's own write transaction ([`Appservices::queue_event`],
//!   called by the room engine for local and federated events; ephemeral data from the sync
//!   streams) and the **durable transaction sender** (`crate::delivery::appservice`);
//! - the **queries** made of appservices before answering "not found" (users, aliases), the
//!   **ping**, and the **third-party** lookups.
//!
//! Appservice URLs come from the operator's registration files, not from users, so requests to
//! them do not go through the SSRF guard (bridges usually listen on loopback or a private
//! network).

pub mod registration;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::{OwnedUserId, UserId};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::pdu::Pdu;
use crate::storage::{Db, WriteTx};
pub use registration::{Kind, Registration};

/// The registered appservices and the means to reach them. Cheap to share (`Arc`).
pub struct Appservices {
    pub(crate) db: Db,
    pub(crate) config: Arc<Config>,
    regs: Vec<Arc<Registration>>,
    /// SHA-256 of each `as_token`: a lookup by hash compares no secret byte by byte.
    by_token: HashMap<[u8; 32], Arc<Registration>>,
    http: reqwest::Client,
    /// Per appservice: wakes its sender out of a retry wait (the appservice showed signs of
    /// life: it called us, or answered a ping).
    kicks: HashMap<String, Arc<Notify>>,
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// How a call to an appservice went wrong.
#[derive(Debug)]
pub enum CallError {
    /// The registration has no `url`.
    NoUrl,
    /// No answer in time.
    Timeout,
    /// No connection, or a broken one.
    Connection(String),
    /// An answer other than 2xx.
    Status(u16, String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NoUrl => write!(f, "no url configured"),
            CallError::Timeout => write!(f, "timed out"),
            CallError::Connection(e) => write!(f, "connection failed: {e}"),
            CallError::Status(s, _) => write!(f, "answered {s}"),
        }
    }
}

impl Appservices {
    /// Loads the registration files, refuses sender users that are ordinary users, and creates
    /// the senders that do not exist yet. Every error names the file and the field.
    pub async fn load(db: Db, config: Arc<Config>) -> anyhow::Result<Arc<Self>> {
        let regs = registration::load(&config.appservice.registration_files, &config.server_name)
            .map_err(anyhow::Error::msg)?;
        for reg in &regs {
            match db.user_appservice(reg.sender.as_str()).await? {
                Some(Some(owner)) if owner == reg.id => {}
                Some(owner) => anyhow::bail!(
                    "appservice registration {}: field `sender_localpart`: {} is already a registered user{}",
                    reg.file.display(),
                    reg.sender,
                    owner.map(|o| format!(" (of appservice {o:?})")).unwrap_or_default()
                ),
                None => {
                    db.create_appservice_user(reg.sender.as_str(), reg.sender.localpart(), &reg.id).await?;
                    tracing::info!(appservice = %reg.id, sender = %reg.sender, "created the appservice's sender user");
                }
            }
            tracing::info!(appservice = %reg.id, file = %reg.file.display(), url = ?reg.url, "appservice registered");
        }
        Ok(Arc::new(Self::new(db, config, regs)))
    }

    /// The engine over already-checked registrations.
    pub fn new(db: Db, config: Arc<Config>, regs: Vec<Registration>) -> Self {
        let regs: Vec<Arc<Registration>> = regs.into_iter().map(Arc::new).collect();
        let by_token = regs.iter().map(|r| (token_key(&r.as_token), r.clone())).collect();
        let kicks = regs.iter().map(|r| (r.id.clone(), Arc::new(Notify::new()))).collect();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.appservice.request_timeout_ms))
            .build()
            .unwrap_or_default();
        Self { db, config, regs, by_token, http, kicks }
    }

    /// Every registration.
    pub fn all(&self) -> &[Arc<Registration>] {
        &self.regs
    }

    /// The registration with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Registration>> {
        self.regs.iter().find(|r| r.id == id)
    }

    /// The registration whose `as_token` this is.
    pub fn by_token(&self, token: &str) -> Option<&Arc<Registration>> {
        if self.regs.is_empty() {
            return None;
        }
        self.by_token.get(&token_key(token))
    }

    /// The appservice showed signs of life: a sender waiting to retry tries again now.
    pub fn kick(&self, id: &str) {
        if let Some(k) = self.kicks.get(id) {
            k.notify_one();
        }
    }

    pub(crate) fn kick_handle(&self, id: &str) -> Arc<Notify> {
        self.kicks.get(id).cloned().unwrap_or_default()
    }

    /// The user an appservice acts as: `?user_id=` when given (it must be in the appservice's
    /// user namespaces and, if `must_exist`, exist), else its sender. 403 `M_FORBIDDEN` otherwise.
    pub async fn masquerade(&self, reg: &Registration, user_id: Option<&str>, must_exist: bool) -> Result<OwnedUserId> {
        let Some(user_id) = user_id else { return Ok(reg.sender.clone()) };
        let parsed = UserId::parse(user_id).map_err(|e| Error::invalid_param(format!("Invalid user_id: {e}")))?;
        if parsed.server_name().as_str() != self.config.server_name || !reg.is_user(parsed.as_str()) {
            return Err(Error::forbidden("Application service cannot masquerade as this user"));
        }
        if must_exist && parsed != reg.sender && self.db.user_appservice(parsed.as_str()).await?.is_none() {
            return Err(Error::forbidden(format!("Application service has not registered this user ({parsed})")));
        }
        Ok(parsed)
    }

    /// The appservice holding `name` in an exclusive namespace of `kind`.
    pub fn exclusive_owner(&self, kind: Kind, name: &str) -> Option<&Arc<Registration>> {
        self.regs.iter().find(|r| r.namespaces.exclusive(kind, name))
    }

    /// 400 `M_EXCLUSIVE` when `name` belongs exclusively to an appservice and `acting` (the
    /// user making the request, if any) is not one of that appservice's users.
    pub fn check_exclusive(&self, kind: Kind, name: &str, acting: Option<&str>) -> Result<()> {
        match self.exclusive_owner(kind, name).filter(|owner| !acting.is_some_and(|u| owner.is_user(u))) {
            Some(_) => Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_EXCLUSIVE",
                match kind {
                    Kind::Users => "This user ID is reserved by an application service",
                    Kind::Aliases => "This alias is reserved by an application service",
                    Kind::Rooms => "This room ID is reserved by an application service",
                },
            )),
            None => Ok(()),
        }
    }

    /// Registers a user for an appservice (`m.login.application_service`): the name must be in
    /// its user namespaces.
    pub async fn register_user(&self, reg: &Registration, localpart: &str) -> Result<OwnedUserId> {
        let user_id = UserId::parse(format!("@{localpart}:{}", self.config.server_name))
            .map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))?;
        if !reg.is_user(user_id.as_str()) {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_EXCLUSIVE",
                "This user ID is not in the application service's namespaces",
            ));
        }
        if !self.db.create_appservice_user(user_id.as_str(), localpart, &reg.id).await? {
            return Err(Error::user_in_use());
        }
        tracing::info!(%user_id, appservice = %reg.id, "appservice registered a user");
        Ok(user_id)
    }

    fn receivers(&self) -> impl Iterator<Item = &Arc<Registration>> {
        self.regs.iter().filter(|r| r.url.is_some())
    }

    /// Whether any appservice receives transactions (the write path skips everything if not).
    pub fn any_receivers(&self) -> bool {
        self.regs.iter().any(|r| r.url.is_some())
    }

    /// Queues `pdu` for every appservice interested in it, in the caller's write transaction:
    /// its sender or (for member events) its target is in a user namespace, the room id or one
    /// of the room's aliases is in a namespace, or a local member joined to the room is one of
    /// the appservice's users. `joined_local` are the room's joined local users before the event.
    pub async fn queue_event(&self, tx: &mut WriteTx, pdu: &Pdu, joined_local: &[String]) -> Result<()> {
        if !self.any_receivers() {
            return Ok(());
        }
        let room_id = pdu.room_id.as_str();
        let mut aliases: Option<Vec<String>> = None;
        for reg in self.receivers() {
            let ns = &reg.namespaces;
            let mut interested =
                reg.is_user(pdu.fields.sender.as_str())
                    || pdu.fields.state_key.as_deref().is_some_and(|k| {
                        pdu.fields.kind == ruma::events::TimelineEventType::RoomMember && reg.is_user(k)
                    })
                    || ns.matches(Kind::Rooms, room_id)
                    || joined_local.iter().any(|u| reg.is_user(u));
            if !interested && !ns.aliases.is_empty() {
                if aliases.is_none() {
                    aliases = Some(self.db.room_aliases(room_id).await?);
                }
                interested = aliases.iter().flatten().any(|a| ns.matches(Kind::Aliases, a));
            }
            if interested {
                Db::insert_appservice_outbox(tx, &reg.id, "pdu", pdu.event_id.as_str()).await?;
            }
        }
        Ok(())
    }

    /// Queues ephemeral data (`kind` "edu": typing, receipts, presence; "to_device") for the
    /// appservices with `receive_ephemeral` that `interested` selects.
    pub async fn queue_ephemeral(
        &self,
        tx: &mut WriteTx,
        kind: &str,
        payload: &Value,
        interested: impl Fn(&Registration) -> bool,
    ) -> Result<bool> {
        let mut any = false;
        let text = payload.to_string();
        for reg in self.receivers().filter(|r| r.receive_ephemeral) {
            if interested(reg) {
                Db::insert_appservice_outbox(tx, &reg.id, kind, &text).await?;
                any = true;
            }
        }
        Ok(any)
    }

    /// Whether any appservice receives ephemeral data.
    pub fn any_ephemeral_receivers(&self) -> bool {
        self.receivers().any(|r| r.receive_ephemeral)
    }

    /// Whether an appservice with `receive_ephemeral` claims one of `users`.
    pub fn wants_ephemeral_for(&self, users: &[String]) -> bool {
        self.receivers().any(|r| r.receive_ephemeral && users.iter().any(|u| r.is_user(u)))
    }

    pub(crate) async fn call(
        &self,
        reg: &Registration,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> std::result::Result<Value, CallError> {
        let base = reg.url.as_deref().ok_or(CallError::NoUrl)?;
        let mut url = url::Url::parse(&format!("{base}{path}")).map_err(|e| CallError::Connection(e.to_string()))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut req = self.http.request(method, url).bearer_auth(&reg.hs_token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req
            .send()
            .await
            .map_err(|e| if e.is_timeout() { CallError::Timeout } else { CallError::Connection(e.to_string()) })?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| if e.is_timeout() { CallError::Timeout } else { CallError::Connection(e.to_string()) })?;
        if !status.is_success() {
            return Err(CallError::Status(status.as_u16(), text));
        }
        Ok(serde_json::from_str(&text).unwrap_or_else(|_| json!({})))
    }

    /// Whether a local user exists; for a user in an appservice's namespace that does not exist
    /// yet, the appservice is asked first (it registers the user if it knows them).
    pub async fn ensure_user(&self, user_id: &str) -> Result<bool> {
        if self.db.get_user(user_id).await?.is_some() {
            return Ok(true);
        }
        Ok(self.query_user(user_id).await && self.db.get_user(user_id).await?.is_some())
    }

    /// A local alias's `(room_id, creator)`; for an alias in an appservice's namespace that
    /// does not exist yet, the appservice is asked to create it first.
    pub async fn lookup_alias(&self, alias: &str) -> Result<Option<(String, String)>> {
        if let Some(found) = self.db.get_alias(alias).await? {
            return Ok(Some(found));
        }
        if self.query_alias(alias).await {
            return self.db.get_alias(alias).await;
        }
        Ok(None)
    }

    /// Asks the appservices whose user namespaces hold `user_id` whether it exists
    /// (`GET /_matrix/app/v1/users/{userId}`); true once one answers 2xx (it has created the
    /// user by then).
    pub async fn query_user(&self, user_id: &str) -> bool {
        for reg in self.receivers().filter(|r| r.namespaces.matches(Kind::Users, user_id)) {
            let path = format!("/_matrix/app/v1/users/{}", urlencode(user_id));
            match self.call(reg, reqwest::Method::GET, &path, &[], None).await {
                Ok(_) => return true,
                Err(e) => tracing::debug!(appservice = %reg.id, user_id, error = %e, "user query"),
            }
        }
        false
    }

    /// Asks the appservices whose alias namespaces hold `alias` to create it
    /// (`GET /_matrix/app/v1/rooms/{alias}`); true once one answers 2xx.
    pub async fn query_alias(&self, alias: &str) -> bool {
        for reg in self.receivers().filter(|r| r.namespaces.matches(Kind::Aliases, alias)) {
            let path = format!("/_matrix/app/v1/rooms/{}", urlencode(alias));
            match self.call(reg, reqwest::Method::GET, &path, &[], None).await {
                Ok(_) => return true,
                Err(e) => tracing::debug!(appservice = %reg.id, alias, error = %e, "alias query"),
            }
        }
        false
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping` for the appservice `reg`: calls its
    /// `/_matrix/app/v1/ping` and answers how long that took, or the spec's errors.
    pub async fn ping(&self, reg: &Registration, transaction_id: Option<&str>) -> Result<Duration> {
        if reg.url.is_none() {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_URL_NOT_SET",
                "Application service doesn't have a URL configured",
            ));
        }
        let body = match transaction_id {
            Some(t) => json!({ "transaction_id": t }),
            None => json!({}),
        };
        let start = Instant::now();
        match self.call(reg, reqwest::Method::POST, "/_matrix/app/v1/ping", &[], Some(&body)).await {
            Ok(_) => {
                // It answers: a sender waiting to retry tries again now.
                self.kick(&reg.id);
                Ok(start.elapsed())
            }
            Err(CallError::Timeout) => Err(Error::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                "M_CONNECTION_TIMEOUT",
                "Connection to application service timed out",
            )),
            Err(CallError::Status(status, body)) => {
                Err(Error::new(http::StatusCode::BAD_GATEWAY, "M_BAD_STATUS", format!("Ping returned status {status}"))
                    .with("status", json!(status))
                    .with("body", json!(body)))
            }
            Err(e) => Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                "M_CONNECTION_FAILED",
                format!("Connection to application service failed: {e}"),
            )),
        }
    }

    /// `GET /thirdparty/protocols`: each protocol of a registered appservice with the metadata
    /// it answers, its instances given `instance_id`s `<appservice id>|<network id>`.
    pub async fn protocols(&self) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for reg in self.receivers() {
            for protocol in &reg.protocols {
                let Ok(mut meta) = self.protocol_of(reg, protocol).await else { continue };
                let merged = out.entry(protocol.clone()).or_insert_with(|| {
                    let mut first = meta.clone();
                    first["instances"] = json!([]);
                    first
                });
                if let (Some(all), Some(mine)) = (merged["instances"].as_array_mut(), meta["instances"].as_array_mut())
                {
                    all.append(mine);
                }
            }
        }
        out
    }

    /// One protocol's metadata, or 404 `M_NOT_FOUND` when no appservice serves it.
    pub async fn protocol(&self, protocol: &str) -> Result<Value> {
        self.protocols()
            .await
            .remove(protocol)
            .ok_or_else(|| Error::not_found(format!("No application service serves the protocol {protocol}")))
    }

    async fn protocol_of(&self, reg: &Registration, protocol: &str) -> std::result::Result<Value, CallError> {
        let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", urlencode(protocol));
        let mut meta = self.call(reg, reqwest::Method::GET, &path, &[], None).await?;
        if let Some(instances) = meta["instances"].as_array_mut() {
            for instance in instances {
                let network = instance["network_id"].as_str().unwrap_or_default().to_owned();
                instance["instance_id"] = json!(format!("{}|{network}", reg.id));
            }
        } else {
            meta["instances"] = json!([]);
        }
        Ok(meta)
    }

    /// Third-party locations or users (`what`: "location" or "user") of `protocol` matching
    /// `fields`, from every appservice serving it; 404 when none does.
    pub async fn thirdparty_lookup(
        &self,
        what: &str,
        protocol: &str,
        fields: &[(String, String)],
    ) -> Result<Vec<Value>> {
        let regs: Vec<_> = self.receivers().filter(|r| r.protocols.iter().any(|p| p == protocol)).collect();
        if regs.is_empty() {
            return Err(Error::not_found(format!("No application service serves the protocol {protocol}")));
        }
        let path = format!("/_matrix/app/v1/thirdparty/{what}/{}", urlencode(protocol));
        let query: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut out = Vec::new();
        for reg in regs {
            match self.call(reg, reqwest::Method::GET, &path, &query, None).await {
                Ok(Value::Array(items)) => out.extend(items),
                Ok(_) => {}
                Err(e) => tracing::info!(appservice = %reg.id, protocol, error = %e, "third-party lookup failed"),
            }
        }
        Ok(out)
    }

    /// Reverse third-party lookups: `what` "location" with `alias`, "user" with `userid`,
    /// asked of every appservice with protocols.
    pub async fn thirdparty_reverse(&self, what: &str, key: &str, value: &str) -> Vec<Value> {
        let path = format!("/_matrix/app/v1/thirdparty/{what}");
        let mut out = Vec::new();
        for reg in self.receivers().filter(|r| !r.protocols.is_empty()) {
            if let Ok(Value::Array(items)) = self.call(reg, reqwest::Method::GET, &path, &[(key, value)], None).await {
                out.extend(items);
            }
        }
        out
    }
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

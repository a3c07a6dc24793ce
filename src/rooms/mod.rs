//! The room engine: events, authorization, state and ordering.
//!
//! Owns the rules of the DAG: every local event is built on the room's forward extremities,
//! signed, authorised with ruma's state-res against the state before it, and persisted with
//! all of its effects (state, extremities, txn mapping, outbox rows) in one transaction.
//! Writers of one room are serialised (an in-process lock, plus a row lock on PostgreSQL);
//! stream positions come from the database. Readers (timeline, state, members) apply history
//! visibility here, so API layers cannot forget it.

pub mod admin;
pub mod backfill;
pub mod build;
pub mod cache;
pub mod create;
pub mod directory;
pub mod federated;
pub mod filter;
pub mod import;
pub mod membership;
pub mod moderation;
pub mod push_actions;
pub mod queries;
pub mod read;
pub mod relations;
pub mod search;
pub mod shadow_ban;
pub mod state;
pub mod summary;
pub mod user_directory;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ruma::{OwnedEventId, OwnedServerName, RoomId, UserId};

use crate::appservice::Appservices;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::notifier::{Notifier, OutboxWakeup};
use crate::signing::SigningKeys;
use crate::storage::Db;
pub use crate::storage::rooms::{StateIds, StoredEvent};
use build::NewEvent;
use state::StateCache;

/// The room engine handle.
pub struct Rooms {
    db: Db,
    config: Arc<Config>,
    keys: Arc<SigningKeys>,
    server_name: OwnedServerName,
    state_cache: StateCache,
    caches: cache::Caches,
    notifier: Arc<Notifier>,
    /// Woken when outbox rows were committed (the senders in `crate::delivery` wait on it).
    outbox_wakeup: Arc<OutboxWakeup>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    writer: tokio::sync::mpsc::Sender<writer::Job>,
    /// Federation transport (joins, invites and fetches through other servers).
    federation: Arc<Federation>,
    /// Retry delays of history gaps that could not be backfilled.
    backfill_backoff: backfill::BackfillBackoff,
    /// Push rule evaluation of new events (rulesets and room facts kept between events).
    pub push: push_actions::PushEval,
    /// Registered application services: events they are interested in are queued for them in
    /// the event's own transaction.
    appservices: Arc<Appservices>,
    /// The SSRF-guarded client for identity servers (third-party invites).
    identity: crate::media::preview::Fetcher,
}

/// Who sends a client event, and with which transaction id.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The sender.
    pub user_id: &'a UserId,
    /// `(device_id, txn_id)` for idempotent client sends.
    pub txn: Option<(&'a str, &'a str)>,
}

impl Rooms {
    /// Creates the engine and starts its event writer (needs a Tokio runtime).
    pub fn new(
        db: Db,
        config: Arc<Config>,
        keys: Arc<SigningKeys>,
        notifier: Arc<Notifier>,
        outbox_wakeup: Arc<OutboxWakeup>,
        federation: Arc<Federation>,
        appservices: Arc<Appservices>,
    ) -> Arc<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel(4096);
        Arc::new_cyclic(|weak| {
            writer::spawn(weak.clone(), rx);
            Self {
                identity: federated::third_party::identity_fetcher(&config),
                server_name: config.server_name(),
                outbox_wakeup,
                db,
                config,
                keys,
                state_cache: StateCache::default(),
                caches: cache::Caches::default(),
                notifier,
                locks: Mutex::new(HashMap::new()),
                writer: tx,
                federation,
                backfill_backoff: backfill::BackfillBackoff::default(),
                push: push_actions::PushEval::default(),
                appservices,
            }
        })
    }

    /// The registered appservices.
    pub fn appservices(&self) -> &Arc<Appservices> {
        &self.appservices
    }

    /// The federation transport, if federation is enabled.
    pub fn federation(&self) -> Option<&Arc<Federation>> {
        Some(&self.federation).filter(|f| f.enabled())
    }

    /// This server's name.
    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The signing keys.
    pub fn keys(&self) -> &Arc<SigningKeys> {
        &self.keys
    }

    /// Local users with any membership in the room as of state group `group` (the current
    /// state when unknown): those another process's news about the room may concern.
    pub async fn local_members(&self, room_id: &str, group: Option<i64>) -> Result<Vec<String>> {
        if let Some(g) = group
            && let Some(m) = self.caches.members(room_id, g)
        {
            return Ok(m.local.clone());
        }
        let members = self.read_members(room_id).await?;
        let local = members.local.clone();
        if let Some(g) = group {
            self.caches.put_members(room_id, g, Arc::new(members));
        }
        Ok(local)
    }

    /// Forgets a cached event (another process redacted it).
    pub fn evict_cached_event(&self, event_id: &str) {
        self.caches.evict_pdu(event_id);
    }

    /// The notifier.
    pub fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Serialises writers of one room within this process.
    pub async fn room_lock(&self, room_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(room_id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// Sends one event into a room, idempotently per `(device, txn_id)`; returns its id after
    /// the commit. The event is appended by the writer task (see [`writer`]).
    pub async fn send(&self, room_id: &RoomId, origin: Origin<'_>, ev: NewEvent) -> Result<OwnedEventId> {
        if let Some(made_up) = self.shadow_banned_send(origin.user_id, &ev).await? {
            return Ok(made_up);
        }
        // A retried txn id is answered by the writer, which reads every txn id of its batch in
        // one statement: checking here first would cost each new event a query of its own.
        let (reply, answer) = tokio::sync::oneshot::channel();
        // Kept for a room with a policy server, whose events the writer hands back.
        let kept = ev.clone();
        let job = writer::Job {
            room_id: room_id.to_owned(),
            user_id: origin.user_id.to_owned(),
            txn: origin.txn.map(|(d, t)| (d.to_owned(), t.to_owned())),
            ev,
            reply,
        };
        self.writer.send(job).await.map_err(|_| Error::internal("event writer stopped"))?;
        match answer.await.map_err(|_| Error::internal("event writer dropped a request"))? {
            Err(e) if e.errcode == federated::policy::POLICY_NEEDED => {
                self.send_with_policy(room_id, origin, kept).await
            }
            other => other,
        }
    }

    /// A redaction by a client needs the redact power level unless it redacts the sender's own event.
    pub(crate) async fn check_redaction_allowed(
        &self,
        ctx: &build::RoomCtx,
        sender: &UserId,
        target: &OwnedEventId,
    ) -> Result<()> {
        let target_sender = match ctx.written.get(target.as_str()) {
            Some(p) => Some(p.fields.sender.clone()),
            None => self.db.get_event(target.as_str()).await?.map(|e| e.pdu.fields.sender),
        };
        if target_sender.is_some_and(|s| s == sender) {
            return Ok(());
        }
        let pl = self.power_levels_of(ctx).await?;
        if pl.user_level(sender) >= pl.level("redact", 50) {
            Ok(())
        } else {
            Err(Error::forbidden("You don't have permission to redact events"))
        }
    }

    /// The power levels in the current state of `ctx`.
    pub async fn power_levels_of(&self, ctx: &build::RoomCtx) -> Result<read::PowerLevels> {
        let mut ids = Vec::new();
        let pl_key = ("m.room.power_levels".to_owned(), String::new());
        let create_key = ("m.room.create".to_owned(), String::new());
        ids.extend(ctx.state.get(&pl_key).cloned());
        ids.extend(ctx.state.get(&create_key).cloned());
        let pdus = self.pdus_for(ctx, &ids).await?;
        Ok(read::PowerLevels::from_events(
            ctx.state.get(&pl_key).and_then(|id| pdus.get(id)),
            ctx.state.get(&create_key).and_then(|id| pdus.get(id)),
            &ctx.rules,
        ))
    }
}

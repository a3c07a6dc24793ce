//! Presence: `online` / `unavailable` / `offline` with a status message, for local users (set by
//! `PUT /presence/{userId}/status` and by `/sync`'s `set_presence`) and remote users (from
//! `m.presence` EDUs, through [`SyncEngine::receive_remote_presence`]).
//!
//! A change others can see takes a new `presence` stream position, wakes the local users who
//! share a room with the user and, for a local user, is queued as an `m.presence` EDU for the
//! servers of those rooms in the same transaction. `/sync` marks its user online at most once a
//! minute when nothing changed (an in-memory note avoids even the read), so idle long-polls cost
//! no writes. A background sweep marks local users offline once they have not synced for
//! [`OFFLINE_AFTER`] and have no `/sync` in flight in this process. With several processes on
//! one database the sweep runs in one of them (under a lease), and every process refreshes the
//! `last_sync_ts` of users whose long-polls it holds ([`SyncEngine::run_presence_keepalive`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ruma::UserId;
use serde_json::{Value, json};

use super::SyncEngine;
use crate::error::{Error, Result};
use crate::storage::outbox::Outbox;
use crate::storage::sync::{PresenceRow, streams};
use crate::storage::{Db, now_ms};

/// A local user who has not synced for this long is marked offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(300);
/// How often a syncing user's `last_sync_ts` is refreshed when nothing else changes.
const REFRESH_MS: i64 = 60_000;
/// How often the offline sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// To-device transaction ids are remembered this long (retries come within minutes).
const TO_DEVICE_TXN_TTL_MS: i64 = 24 * 3600 * 1000;

/// The presence states of the spec.
pub const STATES: &[&str] = &["online", "unavailable", "offline"];

#[derive(Default)]
struct Seen {
    /// State last written by this process for the user.
    state: String,
    /// When it was last written.
    written_ms: i64,
    /// `/sync` requests of the user in flight here.
    syncing: u32,
}

/// What this process knows about its syncing users, so that repeated syncs need no database.
#[derive(Default)]
pub struct PresenceTracker {
    seen: Mutex<HashMap<String, Seen>>,
}

impl PresenceTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_written(&self, user: &str, state: &str) {
        let mut seen = self.lock();
        let s = seen.entry(user.to_owned()).or_default();
        s.state = state.to_owned();
        s.written_ms = now_ms();
    }
}

/// Marks a `/sync` in flight for the presence sweep; dropped when the request ends.
pub struct SyncingGuard<'a> {
    tracker: &'a PresenceTracker,
    user: String,
}

impl Drop for SyncingGuard<'_> {
    fn drop(&mut self) {
        let mut seen = self.tracker.lock();
        if let Some(s) = seen.get_mut(&self.user) {
            s.syncing = s.syncing.saturating_sub(1);
        }
    }
}

/// Presence content as clients see it (`m.presence` content and `GET /presence`).
pub fn presence_content(p: &PresenceRow, now: i64) -> Value {
    let mut content = json!({
        "presence": p.state,
        "last_active_ago": (now - p.last_active_ts).max(0),
        "currently_active": p.currently_active,
    });
    if let Some(m) = &p.status_msg {
        content["status_msg"] = json!(m);
    }
    content
}

/// The `m.presence` event for the sync response.
pub fn presence_event(p: &PresenceRow, now: i64) -> Value {
    json!({ "type": "m.presence", "sender": p.user_id, "content": presence_content(p, now) })
}

impl SyncEngine {
    /// Called at the start of `/sync`: marks the user online or unavailable unless
    /// `set_presence` is `offline`, and notes the request as in flight until the guard drops.
    pub async fn presence_on_sync(&self, user_id: &UserId, set_presence: &str) -> Result<SyncingGuard<'_>> {
        let user = user_id.as_str();
        let now = now_ms();
        let fresh = {
            let mut seen = self.presence.lock();
            let s = seen.entry(user.to_owned()).or_default();
            s.syncing += 1;
            s.state == set_presence && now - s.written_ms < REFRESH_MS
        };
        let guard = SyncingGuard { tracker: &self.presence, user: user.to_owned() };
        if set_presence == "offline" || fresh {
            return Ok(guard);
        }
        let old = self.db.get_presence(user).await?;
        let new = match old {
            Some(o) if o.state == set_presence && now - o.last_sync_ts < REFRESH_MS => {
                self.presence.note_written(user, set_presence);
                return Ok(guard);
            }
            Some(o) => PresenceRow {
                last_active_ts: if o.state != set_presence { now } else { o.last_active_ts },
                state: set_presence.to_owned(),
                last_sync_ts: now,
                currently_active: set_presence == "online",
                ..o
            },
            None => PresenceRow {
                user_id: user.to_owned(),
                state: set_presence.to_owned(),
                status_msg: None,
                last_active_ts: now,
                last_sync_ts: now,
                currently_active: set_presence == "online",
                stream_id: 0,
            },
        };
        self.write_presence(new, true).await?;
        Ok(guard)
    }

    /// `PUT /presence/{userId}/status` of a local user.
    pub async fn set_presence(&self, user_id: &UserId, state: &str, status_msg: Option<&str>) -> Result<()> {
        let row = presence_row(user_id, state, status_msg, 0, state == "online")?;
        self.write_presence(row, true).await
    }

    /// An `m.presence` update for a user of another server (the caller checked the origin).
    pub async fn receive_remote_presence(
        &self,
        user_id: &UserId,
        state: &str,
        status_msg: Option<&str>,
        last_active_ago: Option<i64>,
        currently_active: bool,
    ) -> Result<()> {
        let row = presence_row(user_id, state, status_msg, last_active_ago.unwrap_or(0).max(0), currently_active)?;
        self.write_presence(row, false).await
    }

    /// `GET /presence/{userId}/status` by `requester`: allowed for oneself and for users who
    /// share a room.
    pub async fn get_presence(&self, requester: &UserId, user_id: &UserId) -> Result<Value> {
        if requester != user_id {
            let shared = self.db.users_sharing_rooms(requester.as_str()).await?;
            if !shared.iter().any(|u| u == user_id.as_str()) {
                return Err(Error::forbidden("You are not allowed to see their presence"));
            }
        }
        Ok(match self.db.get_presence(user_id.as_str()).await? {
            Some(p) => presence_content(&p, now_ms()),
            None => json!({ "presence": "offline" }),
        })
    }

    /// Stores a presence row. A change others can see (state, status message, activity) gets a
    /// new stream position, is queued for remote servers (`federate`) and wakes local users who
    /// share a room with the user; otherwise only the timestamps are refreshed.
    async fn write_presence(&self, mut row: PresenceRow, federate: bool) -> Result<()> {
        let user = row.user_id.clone();
        let old = self.db.get_presence(&user).await?;
        let visible = old.as_ref().is_none_or(|o| {
            o.state != row.state || o.status_msg != row.status_msg || o.currently_active != row.currently_active
        });
        let sharing = if visible { self.db.users_sharing_rooms(&user).await? } else { Vec::new() };
        let mut destinations: Vec<&str> = if federate && self.is_local(&user) {
            sharing
                .iter()
                .filter_map(|u| u.split_once(':').map(|(_, s)| s))
                .filter(|s| !self.is_local_server(s))
                .collect()
        } else {
            Vec::new()
        };
        destinations.sort_unstable();
        destinations.dedup();

        let mut tx = self.db.begin_write().await?;
        row.stream_id = match (&old, visible) {
            (Some(o), false) => o.stream_id,
            _ => Db::next_stream_position(&mut tx, streams::PRESENCE).await?,
        };
        self.db.upsert_presence(&mut tx, &row).await?;
        let mut for_appservices = false;
        let appservices = self.rooms.appservices();
        if visible && appservices.any_ephemeral_receivers() {
            // Appservices hear of their own users and of users sharing a room with them.
            let event = json!({ "type": "m.presence", "sender": user, "content": presence_content(&row, now_ms()) });
            for_appservices = appservices
                .queue_ephemeral(&mut tx, "edu", &event, |reg| {
                    reg.is_user(&user) || sharing.iter().any(|u| reg.is_user(u))
                })
                .await?;
        }
        if visible && !destinations.is_empty() {
            let mut push = presence_content(&row, now_ms());
            push["user_id"] = json!(user);
            let edu = json!({ "edu_type": "m.presence", "content": { "push": [push] } }).to_string();
            for d in &destinations {
                self.db.queue_outbox(&mut tx, d, Outbox::Edu(&edu)).await?;
            }
        }
        tx.commit().await?;
        if self.is_local(&user) {
            self.presence.note_written(&user, &row.state);
        }
        if visible {
            let mut wake: Vec<&str> = sharing.iter().map(String::as_str).filter(|u| self.is_local(u)).collect();
            wake.push(&user);
            self.notifier.wake(wake);
            if !destinations.is_empty() || for_appservices {
                self.outbox_wakeup.notify_waiters();
            }
        }
        Ok(())
    }

    /// PostgreSQL: refreshes, every [`SWEEP_EVERY`], the `last_sync_ts` of users with a `/sync`
    /// in flight in this process, so that the sweep of another process does not take a user
    /// in a long long-poll here for gone.
    pub async fn run_presence_keepalive(&self) {
        if !self.db.bus().is_shared() {
            return;
        }
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let syncing: Vec<String> =
                self.presence.lock().iter().filter(|(_, s)| s.syncing > 0).map(|(u, _)| u.clone()).collect();
            if syncing.is_empty() {
                continue;
            }
            if let Err(e) = self.db.touch_last_sync(&syncing, now_ms()).await {
                tracing::warn!(error = %e, "refreshing the last sync of users syncing here");
            }
        }
    }

    /// Marks local users offline who stopped syncing, forgets old to-device transaction ids and
    /// drops messages for deleted devices; runs every [`SWEEP_EVERY`] while the server runs.
    pub async fn run_presence_sweeper(&self) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "presence sweep");
            }
        }
    }

    async fn sweep_once(&self) -> Result<()> {
        let now = now_ms();
        let suffix = format!(":{}", self.rooms.server_name());
        let stale = self.db.stale_presence(&suffix, now - OFFLINE_AFTER.as_millis() as i64).await?;
        for p in stale {
            let syncing = self.presence.lock().get(&p.user_id).is_some_and(|s| s.syncing > 0);
            if syncing {
                continue;
            }
            let offline = PresenceRow { state: "offline".into(), currently_active: false, ..p };
            self.write_presence(offline, true).await?;
        }
        self.presence.lock().retain(|_, s| s.syncing > 0 || now - s.written_ms < OFFLINE_AFTER.as_millis() as i64);
        self.db.prune_to_device_txns(now - TO_DEVICE_TXN_TTL_MS).await?;
        self.db.delete_orphan_to_device().await?;
        Ok(())
    }
}

/// A presence row as a user sets it (or another server reports it) now: 400 for a state the
/// spec does not know.
fn presence_row(
    user_id: &UserId,
    state: &str,
    status_msg: Option<&str>,
    last_active_ago: i64,
    currently_active: bool,
) -> Result<PresenceRow> {
    if !STATES.contains(&state) {
        return Err(Error::invalid_param(format!("Unknown presence state {state}")));
    }
    let now = now_ms();
    Ok(PresenceRow {
        user_id: user_id.to_string(),
        state: state.to_owned(),
        status_msg: status_msg.map(str::to_owned),
        last_active_ts: now - last_active_ago,
        last_sync_ts: now,
        currently_active,
        stream_id: 0,
    })
}

//! Typing notifications: who is typing in which room, until when.
//!
//! Typing is ephemeral, so it is read from memory: a map of rooms to typing users with their
//! expiry, and a serial that moves on every change and is the `typing` position of sync tokens.
//! One background task ([`SyncEngine::run_typing_expiry`]) sleeps until the earliest expiry;
//! nothing polls.
//!
//! On SQLite (one process) the map is the truth and the serial starts at the current time in
//! milliseconds, so tokens handed out before a restart stay below every position after it.
//! On PostgreSQL several processes share typing: a change is a row of the `typing` table and a
//! position of the `typing` counter, written with a signal (`storage::bus`) in one
//! transaction, so every process applies the changes to its map in the order of their
//! positions, its own included ([`Typing::apply`]). A process reads the table whole at start
//! and after losing its listening connection ([`SyncEngine::reload_typing`]). Expiry deletes
//! the rows whose time is up; whichever process gets them signals the removal.
//!
//! Local changes are federated as `m.typing` EDUs through `federation_outbox`; inbound EDUs from
//! other servers come in through [`SyncEngine::set_typing`] with [`TypingOrigin::Remote`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ruma::{RoomId, UserId};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::SyncEngine;
use crate::error::{Error, Result};
use crate::storage::bus::Signal;
use crate::storage::now_ms;
use crate::storage::sync::streams;

/// Longest typing timeout a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Timeout when a client gives none, and for typing users of other servers (whose EDUs carry
/// no timeout; their server sends `typing: false` or renews).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct RoomTyping {
    /// Serial of the last change in this room.
    serial: i64,
    /// Typing users and when they stop.
    users: BTreeMap<String, Instant>,
}

struct Inner {
    serial: i64,
    rooms: HashMap<String, RoomTyping>,
}

/// The in-memory typing state of this process.
pub struct Typing {
    inner: Mutex<Inner>,
    /// Re-arms the expiry task when an earlier expiry may have been added.
    rearm: Notify,
    /// The serial applied so far (PostgreSQL: a writer waits to see its own change here).
    applied: watch::Sender<i64>,
}

/// Where a typing update comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingOrigin {
    /// A local user through the client API: checked for membership and federated.
    Local,
    /// An `m.typing` EDU from the user's own server (the caller checked the origin).
    Remote,
}

impl Default for Typing {
    fn default() -> Self {
        let serial = now_ms();
        Self {
            inner: Mutex::new(Inner { serial, rooms: HashMap::new() }),
            rearm: Notify::new(),
            applied: watch::Sender::new(serial),
        }
    }
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current typing position.
    pub fn current(&self) -> i64 {
        self.lock().serial
    }

    /// Starts (`until` set) or stops typing; returns whether the set of typing users changed.
    fn set(&self, room_id: &str, user_id: &str, until: Option<Instant>) -> bool {
        let mut inner = self.lock();
        let room = inner.rooms.entry(room_id.to_owned()).or_default();
        let changed = match until {
            Some(t) => room.users.insert(user_id.to_owned(), t).is_none(),
            None => room.users.remove(user_id).is_some(),
        };
        if changed {
            inner.serial += 1;
            let serial = inner.serial;
            inner.rooms.get_mut(room_id).expect("inserted above").serial = serial;
        }
        changed
    }

    /// Rooms of `rooms` whose typing set changed after `since` (every room with typing users
    /// when `since` is None), with the users typing now.
    pub fn changed_since<'a>(
        &self,
        rooms: impl IntoIterator<Item = &'a str>,
        since: Option<i64>,
    ) -> HashMap<String, Vec<String>> {
        let inner = self.lock();
        let mut out = HashMap::new();
        for room_id in rooms {
            let Some(room) = inner.rooms.get(room_id) else { continue };
            let changed = match since {
                Some(s) => room.serial > s,
                None => !room.users.is_empty(),
            };
            if changed {
                out.insert(room_id.to_owned(), room.users.keys().cloned().collect());
            }
        }
        out
    }

    /// Removes typing users whose time is up; returns them by room.
    fn expire(&self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut inner = self.lock();
        let mut expired = Vec::new();
        let mut serial = inner.serial;
        for (room_id, room) in inner.rooms.iter_mut() {
            let gone: Vec<String> = room.users.iter().filter(|(_, t)| **t <= now).map(|(u, _)| u.clone()).collect();
            if gone.is_empty() {
                continue;
            }
            for u in &gone {
                room.users.remove(u);
            }
            serial += 1;
            room.serial = serial;
            expired.push((room_id.clone(), gone));
        }
        inner.serial = serial;
        // Rooms nobody types in are kept so that a stale token still learns that typing
        // stopped; drop them only when the map has grown large.
        if inner.rooms.len() > 10_000 {
            inner.rooms.retain(|_, r| !r.users.is_empty());
        }
        expired
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.lock().rooms.values().flat_map(|r| r.users.values().copied()).min()
    }

    /// Applies a change signalled by a process (PostgreSQL), in the order of the serials:
    /// serials at or below the current one are already in the map (read from the table).
    /// Serial 0 is a renewal, which only moves a present user's deadline later.
    pub fn apply(&self, serial: i64, room_id: &str, user_id: &str, until_ms: Option<i64>) {
        let until = until_ms.map(instant_at);
        let mut inner = self.lock();
        if serial == 0 {
            if let (Some(t), Some(room)) = (until, inner.rooms.get_mut(room_id))
                && let Some(old) = room.users.get_mut(user_id)
            {
                *old = (*old).max(t);
            }
            return;
        }
        if serial <= inner.serial {
            return;
        }
        let room = inner.rooms.entry(room_id.to_owned()).or_default();
        match until {
            Some(t) => {
                room.users.insert(user_id.to_owned(), t);
            }
            None => {
                room.users.remove(user_id);
            }
        }
        room.serial = serial;
        inner.serial = serial;
        drop(inner);
        self.applied.send_replace(serial);
        self.rearm.notify_one();
    }

    /// Applies an expiry signalled by a process (PostgreSQL).
    pub fn apply_expired(&self, serial: i64, rooms: &[(String, Vec<String>)]) {
        let mut inner = self.lock();
        if serial <= inner.serial {
            return;
        }
        for (room_id, users) in rooms {
            let room = inner.rooms.entry(room_id.clone()).or_default();
            for u in users {
                room.users.remove(u);
            }
            room.serial = serial;
        }
        inner.serial = serial;
        drop(inner);
        self.applied.send_replace(serial);
    }

    /// Replaces the map with the table as read at `serial`; rooms whose typing users differ
    /// get that serial, so a token from before learns the current set. Returns those rooms.
    fn replace(&self, serial: i64, rows: Vec<(String, String, i64)>) -> Vec<String> {
        let mut fresh: HashMap<String, BTreeMap<String, Instant>> = HashMap::new();
        for (room, user, until) in rows {
            fresh.entry(room).or_default().insert(user, instant_at(until));
        }
        let mut inner = self.lock();
        let serial = serial.max(inner.serial);
        let mut changed = Vec::new();
        for (room_id, room) in inner.rooms.iter_mut() {
            let users = fresh.remove(room_id).unwrap_or_default();
            if !users.keys().eq(room.users.keys()) {
                room.serial = serial;
                changed.push(room_id.clone());
            }
            room.users = users;
        }
        for (room_id, users) in fresh {
            changed.push(room_id.clone());
            inner.rooms.insert(room_id, RoomTyping { serial, users });
        }
        inner.serial = serial;
        drop(inner);
        self.applied.send_replace(serial);
        self.rearm.notify_one();
        changed
    }

    /// Waits (briefly) until the change with `serial` is applied here.
    async fn applied(&self, serial: i64) {
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|s| *s >= serial)).await;
    }
}

/// The monotonic instant of a wall-clock time in ms.
fn instant_at(ms: i64) -> Instant {
    let now = now_ms();
    if ms >= now {
        Instant::now() + Duration::from_millis((ms - now) as u64)
    } else {
        Instant::now().checked_sub(Duration::from_millis((now - ms) as u64)).unwrap_or_else(Instant::now)
    }
}

/// The `m.typing` EDU for one user's change.
fn typing_edu(room_id: &str, user_id: &str, typing: bool) -> serde_json::Value {
    json!({ "edu_type": "m.typing", "content": { "room_id": room_id, "user_id": user_id, "typing": typing } })
}

impl SyncEngine {
    /// Sets a user's typing state in a room. `timeout` is capped at [`MAX_TIMEOUT`]; remote
    /// users get [`DEFAULT_TIMEOUT`]. Wakes the room's local members when the set of typing
    /// users changes; a local user's update is queued for the room's other servers.
    pub async fn set_typing(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        typing: bool,
        timeout: Option<Duration>,
        origin: TypingOrigin,
    ) -> Result<()> {
        if self.rooms.membership_of(room_id, user_id).await?.as_deref() != Some("join") {
            return Err(Error::forbidden(format!("User {user_id} not in room {room_id}")));
        }
        if matches!(origin, TypingOrigin::Local) && self.rooms.is_shadow_banned(user_id).await? {
            return Ok(());
        }
        let timeout = match origin {
            TypingOrigin::Local => timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT),
            TypingOrigin::Remote => DEFAULT_TIMEOUT,
        };
        let changed = if self.db.bus().is_shared() {
            self.set_shared_typing(
                room_id.as_str(),
                user_id.as_str(),
                typing.then(|| now_ms() + timeout.as_millis() as i64),
            )
            .await?
        } else {
            let changed = self.typing.set(room_id.as_str(), user_id.as_str(), typing.then(|| Instant::now() + timeout));
            if typing {
                self.typing.rearm.notify_one();
            }
            if changed {
                self.wake_room(room_id.as_str()).await;
            }
            changed
        };
        if changed {
            self.typing_to_appservices(room_id.as_str()).await?;
        }
        // Renewals are federated too: the other servers time typing out on their own.
        if origin == TypingOrigin::Local && (typing || changed) {
            let destinations = self.rooms.remote_destinations(room_id.as_str()).await?;
            self.queue_edu(&destinations, &typing_edu(room_id.as_str(), user_id.as_str(), typing)).await?;
        }
        Ok(())
    }

    /// PostgreSQL: writes the change with its signal in one transaction and waits until this
    /// process has applied it (so the writer's next `/sync` sees it); every process, this one
    /// included, applies it and wakes the room's members when the signal arrives.
    async fn set_shared_typing(&self, room_id: &str, user_id: &str, until: Option<i64>) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        let changed = self.db.typing_set(&mut tx, room_id, user_id, until).await?;
        let serial =
            if changed { crate::storage::Db::next_stream_position(&mut tx, streams::TYPING).await? } else { 0 };
        if changed || until.is_some() {
            let signal = Signal::Typing { s: serial, r: room_id.to_owned(), u: user_id.to_owned(), until };
            self.db.bus().publish_in(&mut tx, vec![signal]).await?;
        }
        tx.commit().await?;
        if changed {
            self.typing.applied(serial).await;
        }
        Ok(changed)
    }

    /// PostgreSQL: reads the typing table into the map (at start-up and after the listening
    /// connection was lost) and wakes the rooms whose typing users changed meanwhile.
    pub async fn reload_typing(&self) -> Result<()> {
        let (serial, rows) = self.db.typing_snapshot().await?;
        for room_id in self.typing.replace(serial, rows) {
            self.wake_room_local(&room_id).await;
        }
        Ok(())
    }

    /// Queues the room's typing users, as they are now, for the appservices in the room.
    async fn typing_to_appservices(&self, room_id: &str) -> Result<()> {
        if !self.rooms.appservices().any_ephemeral_receivers() {
            return Ok(());
        }
        let users = self.typing.changed_since([room_id], None).remove(room_id).unwrap_or_default();
        let event = json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": users } });
        let mut tx = self.db.begin_write().await?;
        let queued = self.queue_appservice_room_ephemeral(&mut tx, room_id, &event).await?;
        tx.commit().await?;
        if queued {
            self.outbox_wakeup.notify_waiters();
        }
        Ok(())
    }

    /// PostgreSQL: removes the typing users whose time is up, for every process; whether any
    /// were removed by this process.
    async fn expire_shared_typing(&self) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        let expired = self.db.typing_expire(&mut tx, now_ms()).await?;
        if expired.is_empty() {
            return Ok(false);
        }
        let serial = crate::storage::Db::next_stream_position(&mut tx, streams::TYPING).await?;
        self.db.bus().publish_in(&mut tx, vec![Signal::TypingExpired { s: serial, r: expired.clone() }]).await?;
        tx.commit().await?;
        self.typing.applied(serial).await;
        self.federate_expiry(&expired).await;
        Ok(true)
    }

    /// Tells the room's appservices and other servers that local users stopped typing.
    async fn federate_expiry(&self, expired: &[(String, Vec<String>)]) {
        for (room_id, users) in expired {
            if let Err(e) = self.typing_to_appservices(room_id).await {
                tracing::warn!(%room_id, error = %e, "typing expiry: queueing for appservices");
            }
            let local: Vec<&String> = users.iter().filter(|u| self.is_local(u)).collect();
            if local.is_empty() {
                continue;
            }
            let destinations = match self.rooms.remote_destinations(room_id).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(%room_id, error = %e, "typing expiry: reading destinations");
                    continue;
                }
            };
            for user in local {
                if let Err(e) = self.queue_edu(&destinations, &typing_edu(room_id, user, false)).await {
                    tracing::warn!(%room_id, error = %e, "typing expiry: queueing EDU");
                }
            }
        }
    }

    /// Expires typing users at their deadline, for as long as the server runs.
    pub async fn run_typing_expiry(&self) {
        let mut idle_tries = 0u32;
        loop {
            // `notify_one` keeps a permit when nobody waits, so an update between reading the
            // next expiry and awaiting is not lost.
            let rearm = self.typing.rearm.notified();
            match self.typing.next_expiry() {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = rearm => {}
                    }
                }
                None => rearm.await,
            }
            if self.db.bus().is_shared() {
                if self.typing.next_expiry().is_none_or(|t| t > Instant::now()) {
                    idle_tries = 0;
                    continue;
                }
                // Another process may have removed them first (its signal is on its way), or
                // the rows were renewed; a map still out of step after a few tries is read again.
                match self.expire_shared_typing().await {
                    Ok(true) => idle_tries = 0,
                    Ok(false) => {
                        idle_tries += 1;
                        if idle_tries >= 8 {
                            idle_tries = 0;
                            if let Err(e) = self.reload_typing().await {
                                tracing::warn!(error = %e, "typing expiry: reading the typing table");
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "typing expiry");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                continue;
            }
            let expired = self.typing.expire(Instant::now());
            for (room_id, _) in &expired {
                self.wake_room(room_id).await;
            }
            self.federate_expiry(&expired).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_moves_only_on_changes() {
        let t = Typing::default();
        let s0 = t.current();
        let later = Instant::now() + Duration::from_secs(30);
        assert!(t.set("!r:x", "@a:x", Some(later)));
        assert!(!t.set("!r:x", "@a:x", Some(later)), "a renewal is no change");
        assert_eq!(t.current(), s0 + 1);
        assert_eq!(t.changed_since(["!r:x"], Some(s0)).get("!r:x").unwrap(), &vec!["@a:x".to_owned()]);
        assert!(t.changed_since(["!r:x"], Some(s0 + 1)).is_empty());
        assert!(t.set("!r:x", "@a:x", None));
        let stopped = t.changed_since(["!r:x"], Some(s0 + 1));
        assert!(stopped.get("!r:x").unwrap().is_empty(), "stopping is reported as an empty list");
        assert!(t.changed_since(["!r:x"], None).is_empty(), "an initial sync shows only rooms with typing users");
    }

    #[test]
    fn expiry_removes_and_bumps() {
        let t = Typing::default();
        let now = Instant::now();
        t.set("!r:x", "@a:x", Some(now + Duration::from_millis(10)));
        t.set("!r:x", "@b:x", Some(now + Duration::from_secs(60)));
        assert_eq!(t.next_expiry(), Some(now + Duration::from_millis(10)));
        let s = t.current();
        let gone = t.expire(now + Duration::from_millis(20));
        assert_eq!(gone, vec![("!r:x".to_owned(), vec!["@a:x".to_owned()])]);
        assert_eq!(t.current(), s + 1);
        assert_eq!(t.changed_since(["!r:x"], Some(s)).get("!r:x").unwrap(), &vec!["@b:x".to_owned()]);
    }
}

//! Typing notifications: who is typing in which room, until when.
//!
//! Typing is ephemeral, so it lives in memory (docs/DESIGN.md allows this): a map of rooms to
//! typing users with their expiry, and a serial that moves on every change and is the `typing`
//! position of sync tokens. The serial starts at the current time in milliseconds, so tokens
//! handed out before a restart stay below every position after it. One background task
//! ([`SyncEngine::run_typing_expiry`]) sleeps until the earliest expiry; nothing polls.
//!
//! Local changes are federated as `m.typing` EDUs through `federation_outbox`; inbound EDUs from
//! other servers come in through [`SyncEngine::set_typing`] with [`TypingOrigin::Remote`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use ruma::{RoomId, UserId};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::SyncEngine;
use crate::error::{Error, Result};

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
        Self {
            inner: Mutex::new(Inner { serial: crate::storage::now_ms(), rooms: HashMap::new() }),
            rearm: Notify::new(),
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
        let until = typing.then(|| {
            let t = match origin {
                TypingOrigin::Local => timeout.unwrap_or(DEFAULT_TIMEOUT).min(MAX_TIMEOUT),
                TypingOrigin::Remote => DEFAULT_TIMEOUT,
            };
            Instant::now() + t
        });
        let changed = self.typing.set(room_id.as_str(), user_id.as_str(), until);
        if typing {
            self.typing.rearm.notify_one();
        }
        if changed {
            self.wake_room(room_id.as_str()).await;
            self.typing_to_appservices(room_id.as_str()).await?;
        }
        // Renewals are federated too: the other servers time typing out on their own.
        if origin == TypingOrigin::Local && (typing || changed) {
            let destinations = self.rooms.remote_destinations(room_id.as_str()).await?;
            self.queue_edu(&destinations, &typing_edu(room_id.as_str(), user_id.as_str(), typing)).await?;
        }
        Ok(())
    }

    /// Queues the room's typing users, as they are now, for the appservices in the room.
    async fn typing_to_appservices(&self, room_id: &str) -> Result<()> {
        if !self.rooms.appservices().is_some_and(|a| a.any_ephemeral_receivers()) {
            return Ok(());
        }
        let users = self.typing.changed_since([room_id], None).remove(room_id).unwrap_or_default();
        let event = json!({ "type": "m.typing", "room_id": room_id, "content": { "user_ids": users } });
        let mut tx = self.db.begin_write().await?;
        let queued = self.queue_appservice_room_ephemeral(&mut tx, room_id, &event).await?;
        tx.commit().await?;
        if queued {
            self.rooms.outbox_wakeup.notify_waiters();
        }
        Ok(())
    }

    /// Expires typing users at their deadline, for as long as the server runs.
    pub async fn run_typing_expiry(&self) {
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
            for (room_id, users) in self.typing.expire(Instant::now()) {
                self.wake_room(&room_id).await;
                if let Err(e) = self.typing_to_appservices(&room_id).await {
                    tracing::warn!(%room_id, error = %e, "typing expiry: queueing for appservices");
                }
                let local: Vec<&String> = users.iter().filter(|u| self.is_local(u)).collect();
                if local.is_empty() {
                    continue;
                }
                let destinations = match self.rooms.remote_destinations(&room_id).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(%room_id, error = %e, "typing expiry: reading destinations");
                        continue;
                    }
                };
                for user in local {
                    if let Err(e) = self.queue_edu(&destinations, &typing_edu(&room_id, user, false)).await {
                        tracing::warn!(%room_id, error = %e, "typing expiry: queueing EDU");
                    }
                }
            }
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

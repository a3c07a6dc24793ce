//! Wakes waiting `/sync` requests after a commit, in this process and in the others sharing the
//! database.
//!
//! One `Notify` per user with a waiting request, held weakly: a user with no waiting request
//! costs nothing, and a waiting request holds one `Arc` and one `Notified` future. Waiters enable
//! their `Notified` before they look at the database, so a commit between the look and the
//! wait is never missed. Every wake-up is also sent to the other processes (`storage::bus`),
//! whose `cluster` task wakes their own waiting requests of those users.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use crate::storage::bus::{Bus, Signal};

/// The registry of per-user wake-ups.
pub struct Notifier {
    users: Mutex<HashMap<String, Weak<Notify>>>,
    bus: Bus,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::new(Bus::none())
    }
}

impl Notifier {
    /// A notifier that also wakes the other processes on `bus`.
    pub fn new(bus: Bus) -> Self {
        Self { users: Mutex::default(), bus }
    }

    /// The user's (or a room's, see [`Notifier::wake_room`]) wake-up handle; keep it for as long
    /// as the request waits.
    pub fn subscribe(&self, user_id: &str) -> Arc<Notify> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = users.get(user_id).and_then(Weak::upgrade) {
            return n;
        }
        if users.len() > 1024 && users.len().is_power_of_two() {
            users.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        users.insert(user_id.to_owned(), Arc::downgrade(&n));
        n
    }

    /// Wakes every waiting request of these users, here and in the other processes.
    pub fn wake<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        if !self.bus.is_shared() {
            return self.wake_local(user_ids);
        }
        let users: Vec<&str> = user_ids.into_iter().collect();
        if !users.is_empty() {
            self.bus.publish(Signal::Wake { u: users.iter().map(|u| (*u).to_owned()).collect() });
        }
        self.wake_local(users);
    }

    /// Wakes the given local members of a room here, and the room's local members in the other
    /// processes (which find them themselves: the signal names the room, not its members).
    /// Requests waiting on the room itself (peeking `/events?room_id=`, subscribed with the room
    /// id, which no user id can equal) are woken too.
    pub fn wake_room<'a>(&self, room_id: &str, group: Option<i64>, local_members: impl IntoIterator<Item = &'a str>) {
        self.bus.publish(Signal::Room { r: room_id.to_owned(), g: group });
        self.wake_local(local_members);
        self.wake_local([room_id]);
    }

    /// Wakes the waiting requests of these users in this process only.
    pub fn wake_local<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in user_ids {
            if let Some(n) = users.get(user).and_then(Weak::upgrade) {
                n.notify_waiters();
            }
        }
    }

    /// Wakes every waiting request of this process (after news may have been missed).
    pub fn wake_all_local(&self) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for n in users.values().filter_map(Weak::upgrade) {
            n.notify_waiters();
        }
    }
}

/// Wakes the background senders (federation, push) after rows were queued for them, in
/// whichever process runs them: they run under leases (`crate::lease`), one process each.
pub struct OutboxWakeup {
    notify: Notify,
    bus: Bus,
}

impl OutboxWakeup {
    /// A wake-up that also reaches the other processes on `bus`.
    pub fn new(bus: Bus) -> Self {
        Self { notify: Notify::new(), bus }
    }

    /// Wakes the senders here and in the other processes.
    pub fn notify_waiters(&self) {
        self.bus.publish(Signal::Outbox);
        self.notify.notify_waiters();
    }

    /// Wakes the senders of this process only.
    pub fn notify_local(&self) {
        self.notify.notify_waiters();
    }

    /// Waits for the next wake-up (enable it before looking at the outbox).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

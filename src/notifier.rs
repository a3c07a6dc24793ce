//! Wakes waiting `/sync` requests after a commit.
//!
//! One `Notify` per user with a waiting request, held weakly: a user with no waiting request
//! costs nothing, and a waiting request holds one `Arc` and one `Notified` future. Waiters enable
//! their `Notified` before they look at the database, so a commit between the look and the
//! wait is never missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

/// The registry of per-user wake-ups.
#[derive(Default)]
pub struct Notifier {
    users: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Notifier {
    /// The user's wake-up handle; keep it for as long as the request waits.
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

    /// Wakes every waiting request of these users.
    pub fn wake<'a>(&self, user_ids: impl IntoIterator<Item = &'a str>) {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for user in user_ids {
            if let Some(n) = users.get(user).and_then(Weak::upgrade) {
                n.notify_waiters();
            }
        }
    }
}

//! Acting on the news of the other processes that share the PostgreSQL database (see
//! `storage::bus` for the channel, docs/scaling.md for the design).
//!
//! One task per process reads the listener's [`BusEvent`]s and turns each signal into what
//! the sending process did locally after its commit: wake the `/sync` requests of the users
//! concerned, wake the background senders, forget stale cache entries, apply typing changes.
//! After the listening connection comes (back) up, anything may have changed unseen: the task
//! reads the typing table again, forgets every cache entry and wakes every waiting request,
//! which compute from the database positions they hold, so nothing committed meanwhile is
//! missed. While the connection is down, it does the same every second.

use std::sync::Arc;
use std::time::Duration;

use crate::e2ee::E2ee;
use crate::rooms::Rooms;
use crate::storage::Db;
use crate::storage::bus::{BusEvent, Signal};
use crate::sync::SyncEngine;

/// What the task acts on.
pub struct Cluster {
    db: Db,
    rooms: Arc<Rooms>,
    outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
    sync: Arc<SyncEngine>,
    e2ee: Arc<E2ee>,
}

impl Cluster {
    /// The handles the signals act on.
    pub fn new(
        db: Db,
        rooms: Arc<Rooms>,
        sync: Arc<SyncEngine>,
        e2ee: Arc<E2ee>,
        outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
    ) -> Self {
        Self { db, rooms, sync, e2ee, outbox_wakeup }
    }

    /// PostgreSQL: raises the typing counter past the clock (see `Db::typing_counter_at_least`),
    /// then starts listening and acting on the other processes' news. Nothing on SQLite.
    pub async fn start(self) -> anyhow::Result<()> {
        if !self.db.bus().is_shared() {
            return Ok(());
        }
        self.db.typing_counter_at_least(crate::storage::now_ms()).await?;
        let mut events = self.db.bus().listen(&self.db);
        tokio::spawn(async move {
            let mut connected = false;
            loop {
                let event = if connected {
                    events.recv().await
                } else {
                    // Down: nobody tells us what changed, so look again every second.
                    match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
                        Ok(e) => e,
                        Err(_) => {
                            self.forget_everything();
                            continue;
                        }
                    }
                };
                let Some(event) = event else { return };
                match event {
                    BusEvent::Connected => {
                        connected = true;
                        if let Err(e) = self.sync.reload_typing().await {
                            tracing::warn!(error = %e, "reading the typing table");
                        }
                        self.forget_everything();
                    }
                    BusEvent::Disconnected => {
                        connected = false;
                        self.forget_everything();
                    }
                    BusEvent::Signals { own, signals } => {
                        for s in signals {
                            self.apply(own, s).await;
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Forgets every cache entry another process could have made stale and wakes every
    /// waiting request and sender of this process.
    fn forget_everything(&self) {
        self.db.forget_cached_tokens(None);
        self.db.forget_cached_shadow_bans(None);
        self.e2ee.forget_key_counts();
        self.sync.recent.forget_user_local(None);
        self.rooms.notifier().wake_all_local();
        self.outbox_wakeup.notify_local();
    }

    async fn apply(&self, own: bool, signal: Signal) {
        // Typing changes are applied from the signal by every process, the sender included,
        // so that each applies them in the same order; the rest the sender did already.
        match signal {
            Signal::Typing { s, r, u, until } => {
                self.sync.typing.apply(s, &r, &u, until);
                if s != 0 {
                    self.sync.wake_room_local(&r).await;
                }
            }
            Signal::TypingExpired { s, r } => {
                self.sync.typing.apply_expired(s, &r);
                for (room_id, _) in &r {
                    self.sync.wake_room_local(room_id).await;
                }
            }
            _ if own => {}
            Signal::Wake { u } => self.rooms.notifier().wake_local(u.iter().map(String::as_str)),
            Signal::Room { r, g } => {
                match self.rooms.local_members(&r, g).await {
                    Ok(users) => self.rooms.notifier().wake_local(users.iter().map(String::as_str).chain([r.as_str()])),
                    Err(e) => tracing::warn!(room_id = %r, error = %e, "reading members to wake"),
                }
                self.outbox_wakeup.notify_local();
            }
            Signal::Outbox => self.outbox_wakeup.notify_local(),
            Signal::Tokens { u } => self.db.forget_cached_tokens(Some(&u)),
            Signal::ShadowBan { u } => self.db.forget_cached_shadow_bans(Some(&u)),
            Signal::KeyCounts => self.e2ee.forget_key_counts(),
            Signal::Memberships { u } => self.sync.recent.forget_user_local(Some(&u)),
            Signal::Redacted { e } => self.rooms.evict_cached_event(&e),
            Signal::Ping => {}
        }
    }
}

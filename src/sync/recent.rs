//! The recent-events log: the newest timeline events and membership changes of every room, read
//! from the database once and shared by every `/sync` that needs them.
//!
//! Why: when a message arrives in a room with a thousand members, a thousand long-polls wake at
//! once and each asks the same questions (which of my rooms have new events, what are they, did
//! anyone join or leave). Answered one request at a time that is thousands of queries per
//! message; answered from this log it is two queries per new stream position, whoever wrote it.
//!
//! What it guarantees: the log is *complete* for the stream range `(start, end]`: it holds every
//! accepted, non-outlier event and the latest membership change of every `(room, user)` whose
//! change lies in that range. It is filled from the database (never from this process's own
//! writes), so events written by other processes are in it too, and it is only extended past a
//! position once that position's transaction has committed: stream positions are handed out under
//! the counter row's lock, so every position up to the counter read is committed.
//!
//! Membership rows are updated in place, so the refresh reads membership changes *without* an
//! upper bound first and extends `end` to the newest one seen before it reads events: a change
//! overwritten by a newer one is then still reported, at the newer position, inside the range.
//!
//! Redactions rewrite their target in place; a refresh that brings a redaction reloads its target
//! if the log holds it. Readers whose token is older than `start` use the database as before.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use super::memo::Memo;
use crate::error::Result;
use crate::storage::Db;
use crate::storage::rooms::StoredEvent;
use crate::storage::sync::MembershipRow;

/// Events the log keeps; older ones fall off the front (readers that far behind use the database).
const MAX_EVENTS: usize = 4096;
/// A refresh that would read more positions than this starts the log afresh instead.
const MAX_GAP: i64 = 2048;

/// A user's membership rows.
pub type Memberships = Arc<Vec<MembershipRow>>;

/// One membership change: `(stream, room, user)`.
type MemberChange = (i64, Arc<str>, Arc<str>);

#[derive(Default)]
struct Log {
    /// Complete for `(start, end]`; `None` until the first refresh.
    range: Option<(i64, i64)>,
    /// Accepted, non-outlier events in stream order (shared, so a refresh copies pointers).
    events: VecDeque<Arc<StoredEvent>>,
    /// Membership changes in stream order.
    members: VecDeque<MemberChange>,
}

/// A consistent view of the log for one reader.
pub struct View {
    /// The log is complete for `(start, end]`.
    pub start: i64,
    /// See `start`.
    pub end: i64,
    log: Arc<Log>,
}

impl View {
    /// Whether the log answers for `(since, end]`.
    pub fn covers(&self, since: i64) -> bool {
        since >= self.start
    }

    /// Rooms of `rooms` with events in `(since, end]`.
    pub fn rooms_with_events(&self, rooms: &[&str], since: i64) -> HashSet<String> {
        let wanted: HashSet<&str> = rooms.iter().copied().collect();
        self.after(since)
            .filter(|e| wanted.contains(e.pdu.room_id.as_str()))
            .map(|e| e.pdu.room_id.to_string())
            .collect()
    }

    /// The room's events in `(floor, cursor]`, newest first, at most `limit`.
    pub fn window(&self, room_id: &str, floor: i64, cursor: i64, limit: usize) -> Vec<StoredEvent> {
        self.after(floor)
            .rev()
            .filter(|e| e.stream <= cursor && e.pdu.room_id.as_str() == room_id)
            .take(limit)
            .map(|e| StoredEvent::clone(e))
            .collect()
    }

    /// The room's events in `(floor, cursor]`, oldest first.
    pub fn events_in<'a>(
        &'a self,
        room_id: &'a str,
        floor: i64,
        cursor: i64,
    ) -> impl Iterator<Item = &'a StoredEvent> + 'a {
        self.after(floor).filter(move |e| e.stream <= cursor && e.pdu.room_id.as_str() == room_id).map(|e| &**e)
    }

    /// Whether a membership changed in `(since, end]` in one of `rooms`.
    pub fn members_moved_in(&self, rooms: &HashSet<&str>, since: i64) -> bool {
        self.log.members.iter().rev().take_while(|m| m.0 > since).any(|m| rooms.contains(&*m.1))
    }

    /// Whether `user`'s own membership of any room changed in `(since, end]`.
    pub fn user_moved(&self, user: &str, since: i64) -> bool {
        self.log.members.iter().rev().take_while(|m| m.0 > since).any(|m| &*m.2 == user)
    }

    /// The events in `(since, end]`, oldest first.
    pub fn events_after(&self, since: i64) -> impl Iterator<Item = &StoredEvent> {
        self.after(since).map(|e| &**e)
    }

    /// How many events of each room the log holds.
    pub fn counts_by_room(&self) -> std::collections::HashMap<&str, usize> {
        let mut out = std::collections::HashMap::new();
        for e in self.after(self.start) {
            *out.entry(e.pdu.room_id.as_str()).or_default() += 1;
        }
        out
    }

    fn after(&self, since: i64) -> impl DoubleEndedIterator<Item = &Arc<StoredEvent>> {
        let first = self.log.events.partition_point(|e| e.stream <= since);
        self.log.events.range(first..)
    }
}

/// The shared log, and each user's memberships as of a position.
pub struct Recent {
    db: Db,
    current: RwLock<Arc<Log>>,
    /// Whether a reader is refreshing; the others wait for `refreshed` and then use its result.
    refreshing: Mutex<bool>,
    refreshed: tokio::sync::Notify,
    memberships: Memo<String, (i64, Memberships)>,
    /// Older events read by syncs (state events above all: the member events that lazy-loading
    /// sends again and again); entries are dropped when the log brings their redaction.
    events: Mutex<EventMemo>,
}

#[derive(Default)]
struct EventMemo {
    /// Moves with every redaction seen: a read that began before one is not remembered.
    generation: u64,
    by_id: HashMap<String, Arc<StoredEvent>>,
}

impl Recent {
    /// An empty log.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            current: RwLock::new(Arc::new(Log::default())),
            refreshing: Mutex::new(false),
            refreshed: tokio::sync::Notify::new(),
            memberships: Memo::default(),
            events: Mutex::new(EventMemo::default()),
        }
    }

    fn snapshot(&self) -> Arc<Log> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn view_of(log: Arc<Log>) -> Option<View> {
        let (start, end) = log.range?;
        Some(View { start, end, log })
    }

    /// A view complete up to at least `upto` (a committed position, e.g. the events counter).
    pub async fn view(&self, upto: i64) -> Result<View> {
        if let Some(v) = Self::view_of(self.snapshot()).filter(|v| v.end >= upto) {
            return Ok(v);
        }
        loop {
            let refreshed = self.refreshed.notified();
            tokio::pin!(refreshed);
            {
                let mut refreshing = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(v) = Self::view_of(self.snapshot()).filter(|v| v.end >= upto) {
                    return Ok(v);
                }
                if !*refreshing {
                    *refreshing = true;
                    break;
                }
                // Registered before the lock goes, so the refresher's wake-up is not missed.
                refreshed.as_mut().enable();
            }
            refreshed.await;
        }
        // This reader refreshes; the guard lets the others go even if this future is dropped.
        struct Refreshing<'a>(&'a Recent);
        impl Drop for Refreshing<'_> {
            fn drop(&mut self) {
                *self.0.refreshing.lock().unwrap_or_else(|e| e.into_inner()) = false;
                self.0.refreshed.notify_waiters();
            }
        }
        let _refreshing = Refreshing(self);
        let log = self.snapshot();
        let next = Arc::new(self.extend(&log, upto).await?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next.clone();
        Ok(Self::view_of(next).expect("a refreshed log has a range"))
    }

    async fn extend(&self, log: &Log, upto: i64) -> Result<Log> {
        let (start, end) = match log.range {
            Some((start, end)) if upto - end <= MAX_GAP => (start, end),
            // First use or too far behind: start afresh at `upto`, nothing before it is known.
            _ => return Ok(Log { range: Some((upto, upto)), ..Log::default() }),
        };
        // Membership changes first, without an upper bound (see the module doc).
        let changes = self.db.membership_changes_after(end).await?;
        let upto = changes.iter().map(|c| c.2).max().map_or(upto, |m| m.max(upto));
        let events = self.db.events_in_range(end, upto).await?;
        let mut next = Log { range: Some((start, upto)), events: log.events.clone(), members: log.members.clone() };
        let redacted: Vec<String> =
            events.iter().filter_map(|e| e.pdu.redacts_target.as_ref()).map(|t| t.to_string()).collect();
        next.events.extend(events.into_iter().map(Arc::new));
        let mut changes: Vec<MemberChange> =
            changes.into_iter().map(|(room, user, stream)| (stream, Arc::from(room), Arc::from(user))).collect();
        changes.sort_by_key(|c| c.0);
        next.members.extend(changes);
        if !redacted.is_empty() {
            let mut memo = self.events.lock().unwrap_or_else(|e| e.into_inner());
            memo.generation += 1;
            for id in &redacted {
                memo.by_id.remove(id);
            }
        }
        if !redacted.is_empty() {
            let fresh = self.db.get_events(&redacted).await?;
            for ev in next.events.iter_mut() {
                if let Some(f) = fresh.iter().find(|f| f.pdu.event_id == ev.pdu.event_id) {
                    *ev = Arc::new(f.clone());
                }
            }
        }
        // Keep the newest events; the log then starts at the last one dropped.
        let mut start = start;
        while next.events.len() > MAX_EVENTS {
            if let Some(dropped) = next.events.pop_front() {
                start = start.max(dropped.stream);
            }
        }
        while next.members.front().is_some_and(|m| m.0 <= start) {
            next.members.pop_front();
        }
        next.range = Some((start, upto));
        Ok(next)
    }

    /// `user`'s memberships as of the view's end: remembered when no change of theirs happened
    /// since they were read, else read from the database (then a row may be newer than the
    /// view, when its change committed meanwhile; the caller extends the view to it).
    pub async fn memberships(&self, user: &str, view: &View) -> Result<Memberships> {
        let known = self.memberships.get(user);
        if let Some((as_of, rows)) = known
            && view.covers(as_of)
            && as_of <= view.end
            && !view.user_moved(user, as_of)
        {
            return Ok(rows);
        }
        let rows = Arc::new(self.db.user_memberships(user).await?);
        // Rows newer than the view are not remembered: the next reader re-reads them.
        if rows.iter().all(|r| r.stream <= view.end) {
            self.memberships.insert(user.to_owned(), (view.end, rows.clone()));
        }
        Ok(rows)
    }

    /// Events by id (missing ones are skipped), through the memo. Used for events a sync sends
    /// as state; the memo holds at most [`MAX_EVENTS`] of them.
    pub async fn events(&self, ids: &[String]) -> Result<Vec<StoredEvent>> {
        let mut out = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        let generation = {
            let memo = self.events.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match memo.by_id.get(id) {
                    Some(ev) => out.push(StoredEvent::clone(ev)),
                    None => missing.push(id.clone()),
                }
            }
            memo.generation
        };
        if missing.is_empty() {
            return Ok(out);
        }
        let read = self.db.get_events(&missing).await?;
        let mut memo = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if memo.generation == generation {
            if memo.by_id.len() + read.len() > MAX_EVENTS {
                memo.by_id.clear();
            }
            for ev in &read {
                memo.by_id.insert(ev.pdu.event_id.to_string(), Arc::new(ev.clone()));
            }
        }
        out.extend(read);
        Ok(out)
    }

    /// Forgets a user's remembered memberships (after a change that moves no stream position,
    /// such as forgetting a room).
    /// The other processes forget theirs too.
    pub fn forget_user(&self, user: &str) {
        self.memberships.remove(user);
        self.db.bus().publish(crate::storage::bus::Signal::Memberships { u: user.to_owned() });
    }

    /// Forgets a user's remembered memberships in this process only (another process changed
    /// them), or everyone's (`None`).
    pub fn forget_user_local(&self, user: Option<&str>) {
        match user {
            Some(user) => self.memberships.remove(user),
            None => self.memberships.clear(),
        }
    }
}

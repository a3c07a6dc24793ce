//! `/sync` and everything it carries: room timelines and state, typing, receipts, account data,
//! presence and to-device messages.
//!
//! Owns the sync streams and their tokens ([`token`]), the long-poll, and one module per
//! stream: [`typing`] (in memory), [`receipts`], [`account_data`], [`presence`], [`to_device`],
//! and [`e2ee`], where device lists and key counts come from the E2EE engine. [`rooms`] builds the
//! per-room parts from the room engine's events and state groups; [`filter`] reads sync filters.
//!
//! How a sync is computed (see docs/ARCHITECTURE.md, "Sync"):
//! 1. Read the current position of every stream (one query) and the typing serial; these form
//!    `next_batch`. Every range read below is bounded by them, so nothing committed later is
//!    sent now, and it is sent by the next sync instead: no event is skipped or repeated.
//! 2. Read the user's memberships in one statement. A membership row is written with its
//!    event's stream position in the event's transaction, and stream positions become visible
//!    in order, so the events position is raised to the newest row seen: the membership
//!    snapshot and the events range then describe the same moment.
//! 3. Build the room, presence, account data, to-device and E2EE parts for `(since, next]`.
//!
//! Waiting: a request with `since` and a timeout subscribes to the [`Notifier`] and enables its
//! `Notified` future *before* computing, so a commit between the computation and the wait is
//! not missed. Every writer of a stream calls `notifier.wake` for the local users concerned
//! after its commit, which also signals the other processes sharing a PostgreSQL database
//! (`storage::bus`, `cluster`). While waiting, a request holds its `Notified`, its token, and the shared
//! filter: no database connection, no thread, no response buffer.

pub mod account_data;
pub mod e2ee;
pub mod filter;
pub mod legacy;
pub mod memo;
pub mod presence;
pub mod receipts;
pub mod recent;
pub mod rooms;
pub mod sliding;
pub mod to_device;
pub mod token;
pub mod typing;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ruma::{DeviceId, UserId};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::e2ee::E2ee;
use crate::error::{Error, Result};
use crate::notifier::Notifier;
use crate::rooms::Rooms;
use crate::storage::e2ee::DEVICE_LISTS_STREAM;
use crate::storage::outbox::Outbox;
use crate::storage::sync::streams;
use crate::storage::{Db, now_ms};
use filter::SyncFilter;
use memo::Memo;
use token::SyncToken;

/// Shared stream-position reads (see `SyncEngine::current_token`).
#[derive(Default)]
struct TokenReads {
    /// The last positions read and when that read began.
    last: Option<(Instant, SyncToken)>,
    /// A read is under way.
    reading: bool,
}

/// What a room summary is made of, as of one state of the room.
#[derive(Debug)]
struct Summary {
    joined: i64,
    invited: i64,
    /// The first six joined or invited members (the heroes, once the syncing user is left out).
    first: Vec<String>,
    /// When `first` has at most one member (who may be the syncing user): the first six who
    /// left or were banned, the heroes of a room its user is alone in.
    former: Vec<String>,
}

/// Unread counts as of `upto`, valid while the receipts stream, the member's membership and
/// the room's events stay where they were.
#[derive(Debug, Clone)]
struct Unread {
    upto: i64,
    receipts: i64,
    member_stream: i64,
    counts: Arc<crate::storage::push::UnreadCounts>,
}

/// Longest long-poll a client may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The `/sync` engine and the stream writers; one per process, shared through `AppState`.
pub struct SyncEngine {
    db: Db,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    e2ee: Arc<E2ee>,
    /// The federation outbox's signal: typing, receipts, presence and to-device messages for
    /// other servers are queued there.
    outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
    /// Who is typing where (in memory).
    pub typing: typing::Typing,
    presence: presence::PresenceTracker,
    /// Parsed filters shared by the requests that use them (a long-poll holds one `Arc`).
    filters: Mutex<HashMap<(String, String), Weak<SyncFilter>>>,
    /// The to-device position each `(user, device)` acknowledged last (see `ack_to_device`).
    acked: Memo<(String, String), i64>,
    /// Member counts and first members per room, at a state group (see `rooms::summary`).
    summaries: Memo<String, (i64, Arc<Summary>)>,
    /// State group of a room at a committed stream position (see `rooms::group_at`).
    groups: Memo<(String, i64), Arc<tokio::sync::OnceCell<Option<i64>>>>,
    /// Unread counts per `(user, room)` as of a position (see `rooms::unread_count`).
    unread: Memo<(String, String), Unread>,
    /// Recent events and membership changes, shared by the long-polls that wake together.
    pub recent: recent::Recent,
    /// Sliding sync's memos.
    sliding: sliding::Memos,
    /// Wakes the callers waiting for a stream-position read under way (see `current_token`).
    token_read: tokio::sync::Notify,
    /// The last stream positions read, when that read began, and whether one is under way.
    last_token: Mutex<TokenReads>,
    /// Set at shutdown: long-polls answer at once instead of holding the shutdown up.
    stopping: AtomicBool,
    stop: tokio::sync::Notify,
}

/// The parameters of one `/sync` request.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// `since`: continue from this `next_batch`.
    pub since: Option<String>,
    /// The resolved filter.
    pub filter: Arc<SyncFilter>,
    /// `full_state`: full state for every room (and no waiting).
    pub full_state: bool,
    /// `use_state_after` (v1.16): `state_after` instead of `state`.
    pub use_state_after: bool,
    /// `set_presence`: `online` (default), `unavailable` or `offline`.
    pub set_presence: String,
    /// `timeout`: how long to wait for something to send.
    pub timeout: Duration,
}

/// A computed sync response.
pub struct SyncResponse {
    /// The `next_batch` position.
    pub next: SyncToken,
    /// Everything but `next_batch`.
    pub body: Map<String, Value>,
    /// Whether nothing but `next_batch` would be sent.
    pub empty: bool,
}

impl SyncResponse {
    /// The response JSON.
    pub fn into_json(self) -> Value {
        let mut body = self.body;
        body.insert("next_batch".into(), json!(self.next.to_token()));
        Value::Object(body)
    }
}

/// The request-independent inputs of one computation.
pub struct Ctx<'a> {
    /// The syncing user.
    pub user: &'a UserId,
    /// Their device.
    pub device: &'a DeviceId,
    /// The options.
    pub opts: &'a SyncOptions,
    /// Positions the client has (None: initial sync).
    pub since: Option<SyncToken>,
    /// Positions this response brings the client to.
    pub now: SyncToken,
    /// Wall clock, for `last_active_ago`.
    pub now_ms: i64,
    /// The recent-events log, complete up to `now.events`.
    pub view: &'a recent::View,
}

impl SyncEngine {
    /// Creates the engine.
    pub fn new(
        db: Db,
        rooms: Arc<Rooms>,
        notifier: Arc<Notifier>,
        e2ee: Arc<E2ee>,
        outbox_wakeup: Arc<crate::notifier::OutboxWakeup>,
    ) -> Self {
        Self {
            outbox_wakeup,
            recent: recent::Recent::new(db.clone()),
            db,
            rooms,
            notifier,
            e2ee,
            typing: typing::Typing::default(),
            presence: presence::PresenceTracker::default(),
            filters: Mutex::new(HashMap::new()),
            acked: Memo::default(),
            unread: Memo::default(),
            groups: Memo::default(),
            summaries: Memo::default(),
            sliding: sliding::Memos::default(),
            token_read: tokio::sync::Notify::new(),
            last_token: Mutex::new(TokenReads::default()),
            stopping: AtomicBool::new(false),
            stop: tokio::sync::Notify::new(),
        }
    }

    /// Ends every waiting long-poll (with an empty response) and lets no new one wait; called
    /// when the server starts shutting down.
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_waiters();
    }

    /// Starts the typing expiry and the presence keep-alive on the current runtime (every
    /// process runs them; the presence sweep runs under a lease, see `server`).
    pub fn spawn_tasks(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move { me.run_typing_expiry().await });
        let me = self.clone();
        tokio::spawn(async move { me.run_presence_keepalive().await });
    }

    /// Whether a user id belongs to this server.
    pub fn is_local(&self, user_id: &str) -> bool {
        user_id.split_once(':').is_some_and(|(_, s)| self.is_local_server(s))
    }

    fn is_local_server(&self, server: &str) -> bool {
        server == self.rooms.server_name().as_str()
    }

    /// Wakes the `/sync` of the room's local joined members, here and in the other processes.
    pub async fn wake_room(&self, room_id: &str) {
        match self.db.members_with(room_id, "join").await {
            Ok(members) => {
                self.notifier.wake_room(room_id, None, members.iter().map(String::as_str).filter(|u| self.is_local(u)))
            }
            Err(e) => tracing::warn!(%room_id, error = %e, "reading members to wake"),
        }
    }

    /// Wakes the `/sync` of the room's local joined members in this process only.
    pub async fn wake_room_local(&self, room_id: &str) {
        match self.db.members_with(room_id, "join").await {
            Ok(members) => self.notifier.wake_local(members.iter().map(String::as_str).filter(|u| self.is_local(u))),
            Err(e) => tracing::warn!(%room_id, error = %e, "reading members to wake"),
        }
    }

    /// Queues a room's ephemeral event (`m.typing`, `m.receipt`, with its `room_id`) in `tx`
    /// for the appservices with `receive_ephemeral` that have a user joined to the room;
    /// returns whether any was queued (the caller wakes the senders after commit).
    pub(crate) async fn queue_appservice_room_ephemeral(
        &self,
        tx: &mut crate::storage::WriteTx,
        room_id: &str,
        event: &Value,
    ) -> Result<bool> {
        let appservices = self.rooms.appservices();
        if !appservices.any_ephemeral_receivers() {
            return Ok(false);
        }
        let members = self.db.members_with(room_id, "join").await?;
        appservices.queue_ephemeral(tx, "edu", event, |reg| members.iter().any(|u| reg.is_user(u))).await
    }

    /// Queues one EDU for each destination in its own short transaction and wakes the sender.
    pub async fn queue_edu(&self, destinations: &[String], edu: &Value) -> Result<()> {
        if destinations.is_empty() {
            return Ok(());
        }
        let payload = edu.to_string();
        let mut tx = self.db.begin_write().await?;
        for d in destinations {
            self.db.queue_outbox(&mut tx, d, Outbox::Edu(&payload)).await?;
        }
        tx.commit().await?;
        self.outbox_wakeup.notify_waiters();
        Ok(())
    }

    /// Stores a filter as the client wrote it (`POST /user/{userId}/filter`); returns its id.
    pub async fn store_filter(&self, user_id: &UserId, json: &Value) -> Result<String> {
        self.db.insert_filter(user_id.as_str(), &json.to_string()).await
    }

    /// A stored filter's JSON text, as the client wrote it.
    pub async fn stored_filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
        self.db.get_filter(user_id.as_str(), filter_id).await
    }

    /// The filter of a request: a stored filter id, inline JSON, or none. Parsed filters are
    /// shared between requests, so that thousands of waiting long-polls with the same filter
    /// hold one copy.
    pub async fn resolve_filter(&self, user_id: &UserId, filter: Option<&str>) -> Result<Arc<SyncFilter>> {
        let Some(filter) = filter.map(str::trim).filter(|f| !f.is_empty()) else {
            return self.shared_filter(("".into(), "".into()), || Ok(Value::Null));
        };
        if filter.starts_with('{') {
            return self.shared_filter(("".into(), filter.to_owned()), || {
                serde_json::from_str(filter).map_err(|e| Error::bad_json(format!("Invalid filter JSON: {e}")))
            });
        }
        let key = (user_id.to_string(), filter.to_owned());
        if let Some(f) = self.cached_filter(&key) {
            return Ok(f);
        }
        let json = self
            .db
            .get_filter(user_id.as_str(), filter)
            .await?
            .ok_or_else(|| Error::not_found(format!("No filter with id {filter}")))?;
        self.shared_filter(key, || Ok(serde_json::from_str(&json)?))
    }

    fn cached_filter(&self, key: &(String, String)) -> Option<Arc<SyncFilter>> {
        self.filters.lock().unwrap_or_else(|e| e.into_inner()).get(key).and_then(Weak::upgrade)
    }

    fn shared_filter(&self, key: (String, String), json: impl FnOnce() -> Result<Value>) -> Result<Arc<SyncFilter>> {
        if let Some(f) = self.cached_filter(&key) {
            return Ok(f);
        }
        let parsed = Arc::new(SyncFilter::from_json(&json()?));
        let mut filters = self.filters.lock().unwrap_or_else(|e| e.into_inner());
        if filters.len() >= 1024 {
            filters.retain(|_, w| w.strong_count() > 0);
        }
        filters.insert(key, Arc::downgrade(&parsed));
        Ok(parsed)
    }

    /// Answers one `/sync`: computes at once, and if there is nothing to send, waits for a
    /// wake-up or the timeout (only for incremental syncs without `full_state`).
    pub async fn sync(&self, user_id: &UserId, device_id: &DeviceId, opts: SyncOptions) -> Result<Value> {
        let since = opts.since.as_deref().map(SyncToken::parse_since).transpose()?.flatten();
        // Every await that touches the database is boxed: the request's future is as large as
        // its largest state, and a long-poll keeps it for as long as it waits, so only the
        // small waiting state below should be inline.
        let _syncing = Box::pin(self.presence_on_sync(user_id, &opts.set_presence)).await?;
        if let Some(s) = since {
            Box::pin(self.ack_to_device(user_id, device_id, s.to_device)).await?;
        }
        let stop = self.stop.notified();
        tokio::pin!(stop);
        stop.as_mut().enable();
        let may_wait =
            since.is_some() && !opts.full_state && !opts.timeout.is_zero() && !self.stopping.load(Ordering::SeqCst);
        let deadline = Instant::now() + opts.timeout.min(MAX_TIMEOUT);
        let wakeup = self.notifier.subscribe(user_id.as_str());
        let _waiting = may_wait.then(|| crate::metrics::Occupied::new(metrics::gauge!("myelin_sync_waiting")));
        let mut since = since;
        loop {
            let notified = wakeup.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Box::pin(self.current_token()).await?;
            let next = match since {
                // No stream moved since the client's token: nothing can be new (a commit after
                // the read above wakes `notified`), so wait without computing. This is what
                // most long-polls do right after the previous answer.
                Some(s) if may_wait && now.at_least(s) == s => s,
                _ => {
                    // Boxed, so that the waiting future does not also reserve the computation's space.
                    let res = Box::pin(self.compute(user_id, device_id, since, &opts, now)).await?;
                    if !may_wait || !res.empty {
                        return Ok(res.into_json());
                    }
                    // Nothing for this client up to `res.next`; continue from there.
                    res.next
                }
            };
            since = Some(next);
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, notified) => {
                    if woken.is_err() {
                        return Ok(json!({ "next_batch": next.to_token() }));
                    }
                }
                _ = stop.as_mut() => return Ok(json!({ "next_batch": next.to_token() })),
            }
        }
    }

    /// The client got everything up to `upto`: its to-device messages can go. Each device's
    /// acknowledged position is remembered, so the long-polls that follow one another with the
    /// same position cost no query.
    async fn ack_to_device(&self, user_id: &UserId, device_id: &DeviceId, upto: i64) -> Result<()> {
        let key = (user_id.to_string(), device_id.to_string());
        if self.acked.get(&key).is_some_and(|a| a >= upto) {
            return Ok(());
        }
        self.db.ack_to_device(user_id.as_str(), device_id.as_str(), upto).await?;
        self.acked.update(key, |a| a.map_or(upto, |&a| a.max(upto)));
        Ok(())
    }

    /// The position of every stream. Long-polls woken by one commit all ask at once: a read
    /// that *began* after a caller asked reflects every commit before the question, so callers
    /// share it, and a thousand wake-ups cost one or two reads.
    async fn current_token(&self) -> Result<SyncToken> {
        let asked = Instant::now();
        loop {
            let notified = self.token_read.notified();
            tokio::pin!(notified);
            {
                let mut reads = self.last_token.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((began, token)) = reads.last
                    && began > asked
                {
                    return Ok(SyncToken { typing: self.typing.current(), ..token });
                }
                if !reads.reading {
                    reads.reading = true;
                    break;
                }
                // Someone is reading: wait for their answer (registered before the lock goes).
                notified.as_mut().enable();
            }
            notified.await;
        }
        // This caller reads; the guard lets the waiters go even if this future is dropped.
        struct Reading<'a>(&'a SyncEngine);
        impl Drop for Reading<'_> {
            fn drop(&mut self) {
                self.0.last_token.lock().unwrap_or_else(|e| e.into_inner()).reading = false;
                self.0.token_read.notify_waiters();
            }
        }
        let _reading = Reading(self);
        let began = Instant::now();
        let token = self.read_token().await?;
        self.last_token.lock().unwrap_or_else(|e| e.into_inner()).last = Some((began, token));
        Ok(token)
    }

    /// Reads the position of every stream from the database.
    async fn read_token(&self) -> Result<SyncToken> {
        let typing = self.typing.current();
        // One statement for every stream: a woken long-poll starts with this read.
        let p = self
            .db
            .stream_positions(&[
                streams::EVENTS,
                streams::RECEIPTS,
                streams::ACCOUNT_DATA,
                streams::TO_DEVICE,
                streams::PRESENCE,
                DEVICE_LISTS_STREAM,
            ])
            .await?;
        let at = |n: &str| p.get(n).copied().unwrap_or(0);
        Ok(SyncToken {
            events: at(streams::EVENTS),
            typing,
            receipts: at(streams::RECEIPTS),
            account_data: at(streams::ACCOUNT_DATA),
            to_device: at(streams::TO_DEVICE),
            presence: at(streams::PRESENCE),
            device_lists: at(DEVICE_LISTS_STREAM),
        })
    }

    /// Computes the response for `(since, now]`.
    async fn compute(
        &self,
        user: &UserId,
        device: &DeviceId,
        since: Option<SyncToken>,
        opts: &SyncOptions,
        now: SyncToken,
    ) -> Result<SyncResponse> {
        let (view, memberships, now) = self.moment(user, now, since).await?;
        let ctx = Ctx { user, device, opts, since, now, now_ms: now_ms(), view: &view };
        let mut body = Map::new();

        let account_data = match since {
            Some(s) if s.account_data == now.account_data => Vec::new(),
            _ => {
                self.db.account_data_since(user.as_str(), since.map_or(0, |s| s.account_data), now.account_data).await?
            }
        };
        let (global_data, room_data): (Vec<_>, Vec<_>) = account_data.into_iter().partition(|r| r.room_id.is_empty());

        let rooms = self.room_updates(&ctx, &memberships, room_data).await?;
        let mut empty = rooms.is_empty();
        if !rooms.is_empty() {
            body.insert("rooms".into(), Value::Object(rooms));
        }

        if opts.filter.wants_presence() && since.is_none_or(|s| s.presence < now.presence) {
            let rows = self.db.presence_since(user.as_str(), since.map_or(0, |s| s.presence), now.presence).await?;
            let events: Vec<Value> = rows
                .iter()
                .filter(|p| filter::allows(&opts.filter.presence, "m.presence", Some(&p.user_id)))
                .map(|p| presence::presence_event(p, ctx.now_ms))
                .collect();
            if !events.is_empty() {
                empty = false;
                body.insert("presence".into(), json!({ "events": events }));
            }
        }

        let global: Vec<Value> = global_data
            .iter()
            .filter(|r| filter::allows(&opts.filter.account_data, &r.data_type, None))
            .map(|r| {
                json!({ "type": r.data_type, "content": serde_json::from_str::<Value>(&r.content).unwrap_or_default() })
            })
            .collect();
        if !global.is_empty() {
            empty = false;
            body.insert("account_data".into(), json!({ "events": global }));
        }

        let mut next = now;
        if since.is_none_or(|s| s.to_device < now.to_device) {
            let rows = self
                .db
                .to_device_since(
                    user.as_str(),
                    device.as_str(),
                    since.map_or(0, |s| s.to_device),
                    now.to_device,
                    to_device::BATCH,
                )
                .await?;
            if rows.len() as i64 == to_device::BATCH {
                // More are waiting: the next sync continues after the last one sent.
                next.to_device = rows.last().map_or(now.to_device, |r| r.stream_id);
            }
            if !rows.is_empty() {
                empty = false;
                body.insert("to_device".into(), json!({ "events": to_device::to_device_events(&rows) }));
            }
        }

        let e2ee = self.e2ee_sync(&ctx, &memberships).await?;
        empty &= e2ee.is_empty();
        e2ee.write_into(&mut body);

        Ok(SyncResponse { next, body, empty })
    }
}

impl SyncEngine {
    /// The moment a sync (or sliding sync) answers for: the recent-events view at `now`, the
    /// user's memberships, and `now` as the answer's token. See the module doc: every position
    /// up to the newest membership row seen is visible, so the view and `now` move up to it. A
    /// token from the client never moves backwards (e.g. the typing serial of another process):
    /// ranges past `now` are empty, and the client keeps its positions.
    pub(crate) async fn moment(
        &self,
        user: &UserId,
        mut now: SyncToken,
        since: Option<SyncToken>,
    ) -> Result<(recent::View, recent::Memberships, SyncToken)> {
        let mut view = self.recent.view(now.events).await?;
        let memberships = self.recent.memberships(user.as_str(), &view).await?;
        if let Some(max) = memberships.iter().map(|m| m.stream).max()
            && max > view.end
        {
            view = self.recent.view(max).await?;
        }
        now.events = now.events.max(view.end);
        if let Some(s) = since {
            now = now.at_least(s);
        }
        Ok((view, memberships, now))
    }
}

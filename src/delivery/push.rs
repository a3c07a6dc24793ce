//! The push sender: a background task that follows, for every pusher, its user's push actions
//! (`event_push_actions`: the events whose push rules said `notify`, evaluated once per user
//! when each event was stored) and posts a notification to the pusher's gateway (push gateway
//! API v1) for each.
//!
//! Each pusher's position (`pushers.last_stream`) is in the database and moves only past events
//! that were handled (pushed, or found not to need a push), so a restart neither repeats nor
//! skips notifications, short of a crash between a gateway's answer and the position's update.
//! A gateway that fails (unreachable, 5xx, 429) is retried with doubling delays from 2 s to
//! 10 min, without holding up other pushers; pushkeys the gateway rejects are deleted. Accepting
//! events never waits for any of this: the task wakes after commits (`OutboxWakeup`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ruma::UserId;
use ruma::push::{Action, HighlightTweakValue, Tweak};
use serde_json::{Value, json};

use crate::error::Result;
use crate::media::preview::Fetcher;
use crate::notifier::OutboxWakeup;
use crate::rooms::Rooms;
use crate::storage::Db;
use crate::storage::push::PusherRow;
use crate::storage::rooms::StoredEvent;
use crate::storage::sync::streams;

/// Events read per pusher per round.
const BATCH: i64 = 100;
/// Largest gateway answer read.
const MAX_ANSWER: usize = 64 * 1024;
const MIN_RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(600);
/// Rooms counted for the badge (`counts.unread`) at most.
const MAX_BADGE_ROOMS: usize = 200;
/// How long the sender sleeps through commits after finding no pushers.
const IDLE_RECHECK: Duration = Duration::from_secs(3);

/// What the sender needs.
pub struct PushSender {
    db: Db,
    rooms: Arc<Rooms>,
    fetcher: Fetcher,
    wakeup: Arc<OutboxWakeup>,
}

/// Why a pusher stopped this round.
enum Stop {
    /// Try again after a delay (the gateway failed).
    Retry(String),
}

impl PushSender {
    /// The sender; `fetcher` reaches gateways (see `[push] gateway_ip_allowlist`), `wakeup` is
    /// signalled after commits.
    pub fn new(db: Db, rooms: Arc<Rooms>, fetcher: Fetcher, wakeup: Arc<OutboxWakeup>) -> Self {
        Self { db, rooms, fetcher, wakeup }
    }

    /// Runs the sender (under a lease, in one process at a time: see `crate::lease`).
    pub async fn run(&self) {
        {
            let wakeup = self.wakeup.clone();
            // Pushers waiting to retry: key -> (when, current delay).
            let mut backoff: HashMap<(String, String, String), (Instant, Duration)> = HashMap::new();
            // While no user has a pusher, commits do not wake the sender (it looks again every
            // few seconds): a server without pushers pays nothing per message.
            let mut none_until: Option<Instant> = None;
            loop {
                let notified = wakeup.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if none_until.is_none_or(|t| Instant::now() >= t) {
                    match self.round(&mut backoff).await {
                        Ok(true) => none_until = None,
                        Ok(false) => none_until = Some(Instant::now() + IDLE_RECHECK),
                        Err(e) => tracing::warn!(error = %e.message, "push sender: round failed"),
                    }
                }
                let next_retry = backoff.values().map(|(at, _)| *at).chain(none_until).min();
                let sleep = next_retry
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(Duration::from_secs(30))
                    .min(Duration::from_secs(30));
                tokio::select! {
                    _ = &mut notified => {},
                    _ = tokio::time::sleep(sleep) => {},
                }
            }
        }
    }

    /// Brings every pusher that is behind (and not waiting to retry) up to date; false when
    /// there are no pushers at all.
    async fn round(&self, backoff: &mut HashMap<(String, String, String), (Instant, Duration)>) -> Result<bool> {
        if !self.db.any_pushers().await? {
            return Ok(false);
        }
        loop {
            let now = self.db.current_stream_position(streams::EVENTS).await?;
            let pushers = self.db.pushers_behind(now).await?;
            let mut progressed = false;
            for p in pushers {
                let key = (p.user_id.clone(), p.app_id.clone(), p.pushkey.clone());
                if backoff.get(&key).is_some_and(|(at, _)| *at > Instant::now()) {
                    continue;
                }
                match self.catch_up(&p, now).await {
                    Ok(moved) => {
                        backoff.remove(&key);
                        progressed |= moved;
                    }
                    Err(Stop::Retry(why)) => {
                        let delay = backoff.get(&key).map_or(MIN_RETRY, |(_, d)| (*d * 2).min(MAX_RETRY));
                        tracing::warn!(user = %p.user_id, app_id = %p.app_id, error = %why, retry_in = ?delay, "push gateway failed");
                        backoff.insert(key, (Instant::now() + delay, delay));
                    }
                }
            }
            // A pusher that read a full batch may have more; others are done until woken.
            if !progressed {
                return Ok(true);
            }
        }
    }

    /// Handles the pusher's next batch of notifications up to `now`; whether it read a full
    /// batch. What notifies whom was decided when each event was stored (`event_push_actions`),
    /// so the user's rules are not evaluated again here, whatever the number of pushers.
    async fn catch_up(&self, p: &PusherRow, now: i64) -> std::result::Result<bool, Stop> {
        let retry = |e: crate::error::Error| Stop::Retry(e.message);
        let user = UserId::parse(p.user_id.as_str()).map_err(|e| Stop::Retry(e.to_string()))?;
        let rows = self.db.push_actions_after(user.as_str(), p.last_stream, now, BATCH).await.map_err(retry)?;
        let full = rows.len() as i64 == BATCH;
        let mut position = p.last_stream;
        for row in &rows {
            // An event that is gone (purged) has nothing left to push.
            if let Some(ev) = self.db.get_event(&row.event_id).await.map_err(retry)? {
                let actions = crate::push::rules::actions_from_stored(row.actions.as_deref());
                if let Err(stop) = self.push(p, &user, &ev, &actions).await {
                    self.advance(p, position).await?;
                    return Err(stop);
                }
            }
            position = row.stream;
        }
        let upto = if full { position } else { now };
        self.advance(p, upto).await?;
        Ok(full)
    }

    async fn advance(&self, p: &PusherRow, upto: i64) -> std::result::Result<(), Stop> {
        if upto > p.last_stream {
            self.db
                .advance_pusher(&p.user_id, &p.app_id, &p.pushkey, upto)
                .await
                .map_err(|e| Stop::Retry(e.message))?;
        }
        Ok(())
    }

    /// Posts one notification to the pusher's gateway.
    async fn push(
        &self,
        p: &PusherRow,
        user: &UserId,
        ev: &StoredEvent,
        actions: &[Action],
    ) -> std::result::Result<(), Stop> {
        let retry = |e: crate::error::Error| Stop::Retry(e.message);
        let mut data: Value = serde_json::from_str(&p.data).unwrap_or_else(|_| json!({}));
        let url = data.get("url").and_then(Value::as_str).unwrap_or_default().to_owned();
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        if let Some(d) = data.as_object_mut() {
            d.remove("url");
        }
        let mut tweaks = serde_json::Map::new();
        for a in actions {
            if let Action::SetTweak(t) = a {
                match t {
                    Tweak::Sound(s) => {
                        tweaks.insert("sound".into(), json!(s));
                    }
                    Tweak::Highlight(h) => {
                        tweaks.insert("highlight".into(), json!(matches!(h, HighlightTweakValue::Yes)));
                    }
                    _ => {}
                }
            }
        }
        let high = ev.pdu.fields.kind.to_string() == "m.room.encrypted" || !tweaks.is_empty();
        let unread = self.badge(user).await.map_err(retry)?;
        let mut notification = json!({
            "event_id": ev.pdu.event_id,
            "room_id": ev.pdu.room_id,
            "prio": if high { "high" } else { "low" },
            "counts": { "unread": unread },
            "devices": [{
                "app_id": p.app_id,
                "pushkey": p.pushkey,
                "pushkey_ts": p.created_ts / 1000,
                "data": data,
                "tweaks": tweaks,
            }],
        });
        if !event_id_only {
            let room_id = &ev.pdu.room_id;
            let sender = ev.pdu.fields.sender.as_str();
            notification["type"] = json!(ev.pdu.fields.kind.to_string());
            notification["sender"] = json!(sender);
            notification["content"] = ev.pdu.content();
            // Best effort: a name that cannot be read is left out of the notification.
            for (key, kind, state_key, field) in [
                ("sender_display_name", "m.room.member", sender, "displayname"),
                ("room_name", "m.room.name", "", "name"),
                ("room_alias", "m.room.canonical_alias", "", "alias"),
            ] {
                let state = self.rooms.current_state_event(room_id, kind, state_key).await.ok().flatten();
                if let Some(text) = state.and_then(|e| e.content()[field].as_str().map(str::to_owned)) {
                    notification[key] = json!(text);
                }
            }
            if ev.pdu.fields.state_key.as_deref() == Some(user.as_str()) {
                notification["user_is_target"] = json!(true);
            }
        }
        let body = json!({ "notification": notification });
        let posted = self.fetcher.post_json(&url, &body, MAX_ANSWER).await;
        let result = match &posted {
            Ok((200..=299, _)) => "sent",
            Ok((429 | 500..=599, _)) | Err(_) => "failed_attempt",
            Ok(_) => "refused",
        };
        metrics::counter!("myelin_push_notifications_total", "result" => result).increment(1);
        let (status, answer) = posted.map_err(retry)?;
        match status {
            200..=299 => {
                let rejected = answer["rejected"].as_array().cloned().unwrap_or_default();
                if rejected.iter().any(|k| k.as_str() == Some(p.pushkey.as_str())) {
                    tracing::info!(user = %p.user_id, app_id = %p.app_id, "push gateway rejected the pushkey; pusher removed");
                    self.db.delete_pushkey(&p.app_id, &p.pushkey).await.map_err(retry)?;
                }
                Ok(())
            }
            429 | 500..=599 => Err(Stop::Retry(format!("gateway answered {status}"))),
            // Anything else will not get better by repeating this notification.
            _ => {
                tracing::warn!(user = %p.user_id, app_id = %p.app_id, status, "push gateway refused a notification");
                Ok(())
            }
        }
    }

    /// `counts.unread`: how many of the user's rooms have unread messages (Synapse's default,
    /// `group_unread_count_by_room`).
    async fn badge(&self, user: &UserId) -> Result<i64> {
        let now = self.db.current_stream_position(streams::EVENTS).await?;
        let mut rooms = 0;
        let joined = self.db.user_memberships(user.as_str()).await?;
        for m in joined.iter().filter(|m| m.membership == "join").take(MAX_BADGE_ROOMS) {
            if self.db.unread_count(&m.room_id, user.as_str(), m.stream, now, 1).await?.total().notifications > 0 {
                rooms += 1;
            }
        }
        Ok(rooms)
    }
}

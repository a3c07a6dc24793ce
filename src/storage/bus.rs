//! The channel between Myelin processes sharing one PostgreSQL database: `NOTIFY` to send,
//! one `LISTEN`ing connection per process to receive (see docs/scaling.md).
//!
//! What travels is never data, only news that data changed: which users' `/sync` to wake,
//! which room moved, which cache entries another process made stale, and typing changes (the
//! one ephemeral state shared this way, mirrored from the `typing` table). Every receiver
//! reads the data itself from the database, so a lost signal costs latency, never
//! correctness: after the listening connection is lost, the process reconnects and then treats
//! everything as changed ([`BusEvent::Connected`]).
//!
//! Signals are sent as JSON envelopes `{"p": <sender>, "s": [signals]}` on one channel. The
//! sender id tells a process its own signals apart: it has already acted on them locally.
//! Envelopes stay under PostgreSQL's 8,000-byte payload limit.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;

use super::Db;

/// The `LISTEN`/`NOTIFY` channel.
pub const CHANNEL: &str = "myelin";
/// Largest envelope sent (PostgreSQL refuses payloads of 8,000 bytes or more).
const MAX_PAYLOAD: usize = 7_800;
/// How often the listener checks that its connection still delivers (a self-addressed ping).
const PING_EVERY: Duration = Duration::from_secs(5);
/// A listener that received nothing, not even its own ping, for this long reconnects.
const SILENT_FOR: Duration = Duration::from_secs(12);
/// The `application_name` of listening connections (operators and tests find them by it).
pub const LISTENER_APP_NAME: &str = "myelin-listener";

/// One piece of news for the other processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Signal {
    /// Wake the waiting `/sync` requests of these users.
    #[serde(rename = "u")]
    Wake {
        /// User ids.
        u: Vec<String>,
    },
    /// Something happened in a room (events, public receipts): wake its local members and the
    /// background senders. `g` is the room's state group after it, when known.
    #[serde(rename = "r")]
    Room {
        /// Room id.
        r: String,
        /// State group after the change.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        g: Option<i64>,
    },
    /// Rows were queued in `federation_outbox` (or pushers have news): wake the senders.
    #[serde(rename = "o")]
    Outbox,
    /// A typing change, sent in the transaction that made it (so signals arrive in the
    /// order of their serials). `s` is the new typing position, 0 for a renewal that moved
    /// only the deadline; `until` (ms since the epoch) is None when the user stopped.
    #[serde(rename = "t")]
    Typing {
        /// Typing position after the change.
        s: i64,
        /// Room id.
        r: String,
        /// User id.
        u: String,
        /// When the user stops typing, if they are typing.
        #[serde(default)]
        until: Option<i64>,
    },
    /// Typing users whose time ran out, removed by one process for all (position `s`).
    #[serde(rename = "x")]
    TypingExpired {
        /// Typing position after the removal.
        s: i64,
        /// Room id and the users removed there.
        r: Vec<(String, Vec<String>)>,
    },
    /// The user's access tokens changed (logout, device deletion, deactivation, admin flag).
    #[serde(rename = "tok")]
    Tokens {
        /// User id.
        u: String,
    },
    /// A user's shadow ban was set or lifted: cached answers are stale.
    #[serde(rename = "sb")]
    ShadowBan {
        /// User id.
        u: String,
    },
    /// One-time or fallback keys were uploaded or claimed.
    #[serde(rename = "keys")]
    KeyCounts,
    /// The user's room memberships changed without moving a stream (forgetting a room).
    #[serde(rename = "m")]
    Memberships {
        /// User id.
        u: String,
    },
    /// An event was redacted: cached copies are stale.
    #[serde(rename = "red")]
    Redacted {
        /// Event id.
        e: String,
    },
    /// A listener's check of its own connection.
    #[serde(rename = "ping")]
    Ping,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    p: String,
    s: Vec<Signal>,
}

/// What the listener reports to the process.
#[derive(Debug)]
pub enum BusEvent {
    /// The listening connection is (again) up: anything may have changed while it was not.
    Connected,
    /// The listening connection was lost; signals are missed until `Connected`.
    Disconnected,
    /// Signals of another process (or, for typing, of any process).
    Signals {
        /// Whether this process sent them.
        own: bool,
        /// The signals.
        signals: Vec<Signal>,
    },
}

/// The sending side; cheap to clone. On SQLite (one process) it sends nothing.
#[derive(Clone)]
pub struct Bus {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// This process among the others: host, pid and a random part.
    me: String,
    url: String,
    queue: mpsc::UnboundedSender<Signal>,
}

/// Packs signals into envelopes under the payload limit.
fn envelopes(me: &str, signals: Vec<Signal>) -> Vec<String> {
    let mut out = Vec::new();
    let mut batch: Vec<Signal> = Vec::new();
    let mut size = me.len() + 20;
    for s in signals {
        let len = serde_json::to_string(&s).map(|j| j.len()).unwrap_or(0) + 1;
        if !batch.is_empty() && size + len > MAX_PAYLOAD {
            out.push(serde_json::to_string(&Envelope { p: me.to_owned(), s: std::mem::take(&mut batch) }));
            size = me.len() + 20;
        }
        if len + me.len() + 20 > MAX_PAYLOAD {
            // Only a wake-up list can be this long: split it.
            if let Signal::Wake { u } = s {
                for chunk in u.chunks(64) {
                    out.push(serde_json::to_string(&Envelope {
                        p: me.to_owned(),
                        s: vec![Signal::Wake { u: chunk.to_vec() }],
                    }));
                }
            }
            continue;
        }
        size += len;
        batch.push(s);
    }
    if !batch.is_empty() {
        out.push(serde_json::to_string(&Envelope { p: me.to_owned(), s: batch }));
    }
    out.into_iter().filter_map(Result::ok).collect()
}

impl Bus {
    /// A bus that sends nothing (SQLite: one process).
    pub fn none() -> Self {
        Self { inner: None }
    }

    /// The bus of a PostgreSQL database; starts the publishing task.
    pub(super) fn postgres(url: &str, pool: sqlx::AnyPool) -> Self {
        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        let me = format!("{}/{}/{:08x}", host.trim(), std::process::id(), rand::random::<u32>());
        let (queue, mut rx) = mpsc::unbounded_channel::<Signal>();
        let sender = me.clone();
        tokio::spawn(async move {
            // Everything queued while the previous NOTIFY was on its way goes in the next one.
            while let Some(first) = rx.recv().await {
                let mut signals = vec![first];
                while let Ok(s) = rx.try_recv() {
                    signals.push(s);
                    if signals.len() >= 512 {
                        break;
                    }
                }
                signals.dedup();
                for payload in envelopes(&sender, signals) {
                    if let Err(e) = notify(&pool, &payload).await {
                        tracing::warn!(error = %e, "sending a signal to the other processes failed");
                    }
                }
            }
        });
        Self { inner: Some(Arc::new(Inner { me, url: url.to_owned(), queue })) }
    }

    /// Whether other processes may share the database (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.inner.is_some()
    }

    /// This process's id among those sharing the database (empty on SQLite).
    pub fn me(&self) -> &str {
        self.inner.as_ref().map_or("", |i| i.me.as_str())
    }

    /// Queues a signal for the other processes; sent right after, batched with others.
    pub fn publish(&self, signal: Signal) {
        if let Some(inner) = &self.inner {
            let _ = inner.queue.send(signal);
        }
    }

    /// Sends signals now, returning once PostgreSQL has taken them (for invalidations that
    /// must reach the others before the client hears back).
    pub async fn publish_now(&self, db: &Db, signals: Vec<Signal>) {
        let Some(inner) = &self.inner else { return };
        for payload in envelopes(&inner.me, signals) {
            if let Err(e) = notify(db.pool(), &payload).await {
                tracing::warn!(error = %e, "sending a signal to the other processes failed");
            }
        }
    }

    /// Sends signals inside `tx`: they reach the others at its commit, in commit order, and
    /// not at all if it rolls back.
    pub async fn publish_in(&self, tx: &mut super::WriteTx, signals: Vec<Signal>) -> Result<(), sqlx::Error> {
        let Some(inner) = &self.inner else { return Ok(()) };
        for payload in envelopes(&inner.me, signals) {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut *tx.tx).await?;
        }
        Ok(())
    }

    /// Starts the listening connection; its news arrive on the returned receiver. Nothing
    /// ever arrives on SQLite.
    pub fn listen(&self, db: &Db) -> mpsc::UnboundedReceiver<BusEvent> {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(inner) = self.inner.clone() {
            let pool = db.pool().clone();
            tokio::spawn(async move { listen_loop(inner, pool, tx).await });
        }
        rx
    }
}

async fn notify(pool: &sqlx::AnyPool, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(pool).await.map(|_| ())
}

/// Keeps one connection `LISTEN`ing, reconnecting (with a pause) whenever it fails or falls
/// silent; reports each (re)connection and loss.
async fn listen_loop(inner: Arc<Inner>, pool: sqlx::AnyPool, out: mpsc::UnboundedSender<BusEvent>) {
    let mut failures = 0u32;
    loop {
        match listen_once(&inner, &pool, &out, &mut failures).await {
            Ok(()) => return, // the process is going away
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "the connection listening to the other processes was lost; reconnecting");
                if out.send(BusEvent::Disconnected).is_err() {
                    return;
                }
                let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                tokio::time::sleep(pause).await;
            }
        }
    }
}

async fn listen_once(
    inner: &Inner,
    pool: &sqlx::AnyPool,
    out: &mpsc::UnboundedSender<BusEvent>,
    failures: &mut u32,
) -> Result<(), anyhow::Error> {
    let options = PgConnectOptions::from_str(&inner.url)?.application_name(LISTENER_APP_NAME);
    let own_pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&own_pool).await?;
    listener.ignore_pool_close_event(true);
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    // Listening from here on: whatever committed before is in the database.
    if out.send(BusEvent::Connected).is_err() {
        return Ok(());
    }
    // Pauses between attempts grow only while connecting keeps failing.
    *failures = 0;
    let ping = serde_json::to_string(&Envelope { p: inner.me.clone(), s: vec![Signal::Ping] })?;
    // Our own ping coming back proves the connection still delivers; it is sent through the
    // pool by a task of its own, as `try_recv` must not be cancelled mid-message.
    let pinger = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PING_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = notify(&pool, &ping).await {
                    tracing::warn!(error = %e, "pinging the listening connection failed");
                }
            }
        })
    };
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _pinger = AbortOnDrop(pinger);
    loop {
        // A timeout drops the connection anyway, so cancelling `try_recv` then is harmless.
        let n = match tokio::time::timeout(SILENT_FOR, listener.try_recv()).await {
            Ok(n) => n?,
            Err(_) => anyhow::bail!("no signal, not even our own ping, for {} s", SILENT_FOR.as_secs()),
        };
        let Some(n) = n else { anyhow::bail!("listening connection closed") };
        let Ok(env) = serde_json::from_str::<Envelope>(n.payload()) else {
            tracing::warn!(payload = n.payload(), "unreadable signal from another process");
            continue;
        };
        let signals: Vec<Signal> = env.s.into_iter().filter(|s| *s != Signal::Ping).collect();
        if !signals.is_empty() && out.send(BusEvent::Signals { own: env.p == inner.me, signals }).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_stay_under_the_limit() {
        let users: Vec<String> = (0..1000).map(|i| format!("@user{i}:example.org")).collect();
        let signals = vec![
            Signal::Room { r: "!a:x".into(), g: Some(3) },
            Signal::Wake { u: users.clone() },
            Signal::Outbox,
            Signal::Tokens { u: "@a:x".into() },
        ];
        let out = envelopes("host/1/abc", signals);
        let mut woken = Vec::new();
        for e in &out {
            assert!(e.len() < 8000, "{}", e.len());
            let env: Envelope = serde_json::from_str(e).unwrap();
            for s in env.s {
                if let Signal::Wake { u } = s {
                    woken.extend(u);
                }
            }
        }
        assert_eq!(woken, users, "every user is woken, once");
        let small = envelopes("me", vec![Signal::Outbox, Signal::KeyCounts]);
        assert_eq!(small.len(), 1);
        assert_eq!(small[0], r#"{"p":"me","s":[{"k":"o"},{"k":"keys"}]}"#);
    }
}

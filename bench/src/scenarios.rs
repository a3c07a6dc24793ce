//! The scenarios of issue 8 / docs/benchmarks.md. Each returns the figures of one case as JSON; set-up
//! (registration, room creation, joins) is never part of a timed figure unless the scenario is about it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::client::{Hs, User};
use crate::stats::{fd_count, r3, rss_bytes, summary};

/// A scenario that cannot run against this server or with these arguments.
#[derive(Debug)]
pub struct NotAvailable(pub String);

impl std::fmt::Display for NotAvailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotAvailable {}

/// Sizes of every scenario; `smoke()` shrinks them to seconds.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub send_users: usize,
    pub send_msgs: usize,
    pub tp_senders: usize,
    pub tp_rooms: usize,
    pub tp_secs: u64,
    pub fanout_members: Vec<usize>,
    pub fanout_msgs: usize,
    pub fanout_interval_ms: u64,
    pub idle_waiters: Vec<usize>,
    pub idle_sync_timeout_ms: u64,
    pub history_msgs: usize,
    pub history_senders: usize,
    pub page_limit: u32,
    pub isync_rooms: usize,
    pub isync_msgs: usize,
    pub isync_repeats: usize,
    pub join_users: usize,
    pub fed_rooms: usize,
    pub fed_msgs: usize,
    /// sliding_sync: rooms of the user, first responses measured, wake-ups measured.
    pub ss_rooms: usize,
    pub ss_repeats: usize,
    pub ss_wakes: usize,
    /// big_account: rooms of the user (DMs among them), helpers who fill them, messages per
    /// room, repeats of each initial sync, incremental syncs measured, rooms of the small account
    /// the incremental sync is compared with.
    pub ba_rooms: usize,
    pub ba_dms: usize,
    pub ba_helpers: usize,
    pub ba_msgs: usize,
    pub ba_repeats: usize,
    pub ba_incr: usize,
    pub ba_small_rooms: usize,
    /// storage: messages sent, members of the large room, state changes in it.
    pub st_msgs: usize,
    pub st_members: usize,
    pub st_changes: usize,
    /// big_room_join: members of the big room (its creator included), state events, messages.
    pub bj_members: usize,
    pub bj_state: usize,
    pub bj_msgs: usize,
    /// deep_history: the sizes (in messages) the deep room is grown to, one case each.
    pub dh_messages: Vec<usize>,
    /// How long to wait for the last deliveries after the last send.
    pub grace_secs: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Self {
            send_users: 10,
            send_msgs: 50,
            tp_senders: 50,
            tp_rooms: 10,
            tp_secs: 30,
            fanout_members: vec![100, 1000],
            fanout_msgs: 50,
            fanout_interval_ms: 100,
            idle_waiters: vec![1000, 10000],
            idle_sync_timeout_ms: 180_000,
            history_msgs: 10_000,
            history_senders: 10,
            page_limit: 100,
            isync_rooms: 50,
            isync_msgs: 20,
            isync_repeats: 5,
            join_users: 200,
            fed_rooms: 10,
            fed_msgs: 50,
            ss_rooms: 500,
            ss_repeats: 10,
            ss_wakes: 100,
            ba_rooms: 1000,
            ba_dms: 50,
            ba_helpers: 60,
            ba_msgs: 5,
            ba_repeats: 5,
            ba_incr: 20,
            ba_small_rooms: 10,
            st_msgs: 10_000,
            st_members: 1000,
            st_changes: 1000,
            bj_members: 2000,
            bj_state: 5000,
            bj_msgs: 20_000,
            dh_messages: vec![10_000, 1_000_000],
            grace_secs: 60,
        }
    }

    pub fn smoke() -> Self {
        Self {
            send_users: 3,
            send_msgs: 5,
            tp_senders: 4,
            tp_rooms: 2,
            tp_secs: 2,
            fanout_members: vec![5],
            fanout_msgs: 5,
            fanout_interval_ms: 50,
            idle_waiters: vec![20],
            idle_sync_timeout_ms: 30_000,
            history_msgs: 150,
            history_senders: 3,
            page_limit: 100,
            isync_rooms: 3,
            isync_msgs: 3,
            isync_repeats: 2,
            join_users: 5,
            fed_rooms: 2,
            fed_msgs: 5,
            ss_rooms: 5,
            ss_repeats: 2,
            ss_wakes: 5,
            ba_rooms: 12,
            ba_dms: 2,
            ba_helpers: 6,
            ba_msgs: 2,
            ba_repeats: 2,
            ba_incr: 3,
            ba_small_rooms: 2,
            st_msgs: 50,
            st_members: 5,
            st_changes: 20,
            bj_members: 8,
            bj_state: 12,
            bj_msgs: 40,
            dh_messages: vec![150, 400],
            grace_secs: 10,
        }
    }
}

/// What every scenario shares.
pub struct Ctx {
    pub hs: Hs,
    pub hs2: Option<Hs>,
    pub pid: Option<u32>,
    /// PID of the second server (`--pid2`), for the joining server's memory in `big_room_join`.
    pub pid2: Option<u32>,
    pub sizes: Sizes,
    /// Random per run, so runs against the same server never collide.
    pub prefix: String,
    /// Parallel requests during set-up.
    pub setup_concurrency: usize,
    /// Users registered once and reused by fanout, idle_syncers and join_storm (registration is
    /// set-up, and the slowest part of it on some servers).
    pool: Mutex<Vec<User>>,
    counter: AtomicU64,
    /// The server's database (`--db`), for `storage`.
    pub db: Option<String>,
    /// The big account once `big_account` built it (for `at_rest`): the user and its filter.
    pub big_account: Mutex<Option<(User, String)>>,
    /// The room `deep_history` grows from one case to the next.
    pub deep_room: Mutex<Option<crate::deep::DeepRoom>>,
}

impl Ctx {
    pub fn new(
        hs: Hs,
        hs2: Option<Hs>,
        pid: Option<u32>,
        sizes: Sizes,
        prefix: String,
        setup_concurrency: usize,
    ) -> Self {
        Self {
            hs,
            hs2,
            pid,
            pid2: None,
            sizes,
            prefix,
            setup_concurrency,
            pool: Mutex::new(Vec::new()),
            counter: AtomicU64::new(0),
            db: None,
            big_account: Mutex::new(None),
            deep_room: Mutex::new(None),
        }
    }

    /// A fresh localpart stem, unique within the run.
    pub(crate) fn stem(&self, what: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("mb{}_{what}{n}", self.prefix)
    }

    /// Registers `n` users on `hs`, `setup_concurrency` at a time.
    pub(crate) async fn register_many(&self, hs: &Hs, what: &str, n: usize) -> Result<Vec<User>> {
        let stem = self.stem(what);
        let started = Instant::now();
        let users: Vec<User> = stream::iter(0..n)
            .map(|i| {
                let hs = hs.clone();
                let name = format!("{stem}_{i}");
                async move { hs.register(&name).await }
            })
            .buffered(self.setup_concurrency)
            .try_collect()
            .await?;
        if n >= 100 {
            eprintln!("  registered {n} users in {:.1} s", started.elapsed().as_secs_f64());
        }
        Ok(users)
    }

    /// The first `n` users of the run's shared pool, registering more as needed.
    pub(crate) async fn pooled_users(&self, n: usize) -> Result<Vec<User>> {
        let mut pool = self.pool.lock().await;
        if pool.len() < n {
            let more = self.register_many(&self.hs, "u", n - pool.len()).await?;
            pool.extend(more);
        }
        Ok(pool[..n].to_vec())
    }

    /// Fails fast (before any costly set-up) if the server has no `/sync`.
    pub(crate) async fn probe_sync(&self) -> Result<()> {
        let u = self.pooled_users(1).await?;
        u[0].sync(None, 0, true).await.map(|_| ())
    }

    /// Joins every user to `room`, `setup_concurrency` at a time.
    pub(crate) async fn join_all(&self, users: &[User], room: &str) -> Result<()> {
        let started = Instant::now();
        stream::iter(users)
            .map(|u| u.join(room, None))
            .buffer_unordered(self.setup_concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        if users.len() >= 100 {
            eprintln!("  joined {} users in {:.1} s", users.len(), started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// An initial (filtered, non-waiting) sync per user; returns their `next_batch` tokens.
    async fn initial_tokens(&self, users: &[User]) -> Result<Vec<String>> {
        stream::iter(users)
            .map(|u| async move {
                let v = u.sync(None, 0, true).await?;
                next_batch(&v)
            })
            .buffered(self.setup_concurrency)
            .try_collect()
            .await
    }
}

pub(crate) fn next_batch(v: &Value) -> Result<String> {
    v["next_batch"].as_str().map(str::to_string).ok_or_else(|| anyhow!("sync answer without next_batch"))
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------------
// send_latency

pub async fn send_latency(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    let users = ctx.register_many(&ctx.hs, "sl", s.send_users).await?;
    let room = users[0].create_public_room("send_latency").await?;
    ctx.join_all(&users[1..], &room).await?;
    let started = Instant::now();
    let per_user = futures::future::try_join_all(users.iter().enumerate().map(|(i, u)| {
        let room = room.clone();
        let n = s.send_msgs;
        async move {
            let mut lat = Vec::with_capacity(n);
            for k in 0..n {
                let t = Instant::now();
                u.send_text(&room, &format!("sl{i}-{k}"), &format!("send_latency {i} {k}")).await?;
                lat.push(ms(t.elapsed()));
            }
            anyhow::Ok(lat)
        }
    }))
    .await?;
    let wall = started.elapsed();
    let lat: Vec<f64> = per_user.into_iter().flatten().collect();
    let total = lat.len();
    Ok(json!({
        "users": s.send_users,
        "messages_per_user": s.send_msgs,
        "messages": total,
        "latency": summary(lat),
        "msgs_per_s": r3(total as f64 / wall.as_secs_f64()),
        "wall_ms": r3(ms(wall)),
    }))
}

// ---------------------------------------------------------------------------------------------
// send_throughput

pub async fn send_throughput(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    let users = ctx.register_many(&ctx.hs, "tp", s.tp_senders).await?;
    let mut rooms = Vec::new();
    for (r, user) in users.iter().take(s.tp_rooms).enumerate() {
        rooms.push(user.create_public_room(&format!("throughput {r}")).await?);
    }
    // Sender i writes in room i % rooms; the first s.tp_rooms senders created them.
    let joins: Vec<(User, String)> =
        users.iter().enumerate().skip(s.tp_rooms).map(|(i, u)| (u.clone(), rooms[i % s.tp_rooms].clone())).collect();
    stream::iter(joins)
        .map(|(u, r)| async move { u.join(&r, None).await })
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let deadline = Instant::now() + Duration::from_secs(s.tp_secs);
    let started = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let results = futures::future::join_all(users.iter().enumerate().map(|(i, u)| {
        let room = rooms[i % s.tp_rooms].clone();
        let errors = errors.clone();
        async move {
            let mut lat = Vec::new();
            let mut k = 0u64;
            let mut first_error = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                match u.send_text(&room, &format!("tp{i}-{k}"), &format!("tp {i} {k}")).await {
                    Ok(_) => lat.push(ms(t.elapsed())),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if crate::client::is_unrecognized(&e).is_some() {
                            return Err(e);
                        }
                        first_error.get_or_insert(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                k += 1;
            }
            Ok((lat, first_error))
        }
    }))
    .await;
    let wall = started.elapsed();
    let mut lat = Vec::new();
    let mut first_error = None;
    for r in results {
        let (l, e) = r?;
        lat.extend(l);
        if first_error.is_none() {
            first_error = e;
        }
    }
    let n = lat.len();
    if n == 0 {
        bail!("no message was sent: {}", first_error.unwrap_or_default());
    }
    Ok(json!({
        "senders": s.tp_senders,
        "rooms": s.tp_rooms,
        "duration_s": r3(wall.as_secs_f64()),
        "messages": n,
        "errors": errors.load(Ordering::Relaxed),
        "first_error": first_error,
        "msgs_per_s": r3(n as f64 / wall.as_secs_f64()),
        "latency": summary(lat),
    }))
}

// ---------------------------------------------------------------------------------------------
// delivery: the core of fanout and federation

#[derive(Default)]
struct Seen {
    /// (sequence number, time the sync answer carrying it was read)
    events: Vec<(usize, Instant)>,
    limited: u64,
    errors: u64,
    last_error: Option<String>,
}

/// `sender` sends `msgs` messages into `room`, one every `interval`, each sequentially; every
/// recipient long-polls `/sync` from its token. Latency is from the start of the send to the moment
/// a recipient has read the sync answer that carries the event.
async fn delivery(
    sender: &User,
    room: &str,
    recipients: Vec<(User, String)>,
    msgs: usize,
    interval: Duration,
    grace: Duration,
    marker: &str,
) -> Result<Value> {
    let n_rec = recipients.len();
    let room = Arc::<str>::from(room);
    let marker = Arc::<str>::from(format!("{marker} "));
    let stop = Arc::new(AtomicBool::new(false));
    let states: Vec<Arc<std::sync::Mutex<Seen>>> =
        (0..n_rec).map(|_| Arc::new(std::sync::Mutex::new(Seen::default()))).collect();
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for ((user, since), state) in recipients.into_iter().zip(states.iter().cloned()) {
        let (room, marker, stop, done) = (room.clone(), marker.clone(), stop.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut since = since;
            let mut distinct = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                match user.sync(Some(&since), 30_000, true).await {
                    Ok(v) => {
                        let now = Instant::now();
                        if let Some(t) = v["next_batch"].as_str() {
                            since = t.to_string();
                        }
                        let tl = &v["rooms"]["join"][&*room]["timeline"];
                        let mut st = state.lock().unwrap();
                        if tl["limited"].as_bool() == Some(true) {
                            st.limited += 1;
                        }
                        for ev in tl["events"].as_array().into_iter().flatten() {
                            if ev["type"] != "m.room.message" {
                                continue;
                            }
                            let Some(rest) = ev["content"]["body"].as_str().and_then(|b| b.strip_prefix(&*marker))
                            else {
                                continue;
                            };
                            if let Ok(seq) = rest.parse::<usize>() {
                                st.events.push((seq, now));
                                distinct.insert(seq);
                            }
                        }
                        if distinct.len() >= msgs {
                            break;
                        }
                    }
                    Err(e) => {
                        {
                            let mut st = state.lock().unwrap();
                            st.errors += 1;
                            st.last_error = Some(format!("{e:#}"));
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    // Let every long-poll reach the server before the first send.
    tokio::time::sleep(Duration::from_millis(1000 + 2 * n_rec as u64)).await;

    let mut starts = Vec::with_capacity(msgs);
    let mut answered = Vec::with_capacity(msgs);
    let mut send_lat = Vec::with_capacity(msgs);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut send_error = None;
    for seq in 0..msgs {
        ticker.tick().await;
        let t = Instant::now();
        starts.push(t);
        match sender.send_text(room.as_ref(), &format!("d{seq}-{}", marker.trim()), &format!("{marker}{seq}")).await {
            Ok(_) => {
                answered.push(Instant::now());
                send_lat.push(ms(t.elapsed()));
            }
            Err(e) => {
                send_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = send_error {
        stop.store(true, Ordering::Relaxed);
        for h in &handles {
            h.abort();
        }
        return Err(e.context("sending the fan-out messages"));
    }
    let sent_at = Instant::now();
    while done.load(Ordering::Relaxed) < n_rec as u64 && sent_at.elapsed() < grace {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_done_ms = ms(sent_at.elapsed());
    stop.store(true, Ordering::Relaxed);
    for h in &handles {
        h.abort();
    }

    let (mut lat, mut lost, mut dup, mut ooo, mut limited, mut errors) = (Vec::new(), 0u64, 0u64, 0u64, 0u64, 0u64);
    // Delivery after the sender had its answer (the commit is behind it), and the slowest
    // delivery of each message: which part of the tail is the send, which the fan-out.
    let mut after_answer = Vec::new();
    let mut slowest = vec![0.0f64; starts.len()];
    let (mut rec_lost, mut rec_dup, mut rec_ooo) = (0u64, 0u64, 0u64);
    let mut last_error = None;
    for st in &states {
        let st = st.lock().unwrap();
        let mut seen = HashSet::new();
        let (mut d, mut o) = (0u64, 0u64);
        let mut max_seq: Option<usize> = None;
        for &(seq, at) in &st.events {
            if seq >= msgs {
                continue;
            }
            if !seen.insert(seq) {
                d += 1;
                continue;
            }
            if max_seq.is_some_and(|m| seq < m) {
                o += 1;
            }
            max_seq = Some(max_seq.map_or(seq, |m| m.max(seq)));
            if seq < starts.len() {
                let l = ms(at.saturating_duration_since(starts[seq]));
                lat.push(l);
                slowest[seq] = slowest[seq].max(l);
                after_answer.push(ms(at.saturating_duration_since(answered[seq])));
            }
        }
        let l = (msgs - seen.len()) as u64;
        lost += l;
        dup += d;
        ooo += o;
        rec_lost += (l > 0) as u64;
        rec_dup += (d > 0) as u64;
        rec_ooo += (o > 0) as u64;
        limited += st.limited;
        errors += st.errors;
        if last_error.is_none() {
            last_error = st.last_error.clone();
        }
    }
    Ok(json!({
        "recipients": n_rec,
        "messages": msgs,
        "interval_ms": interval.as_millis() as u64,
        "delivery": summary(lat),
        "delivery_after_send_answer": summary(after_answer),
        "slowest_delivery_per_message": summary(slowest),
        "send": summary(send_lat),
        "lost": lost,
        "duplicated": dup,
        "out_of_order": ooo,
        "recipients_with_loss": rec_lost,
        "recipients_with_duplicates": rec_dup,
        "recipients_out_of_order": rec_ooo,
        "limited_syncs": limited,
        "sync_errors": errors,
        "last_sync_error": last_error,
        "drain_ms": r3(all_done_ms),
    }))
}

// ---------------------------------------------------------------------------------------------
// fanout

pub async fn fanout(ctx: &Ctx, members: usize) -> Result<Value> {
    let s = &ctx.sizes;
    ctx.probe_sync().await?;
    let sender = ctx.hs.register(&ctx.stem("fs")).await?;
    let room = sender.create_public_room("fanout").await?;
    let users = ctx.pooled_users(members).await?;
    ctx.join_all(&users, &room).await?;
    let tokens = ctx.initial_tokens(&users).await?;
    let fresh = ctx.hs.fresh_pool()?;
    let marker = ctx.stem("fanout");
    let mut v = delivery(
        &sender,
        &room,
        // Their own connection pool: its connections close when the scenario ends.
        users.iter().map(|u| u.on(&fresh)).zip(tokens).collect(),
        s.fanout_msgs,
        Duration::from_millis(s.fanout_interval_ms),
        Duration::from_secs(s.grace_secs),
        &marker,
    )
    .await?;
    v["members"] = json!(members);
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// idle_syncers

pub async fn idle_syncers(ctx: &Ctx, waiters: usize) -> Result<Value> {
    let Some(pid) = ctx.pid else {
        return Err(NotAvailable("needs --pid of the server process".into()).into());
    };
    let s = &ctx.sizes;
    ctx.probe_sync().await?;
    // Distinct users: servers may share the work of identical sync requests of one user.
    let users = ctx.pooled_users(waiters).await?;
    let t = Instant::now();
    let tokens = ctx.initial_tokens(&users).await?;
    if waiters >= 100 {
        eprintln!("  {waiters} initial syncs in {:.1} s", t.elapsed().as_secs_f64());
    }
    let pool: Vec<(User, String)> = users.into_iter().zip(tokens).collect();
    // Let connections of earlier cases close: the server's fd count must be steady for 3 s.
    let settle = Instant::now();
    let mut steady = Instant::now();
    let mut last = fd_count(pid).unwrap_or(0);
    while steady.elapsed() < Duration::from_secs(3) && settle.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = fd_count(pid).unwrap_or(0);
        if now != last {
            steady = Instant::now();
            last = now;
        }
    }
    let rss0 = rss_bytes(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}/status"))?;
    let fds0 = fd_count(pid).unwrap_or(0);

    // A connection pool of their own, so every waiter is one new connection.
    let hs = ctx.hs.fresh_pool()?;
    let returned = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let timeout_ms = s.idle_sync_timeout_ms;
    let started = Instant::now();
    let mut handles = Vec::with_capacity(waiters);
    for (i, (user, since)) in pool.into_iter().enumerate() {
        let user = user.on(&hs);
        let (returned, errors, last_error) = (returned.clone(), errors.clone(), last_error.clone());
        handles.push(tokio::spawn(async move {
            let mut since = since;
            loop {
                match user.sync(Some(&since), timeout_ms, true).await {
                    Ok(v) => {
                        returned.fetch_add(1, Ordering::Relaxed);
                        if let Ok(t) = next_batch(&v) {
                            since = t;
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock().unwrap() = Some(format!("{e:#}"));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }));
        // Pace connection set-up so that the listen backlog does not overflow.
        if i % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Wait until the server holds every connection (or the count stops changing for 20 s), then
    // until its RSS settles.
    let want = fds0 + waiters * 99 / 100;
    let mut fds = fd_count(pid).unwrap_or(0);
    let mut last_change = Instant::now();
    while fds < fds0 + waiters
        && started.elapsed() < Duration::from_secs(180)
        && last_change.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = fd_count(pid).unwrap_or(0);
        if now != fds {
            last_change = Instant::now();
        }
        fds = now;
    }
    let held_after_ms = ms(started.elapsed());
    let mut prev = rss_bytes(pid).unwrap_or(rss0);
    let mut rss1 = prev;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss1 = rss_bytes(pid).unwrap_or(prev);
        let grew = rss1.abs_diff(prev) as f64;
        if grew <= (rss1.saturating_sub(rss0) as f64 * 0.005).max(64.0 * 1024.0) {
            break;
        }
        prev = rss1;
    }
    let fds1 = fd_count(pid).unwrap_or(0);
    let measured_after_ms = ms(started.elapsed());
    for h in &handles {
        h.abort();
    }
    drop(handles);
    let result = json!({
        "waiters": waiters,
        "rss_before_bytes": rss0,
        "rss_after_bytes": rss1,
        // Over the connections the server really holds (all of them, unless it could not accept them).
        "rss_per_waiter_bytes": r3((rss1 as f64 - rss0 as f64) / fds1.saturating_sub(fds0).clamp(1, waiters) as f64),
        "all_held": fds1 >= want,
        "server_fds_before": fds0,
        "server_fds_after": fds1,
        "connections_held": fds1.saturating_sub(fds0),
        "held_after_ms": r3(held_after_ms),
        "measured_after_ms": r3(measured_after_ms),
        "syncs_returned_early": returned.load(Ordering::Relaxed),
        "sync_errors": errors.load(Ordering::Relaxed),
        "last_sync_error": *last_error.lock().unwrap(),
    });
    // Give the server a moment to drop the connections before the next case.
    tokio::time::sleep(Duration::from_secs(3)).await;
    if fds1 <= fds0 {
        let e = last_error.lock().unwrap().clone().unwrap_or_default();
        bail!("the server held none of the {waiters} long-polls ({e}); figures: {result}");
    }
    Ok(result)
}

// ---------------------------------------------------------------------------------------------
// history

pub async fn history_paginate(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    let senders = ctx.register_many(&ctx.hs, "hist", s.history_senders).await?;
    let room = senders[0].create_public_room("history").await?;
    ctx.join_all(&senders[1..], &room).await?;
    let marker = ctx.stem("h");
    let fill_started = Instant::now();
    let n_senders = senders.len();
    futures::future::try_join_all(senders.iter().enumerate().map(|(i, u)| {
        let (room, marker) = (room.clone(), marker.clone());
        async move {
            let mut k = 0;
            while k * n_senders + i < s.history_msgs {
                u.send_text(&room, &format!("h{i}-{k}"), &format!("{marker} {i} {k}")).await?;
                k += 1;
            }
            anyhow::Ok(())
        }
    }))
    .await
    .context("filling the history room")?;
    let fill = fill_started.elapsed();
    eprintln!("  filled the history room with {} messages in {:.1} s", s.history_msgs, fill.as_secs_f64());

    let reader = &senders[0];
    let mut from: Option<String> = None;
    let mut page_lat = Vec::new();
    let mut seen = HashSet::new();
    let (mut events, mut dup, mut ooo) = (0usize, 0u64, 0u64);
    let mut last_k: Vec<Option<usize>> = vec![None; n_senders];
    let prefix = format!("{marker} ");
    let started = Instant::now();
    loop {
        let t = Instant::now();
        let v = match reader.messages(&room, from.as_deref(), s.page_limit).await {
            Ok(v) => v,
            // Servers before spec v1.3 need a `from`: start from a sync token.
            Err(e)
                if from.is_none() && e.downcast_ref::<crate::client::ApiError>().is_some_and(|a| a.status == 400) =>
            {
                let sync = reader.sync(None, 0, true).await?;
                from = Some(next_batch(&sync)?);
                continue;
            }
            Err(e) => return Err(e),
        };
        page_lat.push(ms(t.elapsed()));
        let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
        events += chunk.len();
        for ev in &chunk {
            let Some(rest) = ev["content"]["body"].as_str().and_then(|b| b.strip_prefix(&prefix)) else {
                continue;
            };
            let mut it = rest.split(' ').map(|x| x.parse::<usize>().ok());
            let (Some(Some(i)), Some(Some(k))) = (it.next(), it.next()) else {
                continue;
            };
            if !seen.insert((i, k)) {
                dup += 1;
                continue;
            }
            // Backwards: each sender's numbers must come down.
            if i < n_senders {
                if last_k[i].is_some_and(|prev| k > prev) {
                    ooo += 1;
                }
                last_k[i] = Some(k);
            }
        }
        match v["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = Some(end.to_string()),
            _ => break,
        }
        if page_lat.len() > s.history_msgs / s.page_limit.max(1) as usize + 1000 {
            bail!("pagination does not end");
        }
    }
    let wall = started.elapsed();
    let found = seen.len();
    Ok(json!({
        "messages": s.history_msgs,
        "page_limit": s.page_limit,
        "fill_ms": r3(ms(fill)),
        "fill_msgs_per_s": r3(s.history_msgs as f64 / fill.as_secs_f64()),
        "paginate_ms": r3(ms(wall)),
        "pages": page_lat.len(),
        "events_seen": events,
        "events_per_s": r3(events as f64 / wall.as_secs_f64()),
        "page": summary(page_lat),
        "lost": s.history_msgs.saturating_sub(found),
        "duplicated": dup,
        "out_of_order": ooo,
    }))
}

pub async fn history_initial_sync(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    ctx.probe_sync().await?;
    let user = ctx.hs.register(&ctx.stem("isync")).await?;
    let mut rooms = Vec::new();
    for r in 0..s.isync_rooms {
        rooms.push(user.create_public_room(&format!("initial sync {r}")).await?);
    }
    let fill_started = Instant::now();
    stream::iter(rooms.iter().enumerate())
        .map(|(r, room)| {
            let user = user.clone();
            async move {
                for k in 0..s.isync_msgs {
                    user.send_text(room, &format!("is{r}-{k}"), &format!("initial sync {r} {k}")).await?;
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let fill = fill_started.elapsed();
    let mut lat = Vec::new();
    let mut rooms_seen = 0;
    let mut bytes = 0;
    for i in 0..s.isync_repeats {
        let t = Instant::now();
        // A different `timeout` each time (an initial sync never waits, so it changes nothing
        // else): Synapse keeps each sync answer for two minutes keyed on the request's
        // parameters, and the benchmark measures computing an initial sync, not replaying one.
        let v = user.sync(None, i as u64, false).await?;
        lat.push(ms(t.elapsed()));
        rooms_seen = v["rooms"]["join"].as_object().map(|o| o.len()).unwrap_or(0);
        bytes = v.to_string().len();
    }
    if rooms_seen != s.isync_rooms {
        bail!("initial sync shows {rooms_seen} joined rooms, expected {}", s.isync_rooms);
    }
    Ok(json!({
        "rooms": s.isync_rooms,
        "messages_per_room": s.isync_msgs,
        "fill_ms": r3(ms(fill)),
        "first_ms": r3(lat[0]),
        "sync": summary(lat),
        "response_bytes": bytes,
    }))
}

// ---------------------------------------------------------------------------------------------
// sliding_sync

/// The room list request Element X's room list starts with (matrix-rust-sdk's `RoomListService`):
/// the first 20 rooms by recency, one timeline event each, the state the list shows.
pub(crate) fn room_list_request(conn_id: &str) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": { "all_rooms": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "required_state": [
                ["m.room.encryption", ""], ["m.room.member", "$LAZY"], ["m.room.member", "$ME"],
                ["m.room.name", ""], ["m.room.topic", ""], ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""], ["m.room.power_levels", ""], ["m.room.create", ""],
                ["m.room.join_rules", ""], ["m.room.history_visibility", ""],
            ],
            "filters": { "not_room_types": ["m.space"] },
        } },
        "extensions": { "account_data": { "enabled": true }, "receipts": { "enabled": true },
            "typing": { "enabled": true } },
    })
}

/// A user in `ss_rooms` rooms (one message each): the first response of a new sliding sync
/// connection (each repeat a new `conn_id`), and the wake-up of a waiting request by a message
/// to one of the rooms (from the start of the send to the answer's arrival).
pub async fn sliding_sync(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    let user = ctx.hs.register(&ctx.stem("ss")).await?;
    if let Err(e) = user.sliding_sync(None, 0, &room_list_request("probe")).await {
        if let Some(a) = crate::client::is_unrecognized(&e) {
            return Err(NotAvailable(format!("no simplified sliding sync: {a}")).into());
        }
        return Err(e);
    }
    let fill_started = Instant::now();
    let rooms: Vec<String> = stream::iter(0..s.ss_rooms)
        .map(|r| {
            let user = user.clone();
            async move {
                let room = user.create_public_room(&format!("sliding {r}")).await?;
                user.send_text(&room, &format!("ss{r}"), &format!("room {r}")).await?;
                anyhow::Ok(room)
            }
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    eprintln!("  {} rooms filled in {:.1} s", rooms.len(), fill_started.elapsed().as_secs_f64());

    let mut first = Vec::new();
    let mut bytes = 0;
    for i in 0..s.ss_repeats {
        let t = Instant::now();
        let v = user.sliding_sync(None, 0, &room_list_request(&format!("first{i}"))).await?;
        first.push(ms(t.elapsed()));
        let count = v["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0) as usize;
        if count != s.ss_rooms {
            bail!("sliding sync list counts {count} rooms, expected {}", s.ss_rooms);
        }
        let shown = v["rooms"].as_object().map_or(0, |o| o.len());
        if shown != s.ss_rooms.min(20) {
            bail!("sliding sync sent {shown} rooms, expected {}", s.ss_rooms.min(20));
        }
        bytes = v.to_string().len();
    }

    let req = room_list_request("wake");
    let mut pos = user.sliding_sync(None, 0, &req).await?["pos"].as_str().map(str::to_owned);
    let mut wake = Vec::new();
    for i in 0..s.ss_wakes {
        let poll = {
            let (user, req, pos) = (user.clone(), req.clone(), pos.clone());
            tokio::spawn(async move {
                let v = user.sliding_sync(pos.as_deref(), 30_000, &req).await;
                (v, Instant::now())
            })
        };
        // Let the request reach the server and wait there.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Rooms below the window each time, so every wake-up also moves a room into it.
        let room = &rooms[(i * 7919) % rooms.len()];
        let sent = Instant::now();
        let event = user.send_text(room, &format!("wake{i}"), "wake up").await?;
        let (v, answered) = poll.await?;
        let v = v?;
        let delivered = v["rooms"][room.as_str()]["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["event_id"] == json!(event)));
        if !delivered {
            bail!("the woken answer lacks the message: {v}");
        }
        wake.push(ms(answered.saturating_duration_since(sent)));
        pos = v["pos"].as_str().map(str::to_owned);
    }
    Ok(json!({
        "rooms": s.ss_rooms,
        "fill_ms": r3(ms(fill_started.elapsed())),
        "first": summary(first),
        "response_bytes": bytes,
        "wake": summary(wake),
    }))
}

// ---------------------------------------------------------------------------------------------
// join_storm

pub async fn join_storm(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    let creator = ctx.hs.register(&ctx.stem("jsc")).await?;
    let room = creator.create_public_room("join storm").await?;
    let users = ctx.pooled_users(s.join_users).await?;
    let started = Instant::now();
    let lat = futures::future::try_join_all(users.iter().map(|u| {
        let room = room.clone();
        async move {
            let t = Instant::now();
            u.join(&room, None).await?;
            anyhow::Ok(ms(t.elapsed()))
        }
    }))
    .await?;
    let total = started.elapsed();
    let members = match creator.joined_members(&room).await {
        Ok(n) => Some(n),
        Err(e) if crate::client::is_unrecognized(&e).is_some() => None,
        Err(e) => return Err(e),
    };
    if let Some(n) = members
        && n != s.join_users + 1
    {
        bail!("{n} joined members after the storm, expected {}", s.join_users + 1);
    }
    Ok(json!({
        "users": s.join_users,
        "total_ms": r3(ms(total)),
        "joins_per_s": r3(s.join_users as f64 / total.as_secs_f64()),
        "join": summary(lat),
        "joined_members": members,
    }))
}

// ---------------------------------------------------------------------------------------------
// federation

pub async fn federation(ctx: &Ctx) -> Result<Value> {
    let Some(hs2) = &ctx.hs2 else {
        return Err(NotAvailable("needs --url2 (a second homeserver)".into()).into());
    };
    let s = &ctx.sizes;
    let a = ctx.hs.register(&ctx.stem("fa")).await?;
    let bs = ctx.register_many(hs2, "fb", s.fed_rooms).await?;
    let server_a = a.server_name().to_string();
    let mut rooms = Vec::new();
    for r in 0..s.fed_rooms {
        rooms.push(a.create_public_room(&format!("federation {r}")).await?);
    }
    // Each room is the other server's first join into it: a full make_join/send_join each time.
    let mut join_lat = Vec::new();
    for (b, room) in bs.iter().zip(&rooms) {
        let t = Instant::now();
        b.join(room, Some(&server_a)).await.context("joining over federation")?;
        join_lat.push(ms(t.elapsed()));
    }
    let b = &bs[0];
    let room = &rooms[0];
    let interval = Duration::from_millis(s.fanout_interval_ms);
    let grace = Duration::from_secs(s.grace_secs);
    let b_token = ctx.initial_tokens(std::slice::from_ref(b)).await?.remove(0);
    let a_to_b = delivery(&a, room, vec![(b.clone(), b_token)], s.fed_msgs, interval, grace, &ctx.stem("ab")).await?;
    let a_token = ctx.initial_tokens(std::slice::from_ref(&a)).await?.remove(0);
    let b_to_a = delivery(b, room, vec![(a.clone(), a_token)], s.fed_msgs, interval, grace, &ctx.stem("ba")).await?;
    Ok(json!({
        "server_a": server_a,
        "server_b": b.server_name(),
        "joins": s.fed_rooms,
        "join": summary(join_lat),
        "a_to_b": a_to_b,
        "b_to_a": b_to_a,
    }))
}

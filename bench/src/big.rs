//! The scenarios of issue 23 about accounts and storage at the scale of the public network:
//! `big_account` (a user in 1,000 rooms), `storage` (database bytes per message and per state
//! change) and `at_rest` (memory of the idle server holding them).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use crate::client::User;
use crate::scenarios::{Ctx, NotAvailable, ms, next_batch, room_list_request};
use crate::stats::{r3, rss_bytes, summary};

/// The filter Element Web uploads before its first sync (matrix-js-sdk with `initialSyncLimit: 20`
/// and `lazyLoadMembers: true`, threads on): 20 timeline events, members lazy-loaded, unread
/// counts per thread.
pub fn element_filter() -> Value {
    json!({
        "room": {
            "timeline": { "limit": 20, "unread_thread_notifications": true },
            "state": { "lazy_load_members": true },
        },
    })
}

/// How many helpers join group room `g` (besides the account): every 50th room is large, every
/// 5th medium, the others hold one to three more people.
fn helpers_in(g: usize, helpers: usize) -> usize {
    if g.is_multiple_of(50) {
        helpers.min(50)
    } else if g % 5 == 1 {
        helpers.min(10)
    } else {
        1 + g % 3
    }
}

/// One room of the big account: its id, the helpers in it, whether it is encrypted.
struct Room {
    id: String,
    members: Vec<usize>,
    encrypted: bool,
    direct: bool,
}

/// Fills `room` with `n` messages from its members (encrypted rooms get `m.room.encrypted`
/// events of the shape a Megolm client sends; the server cannot tell them from real ones).
async fn fill(helpers: &[User], room: &Room, n: usize, tag: String) -> Result<()> {
    for k in 0..n {
        let sender = &helpers[room.members[k % room.members.len()]];
        let txn = format!("{tag}-{k}");
        if room.encrypted {
            let content = json!({
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": format!("AwgAEnACbench{k}{}", "x".repeat(120)),
                "sender_key": "bench/sender/key/0000000000000000000000000",
                "session_id": "benchsession000000000000000000000000000000",
                "device_id": "BENCHDEV",
            });
            sender.send_event(&room.id, "m.room.encrypted", &txn, &content).await?;
        } else {
            sender.send_text(&room.id, &txn, &format!("message {k} of {tag}")).await?;
        }
    }
    Ok(())
}

/// Initial syncs: the first one, then `repeats` more (each with a different `timeout`, so that
/// Synapse's response cache, keyed on the request's parameters, replays none of them).
async fn initial_syncs(user: &User, filter: Option<&str>, repeats: usize, rooms: usize) -> Result<Value> {
    let mut lat = Vec::new();
    let mut bytes = 0;
    let mut first = None;
    for i in 0..=repeats {
        let t = Instant::now();
        let v = user.sync_with(None, i as u64, filter).await?;
        let took = ms(t.elapsed());
        let seen = v["rooms"]["join"].as_object().map_or(0, |o| o.len());
        if seen != rooms {
            bail!("initial sync shows {seen} joined rooms, expected {rooms}");
        }
        bytes = v.to_string().len();
        if i == 0 {
            first = Some(took);
        } else {
            lat.push(took);
        }
    }
    Ok(json!({ "first_ms": r3(first.unwrap_or(f64::NAN)), "repeat": summary(lat), "response_bytes": bytes }))
}

/// Incremental syncs after one message each: from the account's token, a helper sends one
/// message to one of the rooms, then the account syncs (no waiting); the answer must carry it.
async fn incremental(
    account: &User,
    filter: &str,
    helpers: &[User],
    rooms: &[Room],
    n: usize,
    tag: &str,
) -> Result<Value> {
    let mut since = next_batch(&account.sync_with(None, 0, Some(filter)).await?)?;
    let mut lat = Vec::new();
    let mut rooms_in_answer = 0;
    for i in 0..n {
        let room = &rooms[(i * 7919) % rooms.len()];
        let sender = &helpers[room.members[0]];
        let event = sender.send_text(&room.id, &format!("{tag}-incr{i}"), "one more").await?;
        let t = Instant::now();
        let mut v = account.sync_with(Some(&since), 0, Some(filter)).await?;
        lat.push(ms(t.elapsed()));
        // A server may answer before the event reaches the account's stream: go on (timed no more).
        let mut tries = 0;
        while !v["rooms"]["join"][&room.id]["timeline"]["events"]
            .as_array()
            .is_some_and(|evs| evs.iter().any(|e| e["event_id"] == json!(event)))
        {
            tries += 1;
            if tries > 50 {
                bail!("no incremental sync carried the message {event}");
            }
            since = next_batch(&v)?;
            v = account.sync_with(Some(&since), 1000, Some(filter)).await?;
        }
        rooms_in_answer = rooms_in_answer.max(v["rooms"]["join"].as_object().map_or(0, |o| o.len()));
        since = next_batch(&v)?;
    }
    Ok(json!({ "sync": summary(lat), "max_rooms_in_answer": rooms_in_answer }))
}

/// A user in `ba_rooms` rooms of mixed sizes (`ba_dms` of them direct chats, a tenth encrypted),
/// `ba_msgs` messages each; set-up is not timed. Then: the first initial `/sync` without a filter
/// and its repeats, the same with Element Web's filter, incremental syncs after one message
/// compared with those of an account in `ba_small_rooms` rooms, and sliding sync's first window.
pub async fn big_account(ctx: &Ctx) -> Result<Value> {
    let s = &ctx.sizes;
    ctx.probe_sync().await?;
    let started = Instant::now();
    let account = ctx.hs.register(&ctx.stem("big")).await?;
    let helpers = ctx.register_many(&ctx.hs, "bah", s.ba_helpers.max(1)).await?;
    let groups = s.ba_rooms.saturating_sub(s.ba_dms);
    let encrypted_groups = (s.ba_rooms / 10).saturating_sub(s.ba_dms);
    let every = groups.checked_div(encrypted_groups).map_or(usize::MAX, |e| e.max(1));
    // (members, encrypted, direct) of every room; direct chats first in creation order.
    let mut specs = Vec::new();
    for d in 0..s.ba_dms.min(s.ba_rooms) {
        specs.push((vec![d % helpers.len()], true, true));
    }
    for g in 0..groups {
        let n = helpers_in(g, helpers.len());
        let first = g % helpers.len();
        let members = (0..n).map(|k| (first + k) % helpers.len()).collect();
        specs.push((members, g % every == 0 && g / every < encrypted_groups, false));
    }
    let rooms: Vec<Room> = stream::iter(specs.into_iter().enumerate())
        .map(|(r, (members, encrypted, direct))| {
            let (account, helpers) = (account.clone(), &helpers);
            async move {
                let mut body = if direct {
                    json!({
                        "preset": "trusted_private_chat",
                        "is_direct": true,
                        "invite": [helpers[members[0]].user_id],
                    })
                } else {
                    json!({ "preset": "public_chat", "name": format!("big account {r}"), "visibility": "private" })
                };
                if encrypted {
                    body["initial_state"] = json!([{
                        "type": "m.room.encryption", "state_key": "",
                        "content": { "algorithm": "m.megolm.v1.aes-sha2" },
                    }]);
                }
                let id = account.create_room(&body).await?;
                for &h in &members {
                    helpers[h].join(&id, None).await?;
                }
                anyhow::Ok(Room { id, members, encrypted, direct })
            }
        })
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect()
        .await
        .context("creating the big account's rooms")?;
    // Direct chats in `m.direct`, as clients record them.
    let mut direct = serde_json::Map::new();
    for room in rooms.iter().filter(|r| r.direct) {
        let who = helpers[room.members[0]].user_id.clone();
        direct.entry(who).or_insert_with(|| json!([])).as_array_mut().unwrap().push(json!(room.id));
    }
    account.put_account_data("m.direct", &Value::Object(direct)).await?;
    let tag = ctx.stem("bam");
    stream::iter(rooms.iter().enumerate())
        .map(|(r, room)| fill(&helpers, room, s.ba_msgs, format!("{tag}-{r}")))
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("filling the big account's rooms")?;
    let setup_ms = ms(started.elapsed());
    eprintln!("  big account: {} rooms filled in {:.1} s", rooms.len(), setup_ms / 1000.0);

    // The first initial sync on a server that has just stored the rooms: what a user meets at login.
    let unfiltered = initial_syncs(&account, None, s.ba_repeats, rooms.len()).await?;
    let filter_id = account.upload_filter(&element_filter()).await?;
    let element = initial_syncs(&account, Some(&filter_id), s.ba_repeats, rooms.len()).await?;

    let incr = incremental(&account, &filter_id, &helpers, &rooms, s.ba_incr, &tag).await?;
    // The same for an account in a few rooms, on the same server at the same moment.
    let small = ctx.hs.register(&ctx.stem("small")).await?;
    let small_rooms: Vec<Room> = stream::iter(0..s.ba_small_rooms.max(1))
        .map(|r| {
            let (small, helpers) = (small.clone(), &helpers);
            async move {
                let id = small
                    .create_room(
                        &json!({ "preset": "public_chat", "name": format!("small {r}"), "visibility": "private" }),
                    )
                    .await?;
                let h = r % helpers.len();
                helpers[h].join(&id, None).await?;
                anyhow::Ok(Room { id, members: vec![h], encrypted: false, direct: false })
            }
        })
        .buffered(ctx.setup_concurrency)
        .try_collect()
        .await?;
    let small_filter = small.upload_filter(&element_filter()).await?;
    let incr_small = incremental(&small, &small_filter, &helpers, &small_rooms, s.ba_incr, &format!("{tag}s")).await?;

    let sliding = match account.sliding_sync(None, 0, &room_list_request("big-probe")).await {
        Err(e) if crate::client::is_unrecognized(&e).is_some() => json!({ "not_available": format!("{e:#}") }),
        Err(e) => return Err(e.context("sliding sync")),
        Ok(_) => {
            let mut first = Vec::new();
            for i in 0..s.ba_repeats.max(1) {
                let t = Instant::now();
                let v = account.sliding_sync(None, 0, &room_list_request(&format!("big{i}"))).await?;
                first.push(ms(t.elapsed()));
                let count = v["lists"]["all_rooms"]["count"].as_u64().unwrap_or(0) as usize;
                if count != rooms.len() {
                    bail!("sliding sync list counts {count} rooms, expected {}", rooms.len());
                }
            }
            json!({ "first": summary(first) })
        }
    };
    *ctx.big_account.lock().await = Some((account, filter_id));
    let ratio = match (incr["sync"]["p50_ms"].as_f64(), incr_small["sync"]["p50_ms"].as_f64()) {
        (Some(big), Some(small)) if small > 0.0 => Some(r3(big / small)),
        _ => None,
    };
    Ok(json!({
        "rooms": rooms.len(),
        "dms": s.ba_dms.min(s.ba_rooms),
        "encrypted_rooms": rooms.iter().filter(|r| r.encrypted).count(),
        "memberships": rooms.iter().map(|r| r.members.len() + 1).sum::<usize>(),
        "messages_per_room": s.ba_msgs,
        "setup_ms": r3(setup_ms),
        "unfiltered": unfiltered,
        "element": element,
        "incremental": incr,
        "incremental_small": incr_small,
        "small_rooms": small_rooms.len(),
        "incremental_big_over_small": ratio,
        "sliding_sync": sliding,
    }))
}

/// The database's size: `(main, wal)` bytes for SQLite (after a checkpoint, so that the main
/// file holds what was written), `(pg_database_size, 0)` for PostgreSQL.
async fn db_size(db: &str) -> Result<(u64, u64)> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        let out = tokio::process::Command::new("psql")
            .args([db, "-tAc", "SELECT pg_database_size(current_database())"])
            .output()
            .await
            .context("running psql")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text
            .trim()
            .parse()
            .map_err(|_| anyhow!("psql answered {text:?} {}", String::from_utf8_lossy(&out.stderr)))?;
        return Ok((n, 0));
    }
    let path = db.strip_prefix("sqlite://").unwrap_or(db);
    // A checkpoint from another connection is ordinary SQLite (WAL mode allows it); a busy
    // server may keep some pages in the WAL, which is then counted as it is.
    let _ = tokio::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 10000", path, "PRAGMA wal_checkpoint(TRUNCATE);"])
        .output()
        .await;
    let size = |p: &str| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok((size(path), size(&format!("{path}-wal"))))
}

/// Database bytes for messages and for state changes, measured as the growth of the database
/// while this scenario writes them (after the scenarios before it): `st_msgs` messages from ten
/// senders into one room; `st_changes` topic changes into a room of `st_members` members, and as
/// many into a room of two, so that growth with the room's state size shows.
pub async fn storage(ctx: &Ctx) -> Result<Value> {
    let Some(db) = ctx.db.clone() else {
        return Err(NotAvailable("needs --db (the server's SQLite file or PostgreSQL URL)".into()).into());
    };
    let s = &ctx.sizes;
    let (main0, wal0) = db_size(&db).await?;
    let senders = ctx.register_many(&ctx.hs, "st", 10).await?;
    let room = senders[0].create_public_room("storage messages").await?;
    ctx.join_all(&senders[1..], &room).await?;
    let (a_main, a_wal) = db_size(&db).await?;
    let tag = ctx.stem("stm");
    futures::future::try_join_all(senders.iter().enumerate().map(|(i, u)| {
        let (room, tag) = (room.clone(), tag.clone());
        async move {
            let mut k = 0;
            while k * 10 + i < s.st_msgs {
                u.send_text(&room, &format!("{tag}-{i}-{k}"), &format!("storage message {i} {k} of the benchmark"))
                    .await?;
                k += 1;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let (b_main, b_wal) = db_size(&db).await?;

    let changes = |room: String, who: User, what: &'static str| {
        let tag = tag.clone();
        async move {
            for k in 0..s.st_changes {
                who.put_state(&room, "m.room.topic", "", &json!({ "topic": format!("{what} topic {k} {tag}") }))
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    // The large room: members from the run's pool (registered by earlier scenarios in a full run).
    let members = ctx.pooled_users(s.st_members).await?;
    let big = senders[0].create_public_room("storage state").await?;
    ctx.join_all(&members, &big).await?;
    let (c_main, c_wal) = db_size(&db).await?;
    changes(big, senders[0].clone(), "large").await?;
    let (d_main, d_wal) = db_size(&db).await?;
    let small = senders[0].create_public_room("storage state small").await?;
    senders[1].join(&small, None).await?;
    let (e_main, e_wal) = db_size(&db).await?;
    changes(small, senders[0].clone(), "small").await?;
    let (f_main, f_wal) = db_size(&db).await?;
    let per = |after: (u64, u64), before: (u64, u64), n: usize| {
        ((after.0 + after.1) as f64 - (before.0 + before.1) as f64) / n.max(1) as f64
    };
    Ok(json!({
        "db": if db.starts_with("postgres") { "postgres" } else { "sqlite" },
        "bytes_before": main0 + wal0,
        "wal_bytes_before": wal0,
        "messages": s.st_msgs,
        "bytes_per_message": r3(per((b_main, b_wal), (a_main, a_wal), s.st_msgs)),
        "large_room_members": s.st_members + 1,
        "state_changes": s.st_changes,
        "bytes_per_state_change_large_room": r3(per((d_main, d_wal), (c_main, c_wal), s.st_changes)),
        "bytes_per_state_change_small_room": r3(per((f_main, f_wal), (e_main, e_wal), s.st_changes)),
        "bytes_per_member_join": r3(per((c_main, c_wal), (b_main, b_wal), s.st_members)),
        "bytes_after": f_main + f_wal,
        "wal_bytes_after": f_wal,
    }))
}

/// The resident memory of the idle server after the scenarios before it, holding the big
/// account (and, after `storage`, the large room): the account's initial sync runs twice (the
/// caches warm), then the server is left idle until its RSS settles.
pub async fn at_rest(ctx: &Ctx) -> Result<Value> {
    let Some(pid) = ctx.pid else {
        return Err(NotAvailable("needs --pid (the server process)".into()).into());
    };
    let Some((account, filter)) = ctx.big_account.lock().await.clone() else {
        return Err(NotAvailable("needs big_account earlier in the same run".into()).into());
    };
    for i in 0..2u64 {
        account.sync_with(None, 100 + i, Some(&filter)).await?;
    }
    let idle_started = Instant::now();
    let mut prev = rss_bytes(pid).ok_or_else(|| anyhow!("no RSS for pid {pid}"))?;
    let mut rss = prev;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss_bytes(pid).unwrap_or(prev);
        if rss.abs_diff(prev) < 256 * 1024 {
            break;
        }
        prev = rss;
    }
    Ok(json!({ "rss_bytes": rss, "idle_ms": r3(ms(idle_started.elapsed())) }))
}

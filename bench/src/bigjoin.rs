//! `big_room_join` (issue 23): a user of a second server joins a large room hosted on the first.
//!
//! Set-up on server A (not timed): a public room with `bj_members` members, `bj_state` state
//! events (names, topics, power-level changes, bans and unbans of users who never joined) and
//! `bj_msgs` messages, interleaved as in a living room. Then a fresh user of server B joins it by
//! its alias through A, and three moments are timed from the `/join` request: its 200, the first
//! `/sync` of B's user that shows the room with a timeline, and the first `/joined_members` on B
//! that lists every member. B's memory (`--pid2`) is read before and after; the bytes between the
//! servers are counted outside this program (bench/run.py relays the federation ports), which is
//! why the timed part is bracketed by marker lines on stdout.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::{StreamExt, TryStreamExt, stream};
use serde_json::{Value, json};

use crate::client::User;
use crate::scenarios::{Ctx, NotAvailable, ms, next_batch};
use crate::stats::{hwm_bytes, r3, rss_bytes};

/// Printed on stdout (not JSON, so readers of the result lines skip it) just before the `/join`
/// request and just after the member list is complete on B.
pub const MARK_START: &str = "#mark big_room_join start";
pub const MARK_END: &str = "#mark big_room_join end";

/// One unit of set-up work; the events of one unit are sent in order, units run concurrently.
enum Work {
    /// A name, a topic, a power-level change, a ban of a user who never joined, and its unban:
    /// five state events.
    StateCycle(usize),
    /// One topic change (the remainder when the state count is not a multiple of five).
    Topic(usize),
    /// `n` messages from member `sender` (the creator if the room has no other member).
    Messages { sender: usize, first: usize, n: usize },
}

/// The room's power levels with `promoted` at `level` (the rest as the room has them: in room
/// version 12 the creator may not be listed, in earlier ones it must stay at 100).
fn power_levels(base: &Value, promoted: &str, level: u32) -> Value {
    let mut pl = base.clone();
    if !pl["users"].is_object() {
        pl["users"] = json!({});
    }
    pl["users"][promoted] = json!(level);
    pl
}

async fn run_work(
    w: Work,
    creator: &User,
    members: &[User],
    room: &str,
    pl: &Value,
    tag: &str,
    server: &str,
) -> Result<()> {
    match w {
        Work::StateCycle(c) => {
            creator.put_state(room, "m.room.name", "", &json!({ "name": format!("big room, name {c}") })).await?;
            creator
                .put_state(room, "m.room.topic", "", &json!({ "topic": format!("topic {c} of the big room {tag}") }))
                .await?;
            // A member promoted (or, in a room of one, a user who never joined: the creator
            // itself may not be listed in room version 12).
            let outsider = format!("@{tag}_out{c}:{server}");
            let promoted = members.get(c % members.len().max(1)).map_or(&outsider, |u| &u.user_id);
            let level = 10 + (c % 40) as u32;
            creator.put_state(room, "m.room.power_levels", "", &power_levels(pl, promoted, level)).await?;
            creator.ban(room, &outsider).await?;
            creator.unban(room, &outsider).await?;
        }
        Work::Topic(k) => {
            creator.put_state(room, "m.room.topic", "", &json!({ "topic": format!("extra topic {k} {tag}") })).await?;
        }
        Work::Messages { sender, first, n } => {
            let u = members.get(sender).unwrap_or(creator);
            for k in first..first + n {
                u.send_text(room, &format!("{tag}-m{k}"), &format!("message {k} of the big room")).await?;
            }
        }
    }
    Ok(())
}

/// Builds the big room on A and returns `(room id, alias, set-up figures)`.
async fn build_room(ctx: &Ctx) -> Result<(String, String, Value)> {
    let s = &ctx.sizes;
    let started = Instant::now();
    let creator = ctx.hs.register(&ctx.stem("bjc")).await?;
    let server_a = creator.server_name().to_string();
    let alias_local = ctx.stem("bigroom");
    let room = creator
        .create_room(&json!({
            "preset": "public_chat",
            "name": "big room",
            "room_alias_name": alias_local,
            "visibility": "private",
        }))
        .await
        .context("creating the big room")?;
    let alias = format!("#{alias_local}:{server_a}");
    let members = ctx.register_many(&ctx.hs, "bjm", s.bj_members.saturating_sub(1)).await?;
    let t = Instant::now();
    ctx.join_all(&members, &room).await.context("joining the members")?;
    let joins_s = t.elapsed().as_secs_f64();

    // State and messages interleaved evenly, as in a room that lives: one unit of state per
    // `every` message batches.
    let tag = ctx.stem("bj");
    let cycles = s.bj_state / 5;
    let mut state: Vec<Work> = (0..cycles).map(Work::StateCycle).collect();
    state.extend((0..s.bj_state % 5).map(Work::Topic));
    const BATCH: usize = 20;
    let batches = s.bj_msgs.div_ceil(BATCH);
    let mut work = Vec::with_capacity(state.len() + batches);
    let mut state = state.into_iter();
    let every = (batches / cycles.max(1)).max(1);
    for b in 0..batches {
        let first = b * BATCH;
        let n = BATCH.min(s.bj_msgs - first);
        work.push(Work::Messages { sender: b % members.len().max(1), first, n });
        if b % every == 0
            && let Some(w) = state.next()
        {
            work.push(w);
        }
    }
    work.extend(state);
    let pl = creator.state_content(&room, "m.room.power_levels", "").await?;
    let t = Instant::now();
    let units = work.len();
    stream::iter(work)
        .map(|w| run_work(w, &creator, &members, &room, &pl, &tag, &server_a))
        .buffer_unordered(ctx.setup_concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("filling the big room")?;
    let fill_s = t.elapsed().as_secs_f64();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "  big room: {} members joined in {joins_s:.1} s, {} state events and {} messages ({units} units) in {fill_s:.1} s",
        members.len() + 1,
        s.bj_state,
        s.bj_msgs
    );
    let events = (s.bj_state + s.bj_msgs) as f64;
    Ok((
        room,
        alias,
        json!({
            "setup_s": r3(setup_s),
            "setup_joins_s": r3(joins_s),
            "setup_fill_s": r3(fill_s),
            "setup_events_per_s": r3(events / fill_s.max(1e-9)),
        }),
    ))
}

/// Whether a sync answer shows `room` joined with at least one timeline event; returns how
/// many events its timeline carries and whether it is limited.
fn shows_room(v: &Value, room: &str) -> Option<(usize, bool)> {
    let r = v["rooms"]["join"].get(room)?;
    let n = r["timeline"]["events"].as_array().map_or(0, Vec::len);
    (n > 0).then(|| (n, r["timeline"]["limited"].as_bool().unwrap_or(false)))
}

fn mark(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The scenario: builds the room on A, then times B's join (see the module's documentation).
pub async fn big_room_join(ctx: &Ctx) -> Result<Value> {
    let Some(hs2) = &ctx.hs2 else {
        return Err(NotAvailable("needs --url2 (a second homeserver)".into()).into());
    };
    let s = &ctx.sizes;
    let (room, alias, setup) = build_room(ctx).await?;
    let server_a = alias.split_once(':').map(|x| x.1.to_string()).unwrap_or_default();
    let expected_members = s.bj_members.max(1) + 1;

    let joiner = hs2.register(&ctx.stem("bjb")).await?;
    // Element Web's first-sync filter shape (20 events, lazy-loaded members), inline.
    let filter = crate::big::element_filter().to_string();
    let since = next_batch(&joiner.sync_with(None, 0, Some(&filter)).await?)?;
    let rss_before = ctx.pid2.and_then(rss_bytes);
    // Let B's RSS settle and the sync above finish its work before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    mark(MARK_START);
    let t0 = Instant::now();
    // The long-poll runs from before the join, as a client's would.
    let syncer = {
        let (joiner, room, filter) = (joiner.clone(), room.clone(), filter.clone());
        tokio::spawn(async move {
            let mut since = since;
            let mut syncs = 0;
            loop {
                let v = joiner.sync_with(Some(&since), 30_000, Some(&filter)).await?;
                syncs += 1;
                if let Some((events, limited)) = shows_room(&v, &room) {
                    return anyhow::Ok((t0.elapsed(), events, limited, syncs, v.to_string().len()));
                }
                since = next_batch(&v)?;
            }
        })
    };
    let joined = joiner.join_room(&alias, Some(&server_a)).await.context("joining the big room over federation")?;
    let join_took = t0.elapsed();
    if joined != room {
        bail!("joining {alias} gave room {joined}, expected {room}");
    }
    let (sync_took, timeline_events, limited, syncs, sync_bytes) =
        syncer.await.map_err(|e| anyhow!("sync task: {e}"))?.context("B's sync after the join")?;

    // The full member list on B (a server that joins with partial state lists only some at first).
    let mut polls = 0;
    let members_took = loop {
        polls += 1;
        let n = joiner.joined_members(&room).await?;
        if n >= expected_members {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(1200) {
            bail!("B lists {n} of {expected_members} members 20 min after the join");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    mark(MARK_END);
    let rss_after = ctx.pid2.and_then(rss_bytes);
    let hwm = ctx.pid2.and_then(hwm_bytes);
    let state_on_b = joiner.room_state(&room).await?.as_array().map_or(0, Vec::len);

    let mut out = json!({
        "members": expected_members - 1,
        "state_events": s.bj_state,
        "messages": s.bj_msgs,
        "room_state_on_b": state_on_b,
        "join_ms": r3(ms(join_took)),
        "sync_ms": r3(ms(sync_took)),
        "members_ms": r3(ms(members_took)),
        "timeline_events": timeline_events,
        "timeline_limited": limited,
        "syncs_until_room": syncs,
        "sync_response_bytes": sync_bytes,
        "member_polls": polls,
        "b_rss_before_bytes": rss_before,
        "b_rss_after_bytes": rss_after,
        "b_rss_growth_bytes": rss_before.zip(rss_after).map(|(a, b)| b as i64 - a as i64),
        "b_peak_rss_bytes": hwm,
    });
    for (k, v) in setup.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    Ok(out)
}

//! `deep_history` (issue 23): what reading history costs at the start, the middle and the end of
//! a very large room, and whether that cost stays flat as the room grows. One room is grown in
//! steps (one case per size, e.g. 10,000 then 1,000,000 messages); after each step the same
//! reads are timed at the oldest, the middle and the newest message of the room: `/context` of
//! the event, and a `/messages` page of 100 backwards and forwards from it.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt, TryStreamExt, stream};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{User, enc};
use crate::scenarios::{Ctx, ms};
use crate::stats::{r3, summary};

/// Concurrent senders filling the room: enough to keep a fast server's group commit busy; each
/// sends one message after another with its own transaction ids.
const SENDERS: usize = 32;
/// Times each read is repeated at each point.
const REPEATS: usize = 20;
/// How long one read may take.
const T: Duration = Duration::from_secs(120);

/// The room as grown so far: its id, its senders, how many messages it holds and the ids of the
/// oldest and the newest message (the middle one is looked up after each step).
pub struct DeepRoom {
    room: String,
    senders: Vec<User>,
    messages: usize,
    /// Event id of message `k`, for the `k`s that may become a measuring point.
    marks: Vec<(usize, String)>,
}

/// Grows the run's deep room to `target` messages (creating it on the first call) and times the
/// reads at its start, middle and end.
pub async fn deep_history(ctx: &Ctx, target: usize) -> Result<Value> {
    let mut guard = ctx.deep_room.lock().await;
    if guard.is_none() {
        let senders = ctx.register_many(&ctx.hs, "deep", SENDERS).await?;
        let room = senders[0].create_public_room("deep history").await?;
        ctx.join_all(&senders[1..], &room).await?;
        *guard = Some(DeepRoom { room, senders, messages: 0, marks: Vec::new() });
    }
    let deep = guard.as_mut().expect("set above");
    if deep.messages > target {
        bail!("the deep room already holds {} messages, more than {target}", deep.messages);
    }
    let fill_started = Instant::now();
    let added = target - deep.messages;
    grow(deep, target, &ctx.sizes.dh_points(target)).await.context("filling the deep room")?;
    let fill = fill_started.elapsed();
    eprintln!("  deep room: {added} messages added in {:.1} s ({} in all)", fill.as_secs_f64(), deep.messages);

    let reader = &deep.senders[0];
    let mut points = serde_json::Map::new();
    for (name, k) in [("start", 0), ("middle", target / 2), ("end", target - 1)] {
        let event = deep
            .marks
            .iter()
            .find(|(m, _)| *m == k)
            .map(|(_, id)| id.clone())
            .with_context(|| format!("no event id kept for message {k}"))?;
        points.insert(name.into(), measure(reader, &deep.room, &event, k, target).await.with_context(|| name)?);
    }
    Ok(json!({
        "messages": target,
        "added": added,
        "fill_ms": r3(ms(fill)),
        "fill_msgs_per_s": r3(added as f64 / fill.as_secs_f64().max(1e-9)),
        "page_limit": 100,
        "repeats": REPEATS,
        "points": points,
    }))
}

impl crate::scenarios::Sizes {
    /// The message numbers whose event ids are kept while growing towards `target`: the first,
    /// the middle of `target` and of every size of the run, and the last.
    fn dh_points(&self, target: usize) -> Vec<usize> {
        let mut v = vec![0, target / 2, target - 1];
        v.extend(self.dh_messages.iter().flat_map(|&n| [n / 2, n - 1]));
        v
    }
}

/// Sends messages `deep.messages..target`, message `k` by sender `k % SENDERS` with body
/// `deep {k}`, keeping the event ids of the messages in `points`.
async fn grow(deep: &mut DeepRoom, target: usize, points: &[usize]) -> Result<()> {
    let from = deep.messages;
    let room = deep.room.clone();
    let senders = &deep.senders;
    let kept: Vec<(usize, String)> = stream::iter(0..SENDERS)
        .map(|i| {
            let room = room.clone();
            async move {
                let mut kept = Vec::new();
                // This sender's messages in order: each waits for the one before it.
                let first = from + (i + SENDERS - from % SENDERS) % SENDERS;
                for k in (first..target).step_by(SENDERS) {
                    let id = senders[i].send_text(&room, &format!("d{k}"), &format!("deep {k}")).await?;
                    if points.contains(&k) {
                        kept.push((k, id));
                    }
                }
                anyhow::Ok(kept)
            }
        })
        .buffer_unordered(SENDERS)
        .try_concat()
        .await?;
    deep.marks.extend(kept);
    deep.messages = target;
    Ok(())
}

/// The message number in a body `deep {k}`.
fn number(ev: &Value) -> Option<usize> {
    ev["content"]["body"].as_str()?.strip_prefix("deep ")?.parse().ok()
}

/// Checks a page read from message `k` (`backwards`, or forwards): every message of a sender
/// is on the right side of `k` when it is `k`'s sender, and in the page's order behind the
/// previous message of the same sender. `Err` names the first message out of place.
fn in_order(chunk: &[Value], k: usize, backwards: bool) -> Result<(), usize> {
    let mut last: Vec<Option<usize>> = vec![None; SENDERS];
    for n in chunk.iter().filter_map(number) {
        let s = n % SENDERS;
        let wrong_side = s == k % SENDERS && if backwards { n >= k } else { n <= k };
        let out_of_turn = last[s].is_some_and(|p| if backwards { n > p } else { n < p });
        if wrong_side || out_of_turn {
            return Err(n);
        }
        last[s] = Some(n);
    }
    Ok(())
}

/// Times `/context` of `event` (message `k`) and a page of 100 each way from it, `REPEATS` times
/// each, and checks that the answers are about that point of the room.
async fn measure(user: &User, room: &str, event: &str, k: usize, total: usize) -> Result<Value> {
    let (mut context, mut back, mut fwd) = (Vec::new(), Vec::new(), Vec::new());
    let (mut back_events, mut fwd_events) = (0, 0);
    for _ in 0..REPEATS {
        let path = format!("/_matrix/client/v3/rooms/{}/context/{}?limit=10", enc(room), enc(event));
        let t = Instant::now();
        let v = user.hs.call(Method::GET, &path, Some(&user.token), None, T).await?;
        context.push(ms(t.elapsed()));
        if v["event"]["event_id"] != event {
            bail!("/context answered about {} instead of {event}", v["event"]["event_id"]);
        }
        let (Some(start), Some(end)) = (v["start"].as_str(), v["end"].as_str()) else {
            bail!("/context answered without start or end");
        };

        let page = |from: &str, dir: &str| {
            format!("/_matrix/client/v3/rooms/{}/messages?dir={dir}&limit=100&from={}", enc(room), enc(from))
        };
        let t = Instant::now();
        let v = user.hs.call(Method::GET, &page(start, "b"), Some(&user.token), None, T).await?;
        back.push(ms(t.elapsed()));
        let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
        back_events = chunk.len();
        // Backwards from the context's start: older messages only. The senders interleave at
        // their own pace, so numbers say nothing across senders; each sender's own messages are
        // sent one after another, so theirs must be older than k, newest first.
        if let Err(bad) = in_order(&chunk, k, true) {
            bail!("a page backwards from message {k} holds message {bad}");
        }
        if k >= 200 + 2 * SENDERS && chunk.iter().filter_map(number).count() < 100 {
            bail!("a page backwards from message {k} holds {} messages, not 100", chunk.len());
        }

        let t = Instant::now();
        let v = user.hs.call(Method::GET, &page(end, "f"), Some(&user.token), None, T).await?;
        fwd.push(ms(t.elapsed()));
        let chunk = v["chunk"].as_array().cloned().unwrap_or_default();
        fwd_events = chunk.len();
        if let Err(bad) = in_order(&chunk, k, false) {
            bail!("a page forwards from message {k} holds message {bad}");
        }
        if k + 200 + 2 * SENDERS < total && chunk.iter().filter_map(number).count() < 100 {
            bail!("a page forwards from message {k} holds {} messages, not 100", chunk.len());
        }
    }
    Ok(json!({
        "message": k,
        "context": summary(context),
        "messages_back": summary(back),
        "messages_back_events": back_events,
        "messages_forward": summary(fwd),
        "messages_forward_events": fwd_events,
    }))
}

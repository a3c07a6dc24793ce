//! The durable transaction sender: one task per appservice with a `url` drains its rows of
//! `appservice_outbox`, in id order.
//!
//! A task packs at most [`MAX_EVENTS`] events and [`MAX_EPHEMERAL`] ephemeral items into a
//! transaction and writes it to `appservice_txns` *before* the first attempt; it then `PUT`s
//! exactly that body, with exactly that transaction id (the id of its first outbox row), to
//! `{url}/_matrix/app/v1/transactions/{txnId}` until the appservice answers 2xx, waiting a
//! doubling delay (`appservice.retry_min_ms`..`retry_max_ms`) between attempts. Only then are
//! the transaction and its rows deleted, in one database transaction. A crash anywhere repeats
//! the stored transaction under the same id, which appservices deduplicate: every event
//! arrives once and in order, across outages and restarts. Unlike federation, a refusal is
//! retried too: an appservice is the operator's own, and dropping events would lose messages
//! that its bridge can never fetch again.
//!
//! A task sleeps until the room engine's outbox signal (every commit that queued rows) or 30 s;
//! a retry wait is cut short when the appservice shows signs of life (any request it makes to
//! us with its token, or a successful ping), so it is served again promptly when it comes back.

use std::sync::Arc;
use std::time::Duration;

use crate::notifier::OutboxWakeup;
use serde_json::{Value, json};

use crate::appservice::{Appservices, CallError, Registration};
use crate::error::Result;
use crate::storage::now_ms;

/// Most events in one transaction (Synapse's limit).
pub const MAX_EVENTS: usize = 100;
/// Most ephemeral items (typing, receipts, presence, to-device) in one transaction.
pub const MAX_EPHEMERAL: usize = 100;

struct PendingTxn {
    txn_id: String,
    body: Value,
    outbox_ids: Vec<i64>,
    /// MSC3202: the device-list position the transaction's `device_lists` reach.
    device_list_pos: Option<i64>,
}

/// Most device-list changes read for one transaction.
const MAX_DEVICE_LIST_CHANGES: i64 = 1000;

/// Runs one sender task per appservice that has a `url`, for as long as this future is polled:
/// it runs under the `appservice-sender` lease (`crate::lease`), in one process at a time, and
/// dropping it stops every task. `wakeup` is signalled after commits that queued outbox rows
/// (in any process).
pub async fn run(svc: Arc<Appservices>, wakeup: Arc<OutboxWakeup>) {
    let mut tasks = tokio::task::JoinSet::new();
    for reg in svc.all().iter().filter(|r| r.url.is_some()) {
        tasks.spawn(appservice_task(svc.clone(), reg.clone(), wakeup.clone()));
    }
    while tasks.join_next().await.is_some() {}
    // Nothing to send to: hold the lease quietly rather than being restarted every second.
    std::future::pending::<()>().await
}

async fn appservice_task(svc: Arc<Appservices>, reg: Arc<Registration>, wakeup: Arc<OutboxWakeup>) {
    let cfg = &svc.config.appservice;
    let min = Duration::from_millis(cfg.retry_min_ms.max(1));
    let max = Duration::from_millis(cfg.retry_max_ms.max(cfg.retry_min_ms));
    let kick = svc.kick_handle(&reg.id);
    loop {
        // Enabled before looking, so a commit between the look and the wait is not missed.
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let txn = match next_transaction(&svc, &reg).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(appservice = %reg.id, error = %e.message, "appservice sender: packing failed");
                tokio::time::sleep(min).await;
                continue;
            }
        };
        let path = format!("/_matrix/app/v1/transactions/{}", txn.txn_id);
        let mut delay = min;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match svc.call(&reg, reqwest::Method::PUT, &path, &[], Some(&txn.body)).await {
                Ok(_) => break,
                Err(e) => {
                    if let CallError::Status(status, body) = &e {
                        tracing::info!(appservice = %reg.id, status, body = %body.chars().take(200).collect::<String>(),
                            "appservice refused a transaction");
                    }
                    tracing::info!(appservice = %reg.id, txn = %txn.txn_id, attempts, retry_in_ms = delay.as_millis() as u64,
                        error = %e, "appservice transaction failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = kick.notified() => {}
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
        if let Err(e) = svc.db.complete_appservice_txn(&reg.id, &txn.txn_id, &txn.outbox_ids, txn.device_list_pos).await
        {
            tracing::warn!(appservice = %reg.id, error = %e, "appservice sender: completing a transaction failed");
            tokio::time::sleep(min).await;
        }
    }
}

/// The transaction in flight for `reg`, or a new one packed from its outbox and persisted.
async fn next_transaction(svc: &Appservices, reg: &Registration) -> Result<Option<PendingTxn>> {
    if let Some((txn_id, body, ids, device_list_pos)) = svc.db.appservice_pending_txn(&reg.id).await? {
        return Ok(Some(PendingTxn {
            txn_id,
            body: serde_json::from_str(&body)?,
            outbox_ids: serde_json::from_str(&ids)?,
            device_list_pos,
        }));
    }
    let rows = svc.db.appservice_outbox(&reg.id, (MAX_EVENTS + MAX_EPHEMERAL) as i64).await?;
    let device_lists = match reg.msc3202 {
        true => device_list_changes(svc, reg).await?,
        false => None,
    };
    let (changed, device_list_pos) = match device_lists {
        Some((changed, pos)) if changed.is_empty() => {
            // Nothing for this appservice's users: move on without a transaction.
            svc.db.set_appservice_device_list_pos(&reg.id, pos).await?;
            (Vec::new(), None)
        }
        Some((changed, pos)) => (changed, Some(pos)),
        None => (Vec::new(), None),
    };
    let first = match (rows.first(), device_list_pos) {
        (Some(row), _) => row.0.to_string(),
        // Only device-list changes: the position names the transaction (it only grows).
        (None, Some(pos)) => format!("dl{pos}"),
        (None, None) => return Ok(None),
    };
    let now = now_ms();
    let (mut events, mut ephemeral, mut to_device, mut ids) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, kind, payload) in rows {
        // Rows are taken in order and packing stops at the first that does not fit, so a
        // later transaction never carries anything older than an earlier one.
        let full = match kind.as_str() {
            "pdu" => events.len() >= MAX_EVENTS,
            _ => ephemeral.len() + to_device.len() >= MAX_EPHEMERAL,
        };
        if full {
            break;
        }
        ids.push(id);
        match kind.as_str() {
            "pdu" => match svc.db.get_event(&payload).await? {
                Some(ev) => events.push(ev.pdu.client_json(ev.unsigned.as_ref(), now)),
                None => tracing::warn!(appservice = %reg.id, event_id = %payload, "queued event not found; skipping"),
            },
            "edu" | "to_device" => match serde_json::from_str::<Value>(&payload) {
                Ok(v) if kind == "edu" => ephemeral.push(v),
                Ok(v) => to_device.push(v),
                Err(e) => {
                    tracing::warn!(appservice = %reg.id, error = %e, "queued ephemeral item is not JSON; skipping")
                }
            },
            other => tracing::warn!(appservice = %reg.id, kind = other, "unknown appservice outbox kind; skipping"),
        }
    }
    let mut body = json!({ "events": events });
    if !ephemeral.is_empty() {
        // The stable name (spec v1.13) and MSC2409's, which bridges of before read.
        body["ephemeral"] = json!(ephemeral);
        body["de.sorunome.msc2409.ephemeral"] = json!(ephemeral);
    }
    if reg.msc3202 {
        let (counts, fallback) = key_counts(svc, reg, &events, &to_device).await?;
        body["org.matrix.msc3202.device_one_time_keys_count"] = counts;
        body["org.matrix.msc3202.device_unused_fallback_key_types"] = fallback;
        if device_list_pos.is_some() {
            body["org.matrix.msc3202.device_lists"] = json!({ "changed": changed, "left": [] });
        }
    }
    if !to_device.is_empty() {
        body["de.sorunome.msc2409.to_device"] = json!(to_device);
    }
    let txn_id = first;
    svc.db
        .store_appservice_txn(&reg.id, &txn_id, &body.to_string(), &serde_json::to_string(&ids)?, device_list_pos)
        .await?;
    Ok(Some(PendingTxn { txn_id, body, outbox_ids: ids, device_list_pos }))
}

/// MSC3202: the users whose device lists changed since the appservice's position and who are
/// its users or share a room with one of them, and the position read up to; `None` when
/// nothing changed.
async fn device_list_changes(svc: &Appservices, reg: &Registration) -> Result<Option<(Vec<String>, i64)>> {
    let from = svc.db.appservice_device_list_pos(&reg.id).await?;
    let rows = svc.db.device_list_changes_after(from, MAX_DEVICE_LIST_CHANGES).await?;
    let Some(pos) = rows.last().map(|r| r.0) else { return Ok(None) };
    let mut users: Vec<String> = rows.into_iter().map(|r| r.1).collect();
    users.sort();
    users.dedup();
    let mut changed = Vec::new();
    for user in users {
        if reg.is_user(&user) || svc.db.e2e_users_sharing(&user).await?.iter().any(|u| reg.is_user(u)) {
            changed.push(user);
        }
    }
    Ok(Some((changed, pos)))
}

/// MSC3202: one-time key counts and unused fallback key types of the devices of the
/// appservice's users that this transaction concerns (its sender, the senders and member
/// targets of its events that are its users, the recipients of its to-device messages), as
/// Synapse computes them.
async fn key_counts(
    svc: &Appservices,
    reg: &Registration,
    events: &[Value],
    to_device: &[Value],
) -> Result<(Value, Value)> {
    let mut users = std::collections::BTreeSet::from([reg.sender.to_string()]);
    for e in events {
        for field in ["sender", "state_key"] {
            if let Some(u) = e[field].as_str().filter(|u| u.starts_with('@') && reg.is_user(u)) {
                users.insert(u.to_owned());
            }
        }
    }
    users.extend(to_device.iter().filter_map(|m| m["to_user_id"].as_str().map(str::to_owned)));
    let (mut counts, mut fallback) = (serde_json::Map::new(), serde_json::Map::new());
    for user in users {
        let (mut user_counts, mut user_fallback) = (serde_json::Map::new(), serde_json::Map::new());
        for device in svc.db.list_devices(&user).await? {
            let (otks, unused) = svc.db.e2e_key_counts(&user, &device.device_id).await?;
            user_counts.insert(device.device_id.clone(), json!(otks));
            user_fallback.insert(device.device_id, json!(unused));
        }
        if !user_counts.is_empty() {
            counts.insert(user.clone(), Value::Object(user_counts));
            fallback.insert(user, Value::Object(user_fallback));
        }
    }
    Ok((Value::Object(counts), Value::Object(fallback)))
}

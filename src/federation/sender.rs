//! The durable outbound sender: one task per destination drains `federation_outbox`.
//!
//! A task packs at most 50 PDUs and 100 EDUs into a transaction and writes it to
//! `federation_txns_out` *before* the first attempt; it then repeats exactly that body, with
//! exactly that transaction id, until the destination answers 200 (or refuses it, below),
//! waiting a capped exponential backoff (`federation.retry_min_ms`..`retry_max_ms`) between
//! attempts. Only then are the
//! transaction and its outbox rows deleted, in one database transaction. Since the receiver
//! deduplicates on `(origin, txn_id)`, a crash between the peer's 200 and our delete causes a
//! repeat that the peer answers from its record: every event arrives exactly once. A restart
//! resumes from the tables. A transaction the peer refuses with a 4xx (other than 429) is
//! dropped instead of retried, so it cannot block what is queued behind it. When a destination
//! comes back after failed attempts, a backlog of PDUs is collapsed to each room's newest one
//! (`catch_up`): the peer fetches the gap itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ruma::ServerName;
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::Federation;
use crate::error::{Error, Result};
use crate::rooms::Rooms;
use crate::storage::now_ms;

/// Most PDUs in one transaction (spec limit).
pub const MAX_PDUS: usize = 50;
/// Most EDUs in one transaction (spec limit).
pub const MAX_EDUS: usize = 100;

/// A transaction persisted before its first attempt.
struct PendingTxn {
    txn_id: String,
    body: String,
    outbox_ids: Vec<i64>,
}

/// The sender: a supervisor that wakes on `rooms.outbox_wakeup` (and every 30 s) and keeps one
/// task per destination with queued rows. It runs under a lease (`crate::lease`), in one
/// process at a time: dropping this future stops every destination task with it, and the
/// process taking over resumes from the tables.
pub async fn run(fed: Arc<Federation>, rooms: Arc<Rooms>) {
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut tasks: HashMap<String, Arc<Notify>> = HashMap::new();
    let wakeup = rooms.outbox_wakeup.clone();
    loop {
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match destinations(&fed).await {
            Ok(dests) => {
                for dest in dests {
                    let notify = tasks.entry(dest.clone()).or_insert_with(|| {
                        let n = Arc::new(Notify::new());
                        running.spawn(destination_task(fed.clone(), dest.clone(), n.clone()));
                        n
                    });
                    notify.notify_one();
                }
            }
            Err(e) => tracing::warn!(error = %e.message, "federation sender: listing destinations failed"),
        }
        tokio::select! {
            _ = &mut notified => {},
            _ = tokio::time::sleep(Duration::from_secs(30)) => {},
        }
    }
}

async fn destinations(fed: &Federation) -> Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT destination FROM federation_outbox UNION SELECT destination FROM federation_txns_out",
    )
    .fetch_all(fed.db.pool())
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

async fn destination_task(fed: Arc<Federation>, dest: String, wake: Arc<Notify>) {
    let min = Duration::from_millis(fed.config.federation.retry_min_ms.max(1));
    let max = Duration::from_millis(fed.config.federation.retry_max_ms.max(fed.config.federation.retry_min_ms));
    let Ok(server) = ServerName::parse(&dest) else {
        tracing::warn!(destination = %dest, "invalid destination in outbox; dropping its rows");
        if let Ok(mut tx) = fed.db.begin_write().await {
            let _ = sqlx::query("DELETE FROM federation_outbox WHERE destination = $1")
                .bind(&dest)
                .execute(&mut *tx.tx)
                .await;
            let _ = tx.commit().await;
        }
        return;
    };
    loop {
        let txn = match next_transaction(&fed, &dest).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                wake.notified().await;
                continue;
            }
            Err(e) => {
                tracing::warn!(destination = %dest, error = %e.message, "federation sender: packing failed");
                tokio::time::sleep(min).await;
                continue;
            }
        };
        let body: Value = serde_json::from_str(&txn.body).unwrap_or(Value::Null);
        let path = format!("/_matrix/federation/v1/send/{}", txn.txn_id);
        let mut delay = min;
        let mut attempts = 0u32;
        let mut was_down = false;
        loop {
            attempts += 1;
            match fed.request(&server, http::Method::PUT, &path, Some(&body)).await {
                Ok(answer) => {
                    if let Some(results) = answer["pdus"].as_object() {
                        for (id, r) in results {
                            if let Some(err) = r.get("error") {
                                tracing::info!(destination = %dest, event_id = %id, error = %err, "peer rejected PDU");
                            }
                        }
                    }
                    metrics::counter!("myelin_federation_transactions_total", "result" => "sent").increment(1);
                    if let Err(e) = fed.db.destination_succeeded(&dest, &txn.outbox_ids).await {
                        tracing::warn!(destination = %dest, error = %e.message, "recording a delivery failed");
                    }
                    break;
                }
                // The peer refused the transaction itself (4xx other than 429): sending the
                // same body again would be refused again and hold back everything queued
                // behind it. Synapse drops such a transaction too (`HttpResponseException`:
                // no retry of its PDUs, no backoff); later events name the dropped ones as
                // prev events, so the peer fetches them with `get_missing_events`.
                Err(e) if refused(&e) => {
                    tracing::warn!(destination = %dest, txn = %txn.txn_id, status = e.status.as_u16(),
                        error = %e.message, "federation transaction refused; dropping it");
                    metrics::counter!("myelin_federation_transactions_total", "result" => "refused").increment(1);
                    break;
                }
                Err(e) => {
                    tracing::info!(destination = %dest, txn = %txn.txn_id, attempts, retry_in_ms = delay.as_millis() as u64,
                        error = %e.message, "federation transaction failed; will retry");
                    was_down = true;
                    metrics::counter!("myelin_federation_transactions_total", "result" => "failed_attempt")
                        .increment(1);
                    if let Err(e) = fed.db.destination_failed(&dest, delay.as_millis() as i64).await {
                        tracing::warn!(destination = %dest, error = %e.message, "recording a failure failed");
                    }
                    // Woken early (new events, or an admin's `reset_connection`): only a reset
                    // (the stored interval cleared) ends the wait and the backoff.
                    let until = tokio::time::Instant::now() + delay;
                    let mut reset = false;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = wake.notified() => {}
                        }
                        if fed.db.destination_reset(&dest).await.unwrap_or(false) {
                            reset = true;
                            break;
                        }
                    }
                    delay = if reset { min } else { (delay * 2).min(max) };
                }
            }
        }
        if let Err(e) = complete(&fed, &dest, &txn).await {
            tracing::warn!(destination = %dest, error = %e.message, "federation sender: completing transaction failed");
            tokio::time::sleep(min).await;
        }
        if was_down && let Err(e) = catch_up(&fed, &dest).await {
            tracing::warn!(destination = %dest, error = %e.message, "federation sender: catching up failed");
        }
    }
}

/// After `dest` was unreachable, a backlog of more PDUs than one transaction holds is not
/// replayed: of each room's queued PDUs only the newest is kept (EDUs all stay). The peer sees
/// prev events it lacks and fetches them with `get_missing_events` (and, past its limit, the
/// state with `state_ids`, and older history by backfill when its users page back), as Synapse's
/// catch-up does after an outage. A server that was down for a day is thus brought up to date
/// by a transaction per few dozen rooms, not by every event of the day.
async fn catch_up(fed: &Federation, dest: &str) -> Result<()> {
    let queued: Vec<(i64, String)> = sqlx::query_as(
        "SELECT o.id, e.room_id FROM federation_outbox o JOIN events e ON e.event_id = o.payload \
         WHERE o.destination = $1 AND o.kind = 'pdu'",
    )
    .bind(dest)
    .fetch_all(fed.db.pool())
    .await?;
    if queued.len() <= MAX_PDUS {
        return Ok(());
    }
    let mut newest: HashMap<String, i64> = HashMap::new();
    for (id, room) in &queued {
        let top = newest.entry(room.clone()).or_insert(*id);
        *top = (*top).max(*id);
    }
    let mut tx = fed.db.begin_write().await?;
    // Rows taken into the transaction in flight (if any) are left alone.
    for (room, keep) in &newest {
        sqlx::query(
            "DELETE FROM federation_outbox WHERE destination = $1 AND kind = 'pdu' AND id < $2 \
             AND payload IN (SELECT event_id FROM events WHERE room_id = $3)",
        )
        .bind(dest)
        .bind(keep)
        .bind(room)
        .execute(&mut *tx.tx)
        .await?;
    }
    tx.commit().await?;
    tracing::info!(destination = %dest, queued = queued.len(), rooms = newest.len(),
        "destination is back: sending each room's newest event, the peer fetches the gap");
    Ok(())
}

/// Whether an answer refuses the transaction for good: a 4xx other than 429 (too many
/// requests, which asks us to come back later).
fn refused(e: &Error) -> bool {
    e.status.is_client_error() && e.status != http::StatusCode::TOO_MANY_REQUESTS
}

/// The transaction in flight for `dest`, or a new one packed from the outbox and persisted.
async fn next_transaction(fed: &Federation, dest: &str) -> Result<Option<PendingTxn>> {
    let pending: Option<(String, String, String)> =
        sqlx::query_as("SELECT txn_id, body, outbox_ids FROM federation_txns_out WHERE destination = $1")
            .bind(dest)
            .fetch_optional(fed.db.pool())
            .await?;
    if let Some((txn_id, body, ids)) = pending {
        return Ok(Some(PendingTxn { txn_id, body, outbox_ids: serde_json::from_str(&ids).unwrap_or_default() }));
    }
    let limit = (MAX_PDUS + MAX_EDUS) as i64;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, kind, payload FROM federation_outbox WHERE destination = $1 ORDER BY id LIMIT $2")
            .bind(dest)
            .bind(limit)
            .fetch_all(fed.db.pool())
            .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    let mut ids = Vec::new();
    for (id, kind, payload) in rows {
        match kind.as_str() {
            "pdu" if pdus.len() < MAX_PDUS => {
                match fed.db.get_event(&payload).await? {
                    Some(ev) => pdus.push(ev.pdu.federation_json()),
                    None => tracing::warn!(event_id = %payload, "queued PDU not found; skipping"),
                }
                ids.push(id);
            }
            "edu" if edus.len() < MAX_EDUS => {
                match serde_json::from_str::<Value>(&payload) {
                    Ok(v) => edus.push(v),
                    Err(e) => tracing::warn!(error = %e, "queued EDU is not JSON; skipping"),
                }
                ids.push(id);
            }
            "pdu" | "edu" => {}
            other => {
                tracing::warn!(kind = other, "unknown outbox kind; skipping");
                ids.push(id);
            }
        }
    }
    let first = ids.first().copied().unwrap_or(0);
    let txn_id = format!("{}_{}", now_ms(), first);
    let body = json!({
        "origin": fed.server_name.as_str(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    })
    .to_string();
    let mut tx = fed.db.begin_write().await?;
    sqlx::query(
        "INSERT INTO federation_txns_out (destination, txn_id, body, outbox_ids, created_ts) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(dest)
    .bind(&txn_id)
    .bind(&body)
    .bind(serde_json::to_string(&ids)?)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    tx.commit().await?;
    Ok(Some(PendingTxn { txn_id, body, outbox_ids: ids }))
}

/// Deletes a delivered transaction and its outbox rows.
async fn complete(fed: &Federation, dest: &str, txn: &PendingTxn) -> Result<()> {
    let mut tx = fed.db.begin_write().await?;
    for id in &txn.outbox_ids {
        sqlx::query("DELETE FROM federation_outbox WHERE id = $1").bind(id).execute(&mut *tx.tx).await?;
    }
    sqlx::query("DELETE FROM federation_txns_out WHERE destination = $1 AND txn_id = $2")
        .bind(dest)
        .bind(&txn.txn_id)
        .execute(&mut *tx.tx)
        .await?;
    tx.commit().await.map_err(Error::from)?;
    Ok(())
}

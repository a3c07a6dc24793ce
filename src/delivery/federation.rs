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

use crate::error::{Error, Result};
use crate::federation::Federation;
use crate::notifier::OutboxWakeup;
use crate::storage::now_ms;
use crate::storage::outbox::{OutboxRow, TxnOut};

/// Most PDUs in one transaction (spec limit).
pub const MAX_PDUS: usize = 50;
/// Most EDUs in one transaction (spec limit).
pub const MAX_EDUS: usize = 100;

/// The sender: a supervisor that wakes on `wakeup` (signalled after commits that queued rows,
/// and every 30 s) and keeps one task per destination with queued rows. It runs under a lease
/// (`crate::lease`), in one process at a time: dropping this future stops every destination
/// task with it, and the process taking over resumes from the tables.
pub async fn run(fed: Arc<Federation>, wakeup: Arc<OutboxWakeup>) {
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut tasks: HashMap<String, Arc<Notify>> = HashMap::new();
    loop {
        let notified = wakeup.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match fed.db().outbox_destinations().await {
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
            Err(e) => tracing::warn!(error = %e, "federation sender: listing destinations failed"),
        }
        tokio::select! {
            _ = &mut notified => {},
            _ = tokio::time::sleep(Duration::from_secs(30)) => {},
        }
    }
}

async fn destination_task(fed: Arc<Federation>, dest: String, wake: Arc<Notify>) {
    let min = Duration::from_millis(fed.config().federation.retry_min_ms.max(1));
    let max = Duration::from_millis(fed.config().federation.retry_max_ms.max(fed.config().federation.retry_min_ms));
    let Ok(server) = ServerName::parse(&dest) else {
        tracing::warn!(destination = %dest, "invalid destination in outbox; dropping its rows");
        let _ = fed.db().outbox_drop_destination(&dest).await;
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
                    if let Err(e) = fed.db().destination_succeeded(&dest, &txn.outbox_ids).await {
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
                    if let Err(e) = fed.db().destination_failed(&dest, delay.as_millis() as i64).await {
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
                        if fed.db().destination_reset(&dest).await.unwrap_or(false) {
                            reset = true;
                            break;
                        }
                    }
                    delay = if reset { min } else { (delay * 2).min(max) };
                }
            }
        }
        if let Err(e) = fed.db().txn_out_complete(&dest, &txn).await {
            tracing::warn!(destination = %dest, error = %e, "federation sender: completing transaction failed");
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
    let queued = fed.db().outbox_pdu_rooms(dest).await?;
    if queued.len() <= MAX_PDUS {
        return Ok(());
    }
    let mut newest: HashMap<String, i64> = HashMap::new();
    for (id, room) in &queued {
        let top = newest.entry(room.clone()).or_insert(*id);
        *top = (*top).max(*id);
    }
    // Rows taken into the transaction in flight (if any) are left alone: they are older than
    // nothing kept, and are deleted only once that transaction is delivered.
    fed.db().outbox_keep_newest(dest, &newest).await?;
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
async fn next_transaction(fed: &Federation, dest: &str) -> Result<Option<TxnOut>> {
    if let Some(pending) = fed.db().txn_out_pending(dest).await? {
        return Ok(Some(pending));
    }
    let rows = fed.db().outbox_head(dest, (MAX_PDUS + MAX_EDUS) as i64).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut pdus = Vec::new();
    let mut edus = Vec::new();
    let mut ids = Vec::new();
    for OutboxRow { id, kind, payload } in rows {
        match kind.as_str() {
            "pdu" if pdus.len() < MAX_PDUS => {
                match fed.db().get_event(&payload).await? {
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
        "origin": fed.server_name().as_str(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    })
    .to_string();
    let txn = TxnOut { txn_id, body, outbox_ids: ids };
    fed.db().txn_out_persist(dest, &txn).await?;
    Ok(Some(txn))
}

//! The event writer: local events from every request are appended by one task per process,
//! in batches that share one transaction (group commit).
//!
//! A commit costs one fsync (SQLite WAL with `synchronous=FULL`, or PostgreSQL's WAL flush), and
//! stream positions must become visible in order, so writers are serialised anyway. Collecting
//! the events that arrive while a commit is in flight and committing them together turns N
//! fsyncs into one without weakening anything: every event of a batch is acknowledged only
//! after the batch's commit, and a batch that fails as a whole is answered with an error for
//! each of its events (clients retry with the same txn id).

use std::collections::HashMap;
use std::sync::Weak;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use tokio::sync::{mpsc, oneshot};

use super::Rooms;
use super::build::{Appended, NewEvent, RoomCtx};
use crate::error::{Error, Result};

/// Largest number of events in one transaction.
const MAX_BATCH: usize = 256;

/// One local event waiting to be written.
pub struct Job {
    /// Target room.
    pub room_id: OwnedRoomId,
    /// Sender.
    pub user_id: OwnedUserId,
    /// `(device_id, txn_id)` of an idempotent client send.
    pub txn: Option<(String, String)>,
    /// The event.
    pub ev: NewEvent,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<OwnedEventId>>,
}

/// Starts the writer task; it stops when the engine is dropped.
pub fn spawn(rooms: Weak<Rooms>, mut rx: mpsc::Receiver<Job>) {
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let Some(rooms) = rooms.upgrade() else { return };
            crate::storage::Db::while_holding_write_lock(rooms.write_batch(jobs)).await;
        }
    });
}

/// Failures that leave the transaction unusable (database errors) fail the whole batch;
/// a refused event (auth rules, bad input) fails only itself, as nothing was written for it.
fn is_fatal(e: &Error) -> bool {
    e.status.is_server_error()
}

enum Outcome {
    /// Appended in this batch: index into the room's appended list.
    New(String, usize),
    /// Already sent earlier with this txn id.
    Existing(OwnedEventId),
    /// Refused.
    Refused(Error),
}

impl Rooms {
    async fn write_batch(&self, jobs: Vec<Job>) {
        let start = std::time::Instant::now();
        match self.try_write_batch(&jobs).await {
            Ok((outcomes, ctxs, appended)) => {
                metrics::histogram!("myelin_event_writer_batch_size").record(jobs.len() as f64);
                metrics::histogram!("myelin_event_writer_batch_duration_seconds").record(start.elapsed().as_secs_f64());
                for (room, ctx) in &ctxs {
                    if let Some(list) = appended.get(room) {
                        self.after_commit(ctx, list).await;
                    }
                }
                self.caches.put_txns(jobs.iter().zip(&outcomes).filter_map(|(job, outcome)| match outcome {
                    Outcome::New(room, i) => job.txn.as_ref().map(|(device, txn)| {
                        let id = appended[room][*i].pdu.event_id.to_string();
                        (id, (job.user_id.to_string(), device.clone(), txn.clone()))
                    }),
                    _ => None,
                }));
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let result = match outcome {
                        Outcome::New(room, i) => Ok(appended[&room][i].pdu.event_id.clone()),
                        Outcome::Existing(id) => Ok(id),
                        Outcome::Refused(e) => Err(e),
                    };
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = jobs.len(), "event batch failed; nothing of it was committed");
                for job in jobs {
                    let _ = job.reply.send(Err(Error::new(e.status, e.errcode, e.message.clone())));
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn try_write_batch(
        &self,
        jobs: &[Job],
    ) -> Result<(Vec<Outcome>, HashMap<String, RoomCtx>, HashMap<String, Vec<Appended>>)> {
        let mut tx = self.db.begin_event_write().await?;
        tx.defer_rows();
        // Reserve the batch's stream positions first: one statement, and it takes the counter
        // row's lock before any room row, so batches of different processes on one PostgreSQL
        // lock rows in one order and cannot deadlock.
        crate::storage::Db::reserve_stream_positions(&mut tx, "events", jobs.len() as i64).await?;
        let mut appended: HashMap<String, Vec<Appended>> = HashMap::new();
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Every job's txn id in one read; ids written by this batch are added as it goes, so a
        // retry that lands in the same batch as its original gets the original's event.
        let keys: Vec<(&str, &str, &str)> = jobs
            .iter()
            .filter_map(|j| j.txn.as_ref().map(|(d, t)| (j.user_id.as_str(), d.as_str(), t.as_str())))
            .collect();
        let mut sent = self.db.get_txns_tx(&mut tx, &keys).await?;
        let mut rooms: Vec<&ruma::RoomId> = jobs.iter().map(|j| &*j.room_id).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut ctxs = self.load_ctxs(&mut tx, &rooms).await?;
        for job in jobs {
            let user = job.user_id.as_str();
            let key = job.txn.as_ref().map(|(d, t)| (user.to_owned(), d.clone(), t.clone()));
            if let Some(id) = key.as_ref().and_then(|k| sent.get(k)) {
                outcomes.push(Outcome::Existing(OwnedEventId::try_from(id.as_str()).map_err(Error::internal)?));
                continue;
            }
            let room = job.room_id.as_str().to_owned();
            let Some(ctx) = ctxs.get_mut(&room) else {
                outcomes.push(Outcome::Refused(Error::not_found("Unknown room")));
                continue;
            };
            // A room with a policy server: the event is built and sent outside the writer,
            // which must not wait for another server (`federated::policy`).
            if crate::rooms::federated::policy::writer_defers(ctx, &job.ev) {
                outcomes.push(Outcome::Refused(crate::rooms::federated::policy::policy_needed()));
                continue;
            }
            let built = async {
                if let Some(target) = &job.ev.redacts {
                    self.check_redaction_allowed(ctx, &job.user_id, target).await?;
                }
                self.build_event(ctx, &job.user_id, job.ev.clone()).await
            }
            .await;
            let pdu = match built {
                Ok(pdu) => pdu,
                Err(e) if !is_fatal(&e) => {
                    outcomes.push(Outcome::Refused(e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let txn = job.txn.as_ref().map(|(d, t)| (user, d.as_str(), t.as_str()));
            let a = self.persist_local(&mut tx, ctx, pdu, txn).await?;
            if let Some(k) = key {
                sent.insert(k, a.pdu.event_id.to_string());
            }
            let list = appended.entry(room.clone()).or_default();
            list.push(a);
            outcomes.push(Outcome::New(room, list.len() - 1));
        }
        tx.commit().await?;
        Ok((outcomes, ctxs, appended))
    }
}

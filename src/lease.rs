//! Leases: background work that must run in exactly one process at a time (the federation
//! sender, the push sender, periodic sweeps), however many processes share the database.
//!
//! [`Leases::run_exclusive`] is the one call: it runs a job while this process holds the named
//! lease and drops the job's future (and with it every task the job owns) once it does not.
//! A lease is a row of `leases` (migration 14) naming its owner and an expiry on the database's
//! clock. The owner renews its leases every [`RENEW_EVERY`]; a process that wants one takes it
//! when its expiry has passed, so a process that died (or lost the database) is replaced within
//! [`TTL`] plus a renewal. An owner that could not renew stops its jobs [`MARGIN`] before its
//! lease can expire, measured from when its last successful renewal *began*, so two processes
//! never run a job at once unless a clock runs that much slower than the database's. What the
//! jobs send stays idempotent anyway (the federation sender replays stored transactions with
//! their ids). A process that shuts down releases its leases, so another takes over at once.
//!
//! On SQLite there is one process: jobs run from the start, no rows are written.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::storage::Db;

/// How long a lease lasts past its last renewal.
pub const TTL: Duration = Duration::from_secs(5);
/// How often held leases are renewed and wanted ones tried.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How long before a lease could expire its owner stops the jobs it could not renew.
pub const MARGIN: Duration = Duration::from_millis(1500);

/// The leases this process wants, and whether it holds each.
pub struct Leases {
    db: Db,
    wanted: Mutex<HashMap<&'static str, watch::Sender<bool>>>,
    started: std::sync::atomic::AtomicBool,
    /// Set at shutdown: nothing is taken or renewed any more.
    stopping: std::sync::atomic::AtomicBool,
}

impl Leases {
    /// The lease keeper of this process (its id is the bus's).
    pub fn new(db: Db) -> Arc<Self> {
        Arc::new(Self { db, wanted: Mutex::default(), started: Default::default(), stopping: Default::default() })
    }

    fn owner(&self) -> &str {
        self.db.bus().me()
    }

    /// Runs `job()` whenever this process holds lease `name`, and drops it when it stops
    /// holding it; a job that returns is started again after a second. Spawns a task.
    pub fn run_exclusive<F, Fut>(self: &Arc<Self>, name: &'static str, mut job: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if !self.db.bus().is_shared() {
            tokio::spawn(async move {
                loop {
                    job().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
            return;
        }
        let mut held = {
            let mut wanted = self.wanted.lock().unwrap_or_else(|e| e.into_inner());
            wanted.entry(name).or_insert_with(|| watch::Sender::new(false)).subscribe()
        };
        self.start_keeper();
        tokio::spawn(async move {
            loop {
                let live = held.wait_for(|h| *h).await.is_ok();
                if !live {
                    return;
                }
                tracing::info!(lease = name, "this process now runs it");
                let run = job();
                tokio::select! {
                    () = run => tokio::time::sleep(Duration::from_secs(1)).await,
                    live = async { held.wait_for(|h| !*h).await.is_ok() } => {
                        if !live {
                            return;
                        }
                        tracing::warn!(lease = name, "lease lost; stopped running it here");
                    }
                }
            }
        });
    }

    /// Whether this process holds lease `name` now.
    pub fn holds(&self, name: &str) -> bool {
        !self.db.bus().is_shared()
            || self.wanted.lock().unwrap_or_else(|e| e.into_inner()).get(name).is_some_and(|h| *h.borrow())
    }

    fn start_keeper(self: &Arc<Self>) {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            // Per lease: until when this process may act on it.
            let mut valid_until: HashMap<&'static str, Instant> = HashMap::new();
            let mut tick = tokio::time::interval(RENEW_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if me.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let names: Vec<&'static str> =
                    me.wanted.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect();
                for name in names {
                    let began = Instant::now();
                    match me.try_take(name).await {
                        Ok(true) => {
                            valid_until.insert(name, began + TTL - MARGIN);
                        }
                        Ok(false) => {
                            valid_until.remove(name);
                        }
                        Err(e) => tracing::warn!(lease = name, error = %e, "renewing a lease failed"),
                    }
                    let holds = valid_until.get(name).is_some_and(|t| *t > Instant::now());
                    if let Some(h) = me.wanted.lock().unwrap_or_else(|e| e.into_inner()).get(name) {
                        h.send_if_modified(|v| std::mem::replace(v, holds) != holds);
                    }
                }
            }
        });
    }

    /// Takes or renews lease `name`; whether this process holds it now.
    async fn try_take(&self, name: &str) -> Result<bool, sqlx::Error> {
        self.db.take_lease(name, self.owner(), TTL.as_millis() as i64).await
    }

    /// Gives up every lease this process holds (at shutdown), so others take over at once.
    pub async fn release_all(&self) {
        if !self.db.bus().is_shared() {
            return;
        }
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        for h in self.wanted.lock().unwrap_or_else(|e| e.into_inner()).values() {
            h.send_replace(false);
        }
        if let Err(e) = self.db.release_leases(self.owner()).await {
            tracing::warn!(error = %e, "releasing leases failed");
        }
    }
}

//! Storage: one interface over embedded SQLite and PostgreSQL.
//!
//! Owns the connection pool, the migrations of both backends and the transaction discipline.
//! Queries are plain SQL written once with `$N` placeholders, `ON CONFLICT` and `RETURNING`,
//! which both databases accept; where the dialects differ the query is chosen by [`Backend`].
//! Stream positions and every other counter shared between processes come from the database
//! ([`Db::next_stream_position`]), never from process memory.
//!
//! SQLite allows one writer at a time. Instead of letting concurrent writers collide on
//! `SQLITE_BUSY`, [`Db::begin_write`] serialises write transactions in-process (SQLite is the
//! single-process deployment); readers run concurrently thanks to WAL.
//!
//! Statements are prepared once per connection and reused, so a statement must not make SQLite
//! plan with its bound values: SQLite then marks it to be prepared again whenever a value is
//! bound, which is at every execution. Two things do that here, and are avoided: a bound
//! `LIMIT` (SQLite 3.51 reads it to size the query; a sliding sync first window spent 13% of
//! its CPU preparing again the statement of its rooms' timelines), so limits are written into
//! the SQL as integers; and a term such as `user_id = $1` on a table with a partial index whose
//! condition is `user_id = '…'`, so partial indexes name columns no statement binds.

pub mod accounts;
pub mod admin;
pub mod appservice;
pub mod bus;
pub mod destinations;
pub mod e2ee;
pub mod federation;
pub mod import;
pub mod leases;
pub mod media;
pub mod media_admin;
mod nodelay;
pub mod outbox;
pub mod push;
pub mod registration_tokens;
pub mod reports;
pub mod room_admin;
pub mod rooms;
pub mod server_notices;
pub mod sliding_sync;
pub mod sync;
pub mod threepid;
pub mod timeline;
pub mod tokens;
pub mod user_directory;
pub mod user_overrides;

use std::borrow::Cow;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// Which database engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite (WAL, `synchronous=FULL`).
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite: connections for reads made while holding the writer lock (see [`Db::pool`]).
    holder_pool: AnyPool,
    /// SQLite: the one connection write transactions use. SQLite drops a connection's page
    /// cache whenever another connection committed; with every batch on the same connection,
    /// the writer keeps its cache from one commit to the next instead of reading the pages it
    /// writes to again.
    write_pool: AnyPool,
    backend: Backend,
    /// SQLite: the database file's path (see [`Db::claim_sqlite_file`]).
    sqlite_path: Option<std::path::PathBuf>,
    write_lock: Option<Arc<Mutex<()>>>,
    /// SQLite: the write connection's configured `synchronous` pragma, and whether it was last
    /// set to `NORMAL` for a write that may be lost ([`Db::begin_unsynced_write`]), so the next
    /// durable write sets the configured one back first. Read and set under `write_lock`.
    sqlite_synchronous: &'static str,
    unsynced: Arc<std::sync::atomic::AtomicBool>,
    event_lock: Arc<Mutex<()>>,
    /// Recently resolved access tokens (see `Db::find_token`).
    pub(crate) tokens: Arc<std::sync::Mutex<accounts::TokenCache>>,
    /// Users' shadow bans as last read (see `Db::is_shadow_banned`).
    shadow_bans: Arc<std::sync::Mutex<user_overrides::ShadowBanCache>>,
    /// News for the other processes on the same PostgreSQL database.
    bus: bus::Bus,
    /// PostgreSQL: events written since the table's statistics were last refreshed.
    growth: Option<Arc<Growth>>,
}

/// Keeps PostgreSQL's statistics of the tables that grow with every event current.
///
/// Autovacuum analyzes a table at most once a minute (`autovacuum_naptime`) and only after a
/// tenth of it changed, and not at all where it is switched off (as on our CI machines). A
/// room that gained thousands of events since is then planned as if it were nearly empty:
/// `/messages` reads every older event of the room and sorts them on each page instead of
/// reading 100 rows off the index (measured at 5,000 events: 5.3 ms against 0.2 ms per page),
/// which makes paging a long history quadratic, and txn-id lookups scan `client_txns` whole.
/// Each process analyzes those tables itself once it has written a tenth of `events` (at
/// least [`Growth::MIN_ROWS`] events).
struct Growth {
    pool: AnyPool,
    written: std::sync::atomic::AtomicU64,
    next_at: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicBool,
}

impl Growth {
    /// Fewest written events between two refreshes.
    const MIN_ROWS: u64 = 1_000;

    fn new(pool: AnyPool) -> Self {
        Self {
            pool,
            written: Default::default(),
            next_at: std::sync::atomic::AtomicU64::new(Self::MIN_ROWS),
            running: Default::default(),
        }
    }

    /// Counts committed event rows; starts a refresh when enough were written.
    fn note(self: &Arc<Self>, rows: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let written = self.written.fetch_add(rows, Relaxed) + rows;
        if written < self.next_at.load(Relaxed) || self.running.swap(true, Relaxed) {
            return;
        }
        let growth = self.clone();
        tokio::spawn(async move {
            growth.written.store(0, Relaxed);
            let pool = &growth.pool;
            let refreshed = async {
                pool.execute(
                    "ANALYZE events, event_edges, client_txns, forward_extremities, room_memberships, \
                     current_state, state_groups, state_group_entries",
                )
                .await?;
                sqlx::query_scalar::<_, i64>("SELECT CAST(reltuples AS BIGINT) FROM pg_class WHERE relname = 'events'")
                    .fetch_one(pool)
                    .await
            };
            match refreshed.await {
                Ok(rows) => growth.next_at.store((rows.max(0) as u64 / 10).max(Self::MIN_ROWS), Relaxed),
                Err(e) => tracing::warn!(error = %e, "refreshing table statistics failed"),
            }
            growth.running.store(false, Relaxed);
        });
    }
}

tokio::task_local! {
    /// Set while a task holds SQLite's writer lock (see [`Db::while_holding_write_lock`]).
    static HOLDS_WRITE_LOCK: ();
}

/// A write transaction. On SQLite it also holds the in-process writer lock until it ends.
pub struct WriteTx {
    /// The open transaction; commit with [`WriteTx::commit`].
    pub tx: Transaction<'static, Any>,
    _guard: Option<OwnedMutexGuard<()>>,
    _event_guard: Option<OwnedMutexGuard<()>>,
    /// Counter positions reserved for this transaction: name → (next, last).
    reserved: std::collections::HashMap<&'static str, (i64, i64)>,
    /// Event rows buffered for multi-row writes at commit (see [`WriteTx::defer_rows`]).
    pub pending: rooms::PendingRows,
    /// Event rows written in this transaction, and where to count them once committed.
    events_written: u64,
    growth: Option<Arc<Growth>>,
    backend: Backend,
}

impl WriteTx {
    /// Writes buffered rows, commits, then releases the writer lock.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        let start = std::time::Instant::now();
        rooms::flush_pending(&mut self).await?;
        self.tx.commit().await?;
        metrics::histogram!("myelin_db_commit_duration_seconds").record(start.elapsed().as_secs_f64());
        if let Some(growth) = &self.growth
            && self.events_written > 0
        {
            growth.note(self.events_written);
        }
        Ok(())
    }

    /// Buffers event, edge, txn-id, outbox and extremity rows until commit, where each table
    /// gets one multi-row statement: a batch of N events costs a few round trips, not ~10 N.
    /// Code reading those tables inside this transaction must look at `pending` too.
    pub fn defer_rows(&mut self) {
        self.pending.enabled = true;
    }
}

impl std::ops::Deref for WriteTx {
    type Target = Transaction<'static, Any>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

macro_rules! migrations {
    ($dir:literal: $($version:literal $name:literal $($dialect:ident)?),* $(,)?) => {
        vec![$(
            Migration::new(
                $version,
                Cow::Borrowed($name),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(migration_sql!($dir, $version, $name $(, $dialect)?)),
                false,
            ),
        )*]
    };
}

/// One file for both databases (`migrations/N_name.sql`), or one per database where their SQL
/// differs (`N_name.sqlite.sql` and `N_name.postgres.sql`, marked `per_dialect` in the list).
macro_rules! migration_sql {
    ($dir:literal, $version:literal, $name:literal) => {
        include_str!(concat!("../../migrations/", $version, "_", $name, ".sql"))
    };
    ($dir:literal, $version:literal, $name:literal, per_dialect) => {
        include_str!(concat!("../../migrations/", $version, "_", $name, ".", $dir, ".sql"))
    };
}

/// Every migration, in order; files are never edited once released (sqlx checks their
/// checksums), a change is a new migration.
macro_rules! all_migrations {
    ($dir:literal) => {
        migrations!($dir: 1 "accounts", 2 "rooms", 3 "sync", 4 "federation", 5 "media", 6 "e2ee", 7 "sync_speed", 8 "reports", 9 "pushers", 10 "openid", 11 "sliding_sync", 12 "push_actions", 13 "appservices", 14 "cluster", 15 "admin", 16 "refresh_tokens", 18 "redaction_targets" per_dialect, 19 "accounts_moderation_email", 20 "admin_api", 21 "synapse_import", 22 "user_overrides", 23 "push_broadcast")
    };
}

/// `$first, $first+1, ...` for `n` values (an `IN (...)` list).
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(",")
}

fn migrator(backend: Backend) -> Migrator {
    // Embedded so that the single binary carries its schema; listed by hand because sqlx's
    // `migrate!` macro would pull in its proc-macro build of both drivers (see STACK.md).
    let list = match backend {
        Backend::Sqlite => all_migrations!("sqlite"),
        Backend::Postgres => all_migrations!("postgres"),
    };
    Migrator::with_migrations(list)
}

/// Has every new connection of a pool run `statements` (SQLite pragmas), replacing what an
/// earlier `after_connect` set.
fn run_on_connect<const N: usize>(options: AnyPoolOptions, statements: [&'static str; N]) -> AnyPoolOptions {
    options.after_connect(move |conn, _| {
        Box::pin(async move {
            for statement in statements {
                conn.execute(statement).await?;
            }
            Ok(())
        })
    })
}

/// A pooled connection idle for longer than this is pinged before it is used (see `Db::connect`).
const PING_IDLE_AFTER: Duration = Duration::from_secs(10);

impl Db {
    /// Connects, applies SQLite pragmas and runs pending migrations.
    pub async fn connect(url: &str, max_connections: u32, sqlite_synchronous: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let mut sqlite_path = None;
        let url = match backend {
            Backend::Sqlite => {
                let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                sqlite_path = Some(std::path::PathBuf::from(path));
                if let Some(dir) = std::path::Path::new(path).parent()
                    && !dir.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                }
                format!("sqlite://{path}?mode=rwc")
            }
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url).with_context(|| "parsing database.url")?;
        // sqlx pings every pooled connection before it hands it out (`test_before_acquire`): a
        // round trip before every statement, half of those of a `/messages` page or of the
        // reads every woken long-poll waits for (perf: `PgConnection::ping` under
        // `Pool::acquire`; docs/performance.md). Under load each round trip is a wake-up of
        // another process. A connection idle for a while is still checked before use (a
        // database restart or a dropped link shows there); one in use moments ago is not.
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(Duration::from_secs(30))
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for > PING_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            });
        // Page cache of the connections that read (SQLite's default is 2 MiB each, 20 of
        // them here). In WAL mode a connection empties its cache whenever another one has
        // committed since its last transaction, so under writes a reader's cache lives for
        // one transaction; it kept its memory all the same, and filled it as long-polls of
        // many users read their rows: at 512 KiB, 10,000 waiting `/sync` requests on SQLite
        // cost 5.9 KiB of RSS each rather than 8.9 (6.5 on PostgreSQL). Pagination of a
        // 10,000-message room took 393 ms against 315 ms at the default, the initial sync of
        // 50 rooms 13.5 ms against 15.4 (same machine).
        const READER_CACHE: &str = "PRAGMA cache_size = -512;";
        // `wal_autocheckpoint`: a commit that takes the WAL past this many pages copies them
        // into the database file before it returns. Each event dirties a leaf page in every
        // index keyed by an event id (random keys), so a batch of 25 messages writes ~250 pages:
        // with SQLite's default of 1,000, every fourth batch paid for a checkpoint. At 10,000
        // (a 40 MB WAL), the pages that every batch rewrites (table tails, per-room indexes,
        // counters) are copied once per checkpoint rather than once per four batches: send
        // throughput 4,050-4,140 -> 5,168 msg/s, 4,000 pages gave 4,768-4,840.
        const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
            PRAGMA busy_timeout = 10000; PRAGMA wal_autocheckpoint = 10000;";
        let synchronous: &'static str =
            if sqlite_synchronous == "normal" { "PRAGMA synchronous = NORMAL;" } else { "PRAGMA synchronous = FULL;" };
        if backend == Backend::Sqlite {
            pool_options = run_on_connect(pool_options, [PRAGMAS, synchronous, READER_CACHE]);
        }
        if backend == Backend::Postgres {
            // Every connection is opened at start and kept (sqlx would open them as load
            // rises, and close them after 10 minutes idle or 30 minutes of age). Opening one
            // takes ~90 ms here (a new backend process, and the start-up messages leave before
            // TCP_NODELAY can be set, see `nodelay`), and that was paid by whichever request
            // found no idle connection: a woken sliding sync answered in 100 ms instead of 9.
            // Idle connections are pinged before use (above), so a dropped one is replaced.
            let n = max_connections.max(2);
            pool_options = pool_options.min_connections(n).max_lifetime(None).idle_timeout(None);
            let peers = Arc::new(nodelay::database_peers(&url).await);
            pool_options = pool_options.after_connect(move |_, _| {
                let peers = peers.clone();
                Box::pin(async move {
                    nodelay::set_on_connections_to(&peers);
                    Ok(())
                })
            });
        }
        let pool = pool_options
            .clone()
            .connect_with(options.clone())
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        migrator(backend).run(&pool).await.context("running database migrations")?;
        let write_lock = (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(())));
        let (holder_pool, write_pool) = match backend {
            Backend::Sqlite => (
                pool_options
                    .clone()
                    .max_connections(4)
                    .connect_with(options.clone())
                    .await
                    .with_context(|| "connecting to the SQLite database")?,
                // Write transactions are serialised by `write_lock`: one connection is enough.
                // Its page cache stays valid across transactions (the changes are its own), so
                // it keeps SQLite's default size.
                run_on_connect(pool_options, [PRAGMAS, synchronous])
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .with_context(|| "connecting to the SQLite database")?,
            ),
            Backend::Postgres => (pool.clone(), pool.clone()),
        };
        let growth = (backend == Backend::Postgres).then(|| Arc::new(Growth::new(pool.clone())));
        let bus = match backend {
            Backend::Sqlite => bus::Bus::none(),
            Backend::Postgres => bus::Bus::postgres(&url, pool.clone()),
        };
        Ok(Self {
            pool,
            holder_pool,
            write_pool,
            backend,
            sqlite_path,
            write_lock,
            sqlite_synchronous: synchronous,
            unsynced: Default::default(),
            event_lock: Arc::new(Mutex::new(())),
            tokens: Default::default(),
            shadow_bans: Default::default(),
            bus,
            growth,
        })
    }

    /// The pool, for reads and single-statement writes.
    ///
    /// On SQLite, single-statement writes hold a pooled connection while they wait for the write
    /// lock. If many of them wait, the lock's holder could find no free connection for its own
    /// reads and the two would block each other until `busy_timeout`. Tasks that hold the lock
    /// run under [`Db::while_holding_write_lock`] and read from a reserved pool instead.
    pub fn pool(&self) -> &AnyPool {
        if HOLDS_WRITE_LOCK.try_with(|_| ()).is_ok() { &self.holder_pool } else { &self.pool }
    }

    /// Runs `f` (which holds, or will take, a write transaction) with its pool reads served
    /// from the reserved connections.
    pub async fn while_holding_write_lock<F: std::future::Future>(f: F) -> F::Output {
        HOLDS_WRITE_LOCK.scope((), f).await
    }

    /// SQLite: makes sure no other process serves this database file, by an exclusive lock on
    /// `<file>.lock` held for as long as the returned handle lives (the kernel releases it
    /// when the process dies, however it dies). SQLite's own locking would let a second server
    /// run, but writers of two processes would not share the in-process writer lock, stream
    /// positions or wake-ups. Nothing to do on PostgreSQL, where processes cooperate.
    pub fn claim_sqlite_file(&self) -> anyhow::Result<Option<std::fs::File>> {
        let Some(path) = &self.sqlite_path else { return Ok(None) };
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = std::path::PathBuf::from(lock_path);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another Myelin process is already serving the SQLite database {} (it holds {}). \
                 SQLite serves one process; to run several processes on one database, use \
                 PostgreSQL (see docs/scaling.md)",
                path.display(),
                lock_path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(anyhow::Error::new(e).context(format!("locking {}", lock_path.display())))
            }
        }
    }

    /// The channel to the other processes sharing this database (sends nothing on SQLite).
    pub fn bus(&self) -> &bus::Bus {
        &self.bus
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens a write transaction (serialised in-process on SQLite).
    pub async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        self.begin_write_with(true).await
    }

    /// Opens a write transaction whose commit does not wait for the disk: a crash of the
    /// machine may lose it, never half of it, and never what an ordinary write committed
    /// before (SQLite WAL with `synchronous = NORMAL`: the next durable commit or checkpoint
    /// syncs it; PostgreSQL `synchronous_commit = off`). For rows a client can do without,
    /// such as a sliding sync position: a lost one is answered with `M_UNKNOWN_POS`.
    pub async fn begin_unsynced_write(&self) -> Result<WriteTx, sqlx::Error> {
        self.begin_write_with(false).await
    }

    async fn begin_write_with(&self, durable: bool) -> Result<WriteTx, sqlx::Error> {
        use std::sync::atomic::Ordering;
        let guard = match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        };
        // SQLite: take the write lock at BEGIN. A deferred transaction that reads first and
        // writes later fails at once with SQLITE_BUSY_SNAPSHOT (517) if a single-statement
        // write through the pool committed in between; an immediate one makes those writes
        // wait for it (busy_timeout) instead.
        let tx = match self.backend {
            Backend::Sqlite => {
                // `synchronous` cannot change inside a transaction: it is set before BEGIN, on
                // the one write connection, only when it differs from what this write needs.
                // Every durable write sets it back, so no event commit runs without the sync.
                if durable == self.unsynced.load(Ordering::SeqCst) {
                    let pragma = if durable { self.sqlite_synchronous } else { "PRAGMA synchronous = NORMAL;" };
                    sqlx::raw_sql(pragma).execute(&self.write_pool).await?;
                    self.unsynced.store(!durable, Ordering::SeqCst);
                }
                self.write_pool.begin_with("BEGIN IMMEDIATE").await?
            }
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                if !durable {
                    sqlx::query("SET LOCAL synchronous_commit TO OFF").execute(&mut *tx).await?;
                }
                tx
            }
        };
        Ok(WriteTx {
            tx,
            _guard: guard,
            _event_guard: None,
            reserved: Default::default(),
            pending: Default::default(),
            events_written: 0,
            growth: self.growth.clone(),
            backend: self.backend,
        })
    }

    /// Opens a write transaction that will append events (and so take the event counter's row
    /// lock). Such transactions are serialised in-process *before* they take a connection: a
    /// transaction waiting for the counter row would otherwise hold a pooled connection, and
    /// enough of them could leave the row's holder without one for its reads (PostgreSQL).
    pub async fn begin_event_write(&self) -> Result<WriteTx, sqlx::Error> {
        let event_guard = self.event_lock.clone().lock_owned().await;
        let mut tx = self.begin_write().await?;
        tx._event_guard = Some(event_guard);
        Ok(tx)
    }

    /// Allocates the next position of a counter inside `tx` (from the positions reserved by
    /// [`Db::reserve_stream_positions`] first).
    ///
    /// The counter row stays locked until `tx` ends, so positions become visible in the order
    /// they were handed out, also with several processes on one PostgreSQL.
    pub async fn next_stream_position(tx: &mut WriteTx, stream: &'static str) -> Result<i64, sqlx::Error> {
        if let Some((next, last)) = tx.reserved.get_mut(stream)
            && *next <= *last
        {
            *next += 1;
            return Ok(*next - 1);
        }
        let (value,): (i64,) = sqlx::query_as(
            "INSERT INTO stream_counters (name, value) VALUES ($1, 1) \
             ON CONFLICT (name) DO UPDATE SET value = stream_counters.value + 1 RETURNING value",
        )
        .bind(stream)
        .fetch_one(&mut *tx.tx)
        .await?;
        Ok(value)
    }

    /// Reserves `n` positions of a counter in one statement (which also locks the counter row
    /// until `tx` ends). Positions left unused are gaps, which readers never see.
    pub async fn reserve_stream_positions(tx: &mut WriteTx, stream: &'static str, n: i64) -> Result<(), sqlx::Error> {
        if n <= 0 {
            return Ok(());
        }
        let (last,): (i64,) = sqlx::query_as(
            "INSERT INTO stream_counters (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = stream_counters.value + $2 RETURNING value",
        )
        .bind(stream)
        .bind(n)
        .fetch_one(&mut *tx.tx)
        .await?;
        let entry = tx.reserved.entry(stream).or_insert((last - n + 1, last));
        if entry.0 > entry.1 || entry.1 != last - n {
            *entry = (last - n + 1, last);
        } else {
            entry.1 = last;
        }
        Ok(())
    }

    /// The highest position handed out so far on `stream` (0 if none).
    pub async fn current_stream_position(&self, stream: &'static str) -> Result<i64, sqlx::Error> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT value FROM stream_counters WHERE name = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.0).unwrap_or(0))
    }

    /// Closes the pool, flushing SQLite's WAL.
    pub async fn close(&self) {
        self.pool.close().await;
        self.holder_pool.close().await;
        self.write_pool.close().await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

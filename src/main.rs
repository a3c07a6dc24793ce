//! The `myelin` command: `serve`, `register-user`, `generate-config`, `import-synapse`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use myelin::config::{Config, DEFAULT_CONFIG_PATH, default_config_toml};
use myelin::server::Server;

/// jemalloc rather than glibc's malloc: it keeps no headers between blocks, so the parts of a
/// connection's 8 KiB HTTP buffers that a waiting `/sync` never writes stay out of memory
/// (11.6 against 18.5 KiB of RSS per waiting `/sync` at 10,000 waiters), and send throughput
/// was 5% higher (3,756 against 3,577 msg/s).
#[global_allocator]
static ALLOC: heap_stats::Counting = heap_stats::Counting;

/// jemalloc's options, read once at start-up (the `malloc_conf` symbol, under the `_rjem_`
/// prefix tikv-jemallocator builds with). By default jemalloc returns freed pages to the system
/// only from within later allocations, so an idle server kept what its busiest moment left
/// behind; and pages it did let go were first only marked reusable (`MADV_FREE`), which still
/// counts as resident. A background thread returns dirty pages after 1 s and drops them
/// outright: the `at_rest` benchmark's idle server went from 325 to 230 MiB, with send latency
/// and throughput unchanged (docs/performance.md). `MALLOC_CONF`-style overrides still work
/// through the `_RJEM_MALLOC_CONF` environment variable.
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Heap profiling without a special build: with `MYELIN_HEAP_STATS_SECS=N` in the environment,
/// live heap blocks and bytes by size class (powers of two) are printed to stderr every N
/// seconds when they changed. The difference between two lines is what the work in between
/// kept, by size, where RSS mixes it with what the allocator retains and returns in its own
/// time (docs/performance.md). Without the variable the allocator is jemalloc plus one load
/// of a flag nobody writes.
mod heap_stats {
    use std::alloc::{GlobalAlloc, Layout};
    use std::fmt::Write as _;
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

    const CLASSES: usize = 48;
    static ON: AtomicBool = AtomicBool::new(false);
    static BLOCKS: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
    static BYTES: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

    /// jemalloc, counting when asked to.
    pub struct Counting;

    #[inline]
    fn count(size: usize, sign: i64) {
        if ON.load(Relaxed) {
            let c = ((usize::BITS - size.saturating_sub(1).leading_zeros()) as usize).min(CLASSES - 1);
            BLOCKS[c].fetch_add(sign, Relaxed);
            BYTES[c].fetch_add(sign * size as i64, Relaxed);
        }
    }

    // SAFETY: every call is passed on to jemalloc unchanged; counting touches only atomics.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), 1);
            // SAFETY: the caller's contract is passed on.
            unsafe { tikv_jemallocator::Jemalloc.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            count(layout.size(), 1);
            // SAFETY: the caller's contract is passed on.
            unsafe { tikv_jemallocator::Jemalloc.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count(layout.size(), -1);
            // SAFETY: the caller's contract is passed on.
            unsafe { tikv_jemallocator::Jemalloc.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count(layout.size(), -1);
            count(new_size, 1);
            // SAFETY: the caller's contract is passed on.
            unsafe { tikv_jemallocator::Jemalloc.realloc(ptr, layout, new_size) }
        }
    }

    /// Starts counting and reporting if `MYELIN_HEAP_STATS_SECS` asks for it. Blocks freed
    /// later that were allocated before count negatively; only differences mean anything.
    pub fn start_if_asked() {
        let Some(secs) = std::env::var("MYELIN_HEAP_STATS_SECS").ok().and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        ON.store(true, Relaxed);
        std::thread::spawn(move || {
            let mut last = String::new();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(secs.max(1)));
                let (mut blocks, mut bytes) = (0, 0);
                let mut by_class = String::new();
                for c in 0..CLASSES {
                    let (n, b) = (BLOCKS[c].load(Relaxed), BYTES[c].load(Relaxed));
                    blocks += n;
                    bytes += b;
                    if n != 0 {
                        let _ = write!(by_class, " {}:{n}/{b}", 1u64 << c);
                    }
                }
                let line =
                    format!("live {bytes} bytes in {blocks} blocks; by size class (<=bytes:blocks/bytes){by_class}");
                if line != last {
                    eprintln!("heap-stats {} {line}", myelin::storage::now_ms());
                    last = line;
                }
            }
        });
    }
}

#[derive(Parser)]
#[command(name = "myelin", version, about = "A Matrix homeserver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver.
    Serve {
        /// Configuration file (default: ./myelin-data/myelin.toml, created on first start).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create a user account.
    RegisterUser {
        /// Configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The localpart of the new user (`alice` for `@alice:server`).
        name: String,
        /// Password; read from the MYELIN_PASSWORD environment variable if not given.
        #[arg(long)]
        password: Option<String>,
        /// Make the user a server administrator.
        #[arg(long)]
        admin: bool,
    },
    /// Print a commented default configuration.
    GenerateConfig,
    /// Import a stopped Synapse's data into an empty Myelin database (docs/migrating-from-synapse.md).
    ImportSynapse {
        /// Myelin's configuration file (its server_name must be Synapse's).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Synapse's homeserver.yaml (database, media store, signing key, listeners are read from it).
        #[arg(long, required_unless_present = "database")]
        synapse_config: Option<PathBuf>,
        /// Synapse's database: postgres://… or the path of its SQLite file.
        #[arg(long)]
        database: Option<String>,
        /// Synapse's media store directory (media_store_path).
        #[arg(long)]
        media_store: Option<PathBuf>,
        /// Synapse's signing key file (signing_key_path).
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
}

fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Config::load(Some(&p)),
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            if Config::write_default_if_missing(default)? {
                eprintln!("created default configuration at {}", default.display());
            }
            Config::load(Some(default))
        }
    }
}

fn init_logging(config: &Config) {
    // ruma's state resolution logs every auth check at INFO; keep it quiet unless asked for.
    let level = if config.log.level.contains("ruma_state_res") {
        config.log.level.clone()
    } else {
        format!("{},ruma_state_res=warn", config.log.level)
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::GenerateConfig => {
            print!("{}", default_config_toml());
            Ok(())
        }
        Command::Serve { config } => {
            let config = load_config(config)?;
            init_logging(&config);
            Server::open(config).await?.run().await
        }
        Command::RegisterUser { config, name, password, admin } => {
            let config = load_config(config)?;
            let password = match password.or_else(|| std::env::var("MYELIN_PASSWORD").ok()) {
                Some(p) => p,
                None => anyhow::bail!("--password is required (or set MYELIN_PASSWORD)"),
            };
            let server = Server::open(config).await?;
            let user_id = server
                .state
                .accounts
                .register(&name.to_lowercase(), Some(password), admin)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            server.db.close().await;
            println!("registered {user_id}");
            Ok(())
        }
        Command::ImportSynapse { config, synapse_config, database, media_store, signing_key } => {
            let config = load_config(config)?;
            let source = myelin::import::Source { synapse_config, database, media_store, signing_key };
            print!("{}", myelin::import::run(config, source).await?);
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    heap_stats::start_if_asked();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("myelin: {e:#}");
            ExitCode::FAILURE
        }
    }
}

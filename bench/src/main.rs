//! `myelin-bench`: a load generator for any Matrix homeserver, through the public client-server API
//! only. It registers its own users (`m.login.dummy`, a random prefix per run) and prints one JSON
//! line per scenario case on stdout; progress goes to stderr. See docs/benchmarks.md.

mod big;
mod bigjoin;
mod client;
mod deep;
mod scenarios;
mod stats;

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use rand::Rng;
use serde_json::{Value, json};

use client::{Hs, is_unrecognized};
use scenarios::{Ctx, NotAvailable, Sizes};

const ALL: &[&str] = &[
    "send_latency",
    "send_throughput",
    "fanout",
    "idle_syncers",
    "history",
    "join_storm",
    "federation",
    "big_room_join",
    "sliding_sync",
    "big_account",
    "storage",
    "at_rest",
    "deep_history",
];

#[derive(Parser, Debug)]
#[command(name = "myelin-bench", about = "Matrix homeserver load generator (client-server API only)")]
struct Cli {
    /// Base URL of the homeserver's client API, e.g. http://127.0.0.1:8008; several separated
    /// by commas for processes of one server sharing a database (each session sticks to one).
    #[arg(long)]
    url: String,
    /// A second homeserver (for `federation`): users there join rooms of the first.
    #[arg(long)]
    url2: Option<String>,
    /// Scenarios, comma-separated, or `all`: send_latency, send_throughput, fanout, idle_syncers,
    /// history, join_storm, federation, big_room_join, sliding_sync, big_account, storage, at_rest,
    /// deep_history.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Tiny sizes: every scenario runs in seconds.
    #[arg(long)]
    smoke: bool,
    /// PID of the server process, for RSS readings (`idle_syncers` needs it).
    #[arg(long)]
    pid: Option<u32>,
    /// PID of the second server (`--url2`), for its memory in `big_room_join`.
    #[arg(long)]
    pid2: Option<u32>,
    /// The server's database, for `storage`: its SQLite file (a path or `sqlite://PATH`) or a
    /// PostgreSQL URL (read with `psql`).
    #[arg(long)]
    db: Option<String>,
    /// Label copied into every output line (e.g. `myelin-sqlite`).
    #[arg(long, default_value = "")]
    label: String,
    /// Fan-out sizes (members long-polling), comma-separated.
    #[arg(long, value_delimiter = ',')]
    fanout_members: Option<Vec<usize>>,
    /// idle_syncers sizes (held long-polls), comma-separated.
    #[arg(long, value_delimiter = ',')]
    idle_waiters: Option<Vec<usize>>,
    /// send_throughput duration in seconds.
    #[arg(long)]
    duration: Option<u64>,
    /// Messages in the history room.
    #[arg(long)]
    history_messages: Option<usize>,
    /// Rooms of the big account (`big_account`; a twentieth of them, at most 50, direct chats).
    #[arg(long)]
    big_account_rooms: Option<usize>,
    /// big_room_join: members of the big room (its creator included).
    #[arg(long)]
    big_room_members: Option<usize>,
    /// big_room_join: state events sent into the big room after the joins.
    #[arg(long)]
    big_room_state: Option<usize>,
    /// big_room_join: messages in the big room.
    #[arg(long)]
    big_room_messages: Option<usize>,
    /// Users in the join storm.
    #[arg(long)]
    join_users: Option<usize>,
    /// The sizes (messages) `deep_history` grows its room to, comma-separated, ascending.
    #[arg(long, value_delimiter = ',')]
    deep_history_messages: Option<Vec<usize>>,
    /// Parallel requests during set-up (registration, joins).
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// Give up on one scenario case after this many seconds.
    #[arg(long, default_value_t = 1800)]
    case_timeout: u64,
    /// Exit with status 1 if any case failed (not_available does not count).
    #[arg(long)]
    fail_on_error: bool,
}

fn random_prefix() -> String {
    let mut rng = rand::thread_rng();
    (0..6).map(|_| (b'a' + rng.gen_range(0..26u8)) as char).collect()
}

/// The status and error fields of a failed case.
fn failure(e: &anyhow::Error) -> Value {
    if let Some(na) = e.chain().find_map(|c| c.downcast_ref::<NotAvailable>()) {
        return json!({"status": "not_available", "reason": na.0});
    }
    if let Some(api) = is_unrecognized(e) {
        return json!({
            "status": "not_available",
            "reason": format!("{} {} is not implemented ({} {})", api.method, api.path, api.status, api.errcode),
        });
    }
    json!({"status": "error", "error": format!("{e:#}")})
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let nofile = stats::raise_nofile_limit();

    let mut sizes = if cli.smoke { Sizes::smoke() } else { Sizes::full() };
    if let Some(v) = cli.fanout_members.clone() {
        sizes.fanout_members = v;
    }
    if let Some(v) = cli.idle_waiters.clone() {
        sizes.idle_waiters = v;
    }
    if let Some(d) = cli.duration {
        sizes.tp_secs = d;
    }
    if let Some(n) = cli.history_messages {
        sizes.history_msgs = n;
    }
    if let Some(n) = cli.big_account_rooms {
        sizes.ba_rooms = n;
        sizes.ba_dms = (n / 20).min(50);
    }
    if let Some(n) = cli.big_room_members {
        sizes.bj_members = n;
    }
    if let Some(n) = cli.big_room_state {
        sizes.bj_state = n;
    }
    if let Some(n) = cli.big_room_messages {
        sizes.bj_msgs = n;
    }
    if let Some(n) = cli.join_users {
        sizes.join_users = n;
    }
    if let Some(v) = cli.deep_history_messages.clone() {
        if v.is_empty() || v.contains(&0) || !v.is_sorted() {
            bail!("--deep-history-messages takes ascending sizes above 0");
        }
        sizes.dh_messages = v;
    }
    if let Some(&max) = sizes.idle_waiters.iter().max()
        && (nofile as usize) < max + 200
        && cli.scenario.split(',').any(|s| s == "all" || s == "idle_syncers")
    {
        eprintln!("warning: open-files limit {nofile} is low for {max} long-polls");
    }

    let names: Vec<&str> =
        if cli.scenario == "all" { ALL.to_vec() } else { cli.scenario.split(',').map(str::trim).collect() };
    for n in &names {
        if !ALL.contains(n) {
            bail!("unknown scenario {n:?}; known: {}", ALL.join(", "));
        }
    }

    let hs = Hs::new(&cli.url)?;
    let versions = hs.call(reqwest::Method::GET, "/_matrix/client/versions", None, None, Duration::from_secs(30)).await;
    if let Err(e) = versions {
        bail!("{} does not answer /_matrix/client/versions: {e:#}", cli.url);
    }
    let hs2 = cli.url2.as_deref().map(Hs::new).transpose()?;
    let prefix = random_prefix();
    eprintln!("myelin-bench: run prefix {prefix}, sizes {sizes:?}");
    let mut ctx = Ctx::new(hs.clone(), hs2, cli.pid, sizes.clone(), prefix.clone(), cli.setup_concurrency.max(1));
    ctx.db = cli.db.clone();
    ctx.pid2 = cli.pid2;

    let mut cases: Vec<(&str, String)> = Vec::new();
    for &n in &names {
        match n {
            "fanout" => cases.extend(sizes.fanout_members.iter().map(|m| (n, m.to_string()))),
            "idle_syncers" => cases.extend(sizes.idle_waiters.iter().map(|m| (n, m.to_string()))),
            "deep_history" => cases.extend(sizes.dh_messages.iter().map(|m| (n, m.to_string()))),
            "history" => {
                cases.push((n, "paginate".into()));
                cases.push((n, "initial_sync".into()));
            }
            _ => cases.push((n, String::new())),
        }
    }

    let mut failed = false;
    for (name, case) in cases {
        eprintln!("== {name} {case}");
        let requests0 = hs.counters.requests.load(std::sync::atomic::Ordering::Relaxed);
        let limited0 = hs.counters.rate_limited.load(std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let fut = async {
            match name {
                "send_latency" => scenarios::send_latency(&ctx).await,
                "send_throughput" => scenarios::send_throughput(&ctx).await,
                "fanout" => scenarios::fanout(&ctx, case.parse()?).await,
                "idle_syncers" => scenarios::idle_syncers(&ctx, case.parse()?).await,
                "history" if case == "paginate" => scenarios::history_paginate(&ctx).await,
                "history" => scenarios::history_initial_sync(&ctx).await,
                "join_storm" => scenarios::join_storm(&ctx).await,
                "federation" => scenarios::federation(&ctx).await,
                "big_room_join" => bigjoin::big_room_join(&ctx).await,
                "sliding_sync" => scenarios::sliding_sync(&ctx).await,
                "big_account" => big::big_account(&ctx).await,
                "storage" => big::storage(&ctx).await,
                "at_rest" => big::at_rest(&ctx).await,
                "deep_history" => deep::deep_history(&ctx, case.parse()?).await,
                _ => unreachable!(),
            }
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(cli.case_timeout), fut).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out after {} s", cli.case_timeout)),
        };
        let mut line = json!({
            "scenario": name,
            "case": case,
            "label": cli.label,
            "server": cli.url,
            "smoke": cli.smoke,
        });
        match outcome {
            Ok(v) => {
                line["status"] = json!("ok");
                for (k, val) in v.as_object().into_iter().flatten() {
                    line[k] = val.clone();
                }
            }
            Err(e) => {
                let f = failure(&e);
                failed |= f["status"] == "error";
                for (k, val) in f.as_object().into_iter().flatten() {
                    line[k] = val.clone();
                }
            }
        }
        line["elapsed_s"] = json!(stats::r3(started.elapsed().as_secs_f64()));
        line["requests"] = json!(hs.counters.requests.load(std::sync::atomic::Ordering::Relaxed) - requests0);
        line["rate_limited"] = json!(hs.counters.rate_limited.load(std::sync::atomic::Ordering::Relaxed) - limited0);
        if let Some(pid) = cli.pid {
            line["server_rss_bytes"] = json!(stats::rss_bytes(pid));
        }
        println!("{line}");
        eprintln!("   -> {}", line["status"]);
    }
    if failed && cli.fail_on_error {
        std::process::exit(1);
    }
    Ok(())
}

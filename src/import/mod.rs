//! `myelin import-synapse`: moving a Synapse homeserver's data into an empty Myelin database,
//! so that Myelin takes over the same `server_name` without users noticing (docs/migrating-from-synapse.md).
//!
//! This module owns the import: reading Synapse's configuration, the checks before anything is
//! written (Synapse stopped, server names equal, Myelin's database empty or an import of the
//! same source in progress), the server's signing key, and the order of the units of work. Each
//! unit (the accounts, the account data, the keys, the media, each room, the rooms' extras) is
//! one transaction that also records its name in `synapse_import`; a rerun after an
//! interruption skips the committed units and redoes the other ones, and a finished import
//! answers "already imported". Synapse's schema is read by [`synapse_db`]; Myelin's tables are
//! written through the storage layer (`storage/import.rs`) and, for rooms, through the room
//! engine (`rooms/import.rs`), so that events and state are stored as Myelin stores its own.
//!
//! `IMPORT_SYNAPSE_INTERRUPT_AFTER=N` (for tests of resumption; not `MYELIN_…`, which names
//! configuration keys) ends the process abruptly, as a
//! crash would, once this run has passed N units (committed or found committed before).

pub mod synapse_db;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};

use crate::config::Config;
use crate::events::pdu::Pdu;
use crate::rooms::import::{ImportEvent, ImportRoom};
use crate::storage::Db;
use crate::storage::import::{ImportBackupSession, ImportMedia, ImportUser};
use synapse_db::SynapseDb;

/// Where the Synapse data comes from (the command line).
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// Synapse's `homeserver.yaml`: the database, media store, signing key, server name,
    /// listeners and pid file are read from it.
    pub synapse_config: Option<PathBuf>,
    /// The database (`postgres://…` or a SQLite path), instead of or over the configuration's.
    pub database: Option<String>,
    /// The media store directory (`media_store_path`).
    pub media_store: Option<PathBuf>,
    /// The signing key file (`signing_key_path`).
    pub signing_key: Option<PathBuf>,
}

/// What Synapse's configuration says, as far as the import needs it.
#[derive(Debug, Default)]
struct SynapseSettings {
    server_name: Option<String>,
    database: Option<String>,
    media_store: Option<PathBuf>,
    signing_key: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    listeners: Vec<(String, u16)>,
    pepper: bool,
}

/// Counts per kind and what was skipped, with reasons.
#[derive(Debug, Default)]
pub struct Report {
    /// Imported items per kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// `(kind, item, reason)` of what was not imported.
    pub skipped: Vec<(&'static str, String, String)>,
    /// Things the operator must know.
    pub warnings: Vec<String>,
}

impl Report {
    fn add(&mut self, kind: &'static str, n: u64) {
        *self.counts.entry(kind).or_default() += n;
    }
    fn skip(&mut self, kind: &'static str, item: impl Into<String>, reason: impl Into<String>) {
        self.skipped.push((kind, item.into(), reason.into()));
    }

    /// The report as printed at the end.
    pub fn render(&self, elapsed: std::time::Duration) -> String {
        let mut out = String::from("import-synapse report (what this run imported)\n");
        for (kind, n) in &self.counts {
            out.push_str(&format!("  {kind:<24} {n}\n"));
        }
        if !self.skipped.is_empty() {
            out.push_str(&format!("skipped ({}):\n", self.skipped.len()));
            for (kind, item, reason) in &self.skipped {
                out.push_str(&format!("  {kind} {item}: {reason}\n"));
            }
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out.push_str(&format!("time taken: {:.1} s\n", elapsed.as_secs_f64()));
        out
    }
}

fn yaml_str(v: &serde_norway::Value, key: &str) -> Option<String> {
    match v.get(key)? {
        serde_norway::Value::String(s) => Some(s.clone()),
        serde_norway::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_synapse_config(path: &Path) -> anyhow::Result<SynapseSettings> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let y: serde_norway::Value =
        serde_norway::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut s = SynapseSettings { server_name: yaml_str(&y, "server_name"), ..Default::default() };
    if let Some(db) = y.get("database") {
        let args = db.get("args").cloned().unwrap_or(serde_norway::Value::Null);
        match yaml_str(db, "name").as_deref() {
            Some("sqlite3") => s.database = yaml_str(&args, "database"),
            Some("psycopg2") => {
                let mut url = url::Url::parse("postgres://localhost/synapse").expect("static URL");
                if let Some(h) = yaml_str(&args, "host") {
                    url.set_host(Some(&h)).map_err(|e| anyhow::anyhow!("database.args.host: {e}"))?;
                }
                if let Some(p) = yaml_str(&args, "port").and_then(|p| p.parse().ok()) {
                    let _ = url.set_port(Some(p));
                }
                if let Some(u) = yaml_str(&args, "user") {
                    let _ = url.set_username(&u);
                }
                if let Some(p) = yaml_str(&args, "password") {
                    let _ = url.set_password(Some(&p));
                }
                if let Some(d) = yaml_str(&args, "dbname").or_else(|| yaml_str(&args, "database")) {
                    url.set_path(&format!("/{d}"));
                }
                s.database = Some(url.to_string());
            }
            other => bail!("database.name {other:?} in {} is not sqlite3 or psycopg2", path.display()),
        }
    }
    s.media_store = yaml_str(&y, "media_store_path").map(PathBuf::from);
    s.signing_key = yaml_str(&y, "signing_key_path").map(PathBuf::from);
    s.pid_file = yaml_str(&y, "pid_file").map(PathBuf::from);
    s.pepper = y.get("password_config").and_then(|p| yaml_str(p, "pepper")).is_some_and(|p| !p.is_empty());
    if let Some(serde_norway::Value::Sequence(ls)) = y.get("listeners") {
        for l in ls {
            let Some(port) = yaml_str(l, "port").and_then(|p| p.parse().ok()) else { continue };
            let addrs: Vec<String> = match l.get("bind_addresses") {
                Some(serde_norway::Value::Sequence(a)) => {
                    a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                }
                _ => vec!["127.0.0.1".to_owned()],
            };
            for a in addrs {
                s.listeners.push((a, port));
            }
        }
    }
    Ok(s)
}

/// Refuses when Synapse still runs: its pid file names a live process, or one of its
/// listeners accepts connections (Synapse on SQLite holds no lock another process could see).
fn ensure_synapse_stopped(s: &SynapseSettings) -> anyhow::Result<()> {
    if let Some(pid_file) = &s.pid_file
        && let Ok(pid) = std::fs::read_to_string(pid_file)
        && let Ok(pid) = pid.trim().parse::<u32>()
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        bail!("Synapse is still running (pid {pid} from {}): stop it first", pid_file.display());
    }
    for (addr, port) in &s.listeners {
        let host = match addr.as_str() {
            "0.0.0.0" | "" => "127.0.0.1",
            "::" => "::1",
            a => a,
        };
        let Ok(ip) = host.parse::<std::net::IpAddr>() else { continue };
        let sock = std::net::SocketAddr::new(ip, *port);
        if std::net::TcpStream::connect_timeout(&sock, std::time::Duration::from_millis(500)).is_ok() {
            bail!("Synapse is still running (its listener {sock} accepts connections): stop it first");
        }
    }
    Ok(())
}

/// Synapse's key file (`ed25519 a_XXXX <unpadded base64 seed>` per line) in Myelin's format
/// (`ed25519 <version> <base64 PKCS#8>`), the first key current.
pub fn convert_signing_key(text: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [alg, version, seed] = parts[..] else { bail!("signing key line {}: expected 3 fields", n + 1) };
        anyhow::ensure!(alg == "ed25519", "signing key line {}: algorithm {alg} is not ed25519", n + 1);
        let seed = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(seed.trim_end_matches('='))
            .with_context(|| format!("signing key line {}: not base64", n + 1))?;
        anyhow::ensure!(seed.len() == 32, "signing key line {}: an ed25519 seed is 32 bytes", n + 1);
        // PKCS#8 v1 (RFC 8410): SEQUENCE { version 0, AlgorithmIdentifier id-Ed25519, OCTET STRING { OCTET STRING seed } }.
        let mut der =
            vec![0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        der.extend_from_slice(&seed);
        out.push_str(&format!("ed25519 {version} {}\n", base64::engine::general_purpose::STANDARD.encode(&der)));
    }
    anyhow::ensure!(!out.is_empty(), "the signing key file is empty");
    Ok(out)
}

/// Puts Synapse's signing key in place as Myelin's (or checks that the same key is there).
fn install_signing_key(synapse_key: &Path, data_dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(synapse_key).with_context(|| format!("reading {}", synapse_key.display()))?;
    let converted = convert_signing_key(&text)?;
    let keys = crate::signing::SigningKeys::parse(&converted, 0)?;
    let key_id = keys.key_id();
    let target = data_dir.join("signing.key");
    if target.exists() {
        let existing = crate::signing::SigningKeys::load_or_create(&target)?;
        if existing.key_id() != key_id || existing.public_key_base64() != keys.public_key_base64() {
            bail!(
                "{} holds another signing key ({}) than Synapse's ({key_id}): move it away first, \
                 other servers know this server by Synapse's key",
                target.display(),
                existing.key_id()
            );
        }
        return Ok(key_id);
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    crate::signing::write_private(&target, &converted)?;
    Ok(key_id)
}

fn progress(what: &str) {
    eprintln!("import-synapse: {what}");
}

/// Ends the process after `IMPORT_SYNAPSE_INTERRUPT_AFTER` committed units (tests of resumption).
struct Interrupt {
    after: Option<usize>,
    done: usize,
}

impl Interrupt {
    fn from_env() -> Self {
        Self { after: std::env::var("IMPORT_SYNAPSE_INTERRUPT_AFTER").ok().and_then(|v| v.parse().ok()), done: 0 }
    }

    fn committed(&mut self) {
        self.done += 1;
        if self.after.is_some_and(|n| self.done >= n) {
            eprintln!("import-synapse: interrupted after {} units (IMPORT_SYNAPSE_INTERRUPT_AFTER)", self.done);
            std::process::exit(3);
        }
    }
}

/// Runs the import into the database of `config`; answers the report (or "already imported").
pub async fn run(config: Config, source: Source) -> anyhow::Result<String> {
    let started = Instant::now();
    let mut settings = match &source.synapse_config {
        Some(p) => read_synapse_config(p)?,
        None => SynapseSettings::default(),
    };
    if let Some(d) = source.database {
        settings.database = Some(d);
    }
    if let Some(m) = source.media_store {
        settings.media_store = Some(m);
    }
    if let Some(k) = source.signing_key {
        settings.signing_key = Some(k);
    }
    let database = settings.database.clone().context("no Synapse database: give --synapse-config or --database")?;
    ensure_synapse_stopped(&settings)?;
    let server_name = config.server_name.to_string();
    if let Some(theirs) = &settings.server_name
        && *theirs != server_name
    {
        bail!("Synapse's server_name is {theirs} but Myelin's is {server_name}: they must be the same");
    }
    let synapse = SynapseDb::open(&database).await?;
    // With only --database, the users' ids tell the server name.
    if let Some(u) = synapse.users().await?.first()
        && !u.name.ends_with(&format!(":{server_name}"))
    {
        bail!("Synapse's users ({}) are not of Myelin's server_name {server_name}", u.name);
    }

    // Myelin's database first (before its signing key is touched): a finished import, an
    // import in progress, or empty; and Myelin not running on it (SQLite's lock file).
    {
        let db = Db::connect(&config.database.url, 2, &config.database.sqlite_synchronous).await?;
        let _single = db.claim_sqlite_file()?;
        let done = db.import_item_done("complete").await?;
        let refuse = !done && !db.import_started().await? && !db.import_target_is_empty().await?;
        db.close().await;
        if done {
            return Ok("already imported: this database holds a finished import of Synapse; nothing to do\n".to_owned());
        }
        if refuse {
            bail!("Myelin's database is not empty (it has users, rooms or media): import into a new database");
        }
    }
    let key_id = match &settings.signing_key {
        Some(k) => Some(install_signing_key(k, &config.data_dir)?),
        None => None,
    };
    let server = crate::server::Server::open(config).await?;
    let _single = server.db.claim_sqlite_file()?;
    let db = server.db.clone();
    let mut report = Report::default();
    match key_id {
        Some(k) => report.warnings.push(format!("signing key {k} taken over from Synapse")),
        None => report.warnings.push(
            "no signing key given (--signing-key or signing_key_path): other servers will not recognise this server's new key"
                .to_owned(),
        ),
    }
    if settings.pepper {
        report.warnings.push(
            "Synapse's password_config.pepper is set: its password hashes cannot be checked without it; \
             users must reset their passwords"
                .to_owned(),
        );
    }
    let ctx = Ctx { db: &db, synapse: &synapse, server_name: &server_name };
    let mut interrupt = Interrupt::from_env();

    unit(&ctx, &mut report, "accounts", import_accounts).await?;
    interrupt.committed();
    unit(&ctx, &mut report, "account_data", import_account_data).await?;
    interrupt.committed();
    unit(&ctx, &mut report, "e2ee", import_e2ee).await?;
    interrupt.committed();
    match &settings.media_store {
        Some(dir) => {
            let store = crate::media::store::FileStore::open(&server.state.config.media.dir)?;
            if db.import_item_done("media").await? {
                progress("media: done in an earlier run");
            } else {
                progress("media");
                import_media(&ctx, &mut report, dir, &store).await?;
                interrupt.committed();
            }
        }
        None => {
            report.warnings.push("no media store given (--media-store or media_store_path): media not imported".into())
        }
    }
    let rooms = synapse.rooms().await?;
    let total = rooms.len();
    for (i, room) in rooms.into_iter().enumerate() {
        let item = format!("room:{}", room.room_id);
        if db.import_item_done(&item).await? {
            progress(&format!("[{}/{total}] {}: done in an earlier run", i + 1, room.room_id));
            continue;
        }
        let t = Instant::now();
        match import_room(&ctx, &server.state.rooms, &mut report, room, &item).await {
            Ok(Some(c)) => progress(&format!(
                "[{}/{total}] {}: {} events, {} outliers, {} state groups in {} ms",
                i + 1,
                item.trim_start_matches("room:"),
                c.events,
                c.outliers,
                c.state_groups,
                t.elapsed().as_millis()
            )),
            Ok(None) => {}
            Err(e) => return Err(e.context(format!("importing {item}"))),
        }
        interrupt.committed();
    }
    unit(&ctx, &mut report, "room_extras", import_room_extras).await?;
    let mut tx = db.begin_write().await?;
    db.import_mark_done(&mut tx, "complete").await?;
    tx.commit().await?;
    synapse.close().await;
    server.db.close().await;
    Ok(report.render(started.elapsed()))
}

struct Ctx<'a> {
    db: &'a Db,
    synapse: &'a SynapseDb,
    server_name: &'a str,
}

impl Ctx<'_> {
    /// A full user id from Synapse's localpart-or-id columns.
    fn user_id(&self, u: &str) -> String {
        if u.starts_with('@') { u.to_owned() } else { format!("@{u}:{}", self.server_name) }
    }
}

/// Runs one unit of work unless an earlier run committed it. The unit commits its transaction
/// with its mark.
async fn unit<'a, F>(ctx: &'a Ctx<'a>, report: &'a mut Report, item: &'static str, f: F) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&'a Ctx<'a>, &'a mut Report, &'static str) -> anyhow::Result<()>,
{
    if ctx.db.import_item_done(item).await? {
        progress(&format!("{item}: done in an earlier run"));
        return Ok(());
    }
    progress(item);
    f(ctx, report, item).await.with_context(|| format!("importing {item}"))
}

async fn import_accounts(ctx: &Ctx<'_>, report: &mut Report, item: &'static str) -> anyhow::Result<()> {
    let (db, syn) = (ctx.db, ctx.synapse);
    let profiles: HashMap<String, (Option<String>, Option<String>)> =
        syn.profiles().await?.into_iter().map(|(u, d, a)| (ctx.user_id(&u), (d, a))).collect();
    let mut tx = db.begin_write().await?;
    let mut users = std::collections::HashSet::new();
    for u in syn.users().await? {
        if u.is_guest {
            report.skip("user", &u.name, "guest accounts are not supported by Myelin");
            continue;
        }
        let Some(localpart) = u.name.strip_prefix('@').and_then(|n| n.split(':').next()) else {
            report.skip("user", &u.name, "not a user id");
            continue;
        };
        let (displayname, avatar) = profiles.get(&u.name).cloned().unwrap_or_default();
        db.import_user(
            &mut tx,
            &ImportUser {
                user_id: &u.name,
                localpart,
                password_hash: u.password_hash.as_deref().filter(|h| !h.is_empty()),
                is_admin: u.admin,
                deactivated: u.deactivated,
                displayname: displayname.as_deref(),
                avatar_url: avatar.as_deref(),
                // Synapse counts seconds here.
                created_ts: u.creation_ts.saturating_mul(1000),
                appservice_id: u.appservice_id.as_deref(),
            },
        )
        .await?;
        users.insert(u.name);
        report.add("users", 1);
    }
    let mut devices = std::collections::HashSet::new();
    for d in syn.devices().await? {
        if !users.contains(&d.user_id) {
            continue;
        }
        let created = d.last_seen.unwrap_or_else(crate::storage::now_ms);
        db.import_device(
            &mut tx,
            &d.user_id,
            &d.device_id,
            d.display_name.as_deref(),
            d.last_seen,
            d.ip.as_deref(),
            created,
        )
        .await?;
        devices.insert((d.user_id, d.device_id));
        report.add("devices", 1);
    }
    for t in syn.access_tokens().await? {
        let Some(device) = t.device_id.filter(|d| devices.contains(&(t.user_id.clone(), d.clone()))) else {
            report.skip("access token", format!("of {}", t.user_id), "it belongs to no device Myelin keeps");
            continue;
        };
        if t.puppets_user_id.is_some() {
            report.skip("access token", format!("of {}", t.user_id), "an admin's puppeting token");
            continue;
        }
        db.import_access_token(&mut tx, &crate::accounts::token_hash(&t.token), &t.user_id, &device, t.valid_until_ms)
            .await?;
        report.add("access tokens", 1);
    }
    for r in syn.refresh_tokens().await? {
        if !devices.contains(&(r.user_id.clone(), r.device_id.clone())) {
            report.skip("refresh token", format!("of {}", r.user_id), "it belongs to no device Myelin keeps");
            continue;
        }
        let next = r.next.as_deref().map(crate::accounts::token_hash);
        db.import_refresh_token(
            &mut tx,
            &crate::accounts::token_hash(&r.token),
            &r.user_id,
            &r.device_id,
            next.as_deref(),
            r.expiry_ts,
        )
        .await?;
        report.add("refresh tokens", 1);
    }
    let mut max_filter = -1;
    for (user, id, json) in syn.filters().await? {
        let user = ctx.user_id(&user);
        if !users.contains(&user) {
            continue;
        }
        match String::from_utf8(json) {
            Ok(j) if serde_json::from_str::<Value>(&j).is_ok() => {
                db.import_filter(&mut tx, &user, &id.to_string(), &j).await?;
                max_filter = max_filter.max(id);
                report.add("filters", 1);
            }
            _ => report.skip("filter", format!("{id} of {user}"), "not JSON"),
        }
    }
    // New filter ids come from a counter: it must start past the imported ones.
    Db::reserve_stream_positions(&mut tx, crate::storage::sync::streams::FILTERS, max_filter + 1).await?;
    db.import_mark_done(&mut tx, item).await?;
    tx.commit().await?;
    Ok(())
}

/// Synapse's rule kinds by `priority_class`.
fn rule_kind(class: i64) -> Option<&'static str> {
    Some(match class {
        5 => "override",
        4 => "content",
        3 => "room",
        2 => "sender",
        1 => "underride",
        _ => return None,
    })
}

/// A user's ruleset as Myelin stores it (`{"global": …}`): the server's predefined rules with
/// Synapse's enabled flags and action overrides, after the user's own rules of each kind (as
/// Synapse orders them, `.m.rule.master` first).
fn build_push_rules(
    user: &ruma::UserId,
    rules: &[&synapse_db::PushRule],
    enabled: &HashMap<String, bool>,
) -> anyhow::Result<Value> {
    let mut defaults = serde_json::to_value(crate::push::rules::server_default(user))?;
    let mut out = json!({});
    for kind in ["override", "content", "room", "sender", "underride"] {
        let mut list: Vec<Value> = Vec::new();
        let mut base: Vec<Value> = defaults[kind].as_array_mut().map(std::mem::take).unwrap_or_default();
        for r in base.iter_mut() {
            let id = r["rule_id"].as_str().unwrap_or_default().to_owned();
            if let Some(e) = enabled.get(&format!("global/{kind}/{id}")) {
                r["enabled"] = json!(e);
            }
            if let Some(o) = rules.iter().find(|o| o.priority_class == -1 && o.rule_id == format!("global/{kind}/{id}"))
                && let Ok(actions) = serde_json::from_str::<Value>(&o.actions)
            {
                r["actions"] = actions;
            }
        }
        let master = if kind == "override" {
            base.iter().position(|r| r["rule_id"] == ".m.rule.master").map(|i| base.remove(i))
        } else {
            None
        };
        list.extend(master);
        for r in rules.iter().filter(|r| rule_kind(r.priority_class) == Some(kind)) {
            let Some(id) = r.rule_id.splitn(3, '/').nth(2) else { continue };
            let conditions: Value = serde_json::from_str(&r.conditions).unwrap_or(json!([]));
            let actions: Value = serde_json::from_str(&r.actions).unwrap_or(json!([]));
            let mut rule = json!({
                "rule_id": id,
                "default": false,
                "enabled": enabled.get(&r.rule_id).copied().unwrap_or(true),
                "actions": actions,
            });
            match kind {
                "content" => rule["pattern"] = conditions[0]["pattern"].clone(),
                "override" | "underride" => rule["conditions"] = conditions,
                _ => {}
            }
            list.push(rule);
        }
        list.extend(base);
        out[kind] = Value::Array(list);
    }
    // Myelin reads the stored ruleset back as ruma's type: check it does before storing it.
    serde_json::from_value::<ruma::push::Ruleset>(out.clone()).context("the converted push rules do not parse")?;
    Ok(json!({ "global": out }))
}

async fn import_account_data(ctx: &Ctx<'_>, report: &mut Report, item: &'static str) -> anyhow::Result<()> {
    let (db, syn) = (ctx.db, ctx.synapse);
    let mut tx = db.begin_write().await?;
    for (user, ty, content) in syn.account_data().await? {
        if serde_json::from_str::<Value>(&content).is_err() {
            report.skip("account data", format!("{ty} of {user}"), "not JSON");
            continue;
        }
        let stream = Db::next_stream_position(&mut tx, "account_data").await?;
        db.set_account_data(&mut tx, &user, "", &ty, &content, stream).await?;
        report.add("account data (global)", 1);
    }
    for (user, room, ty, content) in syn.room_account_data().await? {
        if serde_json::from_str::<Value>(&content).is_err() {
            report.skip("account data", format!("{ty} of {user} in {room}"), "not JSON");
            continue;
        }
        let stream = Db::next_stream_position(&mut tx, "account_data").await?;
        db.set_account_data(&mut tx, &user, &room, &ty, &content, stream).await?;
        report.add("account data (rooms)", 1);
    }
    let mut tags: BTreeMap<(String, String), serde_json::Map<String, Value>> = BTreeMap::new();
    for (user, room, tag, content) in syn.room_tags().await? {
        let v = serde_json::from_str::<Value>(&content).unwrap_or(json!({}));
        tags.entry((user, room)).or_default().insert(tag, v);
        report.add("room tags", 1);
    }
    for ((user, room), t) in tags {
        let stream = Db::next_stream_position(&mut tx, "account_data").await?;
        let content = json!({ "tags": t }).to_string();
        db.set_account_data(&mut tx, &user, &room, crate::sync::account_data::TAGS, &content, stream).await?;
    }
    // Push rules: Synapse keeps users' own rules and flags in tables, Myelin the whole ruleset
    // as account data.
    let rules = syn.push_rules().await?;
    let enabled_rows = syn.push_rules_enable().await?;
    let mut users: Vec<String> = rules.iter().map(|r| r.user_name.clone()).collect();
    users.extend(enabled_rows.iter().map(|r| r.0.clone()));
    users.sort();
    users.dedup();
    for user in users {
        let Ok(uid) = ruma::UserId::parse(&user) else {
            report.skip("push rules", &user, "not a user id");
            continue;
        };
        let mine: Vec<&synapse_db::PushRule> = rules.iter().filter(|r| r.user_name == user).collect();
        let enabled: HashMap<String, bool> =
            enabled_rows.iter().filter(|r| r.0 == user).map(|r| (r.1.clone(), r.2)).collect();
        match build_push_rules(&uid, &mine, &enabled) {
            Ok(ruleset) => {
                let stream = Db::next_stream_position(&mut tx, "account_data").await?;
                db.set_account_data(&mut tx, &user, "", crate::push::rules::PUSH_RULES, &ruleset.to_string(), stream)
                    .await?;
                report.add("push rulesets", 1);
            }
            Err(e) => report.skip("push rules", &user, format!("{e:#}")),
        }
    }
    db.import_mark_done(&mut tx, item).await?;
    tx.commit().await?;
    Ok(())
}

async fn import_e2ee(ctx: &Ctx<'_>, report: &mut Report, item: &'static str) -> anyhow::Result<()> {
    let (db, syn) = (ctx.db, ctx.synapse);
    let mut tx = db.begin_write().await?;
    for (user, device, json) in syn.device_keys().await? {
        db.import_device_keys(&mut tx, &user, &device, &json).await?;
        report.add("device keys", 1);
    }
    for (user, device, alg, key_id, json) in syn.one_time_keys().await? {
        db.import_one_time_key(&mut tx, &user, &device, &alg, &key_id, &json).await?;
        report.add("one-time keys", 1);
    }
    for (user, device, alg, key_id, json, used) in syn.fallback_keys().await? {
        db.import_fallback_key(&mut tx, &user, &device, &alg, &key_id, &json, used).await?;
        report.add("fallback keys", 1);
    }
    for (user, ty, json) in syn.cross_signing_keys().await? {
        db.e2e_set_cross_signing_key(&mut tx, &user, &ty, &json).await?;
        report.add("cross-signing keys", 1);
    }
    for (signer, key_id, target_user, target, sig) in syn.cross_signing_signatures().await? {
        db.import_signature(&mut tx, &target_user, &target, &signer, &key_id, &sig).await?;
        report.add("key signatures", 1);
    }
    let mut max_version = 0;
    for (user, version, alg, auth_data, deleted, etag) in syn.backup_versions().await? {
        db.import_backup_version(&mut tx, &user, version, &alg, &auth_data, etag, deleted).await?;
        max_version = max_version.max(version);
        report.add("key backup versions", 1);
    }
    // Versions are never reused: new ones are numbered past Synapse's.
    Db::reserve_stream_positions(&mut tx, crate::storage::e2ee::BACKUP_VERSION_COUNTER, max_version).await?;
    // To-device messages waiting for their device (room keys among them).
    for (user, device, message) in syn.device_inbox().await? {
        let msg: Value = serde_json::from_str(&message).unwrap_or(Value::Null);
        let (Some(sender), Some(ty)) = (msg["sender"].as_str(), msg["type"].as_str()) else {
            report.skip("to-device message", format!("for {user} {device}"), "no sender or type");
            continue;
        };
        let stream = Db::next_stream_position(&mut tx, crate::storage::sync::streams::TO_DEVICE).await?;
        db.insert_to_device(&mut tx, stream, &user, &device, sender, ty, &msg["content"].to_string()).await?;
        report.add("to-device messages", 1);
    }
    for s in syn.backup_sessions().await? {
        let Ok(session_data) = serde_json::from_str::<Value>(&s.session_data) else {
            report.skip("key backup session", &s.session_id, "session_data is not JSON");
            continue;
        };
        let json = json!({
            "first_message_index": s.first_message_index,
            "forwarded_count": s.forwarded_count,
            "is_verified": s.is_verified,
            "session_data": session_data,
        })
        .to_string();
        db.import_backup_session(
            &mut tx,
            &ImportBackupSession {
                user_id: &s.user_id,
                version: s.version,
                room_id: &s.room_id,
                session_id: &s.session_id,
                first_message_index: s.first_message_index,
                forwarded_count: s.forwarded_count,
                is_verified: s.is_verified,
                json: &json,
            },
        )
        .await?;
        report.add("key backup sessions", 1);
    }
    db.import_mark_done(&mut tx, item).await?;
    tx.commit().await?;
    Ok(())
}

/// Synapse's path of a local file: `local_content/ab/cd/efgh…`.
fn synapse_media_path(store: &Path, media_id: &str) -> Option<PathBuf> {
    if media_id.len() < 5 || !media_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return None;
    }
    Some(store.join("local_content").join(&media_id[0..2]).join(&media_id[2..4]).join(&media_id[4..]))
}

/// Copies each file into Myelin's content-addressed store (files first: a row names only a
/// complete file), then writes the rows in one transaction with the unit's mark.
async fn import_media(
    ctx: &Ctx<'_>,
    report: &mut Report,
    dir: &Path,
    store: &crate::media::store::FileStore,
) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let media = ctx.synapse.local_media().await?;
    let mut stored = Vec::new();
    for m in &media {
        if m.quarantined_by.is_some() {
            report.skip("media", &m.media_id, "quarantined on Synapse");
            continue;
        }
        let Some(path) = synapse_media_path(dir, &m.media_id) else {
            report.skip("media", &m.media_id, "unexpected media id");
            continue;
        };
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) => {
                report.skip("media", &m.media_id, format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut pending = store.begin().await?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            pending.write(&buf[..n]).await?;
        }
        stored.push((m, pending.finish().await?));
    }
    let mut tx = ctx.db.begin_write().await?;
    for (m, s) in &stored {
        ctx.db
            .import_media(
                &mut tx,
                &ImportMedia {
                    origin: ctx.server_name,
                    media_id: &m.media_id,
                    creator: m.user_id.as_deref(),
                    content_type: m.media_type.as_deref(),
                    filename: m.upload_name.as_deref(),
                    size: s.size as i64,
                    sha256: &s.sha256,
                    created_ts: m.created_ts,
                },
            )
            .await?;
        report.add("media files", 1);
    }
    ctx.db.import_mark_done(&mut tx, "media").await?;
    tx.commit().await?;
    Ok(())
}

/// Reads one room from Synapse and writes it through the room engine; None when skipped.
async fn import_room(
    ctx: &Ctx<'_>,
    rooms: &crate::rooms::Rooms,
    report: &mut Report,
    room: synapse_db::Room,
    item: &str,
) -> anyhow::Result<Option<crate::rooms::import::ImportedRoom>> {
    let syn = ctx.synapse;
    let Ok(version) = ruma::RoomVersionId::try_from(room.room_version.as_str()) else {
        report.skip("room", &room.room_id, format!("unknown room version {}", room.room_version));
        return Ok(None);
    };
    if version.rules().is_none() {
        report.skip("room", &room.room_id, format!("room version {} has no known rules", room.room_version));
        return Ok(None);
    }
    if !crate::events::version::SUPPORTED_ROOM_VERSIONS.contains(&room.room_version.as_str()) {
        report.warnings.push(format!(
            "room {} is of version {}, which Myelin does not create or join: imported, new events may be refused",
            room.room_id, room.room_version
        ));
    }
    let groups = syn.room_state_groups(&room.room_id).await?;
    let mut events = Vec::new();
    for row in syn.room_events(&room.room_id).await? {
        let mut json: Value = match serde_json::from_str(&row.json) {
            Ok(v) => v,
            Err(e) => {
                report.skip("event", &row.event_id, format!("stored JSON does not parse: {e}"));
                continue;
            }
        };
        // `unsigned` is the server's own data about the event (ages, the previous content),
        // outside the hashes and signatures; Myelin computes its own.
        if let Some(o) = json.as_object_mut() {
            o.remove("unsigned");
        }
        let text = serde_json::to_string(&json)?;
        let pdu = match Pdu::from_stored(&row.event_id, &room.room_id, &text, row.rejected) {
            Ok(p) => p,
            Err(e) => {
                report.skip("event", &row.event_id, format!("Myelin cannot parse it: {}", e.message));
                continue;
            }
        };
        let meta: Value = serde_json::from_str(&row.internal_metadata).unwrap_or(json!({}));
        let soft_failed = meta["soft_failed"].as_bool().unwrap_or(false);
        let state_after = match row.state_group {
            Some(g) if !row.outlier && !row.rejected => match groups.get(&g) {
                Some(s) => Some(s.clone()),
                None => {
                    report.skip("event", &row.event_id, format!("its state group {g} is missing"));
                    None
                }
            },
            _ => None,
        };
        if row.rejected {
            report.add("rejected events", 1);
        }
        events.push(ImportEvent { pdu, outlier: row.outlier || state_after.is_none(), soft_failed, state_after });
    }
    let current_state = syn.current_state(&room.room_id).await?;
    let extremities = syn.extremities(&room.room_id).await?;
    let imported = rooms
        .import_room(
            ImportRoom {
                room_id: room.room_id.clone(),
                version: room.room_version.clone(),
                events,
                current_state,
                extremities,
                is_public: room.is_public,
            },
            item,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    report.add("rooms", 1);
    report.add("events", imported.events);
    report.add("outlier events", imported.outliers);
    report.add("redactions applied", imported.redactions);
    Ok(Some(imported))
}

/// Aliases, receipts and pushers: what names rooms or events, once the rooms are in.
async fn import_room_extras(ctx: &Ctx<'_>, report: &mut Report, item: &'static str) -> anyhow::Result<()> {
    let (db, syn) = (ctx.db, ctx.synapse);
    let rooms: std::collections::HashSet<String> = syn.rooms().await?.into_iter().map(|r| r.room_id).collect();
    let mut tx = db.begin_write().await?;
    for (alias, room, creator) in syn.aliases().await? {
        if !rooms.contains(&room) {
            report.skip("alias", &alias, "its room was not imported");
            continue;
        }
        db.insert_alias_in(&mut tx, &alias, &room, creator.as_deref().unwrap_or_default()).await?;
        report.add("aliases", 1);
    }
    for (room, ty, user, event, thread, data) in syn.receipts().await? {
        if !db.import_has_event(&event).await? {
            report.skip("receipt", format!("{ty} of {user} in {room}"), "its event was not imported");
            continue;
        }
        let stream = Db::next_stream_position(&mut tx, "receipts").await?;
        let thread = thread.unwrap_or_default();
        db.import_receipt(&mut tx, &room, &ty, &user, &thread, &event, &data, stream).await?;
        report.add("receipts", 1);
    }
    // Pushers continue after the last imported event: Synapse pushed what came before.
    let last = Db::next_stream_position(&mut tx, "events").await?;
    for p in syn.pushers().await? {
        if !p.enabled {
            report.skip("pusher", format!("{} of {}", p.app_id, p.user_name), "disabled on Synapse");
            continue;
        }
        let row = crate::storage::push::PusherRow {
            user_id: p.user_name,
            app_id: p.app_id,
            pushkey: p.pushkey,
            kind: p.kind,
            app_display_name: p.app_display_name,
            device_display_name: p.device_display_name,
            profile_tag: p.profile_tag.filter(|t| !t.is_empty()),
            lang: p.lang.unwrap_or_else(|| "en".to_owned()),
            data: p.data.unwrap_or_else(|| "{}".to_owned()),
            device_id: p.device_id,
            created_ts: p.ts,
            last_stream: last,
        };
        db.import_pusher(&mut tx, &row).await?;
        report.add("pushers", 1);
    }
    db.import_mark_done(&mut tx, item).await?;
    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_signing_key_becomes_the_same_key() {
        // A Synapse key file line and the public key Synapse publishes for it.
        let seed = [7u8; 32];
        let line = format!("ed25519 a_AbCd {}\n", base64::engine::general_purpose::STANDARD_NO_PAD.encode(seed));
        let converted = convert_signing_key(&line).expect("converts");
        let keys = crate::signing::SigningKeys::parse(&converted, 0).expect("Myelin parses it");
        assert_eq!(keys.key_id(), "ed25519:a_AbCd");
        let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
        assert_eq!(
            keys.public_key_base64(),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(public.as_bytes())
        );
        assert!(convert_signing_key("ed25519 a_x notbase64!!").is_err());
        assert!(convert_signing_key("").is_err());
    }

    #[test]
    fn media_paths_follow_synapse_layout() {
        let p = synapse_media_path(Path::new("/m"), "abcdefGHIJ").expect("valid");
        assert_eq!(p, Path::new("/m/local_content/ab/cd/efGHIJ"));
        assert!(synapse_media_path(Path::new("/m"), "../../etc/passwd").is_none());
    }

    #[test]
    fn push_rules_keep_user_rules_and_flags() {
        let user = ruma::UserId::parse("@a:x").expect("user");
        let rule = synapse_db::PushRule {
            user_name: "@a:x".into(),
            rule_id: "global/content/cats".into(),
            priority_class: 4,
            priority: 0,
            conditions: r#"[{"kind":"event_match","key":"content.body","pattern":"cats"}]"#.into(),
            actions: r#"["notify"]"#.into(),
        };
        let enabled = HashMap::from([("global/override/.m.rule.master".to_owned(), true)]);
        let v = build_push_rules(&user, &[&rule], &enabled).expect("builds");
        assert_eq!(v["global"]["content"][0]["rule_id"], "cats");
        assert_eq!(v["global"]["content"][0]["pattern"], "cats");
        assert_eq!(v["global"]["override"][0]["rule_id"], ".m.rule.master");
        assert_eq!(v["global"]["override"][0]["enabled"], true);
    }
}

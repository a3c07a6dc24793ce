//! Configuration: the TOML file, `MYELIN_<SECTION>__<KEY>` environment overrides, defaults and
//! validation.
//!
//! Loading never half-succeeds: a bad value stops start-up with a message naming the key.
//! `default_config_toml` is the commented file written on first start and printed by
//! `myelin generate-config`; keep it in step with the structs below and `docs/configuration.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The server name that appears in user ids and room aliases, with port if not 8448.
    pub server_name: String,
    /// Directory for the signing key and, by default, the database and media.
    pub data_dir: PathBuf,
    /// The URL clients reach this server's client API at (e.g. `https://matrix.example.org`),
    /// served as `m.homeserver.base_url` by `/.well-known/matrix/client`.
    pub public_baseurl: Option<String>,
    /// Listening sockets.
    pub listen: ListenConfig,
    /// TLS material for the federation listener.
    pub tls: TlsConfig,
    /// Database connection.
    pub database: DatabaseConfig,
    /// Who may register accounts.
    pub registration: RegistrationConfig,
    /// Access, refresh and login tokens.
    pub sessions: SessionsConfig,
    /// Server-to-server settings.
    pub federation: FederationConfig,
    /// Media repository.
    pub media: MediaConfig,
    /// Push notifications.
    pub push: PushConfig,
    /// Identity servers reached for third-party invites.
    pub identity: IdentityConfig,
    /// Rate limiting.
    pub rate_limits: RateLimitConfig,
    /// Rooms.
    pub rooms: RoomsConfig,
    /// TURN servers for voice and video calls.
    pub voip: VoipConfig,
    /// Verification mails (email addresses on accounts, password resets); off without `smtp_host`.
    pub email: EmailConfig,
    /// MatrixRTC (Element Call) back-ends offered to clients.
    pub matrix_rtc: MatrixRtcConfig,
    /// Logging.
    pub log: LogConfig,
    /// What `/.well-known/matrix/{server,support}` answer.
    pub well_known: WellKnownConfig,
    /// Application services (bridges and bots).
    pub appservice: AppserviceConfig,
    /// Server notices (`POST /_synapse/admin/v1/send_server_notice`).
    pub server_notices: ServerNoticesConfig,
}

/// `[server_notices]` (Synapse's key names).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerNoticesConfig {
    /// Localpart of the user who sends notices; unset: server notices are off.
    pub system_mxid_localpart: Option<String>,
    /// That user's display name.
    pub system_mxid_display_name: String,
    /// Name of each user's notices room.
    pub room_name: String,
}

impl Default for ServerNoticesConfig {
    fn default() -> Self {
        Self {
            system_mxid_localpart: None,
            system_mxid_display_name: "Server Notices".into(),
            room_name: "Server Notices".into(),
        }
    }
}

/// `[appservice]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppserviceConfig {
    /// Registration files (YAML, the spec's format, as Synapse's `app_service_config_files`).
    pub registration_files: Vec<PathBuf>,
    /// First retry delay after an appservice fails a transaction, in milliseconds.
    pub retry_min_ms: u64,
    /// Largest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// How long one request to an appservice may take, in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for AppserviceConfig {
    fn default() -> Self {
        Self { registration_files: Vec::new(), retry_min_ms: 1_000, retry_max_ms: 300_000, request_timeout_ms: 30_000 }
    }
}

/// `[well_known]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WellKnownConfig {
    /// The `m.server` answer of `/.well-known/matrix/server`: where other servers reach this
    /// one (`host[:port]`, e.g. `matrix.example.org:443`).
    pub server: Option<String>,
    /// Whom to contact about this server (`/.well-known/matrix/support`).
    pub support_contacts: Vec<SupportContact>,
    /// A web page with support information (`/.well-known/matrix/support`).
    pub support_page: Option<String>,
}

/// One contact of `/.well-known/matrix/support`: a role and at least one way to reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportContact {
    /// `m.role.admin`, `m.role.security` or a namespaced role.
    pub role: String,
    /// A Matrix user id.
    pub matrix_id: Option<String>,
    /// An e-mail address.
    pub email_address: Option<String>,
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Plain HTTP listener for the client API (and federation behind a reverse proxy).
    pub client: SocketAddr,
    /// Plain HTTP listener: most connections open at once; more are closed on accept.
    pub client_max_connections: usize,
    /// Optional HTTPS listener for federation.
    pub federation: Option<SocketAddr>,
    /// Federation listener: seconds a client has to send a request head (HTTP/1.1; the timer
    /// also runs while a connection waits for its next request).
    pub federation_header_timeout_secs: u64,
    /// Federation listener: seconds a connection may go without sending or receiving a byte.
    pub federation_idle_timeout_secs: u64,
    /// Federation listener: most connections open at once; more are closed on accept.
    pub federation_max_connections: usize,
    /// Reverse proxies (addresses or CIDR ranges) whose `X-Forwarded-For` names the client;
    /// from anyone else the header is ignored, so a client cannot choose its own address for
    /// the rate limits.
    pub trusted_proxies: Vec<String>,
    /// Address of the Prometheus metrics listener (`GET /metrics`); unset: no metrics are
    /// recorded. Keep it off the public network (e.g. `127.0.0.1:9092`).
    pub metrics: Option<SocketAddr>,
}

/// `[tls]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://...`; empty means `sqlite://<data_dir>/myelin.db`.
    pub url: String,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// SQLite only: `full` (default; every commit is on disk before the answer) or `normal`
    /// (WAL commits survive a process crash but not a power loss, and cost no fsync each).
    pub sqlite_synchronous: String,
}

/// Registration policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Only `myelin register-user` creates accounts.
    Disabled,
    /// Anyone may register (`m.login.dummy`).
    Open,
    /// Registration needs one of `tokens` (`m.login.registration_token`).
    Token,
}

/// `[registration]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// disabled, open or token.
    pub mode: RegistrationMode,
    /// Tokens accepted in `token` mode, besides those made with the admin API
    /// (`/_synapse/admin/v1/registration_tokens`).
    #[serde(deserialize_with = "lenient_strings")]
    pub tokens: Vec<String>,
}

/// `[federation]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// Whether this server talks to other servers at all.
    pub enabled: bool,
    /// Extra CA certificate (PEM) trusted for outbound federation TLS.
    pub trusted_ca: Option<PathBuf>,
    /// Allow outbound federation to loopback and private addresses (test networks).
    pub allow_private_addresses: bool,
    /// First retry delay after a destination fails, in milliseconds.
    pub retry_min_ms: u64,
    /// Largest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Notaries asked for a server's signing keys (`POST /_matrix/key/v2/query`) when that server
    /// does not answer or has no key valid at the time needed; as Synapse's `trusted_key_servers`.
    pub trusted_key_servers: Vec<TrustedKeyServer>,
}

/// One entry of `federation.trusted_key_servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKeyServer {
    /// The notary's server name.
    pub server_name: String,
    /// The notary's own keys, `key id -> unpadded base64 public key`; when given, its answers
    /// must be signed by one of them. Without them the notary's answers are trusted on the
    /// origin's self-signature alone.
    #[serde(default)]
    pub verify_keys: std::collections::BTreeMap<String, String>,
}

impl TrustedKeyServer {
    /// matrix.org with its published key, Synapse's default notary.
    pub fn matrix_org() -> Self {
        Self {
            server_name: "matrix.org".to_owned(),
            verify_keys: [("ed25519:auto".to_owned(), "Noi6WqcDj0QmPxCNQqgezwTlBKrfqehY1u2FyWP9uYw".to_owned())]
                .into_iter()
                .collect(),
        }
    }
}

/// `[media]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where media files live; empty means `<data_dir>/media`.
    pub dir: PathBuf,
    /// Largest accepted upload.
    pub max_upload_bytes: u64,
    /// Whether `/preview_url` fetches pages at all.
    pub url_preview_enabled: bool,
    /// Addresses or CIDR ranges URL previews may reach although they are not public
    /// (loopback, private, link-local, ...); empty by default.
    pub url_preview_ip_allowlist: Vec<String>,
}

/// `[push]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Addresses or CIDR ranges push gateways may be at although they are not public; empty by
    /// default (a pusher's URL is chosen by the user, so the server must not become a proxy
    /// into its own network).
    pub gateway_ip_allowlist: Vec<String>,
}

/// `[identity]`: how identity servers are reached for third-party invites (the client names
/// the identity server in its `/invite` request; docs/identity-servers.md).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Addresses or CIDR ranges identity servers may be at although they are not public; empty
    /// by default (the client chooses the identity server, so the server must not become a
    /// proxy into its own network). `federation.allow_private_addresses` allows every address.
    pub ip_allowlist: Vec<String>,
    /// Reach identity servers over plain `http://` instead of `https://`: for tests and closed
    /// networks only (the identity server's answers decide who gets invited).
    pub plain_http: bool,
}

/// `[matrix_rtc]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatrixRtcConfig {
    /// MatrixRTC transports (MSC4143), each an object with a `type`, e.g.
    /// `{ type = "livekit", livekit_service_url = "https://rtc.example.org/livekit/jwt" }` for
    /// Element Call behind a LiveKit SFU and its JWT service. Served as
    /// `org.matrix.msc4143.rtc_foci` in `/.well-known/matrix/client` and at
    /// `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports`, as Synapse's `matrix_rtc`.
    pub transports: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// `[voip]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoipConfig {
    /// TURN URIs given to clients, e.g. `turn:turn.example.org:3478?transport=udp`; empty: no
    /// TURN server (`/voip/turnServer` answers `{}`, as Synapse does).
    pub turn_uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`): clients get
    /// time-limited credentials made from it (the TURN REST API scheme).
    pub turn_shared_secret: Option<String>,
    /// Fixed credentials, when the TURN server has no shared secret.
    pub turn_username: Option<String>,
    /// See `turn_username`.
    pub turn_password: Option<String>,
    /// How long credentials made from the shared secret are valid (Synapse: one hour).
    pub turn_user_lifetime_ms: u64,
}

impl Default for VoipConfig {
    fn default() -> Self {
        Self {
            turn_uris: Vec::new(),
            turn_shared_secret: None,
            turn_username: None,
            turn_password: None,
            turn_user_lifetime_ms: 3_600_000,
        }
    }
}

/// `[email]`: the SMTP server verification mails go through (Synapse's `email` keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmailConfig {
    /// The SMTP server; unset: no email support (the email endpoints answer `M_THREEPID_DENIED`).
    pub smtp_host: Option<String>,
    /// Its port (25; 587 for submission with STARTTLS).
    pub smtp_port: u16,
    /// Login at the SMTP server, if it wants one.
    pub smtp_user: Option<String>,
    /// See `smtp_user`.
    pub smtp_pass: Option<String>,
    /// Refuse to send without STARTTLS; otherwise STARTTLS is used when the server offers it.
    pub require_transport_security: bool,
    /// The sender of the mails, e.g. `Example Matrix <noreply@example.org>`.
    pub notif_from: Option<String>,
    /// How long a verification link works (Synapse: one hour).
    pub token_lifetime_ms: u64,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: None,
            smtp_port: 25,
            smtp_user: None,
            smtp_pass: None,
            require_transport_security: false,
            notif_from: None,
            token_lifetime_ms: 3_600_000,
        }
    }
}

/// `[sessions]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Lifetime of the access token of a session whose client asked for a refresh token
    /// (Synapse's `refreshable_access_token_lifetime`: 5 minutes).
    pub refreshable_access_token_lifetime_ms: u64,
    /// Lifetime of a refresh token; 0: until used (Synapse's `refresh_token_lifetime`, unset).
    pub refresh_token_lifetime_ms: u64,
    /// Whether a logged-in device may get a login token for another (`/login/get_token`,
    /// after re-entering the password).
    pub login_via_existing_session: bool,
    /// Lifetime of such a login token (Synapse: 2 minutes).
    pub login_token_lifetime_ms: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            refreshable_access_token_lifetime_ms: 5 * 60 * 1000,
            refresh_token_lifetime_ms: 0,
            login_via_existing_session: true,
            login_token_lifetime_ms: 2 * 60 * 1000,
        }
    }
}

/// `[rate_limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Whether rate limiting is applied at all.
    pub enabled: bool,
    /// Sustained requests per second per user (or per IP without a token) on rate-limited endpoints.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: u32,
    /// `[rate_limits.login_address]`: login attempts per client address (Synapse's
    /// `rc_login.address`: 0.003/s, burst 5).
    pub login_address: Bucket,
    /// `[rate_limits.login_account]`: login attempts per account (`rc_login.account`).
    pub login_account: Bucket,
    /// `[rate_limits.failed_logins]`: wrong passwords per account, at login and in
    /// User-Interactive Auth (`rc_login.failed_attempts`: 0.17/s, burst 3).
    pub failed_logins: Bucket,
    /// `[rate_limits.registration]`: completed registrations per client address
    /// (`rc_registration`: 0.17/s, burst 3).
    pub registration: Bucket,
}

/// A token bucket: `burst` actions at once, then `per_second` on average.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bucket {
    /// Sustained rate.
    pub per_second: f64,
    /// Actions allowed at once.
    pub burst: u32,
}

/// `[rooms]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// Room version for new rooms.
    #[serde(deserialize_with = "lenient_string")]
    pub default_version: String,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: `info`, `debug`, `myelin=debug,sqlx=warn`, ...
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

/// A string that the environment may have turned into a number: figment parses
/// `MYELIN_ROOMS__DEFAULT_VERSION=11` as the integer 11, but the operator meant the string.
#[derive(Deserialize)]
#[serde(untagged)]
enum LenientString {
    Str(String),
    Int(i64),
    UInt(u64),
}

impl From<LenientString> for String {
    fn from(value: LenientString) -> Self {
        match value {
            LenientString::Str(s) => s,
            LenientString::Int(n) => n.to_string(),
            LenientString::UInt(n) => n.to_string(),
        }
    }
}

fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    LenientString::deserialize(d).map(Into::into)
}

fn lenient_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<LenientString>::deserialize(d).map(|v| v.into_iter().map(Into::into).collect())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8008".into(),
            data_dir: PathBuf::from("myelin-data"),
            public_baseurl: None,
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            database: DatabaseConfig::default(),
            registration: RegistrationConfig::default(),
            sessions: SessionsConfig::default(),
            federation: FederationConfig::default(),
            media: MediaConfig::default(),
            push: PushConfig::default(),
            identity: IdentityConfig::default(),
            rate_limits: RateLimitConfig::default(),
            rooms: RoomsConfig::default(),
            voip: VoipConfig::default(),
            email: EmailConfig::default(),
            matrix_rtc: MatrixRtcConfig::default(),
            log: LogConfig::default(),
            well_known: WellKnownConfig::default(),
            appservice: AppserviceConfig::default(),
            server_notices: ServerNoticesConfig::default(),
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            client: "127.0.0.1:8008".parse().expect("valid address"),
            client_max_connections: 20_000,
            federation: None,
            federation_header_timeout_secs: 30,
            federation_idle_timeout_secs: 300,
            federation_max_connections: 4096,
            trusted_proxies: Vec::new(),
            metrics: None,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: String::new(), max_connections: 16, sqlite_synchronous: "full".into() }
    }
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self { mode: RegistrationMode::Disabled, tokens: Vec::new() }
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            trusted_ca: None,
            allow_private_addresses: false,
            retry_min_ms: 2_000,
            retry_max_ms: 600_000,
            trusted_key_servers: vec![TrustedKeyServer::matrix_org()],
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            max_upload_bytes: 50 * 1024 * 1024,
            url_preview_enabled: true,
            url_preview_ip_allowlist: Vec::new(),
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 10.0,
            burst: 50,
            login_address: Bucket { per_second: 0.003, burst: 5 },
            login_account: Bucket { per_second: 0.003, burst: 5 },
            failed_logins: Bucket { per_second: 0.17, burst: 3 },
            registration: Bucket { per_second: 0.17, burst: 3 },
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { default_version: "12".into() }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// Where `myelin` looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "myelin-data/myelin.toml";

impl Config {
    /// Loads defaults, then the file (if it exists), then the environment, and validates.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // MYELIN_PASSWORD is `register-user`'s password and MYELIN_HEAP_STATS_SECS asks for heap
        // profiling (`src/main.rs`), not configuration keys.
        figment = figment.merge(Env::prefixed("MYELIN_").split("__").ignore(&["password", "heap_stats_secs"]));
        let mut config: Config = figment.extract().map_err(|e| {
            let mut msg = String::new();
            for err in e {
                let key = err.path.join(".");
                // Say where the bad value came from, so the operator knows what to edit.
                let origin = match err.metadata.as_ref() {
                    Some(md) => match &md.source {
                        Some(figment::Source::File(file)) => format!(" in {}", file.display()),
                        _ if md.name.contains("environment") && !key.is_empty() => {
                            format!(" (environment variable MYELIN_{})", err.path.join("__").to_uppercase())
                        }
                        _ => String::new(),
                    },
                    None => String::new(),
                };
                if key.is_empty() {
                    msg.push_str(&format!("configuration error{origin}: {}\n", err.kind));
                } else {
                    msg.push_str(&format!("configuration key `{key}`{origin}: {}\n", err.kind));
                }
            }
            anyhow::anyhow!(msg.trim_end().to_owned())
        })?;
        config.fill_derived_paths();
        config.validate()?;
        Ok(config)
    }

    fn fill_derived_paths(&mut self) {
        if self.database.url.is_empty() {
            self.database.url = format!("sqlite://{}", self.data_dir.join("myelin.db").display());
        }
        if self.media.dir.as_os_str().is_empty() {
            self.media.dir = self.data_dir.join("media");
        }
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> anyhow::Result<()> {
        ruma::ServerName::parse(&self.server_name).map_err(|e| {
            anyhow::anyhow!("configuration key `server_name`: invalid server name {:?}: {e}", self.server_name)
        })?;
        let url = &self.database.url;
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            bail!("configuration key `database.url`: must start with sqlite:// or postgres://, got {url:?}");
        }
        if !matches!(self.database.sqlite_synchronous.as_str(), "full" | "normal") {
            bail!("configuration key `database.sqlite_synchronous`: must be \"full\" or \"normal\"");
        }
        if self.appservice.retry_min_ms == 0 || self.appservice.retry_max_ms < self.appservice.retry_min_ms {
            bail!(
                "configuration key `appservice.retry_min_ms`: must be at least 1 and at most `appservice.retry_max_ms`"
            );
        }
        if self.appservice.request_timeout_ms == 0 {
            bail!("configuration key `appservice.request_timeout_ms`: must be at least 1");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("configuration key `tls`: `cert` and `key` must be given together");
        }
        for (key, value) in [
            ("listen.client_max_connections", self.listen.client_max_connections as u64),
            ("listen.federation_header_timeout_secs", self.listen.federation_header_timeout_secs),
            ("listen.federation_idle_timeout_secs", self.listen.federation_idle_timeout_secs),
            ("listen.federation_max_connections", self.listen.federation_max_connections as u64),
        ] {
            if value == 0 {
                bail!("configuration key `{key}`: must be at least 1");
            }
        }
        if self.listen.federation.is_some() && self.tls.cert.is_none() {
            bail!(
                "configuration key `listen.federation`: the HTTPS federation listener needs `tls.cert` and `tls.key`"
            );
        }
        for (key, file) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("federation.trusted_ca", &self.federation.trusted_ca),
        ] {
            if let Some(file) = file
                && !file.exists()
            {
                bail!("configuration key `{key}`: file {} does not exist", file.display());
            }
        }
        for notary in &self.federation.trusted_key_servers {
            let key = "configuration key `federation.trusted_key_servers`";
            ruma::ServerName::parse(&notary.server_name)
                .map_err(|e| anyhow::anyhow!("{key}: invalid server name {:?}: {e}", notary.server_name))?;
            for (id, public) in &notary.verify_keys {
                if !id.starts_with("ed25519:") {
                    bail!("{key}: key id {id:?} of {} is not an ed25519 key id", notary.server_name);
                }
                if ruma::serde::Base64::<ruma::serde::base64::Standard>::parse(public)
                    .map_or(true, |b| b.as_bytes().len() != 32)
                {
                    bail!("{key}: key {id} of {} is not an unpadded base64 ed25519 public key", notary.server_name);
                }
            }
        }
        if self.media.max_upload_bytes == 0 {
            bail!("configuration key `media.max_upload_bytes`: must be greater than 0");
        }
        for range in &self.media.url_preview_ip_allowlist {
            if crate::ssrf::IpRange::parse(range).is_none() {
                bail!("configuration key `media.url_preview_ip_allowlist`: {range:?} is not an address or CIDR range");
            }
        }
        for range in &self.identity.ip_allowlist {
            if crate::ssrf::IpRange::parse(range).is_none() {
                bail!("configuration key `identity.ip_allowlist`: {range:?} is not an address or CIDR range");
            }
        }
        for range in &self.push.gateway_ip_allowlist {
            if crate::ssrf::IpRange::parse(range).is_none() {
                bail!("configuration key `push.gateway_ip_allowlist`: {range:?} is not an address or CIDR range");
            }
        }
        if self.rate_limits.per_second <= 0.0 || self.rate_limits.burst == 0 {
            bail!("configuration key `rate_limits`: `per_second` and `burst` must be positive");
        }
        if self.sessions.refreshable_access_token_lifetime_ms == 0 || self.sessions.login_token_lifetime_ms == 0 {
            bail!("configuration keys `sessions.*_lifetime_ms`: token lifetimes must be positive");
        }
        for transport in &self.matrix_rtc.transports {
            if transport.get("type").and_then(|t| t.as_str()).is_none_or(str::is_empty) {
                bail!("configuration key `matrix_rtc.transports`: every transport needs a `type`, e.g. \"livekit\"");
            }
        }
        let voip = &self.voip;
        if !voip.turn_uris.is_empty()
            && voip.turn_shared_secret.is_none()
            && (voip.turn_username.is_none() || voip.turn_password.is_none())
        {
            bail!(
                "configuration key `voip.turn_uris`: needs `turn_shared_secret`, or `turn_username` and `turn_password`"
            );
        }
        if voip.turn_user_lifetime_ms < 1000 {
            bail!("configuration key `voip.turn_user_lifetime_ms`: must be at least 1000");
        }
        let email = &self.email;
        if email.smtp_host.is_some() {
            let Some(from) = &email.notif_from else {
                bail!("configuration key `email.notif_from`: needed when `email.smtp_host` is set");
            };
            if from.parse::<lettre::message::Mailbox>().is_err() {
                bail!("configuration key `email.notif_from`: not an address like `Name <user@example.org>`: {from}");
            }
            if self.public_baseurl.is_none() {
                bail!(
                    "configuration key `public_baseurl`: needed when `email.smtp_host` is set (the links in the mails)"
                );
            }
            if email.smtp_user.is_some() != email.smtp_pass.is_some() {
                bail!("configuration keys `email.smtp_user` and `email.smtp_pass`: give both or neither");
            }
            if email.token_lifetime_ms < 60_000 {
                bail!("configuration key `email.token_lifetime_ms`: must be at least 60000");
            }
        }
        let limits = &self.rate_limits;
        for (name, bucket) in [
            ("login_address", limits.login_address),
            ("login_account", limits.login_account),
            ("failed_logins", limits.failed_logins),
            ("registration", limits.registration),
        ] {
            if bucket.per_second.is_nan() || bucket.per_second <= 0.0 || bucket.burst == 0 {
                bail!("configuration key `rate_limits.{name}`: `per_second` and `burst` must be positive");
            }
        }
        for proxy in &self.listen.trusted_proxies {
            if crate::ssrf::IpRange::parse(proxy).is_none() {
                bail!("configuration key `listen.trusted_proxies`: {proxy:?} is not an address or CIDR range");
            }
        }
        if !crate::events::version::SUPPORTED_ROOM_VERSIONS.contains(&self.rooms.default_version.as_str()) {
            bail!(
                "configuration key `rooms.default_version`: unsupported room version {:?} (supported: {})",
                self.rooms.default_version,
                crate::events::version::SUPPORTED_ROOM_VERSIONS.join(", ")
            );
        }
        self.validate_well_known()?;
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("configuration key `log.format`: must be \"text\" or \"json\"");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| anyhow::anyhow!("configuration key `log.level`: {e}"))?;
        Ok(())
    }

    fn validate_well_known(&self) -> anyhow::Result<()> {
        let web_url = |key: &str, value: &str| -> anyhow::Result<()> {
            match url::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
                _ => bail!("configuration key `{key}`: {value:?} is not an http(s) URL"),
            }
        };
        if let Some(base) = &self.public_baseurl {
            web_url("public_baseurl", base)?;
        }
        if let Some(page) = &self.well_known.support_page {
            web_url("well_known.support_page", page)?;
        }
        if let Some(server) = &self.well_known.server {
            ruma::ServerName::parse(server).map_err(|e| {
                anyhow::anyhow!("configuration key `well_known.server`: {server:?} is not host[:port]: {e}")
            })?;
        }
        for contact in &self.well_known.support_contacts {
            if contact.role.is_empty() {
                bail!("configuration key `well_known.support_contacts`: every contact needs a `role`");
            }
            if contact.matrix_id.is_none() && contact.email_address.is_none() {
                bail!(
                    "configuration key `well_known.support_contacts`: contact with role {:?} needs `matrix_id` or `email_address`",
                    contact.role
                );
            }
            if let Some(id) = &contact.matrix_id {
                ruma::UserId::parse(id).map_err(|e| {
                    anyhow::anyhow!("configuration key `well_known.support_contacts`: {id:?} is not a user id: {e}")
                })?;
            }
        }
        Ok(())
    }

    /// The parsed server name.
    pub fn server_name(&self) -> ruma::OwnedServerName {
        ruma::ServerName::parse(&self.server_name).expect("validated at load")
    }

    /// Writes the commented default configuration to `path` unless a file is already there.
    pub fn write_default_if_missing(path: &Path) -> anyhow::Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, default_config_toml()).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }
}

/// The commented default configuration file.
pub fn default_config_toml() -> &'static str {
    include_str!("default.toml")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_file_parses_to_defaults() {
        let parsed: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(default_config_toml()))
            .extract()
            .unwrap();
        assert_eq!(parsed.server_name, "localhost:8008");
        assert_eq!(parsed.registration.mode, RegistrationMode::Disabled);
        assert_eq!(parsed.listen.client.to_string(), "127.0.0.1:8008");
    }

    #[test]
    fn numbers_from_the_environment_fill_string_keys() {
        let parsed: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[rooms]\ndefault_version = 11\n[registration]\ntokens = [\"a\", 123]"))
            .extract()
            .unwrap();
        assert_eq!(parsed.rooms.default_version, "11");
        assert_eq!(parsed.registration.tokens, ["a", "123"]);
        let bad: Result<Config, _> = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string("[rooms]\ndefault_version = true"))
            .extract();
        assert!(bad.unwrap_err().to_string().contains("default_version"));
    }
}

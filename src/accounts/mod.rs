//! Accounts: registration, passwords, sessions (devices + access tokens) and
//! User-Interactive Authentication.
//!
//! Passwords are argon2id PHC strings, hashed on the blocking pool so that hashing never stalls
//! the async runtime. Each hash takes 19 MiB (argon2's default cost, kept), so at most one hash
//! per core runs at once ([`PasswordHasher`]): unbounded, a hundred concurrent wrong-password
//! logins took the process from 78 MiB to 1.6 GiB. Access tokens are 256 random bits; only their SHA-256 is stored, so a
//! database leak reveals no usable token, and lookups by hash do not compare secrets byte by byte.

pub mod admin;
pub mod devices;
pub mod threepid;
pub mod tokens;
pub mod uia;
pub mod users;

use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier};
use base64::Engine;
use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::ids::random_alpha;
use crate::ratelimit::RateLimiter;
use crate::storage::Db;
use crate::storage::accounts::NewToken;

/// The authenticated caller of a client API request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the access token belongs to.
    pub device_id: OwnedDeviceId,
    /// Whether the user is a server administrator.
    pub is_admin: bool,
    /// The appservice whose `as_token` authenticated the request (the user is its sender or a
    /// user it masquerades as with `?user_id=`).
    pub appservice: Option<Arc<crate::appservice::Registration>>,
    /// The account is suspended by an administrator: it may read, not act in rooms
    /// (`api::suspension` says which endpoints refuse it).
    pub suspended: bool,
}

/// The device of an appservice request that names none (`?device_id=`, MSC3202): the
/// appservice acts without a device of the user's.
pub const APPSERVICE_DEVICE: &str = "APPSERVICE";

/// Account operations; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    db: Db,
    config: Arc<Config>,
    /// When each device's last-seen row was last written; throttles those writes.
    seen: Arc<std::sync::Mutex<std::collections::HashMap<(String, String), std::time::Instant>>>,
    /// Bounds concurrent argon2 hashes.
    hasher: PasswordHasher,
    /// Wrong passwords per account, at login and in User-Interactive Auth alike.
    failed_logins: Arc<RateLimiter>,
    /// Verification mails, when `[email]` is configured.
    mailer: Option<Arc<crate::email::Mailer>>,
    /// Verification mails per address (Synapse's `rc_3pid_validation`: 5 at once, then one
    /// every ~5 minutes), so that the server cannot be made to flood a mailbox.
    mails_per_address: Arc<RateLimiter>,
}

/// How often a device's `last_seen_ts` / `last_seen_ip` are written at most.
const LAST_SEEN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A freshly issued login.
#[derive(Debug)]
pub struct IssuedToken {
    /// The secret access token given to the client.
    pub access_token: String,
    /// The device it belongs to.
    pub device_id: OwnedDeviceId,
    /// For a refreshable session: the refresh token.
    pub refresh_token: Option<String>,
    /// For a refreshable session: how long the access token lives.
    pub expires_in: Option<std::time::Duration>,
}

/// How long a password check waits for a free hashing slot before it is refused with 429.
pub const HASH_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// `retry_after_ms` of that refusal.
const HASH_RETRY_AFTER_MS: u64 = 2000;

/// Runs argon2 on the blocking pool, at most one hash per core at a time; a request that waits
/// longer than [`HASH_QUEUE_WAIT`] for its turn gets 429 `M_LIMIT_EXCEEDED`. Cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    slots: Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_slots(cores, HASH_QUEUE_WAIT)
    }
}

impl PasswordHasher {
    /// A hasher running at most `slots` hashes at once, each waiting at most `wait` for its turn.
    pub fn with_slots(slots: usize, wait: std::time::Duration) -> Self {
        Self { slots: Arc::new(tokio::sync::Semaphore::new(slots.max(1))), wait }
    }

    /// Runs `f` on the blocking pool once a slot is free.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(closed)) => return Err(Error::internal(closed)),
            Err(_) => {
                tracing::warn!("password hashing saturated; refusing a request");
                return Err(Error::limit_exceeded(HASH_RETRY_AFTER_MS));
            }
        };
        tokio::task::spawn_blocking(move || {
            // Held by the hash itself, not by the request: a client that hangs up does not
            // free the slot (nor the memory) before the hash is done.
            let _permit = permit;
            f()
        })
        .await
        .map_err(Error::internal)?
    }

    /// Hashes a password with argon2id.
    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
                .map_err(|e| Error::internal(format!("argon2: {e}")))
        })
        .await
    }

    /// Checks a password against a stored PHC string.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool> {
        self.run(move || {
            let parsed = PasswordHash::new(&hash).map_err(|e| Error::internal(format!("stored hash: {e}")))?;
            Ok(Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
        })
        .await
    }
}

/// Whether a stored hash is bcrypt (`$2a$`, `$2b$`, `$2y$`: Synapse's, brought by
/// `myelin import-synapse`) rather than an argon2id PHC string.
fn is_bcrypt(hash: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"].iter().any(|p| hash.starts_with(p))
}

/// SHA-256 of an access token, hex-encoded; the form in which tokens are stored.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long an OpenID token is valid (Synapse: one hour).
pub const OPENID_TOKEN_SECS: u64 = 3600;

/// A secret token: 256 random bits after a prefix that says what kind of token it is.
fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn new_access_token() -> String {
    new_secret("myl_")
}

fn new_refresh_token() -> String {
    new_secret("mylr_")
}

/// Checks a localpart against the user id grammar of the spec (v1.19: `a-z0-9._=-/+`), plus the
/// reservations Synapse makes and clients expect: no leading underscore, not purely numeric.
pub fn validate_localpart(localpart: &str, server_name: &str) -> Result<()> {
    if localpart.is_empty() {
        return Err(Error::invalid_username("User ID cannot be empty"));
    }
    if !localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')) {
        return Err(Error::invalid_username("User ID can only contain characters a-z, 0-9, or '=_-./+'"));
    }
    if localpart.starts_with('_') {
        return Err(Error::invalid_username("User ID may not begin with _"));
    }
    if localpart.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid_username("Numeric user IDs are reserved for guest users"));
    }
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(Error::invalid_username("User ID may not be longer than 255 characters"));
    }
    Ok(())
}

impl Accounts {
    /// Creates the account service.
    pub fn new(db: Db, config: Arc<Config>) -> Self {
        let limits = &config.rate_limits;
        let failed_logins = Arc::new(RateLimiter::new(limits.enabled, limits.failed_logins));
        // The configuration was validated; a transport that cannot be built leaves email off.
        let mailer = crate::email::Mailer::from_config(&config.email)
            .inspect_err(|e| tracing::error!(error = %e, "email is off: the SMTP transport cannot be set up"))
            .ok()
            .flatten()
            .map(Arc::new);
        let mails_per_address =
            Arc::new(RateLimiter::new(limits.enabled, crate::config::Bucket { per_second: 0.003, burst: 5 }));
        Self {
            db,
            config,
            seen: Default::default(),
            hasher: PasswordHasher::default(),
            failed_logins,
            mailer,
            mails_per_address,
        }
    }

    /// The full user id for a localpart on this server.
    pub fn user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        UserId::parse(format!("@{localpart}:{}", self.config.server_name))
            .map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))
    }

    /// Resolves `alice` or `@alice:server` to a local user id.
    pub fn local_user_id(&self, user: &str) -> Result<OwnedUserId> {
        if user.starts_with('@') {
            let id = UserId::parse(user).map_err(|e| Error::invalid_param(format!("Invalid user ID: {e}")))?;
            if id.server_name().as_str() != self.config.server_name {
                return Err(Error::forbidden("Invalid username or password"));
            }
            Ok(id)
        } else {
            self.user_id(&user.to_lowercase())
        }
    }

    /// Whether the localpart is valid and free.
    pub async fn check_available(&self, localpart: &str) -> Result<OwnedUserId> {
        validate_localpart(localpart, &self.config.server_name)?;
        let user_id = self.user_id(localpart)?;
        if self.db.get_user(user_id.as_str()).await?.is_some() {
            return Err(Error::user_in_use());
        }
        Ok(user_id)
    }

    /// Registers a user; `M_USER_IN_USE` if the name is taken.
    pub async fn register(&self, localpart: &str, password: Option<String>, admin: bool) -> Result<OwnedUserId> {
        validate_localpart(localpart, &self.config.server_name)?;
        let user_id = self.user_id(localpart)?;
        self.create_account(&user_id, password, admin, localpart).await?;
        tracing::info!(%user_id, admin, "registered user");
        Ok(user_id)
    }

    /// Stores a new account with its password hashed (none when empty); `M_USER_IN_USE` if the
    /// id is taken. The caller validated the localpart.
    async fn create_account(
        &self,
        user_id: &UserId,
        password: Option<String>,
        admin: bool,
        displayname: &str,
    ) -> Result<()> {
        let hash = match password {
            Some(p) if !p.is_empty() => Some(self.hasher.hash(p).await?),
            _ => None,
        };
        if !self.db.create_user(user_id.as_str(), user_id.localpart(), hash.as_deref(), admin, displayname).await? {
            return Err(Error::user_in_use());
        }
        Ok(())
    }

    /// Verifies a user's password; `M_FORBIDDEN` on any mismatch, without saying which part.
    ///
    /// After `rate_limits.failed_logins.burst` wrong passwords for an account, further attempts
    /// get 429 without a password being checked, until the bucket refills: guessing is slow
    /// however many addresses the guesser uses.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        self.failed_logins.peek(user_id.as_str())?;
        let result = self.verify_user_password(user_id, password).await;
        if result.as_ref().is_err_and(|e| e.errcode == "M_FORBIDDEN") {
            self.failed_logins.record(user_id.as_str());
        }
        result
    }

    async fn verify_user_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let forbidden = || Error::forbidden("Invalid username or password");
        let user = self.db.get_user(user_id.as_str()).await?.ok_or_else(forbidden)?;
        if user.deactivated {
            return Err(Error::new(
                http::StatusCode::FORBIDDEN,
                "M_USER_DEACTIVATED",
                "This account has been deactivated",
            ));
        }
        let hash = user.password_hash.ok_or_else(forbidden)?;
        let ok = if is_bcrypt(&hash) {
            // A hash imported from Synapse: checked as bcrypt once, then replaced by argon2id.
            let pw = password.to_owned();
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
                .await
                .map_err(Error::internal)?;
            if ok {
                let rehashed = self.hasher.hash(password.to_owned()).await?;
                self.db.set_password_hash(user_id.as_str(), &rehashed).await?;
            }
            ok
        } else {
            self.hasher.verify(password.to_owned(), hash).await?
        };
        if !ok {
            return Err(forbidden());
        }
        // Said only to whoever knows the password, as Synapse does.
        if user.locked {
            return Err(Error::user_locked());
        }
        Ok(())
    }

    /// Issues an access token for a (new or reused) device; with `refreshable`, one that
    /// expires after `sessions.refreshable_access_token_lifetime_ms`, and a refresh token.
    pub async fn issue_token(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        ip: Option<&str>,
        refreshable: bool,
    ) -> Result<IssuedToken> {
        let device_id = device_id.unwrap_or_else(|| random_alpha(10).into());
        let access_token = new_access_token();
        let access_hash = token_hash(&access_token);
        let (refresh_token, expires_in) = match refreshable {
            true => (Some(new_refresh_token()), Some(self.access_token_lifetime())),
            false => (None, None),
        };
        let refresh_hash = refresh_token.as_deref().map(token_hash);
        let token = NewToken {
            hash: &access_hash,
            expires_ts: expires_in.map(|d| crate::storage::now_ms() + d.as_millis() as i64),
            refresh: refresh_hash.as_deref().map(|h| (h, self.refresh_token_expiry())),
        };
        self.db
            .create_session(
                user_id.as_str(),
                device_id.as_str(),
                display_name,
                token,
                ip,
                crate::e2ee::device_lists::device_list_update_edu,
            )
            .await?;
        Ok(IssuedToken { access_token, device_id, refresh_token, expires_in })
    }

    /// Issues an OpenID token for `user_id`: a random secret valid for [`OPENID_TOKEN_SECS`].
    pub async fn request_openid_token(&self, user_id: &UserId) -> Result<String> {
        let token = random_alpha(32);
        let expires = crate::storage::now_ms() + OPENID_TOKEN_SECS as i64 * 1000;
        self.db.insert_openid_token(&token_hash(&token), user_id.as_str(), expires).await?;
        Ok(token)
    }

    /// The local user an OpenID token proves, if it is known and unexpired.
    pub async fn openid_user(&self, token: &str) -> Result<Option<String>> {
        Ok(self.db.openid_user(&token_hash(token)).await?)
    }

    /// Resolves an access token to its session; a locked account's tokens are refused with
    /// 401 `M_USER_LOCKED`.
    pub async fn authenticate(&self, token: &str, ip: Option<&str>) -> Result<Session> {
        self.authenticate_as(token, ip, false).await
    }

    /// Resolves an access token to its session, also for a locked account (`allow_locked`): the
    /// spec lets a locked user log out.
    pub async fn authenticate_as(&self, token: &str, ip: Option<&str>, allow_locked: bool) -> Result<Session> {
        let Some(owner) = self.db.find_token(&token_hash(token)).await? else {
            return Err(Error::unknown_token(false));
        };
        if owner.expires_ts.is_some_and(|at| at <= crate::storage::now_ms()) {
            // Soft logout: the client refreshes (or logs in again) and keeps its device.
            return Err(Error::unknown_token(true));
        }
        if owner.locked && !allow_locked {
            return Err(Error::user_locked());
        }
        if let Some(ip) = ip {
            self.touch(&owner.user_id, &owner.device_id, ip).await;
        }
        Ok(Session {
            user_id: UserId::parse(owner.user_id).map_err(Error::internal)?,
            device_id: owner.device_id.into(),
            is_admin: owner.is_admin,
            appservice: None,
            suspended: owner.suspended,
        })
    }

    /// Records a device's last use, at most once per [`LAST_SEEN_INTERVAL`]: the devices list
    /// shows it, and writing it on every request would put a write on every read.
    async fn touch(&self, user_id: &str, device_id: &str, ip: &str) {
        let key = (user_id.to_owned(), device_id.to_owned());
        let now = std::time::Instant::now();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.get(&key).is_some_and(|t| now.duration_since(*t) < LAST_SEEN_INTERVAL) {
                return;
            }
            if seen.len() > 100_000 {
                seen.retain(|_, t| now.duration_since(*t) < LAST_SEEN_INTERVAL);
            }
            seen.insert(key, now);
        }
        if let Err(e) = self.db.touch_device(user_id, device_id, ip).await {
            tracing::warn!(error = %e, "could not record device last-seen");
        }
    }

    /// Changes a password; unless `keep_devices`, every other device is logged out.
    pub async fn change_password(&self, session: &Session, new_password: String, logout_devices: bool) -> Result<()> {
        let hash = self.hasher.hash(new_password).await?;
        self.db.set_password_hash(session.user_id.as_str(), &hash).await?;
        if logout_devices {
            let others: Vec<String> = self
                .db
                .list_devices(session.user_id.as_str())
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .filter(|d| d != session.device_id.as_str())
                .collect();
            self.db
                .delete_devices(session.user_id.as_str(), &others, crate::e2ee::device_lists::device_list_update_edu)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every slot taken, a hash waits its bounded time and is then refused with 429.
    #[tokio::test]
    async fn a_hash_that_waits_too_long_is_refused_with_429() {
        let hasher = PasswordHasher::with_slots(1, std::time::Duration::from_millis(200));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let busy = {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.run(move || Ok(held.recv().ok())).await })
        };
        tokio::task::yield_now().await;
        let err = hasher.hash("pw".into()).await.expect_err("no slot was free");
        assert_eq!(err.errcode, "M_LIMIT_EXCEEDED");
        assert!(err.extra["retry_after_ms"].as_u64().is_some());
        release.send(()).unwrap();
        busy.await.unwrap().unwrap();
        // The slot is free again.
        let hash = hasher.hash("pw".into()).await.unwrap();
        assert!(hasher.verify("pw".into(), hash).await.unwrap());
    }
}

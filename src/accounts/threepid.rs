//! Email addresses on accounts (`[email]`): verification sessions, the mails, and what a verified
//! address allows (registering with it, resetting the password, adding it to an account).
//!
//! `*/email/requestToken` starts (or, with a higher `send_attempt`, resends) a session for a
//! client secret and address and mails a link with a random token; the same or a lower
//! `send_attempt` returns the same `sid` without another mail. The link (or a `POST` to the
//! `submit_url` given with the `sid`) validates the session: the token is stored as SHA-256 and
//! works once, until `email.token_lifetime_ms`. A validated session is then used once: by the
//! `m.login.email.identity` stage of registration or password reset, or by `/account/3pid/add`.
//! Without `[email]` the requests answer 400 `M_THREEPID_DENIED`. SQL in `storage/threepid.rs`.

use ruma::{OwnedUserId, UserId};

use super::{Accounts, random_alpha, token_hash};
use crate::error::{Error, Result};
use crate::storage::now_ms;
use crate::storage::threepid::UserThreepid;

/// The medium of email addresses.
pub const EMAIL: &str = "email";
/// The User-Interactive Auth stage of a verified email address.
pub const EMAIL_IDENTITY: &str = "m.login.email.identity";
/// Where verification links and `submit_url` point (documented in docs/email.md).
pub const SUBMIT_TOKEN_PATH: &str = "/_matrix/client/unstable/email/submit_token";

/// What a verification session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Registering an account with the address.
    Register,
    /// Resetting the password of the account that has the address.
    Reset,
    /// Adding the address to the caller's account.
    Add,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::Reset => "reset",
            Purpose::Add => "add",
        }
    }
}

/// 400 `M_THREEPID_DENIED`: no email on this server.
fn email_off() -> Error {
    Error::new(http::StatusCode::BAD_REQUEST, "M_THREEPID_DENIED", "Email is not enabled on this server")
}

/// 400 `M_THREEPID_AUTH_FAILED`: no validated session for these credentials.
fn not_validated() -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_THREEPID_AUTH_FAILED",
        "No validated email session for these credentials (follow the link in the mail first)",
    )
}

/// An address as stored: trimmed and lower-case, and plausible (one `@`, no spaces, bounded).
pub fn normalise_email(address: &str) -> Result<String> {
    let address = address.trim().to_lowercase();
    let valid = address.len() <= 254
        && address.split('@').count() == 2
        && address.split('@').all(|part| !part.is_empty())
        && !address.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
    if !valid {
        return Err(Error::invalid_param("Invalid email address"));
    }
    Ok(address)
}

impl Accounts {
    /// Whether verification mails can be sent.
    pub fn email_enabled(&self) -> bool {
        self.mailer.is_some()
    }

    /// Starts or resends a verification; returns the session id and the `submit_url`.
    pub async fn request_email_token(
        &self,
        purpose: Purpose,
        address: &str,
        client_secret: &str,
        send_attempt: u64,
    ) -> Result<(String, String)> {
        let Some(mailer) = &self.mailer else { return Err(email_off()) };
        let base = self.config.public_baseurl.as_deref().unwrap_or_default().trim_end_matches('/').to_owned();
        let submit_url = format!("{base}{SUBMIT_TOKEN_PATH}");
        let address = normalise_email(address)?;
        let owner = self.db.threepid_owner(EMAIL, &address).await?;
        match (purpose, owner) {
            (Purpose::Register | Purpose::Add, Some(_)) => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_IN_USE",
                    "This email address is already in use",
                ));
            }
            (Purpose::Reset, None) => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    "M_THREEPID_NOT_FOUND",
                    "No account has this email address",
                ));
            }
            _ => {}
        }
        let attempt = i64::try_from(send_attempt).map_err(|_| Error::invalid_param("send_attempt is too large"))?;
        if let Some(live) = self.db.threepid_session_for(client_secret, &address, purpose.as_str()).await?
            && live.send_attempt >= attempt
        {
            // A retried request: the same session, no second mail (spec: `send_attempt`).
            return Ok((live.sid, submit_url));
        }
        self.mails_per_address.check(&address)?;
        self.db.prune_threepid_sessions().await?;
        let token = random_alpha(32);
        let expires = now_ms() + self.config.email.token_lifetime_ms as i64;
        let sid = self
            .db
            .put_threepid_session(
                &random_alpha(24),
                client_secret,
                &address,
                purpose.as_str(),
                attempt,
                &token_hash(&token),
                expires,
            )
            .await?;
        let link = format!(
            "{submit_url}?{}",
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("sid", &sid)
                .append_pair("client_secret", client_secret)
                .append_pair("token", &token)
                .finish()
        );
        let (subject, what) = match purpose {
            Purpose::Register => ("Confirm your email address", "register an account with this email address"),
            Purpose::Reset => ("Reset your password", "reset the password of your account"),
            Purpose::Add => ("Confirm your email address", "add this email address to your account"),
        };
        let server = &self.config.server_name;
        let body = format!(
            "Someone asked to {what} on the Matrix server {server}.\n\n\
             If it was you, open this link to confirm:\n\n{link}\n\n\
             If it was not you, ignore this mail.\n"
        );
        mailer.send(&address, &format!("[{server}] {subject}"), body).await?;
        tracing::info!(sid, purpose = purpose.as_str(), "verification mail sent");
        Ok((sid, submit_url))
    }

    /// The token of a verification link: validates its session if it is the current token and
    /// unexpired (it works once). Returns whether it did.
    pub async fn submit_email_token(&self, sid: &str, client_secret: &str, token: &str) -> Result<bool> {
        if !self.email_enabled() {
            return Err(email_off());
        }
        self.db.validate_threepid_session(sid, client_secret, &token_hash(token)).await
    }

    /// Whether a session is validated for the operation of a UIA (the `m.login.email.identity`
    /// stage): `register` takes a registration session, `password_reset` a reset session.
    pub(super) async fn email_stage_done(&self, sid: &str, client_secret: &str, operation: &str) -> Result<()> {
        let purpose = match operation {
            "register" => Purpose::Register,
            "password_reset" => Purpose::Reset,
            _ => return Err(Error::new(http::StatusCode::BAD_REQUEST, "M_UNRECOGNIZED", "Unsupported auth stage")),
        };
        let session = self.db.validated_threepid_session(sid, client_secret).await?;
        match session.filter(|s| s.purpose == purpose.as_str()) {
            Some(_) => Ok(()),
            None => Err(Error::new(
                http::StatusCode::UNAUTHORIZED,
                "M_UNAUTHORIZED",
                "The email address has not been validated (follow the link in the mail first)",
            )),
        }
    }

    /// Uses up a validated session of `purpose`: its address and when it was validated.
    async fn take_validated(&self, sid: &str, client_secret: &str, purpose: Purpose) -> Result<(String, i64)> {
        let session = self.db.validated_threepid_session(sid, client_secret).await?;
        let Some(session) = session.filter(|s| s.purpose == purpose.as_str()) else { return Err(not_validated()) };
        // Deleted first: of two requests racing with one session, one goes on.
        if !self.db.delete_threepid_session(&session.sid).await? {
            return Err(not_validated());
        }
        Ok((session.address, session.validated_ts.unwrap_or_else(now_ms)))
    }

    /// After a registration whose email stage was completed: the address joins the account.
    pub async fn bind_registration_email(&self, user_id: &UserId, sid: &str, client_secret: &str) -> Result<()> {
        let (address, validated) = self.take_validated(sid, client_secret, Purpose::Register).await?;
        if !self.db.add_user_threepid(user_id.as_str(), EMAIL, &address, validated).await? {
            // Taken by another registration since the mail was sent.
            tracing::warn!(%user_id, "registered, but the verified email address is now another account's");
        }
        Ok(())
    }

    /// `/account/3pid/add`: the validated address joins the account.
    pub async fn add_email(&self, user_id: &UserId, sid: &str, client_secret: &str) -> Result<()> {
        if !self.email_enabled() {
            return Err(email_off());
        }
        let (address, validated) = self.take_validated(sid, client_secret, Purpose::Add).await?;
        if !self.db.add_user_threepid(user_id.as_str(), EMAIL, &address, validated).await? {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                "M_THREEPID_IN_USE",
                "This email address is already in use",
            ));
        }
        tracing::info!(%user_id, "email address added");
        Ok(())
    }

    /// The account whose password a validated reset session may set.
    pub async fn reset_target(&self, sid: &str, client_secret: &str) -> Result<OwnedUserId> {
        let (address, _) = self.take_validated(sid, client_secret, Purpose::Reset).await?;
        let owner = self.db.threepid_owner(EMAIL, &address).await?.ok_or_else(not_validated)?;
        UserId::parse(owner).map_err(Error::internal)
    }

    /// The account's addresses.
    pub async fn threepids(&self, user_id: &UserId) -> Result<Vec<UserThreepid>> {
        self.db.user_threepids(user_id.as_str()).await
    }

    /// Removes an address from the account (nothing to do if it is not the account's).
    pub async fn delete_threepid(&self, user_id: &UserId, medium: &str, address: &str) -> Result<()> {
        let address = if medium == EMAIL { address.trim().to_lowercase() } else { address.to_owned() };
        if self.db.delete_user_threepid(user_id.as_str(), medium, &address).await? {
            tracing::info!(%user_id, medium, "third-party identifier removed");
        }
        Ok(())
    }
}

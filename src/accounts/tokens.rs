//! Refresh tokens (`POST /refresh`) and login tokens (`m.login.token`, `/login/get_token`).
//!
//! A client that asks for a refresh token at login or registration gets an access token that
//! expires (`sessions.refreshable_access_token_lifetime_ms`) and a refresh token that trades for
//! a new pair; each refresh token works until its successor is used, so a lost answer can be
//! retried. Login tokens let a logged-in device sign in another one: single use, short-lived,
//! given only after the user re-enters their password (User-Interactive Auth). Both are stored as
//! SHA-256, like access tokens (SQL in `storage/tokens.rs`).

use std::time::Duration;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use super::{Accounts, IssuedToken, new_access_token, new_refresh_token, new_secret, token_hash};
use crate::error::{Error, Result};
use crate::storage::now_ms;

impl Accounts {
    /// How long a refreshable access token lives.
    pub(super) fn access_token_lifetime(&self) -> Duration {
        Duration::from_millis(self.config.sessions.refreshable_access_token_lifetime_ms)
    }

    /// When a refresh token made now expires; `None`: never.
    pub(super) fn refresh_token_expiry(&self) -> Option<i64> {
        let lifetime = self.config.sessions.refresh_token_lifetime_ms;
        (lifetime > 0).then(|| now_ms() + lifetime as i64)
    }

    /// Trades a refresh token for a new access token and refresh token. An unknown, expired or
    /// superseded refresh token is 401 `M_UNKNOWN_TOKEN` (the client must log in again).
    pub async fn refresh(&self, refresh_token: &str) -> Result<IssuedToken> {
        let access_token = new_access_token();
        let next = new_refresh_token();
        let lifetime = self.access_token_lifetime();
        let device_id = self
            .db
            .refresh_session(
                &token_hash(refresh_token),
                &token_hash(&access_token),
                now_ms() + lifetime.as_millis() as i64,
                &token_hash(&next),
                self.refresh_token_expiry(),
            )
            .await?
            .ok_or_else(|| Error::unknown_token(false))?;
        Ok(IssuedToken {
            access_token,
            device_id: OwnedDeviceId::from(device_id),
            refresh_token: Some(next),
            expires_in: Some(lifetime),
        })
    }

    /// Whether `/login/get_token` is offered (also the `m.get_login_token` capability).
    pub fn login_tokens_enabled(&self) -> bool {
        self.config.sessions.login_via_existing_session
    }

    /// A new single-use login token for `user_id` and how long it lives.
    pub async fn issue_login_token(&self, user_id: &UserId) -> Result<(String, Duration)> {
        if !self.login_tokens_enabled() {
            return Err(Error::forbidden("Login tokens are disabled on this server"));
        }
        let token = new_secret("myll_");
        let lifetime = Duration::from_millis(self.config.sessions.login_token_lifetime_ms);
        self.db
            .insert_login_token(&token_hash(&token), user_id.as_str(), now_ms() + lifetime.as_millis() as i64)
            .await?;
        Ok((token, lifetime))
    }

    /// The user a login token was issued for; it cannot be used again. Unknown, used or expired
    /// tokens are 403 `M_FORBIDDEN`, as the spec says for `m.login.token`.
    pub async fn take_login_token(&self, token: &str) -> Result<OwnedUserId> {
        let user = self.db.take_login_token(&token_hash(token)).await?;
        let user = user.ok_or_else(|| Error::forbidden("Invalid or expired login token"))?;
        let user_id = UserId::parse(user).map_err(Error::internal)?;
        match self.db.get_user(user_id.as_str()).await? {
            Some(u) if !u.deactivated => Ok(user_id),
            _ => {
                Err(Error::new(http::StatusCode::FORBIDDEN, "M_USER_DEACTIVATED", "This account has been deactivated"))
            }
        }
    }
}

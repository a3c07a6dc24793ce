//! Account operations of the server administration API: creating accounts with chosen flags
//! and setting another user's password; locking and suspending accounts.

use ruma::UserId;

use super::{Accounts, validate_localpart};
use crate::error::{Error, Result};
pub use crate::storage::admin::{AdminUserRow, USER_ORDER_COLUMNS, UserQuery};
pub use crate::storage::registration_tokens::RegistrationToken;
pub use crate::storage::user_overrides::RateOverride;

impl Accounts {
    /// Creates an account as an admin asks (`PUT /_synapse/admin/v2/users/{userId}`): any
    /// valid local id, an optional password, the admin flag and a display name (default: the
    /// localpart, as at registration).
    pub async fn admin_create(
        &self,
        user_id: &UserId,
        password: Option<String>,
        admin: bool,
        displayname: Option<&str>,
    ) -> Result<()> {
        let localpart = user_id.localpart();
        validate_localpart(localpart, &self.config.server_name)?;
        let displayname = displayname.filter(|d| !d.is_empty()).unwrap_or(localpart);
        self.create_account(user_id, password, admin, displayname).await?;
        tracing::info!(%user_id, admin, "account created through the admin API");
        Ok(())
    }

    /// Sets a user's password; with `logout_devices` every device (and its tokens) is deleted.
    /// Returns whether devices were deleted (a device-list change).
    pub async fn admin_set_password(&self, user_id: &UserId, password: String, logout_devices: bool) -> Result<bool> {
        let hash = self.hasher.hash(password).await?;
        self.db.set_password_hash(user_id.as_str(), &hash).await?;
        if !logout_devices {
            return Ok(false);
        }
        self.delete_all_devices(user_id).await
    }
}

/// What an administrator can restrict an account to (spec v1.18 server administration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restriction {
    /// Locked: tokens refused except to log out, no login.
    Lock,
    /// Suspended: read-only.
    Suspend,
}

impl Accounts {
    /// Whether a local account is locked or suspended, as a server admin `caller` asks
    /// (`GET /_matrix/client/v1/admin/{lock,suspend}/{userId}`). The caller's right was checked
    /// before any lookup (no user enumeration); 404 for unknown or deactivated accounts, 403 for
    /// another administrator's, as the spec lists.
    pub async fn restriction(&self, caller: &UserId, target: &UserId, which: Restriction) -> Result<bool> {
        let row = self.restrictable(target).await?;
        if row.is_admin && target != caller {
            return Err(Error::forbidden("The target user is a server administrator"));
        }
        Ok(match which {
            Restriction::Lock => row.locked,
            Restriction::Suspend => row.suspended,
        })
    }

    /// Locks or suspends (or lifts that from) a local account. Administrators, the caller
    /// included, cannot be restricted: 403. The account's sessions see the change at once.
    pub async fn set_restriction(&self, target: &UserId, which: Restriction, on: bool) -> Result<()> {
        let row = self.restrictable(target).await?;
        if row.is_admin {
            return Err(Error::forbidden("Server administrators cannot be locked or suspended"));
        }
        match which {
            Restriction::Lock => self.db.admin_set_locked(target.as_str(), on).await?,
            Restriction::Suspend => self.db.admin_set_suspended(target.as_str(), on).await?,
        }
        tracing::info!(%target, ?which, on, "account restriction changed");
        Ok(())
    }

    /// 401 `M_USER_LOCKED` for a locked account (a login by any means).
    pub async fn refuse_locked(&self, user_id: &UserId) -> Result<()> {
        match self.db.get_user(user_id.as_str()).await? {
            Some(user) if user.locked => Err(Error::user_locked()),
            _ => Ok(()),
        }
    }

    async fn restrictable(&self, target: &UserId) -> Result<crate::storage::admin::AdminUserRow> {
        if target.server_name().as_str() != self.config.server_name {
            return Err(Error::invalid_param("User does not belong to the local server."));
        }
        match self.db.admin_get_user(target.as_str()).await? {
            Some(row) if !row.deactivated => Ok(row),
            _ => Err(Error::not_found("User not found.")),
        }
    }
}

/// The records the server administration API reads and changes directly: the user list,
/// flags, registration tokens and per-user overrides.
impl Accounts {
    /// A page of the user list, and how many users match (`GET /_synapse/admin/v2/users`).
    pub async fn admin_users(&self, query: &UserQuery) -> Result<(Vec<AdminUserRow>, i64)> {
        self.db.admin_list_users(query).await
    }

    /// One user as the admin API shows it.
    pub async fn admin_user(&self, user_id: &UserId) -> Result<Option<AdminUserRow>> {
        self.db.admin_get_user(user_id.as_str()).await
    }

    /// Grants or revokes server admin rights.
    pub async fn admin_set_admin(&self, user_id: &UserId, admin: bool) -> Result<()> {
        self.db.admin_set_admin(user_id.as_str(), admin).await
    }

    /// Locks or unlocks an account (its tokens are forgotten from the cache).
    pub async fn admin_set_locked(&self, user_id: &UserId, locked: bool) -> Result<()> {
        self.db.admin_set_locked(user_id.as_str(), locked).await
    }

    /// Reactivates a deactivated (or erased) account.
    pub async fn admin_reactivate(&self, user_id: &UserId) -> Result<()> {
        self.db.admin_reactivate(user_id.as_str()).await
    }

    /// Marks the account erased and removes its profile.
    pub async fn admin_erase(&self, user_id: &UserId) -> Result<()> {
        self.db.admin_erase(user_id.as_str()).await
    }

    /// Every room the user has a membership in, with that membership.
    pub async fn admin_memberships(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        self.db.admin_memberships_of(user_id.as_str()).await
    }

    /// The registration tokens, all or only the (in)valid ones.
    pub async fn registration_tokens(&self, valid: Option<bool>) -> Result<Vec<RegistrationToken>> {
        self.db.registration_tokens(valid).await
    }

    /// One registration token.
    pub async fn registration_token(&self, token: &str) -> Result<Option<RegistrationToken>> {
        self.db.registration_token(token).await
    }

    /// Adds a registration token; false when it exists already.
    pub async fn insert_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        self.db.insert_registration_token(token, uses_allowed, expiry_time).await
    }

    /// Changes the limits of a registration token (`Some(None)` clears one); false when there
    /// is no such token.
    pub async fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<Option<i64>>,
        expiry_time: Option<Option<i64>>,
    ) -> Result<bool> {
        self.db.update_registration_token(token, uses_allowed, expiry_time).await
    }

    /// Deletes a registration token; false when there is no such token.
    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        self.db.delete_registration_token(token).await
    }

    /// The user's rate-limit override, if an admin set one.
    pub async fn ratelimit_override(&self, user_id: &UserId) -> Result<Option<RateOverride>> {
        self.db.ratelimit_override(user_id.as_str()).await
    }

    /// Sets the user's rate-limit override.
    pub async fn set_ratelimit_override(&self, user_id: &UserId, rate: RateOverride) -> Result<()> {
        self.db.set_ratelimit_override(user_id.as_str(), rate).await
    }

    /// Removes the user's rate-limit override.
    pub async fn delete_ratelimit_override(&self, user_id: &UserId) -> Result<()> {
        self.db.delete_ratelimit_override(user_id.as_str()).await
    }

    /// Shadow-bans the user or lifts the ban.
    pub async fn set_shadow_banned(&self, user_id: &UserId, banned: bool) -> Result<()> {
        self.db.set_shadow_banned(user_id.as_str(), banned).await
    }
}

//! Account operations of the server administration API: creating accounts with chosen flags
//! and setting another user's password.

use ruma::UserId;

use super::{Accounts, validate_localpart};
use crate::error::{Error, Result};

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
        let hash = match password {
            Some(p) if !p.is_empty() => Some(self.hasher.hash(p).await?),
            _ => None,
        };
        let displayname = displayname.filter(|d| !d.is_empty()).unwrap_or(localpart);
        if !self.db.admin_create_user(user_id.as_str(), localpart, hash.as_deref(), admin, Some(displayname)).await? {
            return Err(Error::user_in_use());
        }
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
        let devices: Vec<String> =
            self.db.list_devices(user_id.as_str()).await?.into_iter().map(|d| d.device_id).collect();
        self.db.delete_devices(user_id.as_str(), &devices).await?;
        Ok(!devices.is_empty())
    }
}

//! A user's account record as handlers read and change it: existence, profile fields,
//! deactivation, pushers, and the per-user request rate.

use ruma::UserId;
use serde_json::Value;

use super::Accounts;
use crate::error::Result;
use crate::ratelimit::Limits;
pub use crate::storage::accounts::ProfileField;
use crate::storage::accounts::UserRow;

impl Accounts {
    /// The account of a local user (deactivated ones included).
    pub async fn user(&self, user_id: &UserId) -> Result<Option<UserRow>> {
        Ok(self.db.get_user(user_id.as_str()).await?)
    }

    /// Whether a local account exists (deactivated ones included).
    pub async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self.user(user_id).await?.is_some())
    }

    /// Sets (or clears, with `None`) one profile field of the user's account. Rooms learn of
    /// the change through `Rooms::propagate_profile`.
    pub async fn set_profile_field(&self, user_id: &UserId, field: ProfileField, value: Option<&str>) -> Result<()> {
        Ok(self.db.set_profile_field(user_id.as_str(), field, value).await?)
    }

    /// Deactivates the account: password, devices, tokens, keys and pushers go.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        Ok(self.db.deactivate_user(user_id.as_str(), crate::e2ee::device_lists::device_list_update_edu).await?)
    }

    /// Whether the database answers a trivial query (the health check).
    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    /// The user's pushers, as `GET /pushers` answers them.
    pub async fn pushers(&self, user_id: &UserId) -> Result<Value> {
        crate::push::pushers::list(&self.db, user_id).await
    }

    /// Adds, replaces or deletes a pusher of the user's device (`POST /pushers/set`).
    pub async fn set_pusher(&self, user_id: &UserId, device_id: &str, body: &Value) -> Result<()> {
        crate::push::pushers::set(&self.db, user_id, device_id, body).await
    }

    /// Takes a request from the user's rate bucket, under the user's rate override if an
    /// admin set one.
    pub async fn check_request_rate(&self, limits: &Limits, user_id: &UserId) -> Result<()> {
        limits.check_user_request(&self.db, user_id.as_str()).await
    }
}

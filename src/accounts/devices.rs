//! Devices as handlers list, rename and delete them (the caller's own, or another user's
//! through the admin API). A deletion is a device-list change: the caller tells `E2ee`.

use ruma::UserId;

use super::Accounts;
use crate::error::Result;
pub use crate::storage::accounts::DeviceRow;

impl Accounts {
    /// The user's devices.
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>> {
        Ok(self.db.list_devices(user_id.as_str()).await?)
    }

    /// One of the user's devices.
    pub async fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceRow>> {
        Ok(self.db.get_device(user_id.as_str(), device_id).await?)
    }

    /// Whether the user has a device with this id.
    pub async fn has_device(&self, user_id: &UserId, device_id: &str) -> Result<bool> {
        Ok(self.devices(user_id).await?.into_iter().any(|d| d.device_id == device_id))
    }

    /// Sets (or clears) a device's display name; false when the user has no such device.
    pub async fn rename_device(&self, user_id: &UserId, device_id: &str, name: Option<&str>) -> Result<bool> {
        Ok(self
            .db
            .rename_device(user_id.as_str(), device_id, name, crate::e2ee::device_lists::device_list_update_edu)
            .await?)
    }

    /// Deletes these devices of the user with their tokens and keys.
    pub async fn delete_devices(&self, user_id: &UserId, device_ids: &[String]) -> Result<()> {
        Ok(self
            .db
            .delete_devices(user_id.as_str(), device_ids, crate::e2ee::device_lists::device_list_update_edu)
            .await?)
    }

    /// Deletes every device of the user (logs them out everywhere); returns whether there was
    /// any.
    pub async fn delete_all_devices(&self, user_id: &UserId) -> Result<bool> {
        let devices: Vec<String> = self.devices(user_id).await?.into_iter().map(|d| d.device_id).collect();
        self.delete_devices(user_id, &devices).await?;
        Ok(!devices.is_empty())
    }
}

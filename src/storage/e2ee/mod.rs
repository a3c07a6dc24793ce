//! Tables of end-to-end encryption (migration 6): device keys, one-time and fallback keys,
//! cross-signing keys and signatures, the device-list stream, remote device lists and key
//! backup, one submodule per table group. The rules (what may be uploaded, who sees what) live
//! in `crate::e2ee`; these files are SQL only, plus the two hooks that accounts storage calls
//! inside its own transactions when a device appears or disappears ([`Db::e2e_device_added`],
//! [`Db::e2e_devices_removed`], in `device_lists`).

mod backups;
mod cross_signing;
mod device_keys;
mod device_lists;
mod one_time_keys;
mod remote_devices;

use std::collections::BTreeMap;

use super::outbox::Outbox;
use super::{Backend, Db, WriteTx, now_ms};
use crate::ids::server_of;

type SqlResult<T> = Result<T, sqlx::Error>;

/// Name of the `stream_counters` row of the device-list stream.
pub const DEVICE_LISTS_STREAM: &str = "device_lists";

/// Name of the counter that numbers key-backup versions (unique across users, never reused).
/// The counter of key backup version numbers.
pub const BACKUP_VERSION_COUNTER: &str = "room_keys_version";

/// A change of a local device as the servers sharing a room with its user learn it, read in
/// the transaction of the change.
#[derive(Debug, Clone)]
pub struct DeviceListChange<'a> {
    /// The device's user.
    pub user_id: &'a str,
    /// The device.
    pub device_id: &'a str,
    /// The change's position on the device-list stream.
    pub stream_id: i64,
    /// The position of the user's previous device change, if any.
    pub prev_id: Option<i64>,
    /// Whether the device is gone.
    pub deleted: bool,
    /// The device's display name (a device that remains).
    pub display_name: Option<String>,
    /// The device's uploaded DeviceKeys JSON as stored (a device that remains).
    pub keys: Option<String>,
    /// The user's own later signatures of the device, as `(signer key id, signature)`.
    pub own_signatures: Vec<(String, String)>,
}

/// Builds the EDU (JSON text) that tells other servers of a [`DeviceListChange`]; the engine's
/// `crate::e2ee::device_lists::device_list_update_edu`, passed down by whoever changes devices
/// (storage stores the EDU, the protocol says what it holds).
pub type DeviceListEdu = fn(&DeviceListChange<'_>) -> String;

/// A local device with its keys, as `/keys/query` and federation `user/devices` serve it.
#[derive(Debug, Clone)]
pub struct DeviceWithKeys {
    /// Device id.
    pub device_id: String,
    /// Display name from the devices table.
    pub display_name: Option<String>,
    /// The uploaded DeviceKeys JSON, if any.
    pub keys: Option<String>,
}

/// A stored signature from `/keys/signatures/upload`.
#[derive(Debug, Clone)]
pub struct SignatureRow {
    /// Device id or cross-signing public key that was signed.
    pub target_key_id: String,
    /// Who signed.
    pub signer_user_id: String,
    /// `ed25519:<key>` of the signer.
    pub signer_key_id: String,
    /// The signature (unpadded base64).
    pub signature: String,
}

/// A key-backup version.
#[derive(Debug, Clone)]
pub struct BackupVersion {
    /// The version number.
    pub version: i64,
    /// `algorithm` as uploaded.
    pub algorithm: String,
    /// `auth_data` JSON as uploaded.
    pub auth_data: String,
    /// Changes whenever the keys of the version change.
    pub etag: i64,
}

/// One backed-up session.
#[derive(Debug, Clone)]
pub struct BackupSession {
    /// Room of the session.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// `first_message_index`.
    pub first_message_index: i64,
    /// `forwarded_count`.
    pub forwarded_count: i64,
    /// `is_verified`.
    pub is_verified: bool,
    /// The KeyBackupData JSON as uploaded.
    pub json: String,
}

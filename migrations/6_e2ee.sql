-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing keys and
-- signatures, key backup and the device-list stream. See src/e2ee/mod.rs. Key objects are
-- stored as the JSON the client uploaded (signed objects must be served exactly as signed).

-- Identity keys of local devices (the signed DeviceKeys object, without `unsigned`).
CREATE TABLE e2e_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Unclaimed one-time keys; a claim deletes the row it hands out.
CREATE TABLE e2e_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
);

-- One fallback key per (device, algorithm); it stays until replaced, `used` once claimed.
CREATE TABLE e2e_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    key_json TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys (key_type master | self_signing | user_signing) of local and remote users.
CREATE TABLE e2e_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures added later with /keys/signatures/upload: by `signer_user_id`'s key
-- `signer_key_id` on `target_user_id`'s device (target_key_id = device id) or cross-signing
-- key (target_key_id = its unpadded base64 public key).
CREATE TABLE e2e_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);

-- The device-list stream: one row per change of a user's devices or keys, at a position of
-- the `device_lists` counter. device_id is NULL for a change of cross-signing keys.
CREATE TABLE device_list_changes (
    stream_id BIGINT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT,
    created_ts BIGINT NOT NULL
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, stream_id);

-- Device lists of remote users we share a room with, as learnt over federation.
CREATE TABLE e2e_remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    -- The DeviceKeys object, or NULL for a device that has not uploaded keys.
    key_json TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Per remote user: the last device-list stream_id applied and whether a resync is needed.
CREATE TABLE e2e_remote_device_lists (
    user_id TEXT PRIMARY KEY NOT NULL,
    stream_id BIGINT NOT NULL,
    stale BIGINT NOT NULL DEFAULT 0,
    updated_ts BIGINT NOT NULL
);

-- Server-side key backup (spec: "Server-side key backups"). Versions are never reused: a
-- deleted version keeps its row with deleted = 1.
CREATE TABLE e2e_room_keys_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2e_room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BIGINT NOT NULL,
    -- The whole KeyBackupData object as uploaded.
    session_json TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

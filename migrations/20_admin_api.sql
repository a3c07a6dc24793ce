-- Rooms blocked by the admin API (`PUT /_synapse/admin/v1/rooms/{roomId}/block`, or a delete
-- with `block`): local users can neither join them nor be invited. A room may be blocked before
-- this server knows it, and stays blocked after it is purged.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Room deletions (`DELETE /_synapse/admin/v2/rooms/{roomId}`), run in the background and
-- polled by `delete_id`. `status`: shutting_down, purging, complete or failed; `result` the
-- JSON of `shutdown_room` (kicked users, aliases, new room).
CREATE TABLE room_deletions (
    delete_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    result TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_deletions_room ON room_deletions (room_id, created_ts);

-- Registration tokens made with the admin API (`/_synapse/admin/v1/registration_tokens`), used
-- by the `m.login.registration_token` stage alongside `registration.tokens`. `uses_allowed` and
-- `expiry_time` (ms) NULL: unlimited. A registration completes in the request that passes the
-- stage, so a use counts as `completed` at once and `pending` stays 0.
CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY NOT NULL,
    uses_allowed BIGINT,
    pending BIGINT NOT NULL DEFAULT 0,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_time BIGINT
);

-- Media the admins quarantined (served to nobody: 404 on download and thumbnail) or protected
-- from quarantine, by mxc URI; local or remote, held here or not yet.
CREATE TABLE media_flags (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    quarantined_by TEXT,
    safe_from_quarantine BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_creator ON media (creator, created_ts);

-- Each user's server-notices room (`POST /_synapse/admin/v1/send_server_notice`).
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL
);

-- The federation sender's retry state per destination, as the admin API shows it
-- (`/_synapse/admin/v1/federation/destinations`). Times in ms; retry_interval 0: not backing off.
CREATE TABLE destinations (
    destination TEXT PRIMARY KEY NOT NULL,
    retry_last_ts BIGINT NOT NULL DEFAULT 0,
    retry_interval BIGINT NOT NULL DEFAULT 0,
    failure_ts BIGINT,
    last_successful_stream_ordering BIGINT
);

-- Transaction ids of `PUT /_synapse/admin/v1/send_server_notice/{txnId}`, per admin: a retried
-- request answers the event it sent the first time.
CREATE TABLE server_notice_txns (
    user_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, txn_id)
);

-- /sync and what it carries: filters, receipts, account data, presence, to-device messages.
-- See docs/ARCHITECTURE.md ("Sync"). Every table with a stream_id is one sync stream: rows are
-- written with a position from its own stream_counters row, so "changed since token" is a range.

-- Filters uploaded with POST /user/{userId}/filter, kept as the JSON the client sent.
CREATE TABLE sync_filters (
    user_id TEXT NOT NULL,
    filter_id TEXT NOT NULL,
    filter_json TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- The latest receipt of each (room, type, user, thread); thread_id is '' for unthreaded receipts.
CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- The receipt's data object: {"ts": ..., "thread_id": ...}.
    data_json TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream_id);

-- Global (room_id '') and per-room account data, including m.tag and m.fully_read.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_user_stream ON account_data (user_id, stream_id);

-- Presence of local and remote users; stream_id moves only when what others see changes.
CREATE TABLE presence (
    user_id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    -- Last /sync or presence PUT of a local user; drives the offline timeout.
    last_sync_ts BIGINT NOT NULL,
    currently_active BIGINT NOT NULL DEFAULT 0,
    stream_id BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_id);

-- To-device messages waiting for their device; deleted once a later /sync's `since` shows the
-- device received them.
CREATE TABLE to_device_messages (
    stream_id BIGINT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX to_device_recipient ON to_device_messages (user_id, device_id, stream_id);

-- Transaction ids of PUT /sendToDevice (and message ids of inbound m.direct_to_device), so a
-- retry, also after a restart, is not delivered twice.
CREATE TABLE to_device_txns (
    sender TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (sender, sender_device, txn_id)
);

-- Rooms whose membership of a user changed after a sync token.
CREATE INDEX room_memberships_user_stream ON room_memberships (user_id, stream_ordering);

-- Application services (issue 20).

-- The appservice that registered a user (its sender user, or a user it created with
-- m.login.application_service); NULL for ordinary users.
ALTER TABLE users ADD COLUMN appservice_id TEXT;

-- Per-appservice outbox: written in the transaction of the event (or ephemeral change) it
-- carries, drained in id order by the appservice's sender.
CREATE TABLE appservice_outbox (
    id BIGINT PRIMARY KEY NOT NULL,
    appservice_id TEXT NOT NULL,
    -- 'pdu' (payload: event id), 'edu' (an ephemeral event's JSON), 'to_device' (MSC4203 JSON),
    -- 'device_lists' (MSC3202: {"changed": [...], "left": [...]}).
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX appservice_outbox_as ON appservice_outbox (appservice_id, id);

-- The transaction in flight for each appservice, written before the first attempt and sent
-- unchanged until the appservice answers 2xx; then deleted with its outbox rows.
CREATE TABLE appservice_txns (
    appservice_id TEXT PRIMARY KEY NOT NULL,
    txn_id TEXT NOT NULL,
    body TEXT NOT NULL,
    -- JSON array of the appservice_outbox ids it carries.
    outbox_ids TEXT NOT NULL,
    -- MSC3202: the device-list stream position its `device_lists` reach, stored as the
    -- appservice's position once it is delivered.
    device_list_pos BIGINT,
    created_ts BIGINT NOT NULL
);

-- MSC3202: how far each appservice has been sent device-list changes.
CREATE TABLE appservice_positions (
    appservice_id TEXT PRIMARY KEY NOT NULL,
    device_list_pos BIGINT NOT NULL
);

-- Rooms an appservice published in the room directory for one of its networks
-- (PUT /directory/list/appservice/{networkId}/{roomId}).
CREATE TABLE appservice_room_list (
    appservice_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);

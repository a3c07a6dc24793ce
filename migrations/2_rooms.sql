-- Rooms, events and state. See docs/ARCHITECTURE.md ("Rooms") for the invariants.

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    room_version TEXT NOT NULL,
    -- The state group of the room's current (resolved) state.
    current_state_group BIGINT,
    -- Published in the room directory.
    is_public BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL
);

-- Every PDU we hold. stream_ordering is the global order of arrival (sync tokens);
-- (topological_ordering, stream_ordering) is the per-room history order (/messages tokens).
CREATE TABLE events (
    stream_ordering BIGINT PRIMARY KEY NOT NULL,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    topological_ordering BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    -- The PDU as canonical JSON (redacted in place once a redaction is accepted).
    json TEXT NOT NULL,
    -- Server-side unsigned data computed at persist time (prev_content, replaces_state).
    unsigned_json TEXT,
    -- Rejected events are kept (so they are not fetched again) but never served or used as state.
    rejected BIGINT NOT NULL DEFAULT 0,
    -- Outliers are known events outside the room's timeline (auth chains, invite state).
    outlier BIGINT NOT NULL DEFAULT 0,
    -- The state group of the state after this event.
    state_group BIGINT,
    -- Relation (m.relates_to) of this event, for /relations and /threads.
    relates_to TEXT,
    rel_type TEXT,
    redacted_by TEXT
);
CREATE INDEX events_room_topo ON events (room_id, topological_ordering, stream_ordering);
CREATE INDEX events_room_stream ON events (room_id, stream_ordering);
CREATE INDEX events_relates ON events (relates_to, rel_type);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State snapshots with bounded delta chains: a group holds its entries relative to prev_group
-- (or all entries when prev_group is NULL). Events share groups; state does not grow per event.
CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_length BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    group_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (group_id, event_type, state_key)
);

-- The current state, kept in the transaction of the event that changes it.
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_type, state_key)
);

-- Current membership of every user we know in every room, with the stream position it took effect.
CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    forgotten BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);

-- Client transaction ids: (user, device, txn) -> event, so a retried PUT returns the same event.
CREATE TABLE client_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE INDEX client_txns_event ON client_txns (event_id);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- Federation outbox: written in the transaction of the event, drained by the sender.
CREATE TABLE federation_outbox (
    id BIGINT PRIMARY KEY NOT NULL,
    destination TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX federation_outbox_dest ON federation_outbox (destination, id);

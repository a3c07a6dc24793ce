-- Counters shared by every process (stream positions and the like).
CREATE TABLE stream_counters (
    name TEXT PRIMARY KEY NOT NULL,
    value BIGINT NOT NULL
);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY NOT NULL,
    localpart TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    is_admin BIGINT NOT NULL DEFAULT 0,
    deactivated BIGINT NOT NULL DEFAULT 0,
    displayname TEXT,
    avatar_url TEXT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL REFERENCES users(user_id),
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Access tokens are stored as SHA-256 of a 256-bit random secret; the secret itself never is.
CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- User-Interactive Auth sessions; in the database so any process can continue a session.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    user_id TEXT,
    request_hash TEXT NOT NULL,
    completed TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- Refresh tokens (spec: /refresh) and login tokens (m.login.token, /login/get_token).

-- A refreshable access token expires (ms since the epoch); NULL never does.
ALTER TABLE access_tokens ADD COLUMN expires_ts BIGINT;
-- For an access token issued by /refresh: the refresh token that was used. That refresh token
-- stays usable (a client may have lost the answer) until this access token, or its successor
-- refresh token, is first used; then it is deleted and this column cleared.
ALTER TABLE access_tokens ADD COLUMN retires_refresh TEXT;

-- Stored as SHA-256 of a 256-bit random secret, like access tokens.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    -- The refresh token issued when this one was used; NULL while unused.
    next_hash TEXT,
    -- NULL: never expires.
    expires_ts BIGINT,
    created_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);
CREATE INDEX refresh_tokens_next ON refresh_tokens (next_hash);

-- Single-use, short-lived tokens to log in another device (m.login.token).
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

-- Per-user overrides of the request rate limit (`/_synapse/admin/v1/users/{userId}/override_ratelimit`):
-- `messages_per_second` tokens a second with a bucket of `burst_count`; 0 and 0 means no limit.
CREATE TABLE ratelimit_overrides (
    user_id TEXT PRIMARY KEY NOT NULL,
    messages_per_second BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Shadow-banned users (`/_synapse/admin/v1/users/{userId}/shadow_ban`): their events, invites
-- and typing are answered as if accepted but dropped (see `rooms::shadow_ban`).
CREATE TABLE shadow_banned_users (
    user_id TEXT PRIMARY KEY NOT NULL
);

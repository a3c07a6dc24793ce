-- Account moderation (spec v1.18 `/_matrix/client/v1/admin/{lock,suspend}/{userId}`, Synapse's
-- admin API `locked`): a locked account's tokens are refused with 401 `M_USER_LOCKED` (except to
-- log out); a suspended account can read but not act in rooms (403 `M_USER_SUSPENDED`).
ALTER TABLE users ADD COLUMN locked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended BIGINT NOT NULL DEFAULT 0;

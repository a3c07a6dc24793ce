-- Account moderation (spec v1.18 `/_matrix/client/v1/admin/{lock,suspend}/{userId}`, Synapse's
-- admin API `locked`): a locked account's tokens are refused with 401 `M_USER_LOCKED` (except to
-- log out); a suspended account can read but not act in rooms (403 `M_USER_SUSPENDED`).
ALTER TABLE users ADD COLUMN locked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended BIGINT NOT NULL DEFAULT 0;

-- Email verification sessions (`*/email/requestToken`, the link in the mail, then
-- `m.login.email.identity` or `/account/3pid/add`): one per (client secret, address, purpose),
-- its token stored as SHA-256, single use, with an expiry; `validated_ts` once the link was followed.
CREATE TABLE threepid_sessions (
    sid TEXT PRIMARY KEY NOT NULL,
    client_secret TEXT NOT NULL,
    address TEXT NOT NULL,
    purpose TEXT NOT NULL,
    send_attempt BIGINT NOT NULL,
    token_hash TEXT,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL,
    validated_ts BIGINT,
    UNIQUE (client_secret, address, purpose)
);

-- Third-party identifiers (email addresses) of accounts; an address belongs to one account.
CREATE TABLE user_threepids (
    medium TEXT NOT NULL,
    address TEXT NOT NULL,
    user_id TEXT NOT NULL,
    validated_ts BIGINT NOT NULL,
    added_ts BIGINT NOT NULL,
    PRIMARY KEY (medium, address)
);
CREATE INDEX user_threepids_user ON user_threepids (user_id);

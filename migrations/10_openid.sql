-- OpenID tokens (`POST /user/{userId}/openid/request_token`): short-lived proofs of a user's
-- identity that third parties check with `GET /_matrix/federation/v1/openid/userinfo`.
-- Stored as SHA-256 like access tokens.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);

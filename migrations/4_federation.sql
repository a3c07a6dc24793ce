-- Federation: remote signing keys, the outbound transaction in flight per destination, and the
-- answers to inbound transactions (deduplication on (origin, txn_id)).

-- Verify keys of remote servers, fetched from their key server and cached until valid_until_ts.
CREATE TABLE server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    -- Unpadded base64 ed25519 public key.
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    -- Set for keys listed in old_verify_keys: signatures made before this time stay valid.
    expired_ts BIGINT,
    PRIMARY KEY (server_name, key_id)
);

-- The last self-signed key response of each remote server, served again by the notary endpoints.
CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY NOT NULL,
    json TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL
);

-- The outbound transaction in flight for each destination. Written before the first attempt and
-- sent unchanged until the destination answers 200; then deleted with its outbox rows.
CREATE TABLE federation_txns_out (
    destination TEXT PRIMARY KEY NOT NULL,
    txn_id TEXT NOT NULL,
    -- The transaction body exactly as sent.
    body TEXT NOT NULL,
    -- JSON array of the federation_outbox ids it carries.
    outbox_ids TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);

-- Inbound transactions already processed and the answer given.
CREATE TABLE federation_txns_in (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

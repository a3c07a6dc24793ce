-- Simplified sliding sync (MSC4186): what each connection's client holds, per position.
--
-- A connection is (user, device, conn_id). Each response that changes what the client holds
-- gets a new position, a random number, so that a position of an earlier (reset) connection
-- never matches. At most two positions are kept per connection: the one the client last sent
-- and the one answered to it (the client may not have received that answer and send the
-- older one again). `state` is the JSON of the connection's state at that position.
CREATE TABLE sliding_sync_positions (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    pos BIGINT NOT NULL,
    state TEXT NOT NULL,
    -- Last time a request named this position (ms since the epoch); unused ones expire.
    last_used_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id, pos)
);
CREATE INDEX sliding_sync_positions_used ON sliding_sync_positions (last_used_ts);

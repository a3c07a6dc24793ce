-- Several processes on one database (docs/scaling.md). SQLite serves one process, but keeps
-- the same schema.

-- Leases: which process runs a job that must run once (the federation sender, the push
-- sender, periodic sweeps). The owner renews `expires_ts` (ms since the epoch, the database's
-- clock) every second; once it has passed, any process may take the lease over.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    owner TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

-- Who is typing where, until when (ms since the epoch). Every process mirrors it in memory,
-- kept current by the signals sent with each change; this table is what a process reads at
-- start-up and after losing its listening connection, and what expiry deletes from.
CREATE TABLE typing (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    until_ts BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Progress of `myelin import-synapse` (src/import): one row per finished unit of work (the
-- accounts, each room, the media, ...), written in the transaction of that unit, so that a rerun
-- after an interruption skips what was committed and redoes what was not. The row `complete`
-- marks a finished import.
CREATE TABLE synapse_import (
    item TEXT PRIMARY KEY NOT NULL,
    done_ts BIGINT NOT NULL
);

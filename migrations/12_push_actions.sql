-- Push actions (issue 18): what each local user's push rules said about each event, written in
-- the transaction of the event, for the events that notify them. Unread counts are these rows
-- after the user's read receipts; `/notifications` lists them; the push sender reads them
-- instead of evaluating the rules again for each pusher.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    -- '' for the main timeline, else the thread root's event id (empty sorts before every
    -- event id in any collation, so a room's thread rows are one index range).
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    event_id TEXT NOT NULL,
    -- 1 when the actions set the highlight tweak.
    highlight BIGINT NOT NULL,
    -- The actions as JSON; NULL for the plain `["notify"]`.
    actions TEXT,
    -- When the row was written (ms).
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id, stream_ordering)
);
-- `/notifications`: a user's rows newest first, and highlights alone.
CREATE INDEX event_push_actions_user ON event_push_actions (user_id, stream_ordering);
CREATE INDEX event_push_actions_highlight ON event_push_actions (user_id, stream_ordering) WHERE highlight = 1;

-- One-time keys are claimed in the order they were uploaded (spec v1.13, MSC4225), not in key
-- id order: the number of the upload that brought each key (keys held before count as first).
ALTER TABLE e2e_one_time_keys ADD COLUMN upload BIGINT NOT NULL DEFAULT 0;

-- Push actions in big rooms (issue 23, docs/performance.md): an event whose outcome most local
-- members share is stored once, as a row for `user_id = ''` (the "broadcast" row) that stands
-- for every local member joined at the event but its sender, and per-user rows only for the
-- members whose outcome differs. A message in a room of N members wrote N - 1 rows; it now
-- writes one plus the exceptions (mentions, muted members).
--
-- `notify = 0` marks a member the broadcast row does not notify (muted, or rules that say
-- nothing); such rows exist only beside a broadcast row. `sender` is the event's sender, kept on
-- broadcast rows only, so a sender never counts their own message.
ALTER TABLE event_push_actions ADD COLUMN notify BIGINT NOT NULL DEFAULT 1;
ALTER TABLE event_push_actions ADD COLUMN sender TEXT NOT NULL DEFAULT '';
-- `/notifications` reads a room's broadcast rows newest first, across its threads. The condition
-- names `sender`, which no statement compares with a bound value: SQLite (3.4x) matches a partial
-- index's condition against the bound value of a term such as `user_id = $1`, and a statement
-- that did so is prepared again at every execution (see `storage/mod.rs`).
CREATE INDEX event_push_actions_broadcast ON event_push_actions (room_id, stream_ordering) WHERE sender > '';

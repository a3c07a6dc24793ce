-- Reports of rooms, events and users by local users, kept for the server's moderators
-- (`kind`: 'room', 'event' or 'user'; the columns that do not apply are NULL).
CREATE TABLE reports (
    report_id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    reporter TEXT NOT NULL,
    room_id TEXT,
    event_id TEXT,
    target_user_id TEXT,
    reason TEXT,
    score BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE INDEX reports_received ON reports (received_ts);

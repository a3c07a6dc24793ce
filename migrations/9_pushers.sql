-- Pushers (`POST /pushers/set`): where to send push notifications of a user's events. The
-- sender tails the event stream for each one from `last_stream`, so none is pushed twice and
-- none is skipped across restarts.
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    app_display_name TEXT NOT NULL,
    device_display_name TEXT NOT NULL,
    profile_tag TEXT,
    lang TEXT NOT NULL,
    -- The pusher's `data` object as JSON (`url`, `format`, ...).
    data TEXT NOT NULL,
    -- The device whose access token created it: its pushers go when it is deleted.
    device_id TEXT,
    created_ts BIGINT NOT NULL,
    -- Every event up to this stream position has been considered for this pusher.
    last_stream BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- The media repository (src/media). File contents live on disk under `media.dir`, named by the
-- SHA-256 of their bytes; these tables hold what the bytes are and who may do what with them.

-- One row per mxc://origin/media_id: local uploads, pending async uploads (sha256 NULL until the
-- content arrives) and cached remote media (creator NULL).
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    creator TEXT,
    content_type TEXT,
    filename TEXT,
    size BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    -- Pending async uploads are forgotten after this time (milliseconds); NULL once uploaded.
    unused_expires_ts BIGINT,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_pending ON media (creator, unused_expires_ts);

-- Generated (local) or fetched (remote) thumbnails. For local media the key is the size and
-- method actually produced; for remote media it is what was requested from the origin.
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);

-- URL previews, reused for an hour so that a link posted in a busy room is fetched once.
CREATE TABLE url_previews (
    url TEXT PRIMARY KEY NOT NULL,
    preview TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL
);

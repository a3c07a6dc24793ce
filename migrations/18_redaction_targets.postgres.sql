-- Redactions by target (issue 16, defect 4): a redaction that arrived before its target is
-- applied when the target arrives, so every accepted event looks up the redactions naming it.
-- The target is `redacts` (room versions 1-10) or `content.redacts` (11 and later); the
-- expression must stay identical to the one in `Db::redactions_of` for the index to be used.
CREATE INDEX events_redaction_target ON events (
    COALESCE((json::jsonb) ->> 'redacts', (json::jsonb) -> 'content' ->> 'redacts')
) WHERE event_type = 'm.room.redaction';

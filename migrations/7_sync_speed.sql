-- Membership changes in a stream range, in any room (a woken /sync asks whether anyone joined or
-- left one of its rooms before it looks for device-list changes to report).
CREATE INDEX room_memberships_stream ON room_memberships (stream_ordering);

#!/usr/bin/env python3
"""Grows a room of a stopped Synapse (SQLite) by N messages, for timing `myelin import-synapse`
on a large room (docs/benchmarks.md).

Sending 100,000 messages through Synapse's API takes long on a small machine; this writes them
straight into its tables the way Synapse persists a local message: each event is built, hashed
and signed with Synapse's own code and the server's signing key (run it with the Python of the
Synapse virtualenv), chained on the previous one (prev_events, depth), and shares the state group
of the room's last event. Usage:

    ~/.cache/myelin-synapse-venv/bin/python bench/synapse_fixture.py \
        homeserver.db signing.key '!room:server' @sender:server 100000
"""

import json
import sqlite3
import sys
import time

from signedjson.key import read_signing_keys
from synapse.crypto.event_signing import add_hashes_and_signatures
from synapse.events import make_event_from_dict
from synapse.api.room_versions import KNOWN_ROOM_VERSIONS


def main() -> None:
    db_path, key_path, room_id, sender, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    server_name = sender.split(":", 1)[1]
    with open(key_path) as f:
        key = read_signing_keys(f)[0]
    db = sqlite3.connect(db_path)
    (version,) = db.execute("SELECT room_version FROM rooms WHERE room_id = ?", (room_id,)).fetchone()
    room_version = KNOWN_ROOM_VERSIONS[version]
    (prev,) = db.execute("SELECT event_id FROM event_forward_extremities WHERE room_id = ?", (room_id,)).fetchone()
    depth, stream = db.execute(
        "SELECT depth, (SELECT MAX(stream_ordering) FROM events) FROM events WHERE event_id = ?", (prev,)
    ).fetchone()
    (group,) = db.execute("SELECT state_group FROM event_to_state_groups WHERE event_id = ?", (prev,)).fetchone()
    auth = [
        r[0]
        for r in db.execute(
            "SELECT event_id FROM current_state_events WHERE room_id = ? AND "
            "((type = 'm.room.create') OR (type = 'm.room.power_levels') OR (type = 'm.room.member' AND state_key = ?))",
            (room_id, sender),
        )
    ]
    now = int(time.time() * 1000)
    for i in range(n):
        depth += 1
        stream += 1
        ev = {
            "auth_events": auth,
            "prev_events": [prev],
            "type": "m.room.message",
            "room_id": room_id,
            "sender": sender,
            "content": {"msgtype": "m.text", "body": f"bench {i}"},
            "depth": depth,
            "origin_server_ts": now + i,
        }
        add_hashes_and_signatures(room_version, ev, server_name, key)
        event_id = make_event_from_dict(ev, room_version).event_id
        db.execute(
            "INSERT INTO events (stream_ordering, topological_ordering, event_id, type, room_id, processed, outlier, "
            "depth, origin_server_ts, received_ts, sender, contains_url, instance_name) "
            "VALUES (?, ?, ?, 'm.room.message', ?, 1, 0, ?, ?, ?, ?, 0, 'master')",
            (stream, depth, event_id, room_id, depth, now + i, now + i, sender),
        )
        db.execute(
            "INSERT INTO event_json (event_id, room_id, internal_metadata, json, format_version) VALUES (?, ?, '{}', ?, 3)",
            (event_id, room_id, json.dumps(ev, separators=(",", ":"))),
        )
        db.execute(
            "INSERT INTO event_edges (event_id, prev_event_id, room_id, is_state) VALUES (?, ?, ?, 0)",
            (event_id, prev, room_id),
        )
        db.execute("INSERT INTO event_to_state_groups (event_id, state_group) VALUES (?, ?)", (event_id, group))
        prev = event_id
    db.execute("DELETE FROM event_forward_extremities WHERE room_id = ?", (room_id,))
    db.execute("INSERT INTO event_forward_extremities (event_id, room_id) VALUES (?, ?)", (prev, room_id))
    db.commit()
    print(f"added {n} events to {room_id}; last {prev}")


if __name__ == "__main__":
    main()

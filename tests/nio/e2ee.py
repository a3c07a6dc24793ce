#!/usr/bin/env python3
"""A real end-to-end encrypted round trip with matrix-nio's Olm/Megolm (vodozemac) against a
running Myelin, driven by tests/e2ee.rs.

Usage: e2ee.py HOMESERVER_URL [HOMESERVER_URL_2]

Two users with their own crypto stores: Alice (on the first server) creates a room with
m.room.encryption and invites Bob (on the second server if given, else the first); Bob joins.
Both upload device and one-time keys; Alice sends an encrypted message, which makes nio query
Bob's device keys, claim one of his one-time keys, open an Olm session and send him the Megolm
room key as an encrypted to-device message. Bob's client must decrypt the message; then Bob
answers and Alice must decrypt that. Nothing here builds crypto JSON by hand: every key,
signature and ciphertext comes from nio.

Output: one JSON object per line on stdout (steps), failures on stderr with a non-zero exit.
"""

import asyncio
import json
import secrets
import sys
import tempfile
import time
import traceback

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysUploadResponse,
    MegolmEvent,
    RegisterResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from nio.crypto import ENCRYPTION_ENABLED

PASSWORD = "nio-e2ee-password"
DEADLINE_S = 60


class Failure(Exception):
    """A check failed; the message says which and what the server answered."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def expect(response, kind, step):
    check(isinstance(response, kind), f"{step}: expected {kind.__name__}, got {response!r}")
    return response


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


async def maintain(client):
    """What nio's sync_forever does between syncs: keep keys uploaded, queried and claimed."""
    if client.should_upload_keys:
        expect(await client.keys_upload(), KeysUploadResponse, f"keys_upload {client.user_id}")
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()


async def sync(client, timeout_ms=0):
    resp = expect(await client.sync(timeout=timeout_ms, full_state=client.next_batch is None), SyncResponse,
                  f"sync {client.user_id}")
    await maintain(client)
    return resp


async def wait_for_plaintext(client, room_id, body, step):
    """Syncs until `body` arrives in `room_id` decrypted; fails if it only ever arrives encrypted."""
    undecryptable = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        resp = await sync(client, timeout_ms=2000)
        room = resp.rooms.join.get(room_id)
        for event in room.timeline.events if room else []:
            if isinstance(event, RoomMessageText) and event.body == body:
                check(event.decrypted, f"{step}: message arrived unencrypted")
                return event
            if isinstance(event, MegolmEvent):
                undecryptable.append(event.event_id)
    raise Failure(f"{step}: no decrypted message within {DEADLINE_S} s (undecryptable: {undecryptable})")


async def run(url_a, url_b):
    if not ENCRYPTION_ENABLED:
        raise Failure("matrix-nio was installed without its e2e extra (vodozemac)")
    store = tempfile.mkdtemp(prefix="nio-e2ee-")
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    names = ["e2e_a_" + secrets.token_hex(3), "e2e_b_" + secrets.token_hex(3)]
    alice = AsyncClient(url_a, names[0], store_path=store, config=config)
    bob = AsyncClient(url_b, names[1], store_path=store, config=config)
    try:
        for client, name in ((alice, names[0]), (bob, names[1])):
            expect(await client.register(name, PASSWORD, device_name=f"{name} nio"), RegisterResponse,
                   f"register {name}")
            check(client.olm is not None, f"{name}: nio did not load its crypto store")
            check(client.should_upload_keys, f"{name}: nio does not want to upload keys")
            up = expect(await client.keys_upload(), KeysUploadResponse, f"keys_upload {name}")
            emit("keys_upload", user_id=client.user_id, device_id=client.device_id,
                 ed25519=client.olm.account.identity_keys["ed25519"], counts=up.signed_curve25519_count)

        created = expect(
            await alice.room_create(
                name="encrypted",
                initial_state=[{
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }],
            ),
            RoomCreateResponse,
            "room_create",
        )
        room_id = created.room_id
        # Invited separately: an invite of a remote user is its own federation request.
        expect(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse, "invite")
        await sync(bob)
        expect(await bob.join(room_id), JoinResponse, "join")
        await sync(alice)
        await sync(bob)
        check(alice.rooms[room_id].encrypted, "Alice's client does not see the room as encrypted")
        check(bob.rooms[room_id].encrypted, "Bob's client does not see the room as encrypted")
        emit("room", room_id=room_id, access_token=alice.access_token)

        # Alice -> Bob.
        secret = "the owl flies at midnight " + secrets.token_hex(4)
        sent = expect(
            await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": secret},
                                  ignore_unverified_devices=True),
            RoomSendResponse,
            "room_send alice",
        )
        known = [d.device_id for d in alice.device_store.active_user_devices(bob.user_id)]
        check(bob.device_id in known, f"Alice's client does not know Bob's device {bob.device_id}: {known}")
        emit("sent", event_id=sent.event_id, sender=alice.user_id)
        got = await wait_for_plaintext(bob, room_id, secret, "bob decrypts")
        check(got.event_id == sent.event_id, f"Bob decrypted {got.event_id}, Alice sent {sent.event_id}")
        emit("decrypted", event_id=got.event_id, by=bob.user_id, body=got.body)

        # Bob -> Alice.
        reply = "the fox replies " + secrets.token_hex(4)
        sent2 = expect(
            await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": reply},
                                ignore_unverified_devices=True),
            RoomSendResponse,
            "room_send bob",
        )
        emit("sent", event_id=sent2.event_id, sender=bob.user_id)
        got2 = await wait_for_plaintext(alice, room_id, reply, "alice decrypts")
        emit("decrypted", event_id=got2.event_id, by=alice.user_id, body=got2.body)
    finally:
        await alice.close()
        await bob.close()


async def main(argv):
    if len(argv) < 2:
        print(f"usage: {argv[0]} HOMESERVER_URL [HOMESERVER_URL_2]", file=sys.stderr)
        return 2
    url_a = argv[1]
    url_b = argv[2] if len(argv) > 2 else url_a
    try:
        await run(url_a, url_b)
    except Failure as e:
        print(f"e2ee: FAILED: {e}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))

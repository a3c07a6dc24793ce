#!/usr/bin/env python3
"""matrix-nio scenarios against a running Myelin, driven by tests/nio.rs.

Usage: scenarios.py HOMESERVER_URL SCENARIO [ARG...]

Each scenario is an async function registered with @scenario. It talks to the server only
through nio's AsyncClient, checks what a real client would rely on, and reports each step as
one JSON object per line on stdout, so the Rust test can cross-check the results over HTTP.
Any failed check or unexpected response exits non-zero with the reason on stderr.

To add a scenario (rooms, sync, ...): write `@scenario async def name(url, *args)` below and
call it from a test in tests/nio.rs with run_nio_script("scenarios.py", &[url, "name"]).
"""

import asyncio
import json
import secrets
import sys
import time
import traceback

from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    LogoutResponse,
    MessageDirection,
    RegisterResponse,
    RoomCreateResponse,
    RoomMessagesResponse,
    RoomSendResponse,
    SyncResponse,
    WhoamiResponse,
)
from nio.events.ephemeral import TypingNoticeEvent

PASSWORD = "nio-smoke-password"

SCENARIOS = {}


class Failure(Exception):
    """A check failed; the message says which and what the server answered."""


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def check(condition, message):
    if not condition:
        raise Failure(message)


def expect(response, kind, step):
    """Fails unless nio parsed the server's answer as `kind` (nio maps errors to *Error types)."""
    check(isinstance(response, kind), f"{step}: expected {kind.__name__}, got {response!r}")
    return response


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}), flush=True)


@scenario
async def accounts(url):
    """Register (nio sends m.login.dummy in the first request), whoami, log in on a second
    device, whoami there, log the first device out."""
    localpart = "nio_" + secrets.token_hex(4)
    first = AsyncClient(url, localpart)
    second = AsyncClient(url, localpart)
    try:
        reg = expect(
            await first.register(localpart, PASSWORD, device_name="nio register"),
            RegisterResponse,
            "register",
        )
        check(reg.user_id.startswith(f"@{localpart}:"), f"register: user_id {reg.user_id}")
        check(bool(reg.access_token), "register: no access_token")
        emit("register", user_id=reg.user_id, device_id=reg.device_id)

        who = expect(await first.whoami(), WhoamiResponse, "whoami")
        check(who.user_id == reg.user_id, f"whoami: {who.user_id} != {reg.user_id}")
        check(who.device_id == reg.device_id, f"whoami: {who.device_id} != {reg.device_id}")
        emit("whoami", user_id=who.user_id, device_id=who.device_id)

        # nio's login uses the user given to AsyncClient as an m.id.user identifier.
        login = expect(
            await second.login(PASSWORD, device_name="nio login"), LoginResponse, "login"
        )
        check(login.user_id == reg.user_id, f"login: {login.user_id} != {reg.user_id}")
        check(login.device_id != reg.device_id, "login: reused the register device")
        emit(
            "login",
            user_id=login.user_id,
            device_id=login.device_id,
            access_token=login.access_token,
        )

        who = expect(await second.whoami(), WhoamiResponse, "whoami (second device)")
        check(who.device_id == login.device_id, f"whoami: {who.device_id} != {login.device_id}")

        expect(await first.logout(), LogoutResponse, "logout")
        # The logged-out token must be refused; the other device's must not.
        first.access_token = reg.access_token
        gone = await first.whoami()
        check(not isinstance(gone, WhoamiResponse), f"whoami after logout: {gone!r}")
        expect(await second.whoami(), WhoamiResponse, "whoami after other device's logout")
        emit("logout", device_id=reg.device_id)
    finally:
        await first.close()
        await second.close()


@scenario
async def rooms(url):
    """Two clients: Alice creates a room, Bob joins it, they take turns sending messages, and both
    read the history back with /messages and see the same events in the same order."""
    names = ["nio_a_" + secrets.token_hex(3), "nio_b_" + secrets.token_hex(3)]
    clients = [AsyncClient(url, n) for n in names]
    try:
        for c, n in zip(clients, names):
            expect(await c.register(n, PASSWORD), RegisterResponse, f"register {n}")
        alice, bob = clients
        created = expect(
            await alice.room_create(name="nio room", invite=[bob.user_id]), RoomCreateResponse, "room_create"
        )
        room_id = created.room_id
        emit("room_create", room_id=room_id)
        expect(await bob.join(room_id), JoinResponse, "join")
        sent = []
        for i in range(6):
            sender = clients[i % 2]
            resp = expect(
                await sender.room_send(
                    room_id, "m.room.message", {"msgtype": "m.text", "body": f"message {i}"}
                ),
                RoomSendResponse,
                f"room_send {i}",
            )
            sent.append(resp.event_id)
        emit("sent", event_ids=sent)
        seen = []
        for c in clients:
            page = expect(
                await c.room_messages(room_id, "", direction=MessageDirection.back, limit=50),
                RoomMessagesResponse,
                f"room_messages {c.user_id}",
            )
            ids = [e.event_id for e in reversed(page.chunk) if getattr(e, "body", None) is not None]
            seen.append(ids)
        check(seen[0] == seen[1], f"clients disagree on order: {seen}")
        check(seen[0] == sent, f"history order {seen[0]} differs from send order {sent}")
        emit("history", event_ids=seen[0])
    finally:
        for c in clients:
            await c.close()


@scenario
async def sync(url):
    """Bob follows a room through long-poll /sync while Alice writes: the invite, the joined room
    with its state, a message that ends a waiting long-poll, typing, and an empty answer at the
    timeout. nio validates every sync response against its schema."""
    names = ["nio_s_a_" + secrets.token_hex(3), "nio_s_b_" + secrets.token_hex(3)]
    clients = [AsyncClient(url, n) for n in names]
    try:
        for c, n in zip(clients, names):
            expect(await c.register(n, PASSWORD), RegisterResponse, f"register {n}")
        alice, bob = clients
        room_id = expect(
            await alice.room_create(name="nio sync", invite=[bob.user_id]), RoomCreateResponse, "room_create"
        ).room_id

        first = expect(await bob.sync(timeout=0, full_state=True), SyncResponse, "initial sync")
        check(room_id in first.rooms.invite, f"invite missing from initial sync: {first.rooms.invite}")
        expect(await bob.join(room_id), JoinResponse, "join")
        joined = expect(await bob.sync(timeout=10000), SyncResponse, "sync after join")
        check(room_id in joined.rooms.join, f"joined room missing: {joined.rooms}")
        check(bob.rooms[room_id].name == "nio sync", f"room name from state: {bob.rooms[room_id].name}")
        check(alice.user_id in bob.rooms[room_id].users, "alice missing from the member list")
        emit("joined", room_id=room_id, next_batch=bob.next_batch)

        # A long-poll that a message from Alice ends.
        start = time.monotonic()
        poll = asyncio.create_task(bob.sync(timeout=30000))
        await asyncio.sleep(1.0)
        check(not poll.done(), f"the long-poll returned before anything happened: {poll}")
        sent_at = time.monotonic()
        sent = expect(
            await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "wake up, bob"}),
            RoomSendResponse,
            "room_send",
        )
        # Presence or the membership may come first; keep syncing until the message arrives.
        got = None
        resp = expect(await poll, SyncResponse, "long-poll")
        while got is None:
            events = resp.rooms.join.get(room_id)
            for e in events.timeline.events if events else []:
                if getattr(e, "body", None) == "wake up, bob":
                    got = e
            if got is None:
                check(time.monotonic() - start < 30, "the message did not arrive")
                resp = expect(await bob.sync(timeout=30000), SyncResponse, "long-poll (again)")
        wake_ms = (time.monotonic() - sent_at) * 1000
        check(got.event_id == sent.event_id, f"{got.event_id} != {sent.event_id}")
        check(wake_ms < 10000, f"the long-poll took {wake_ms:.0f} ms after the send")
        emit("message", event_id=got.event_id, wake_ms=round(wake_ms, 1), access_token=bob.access_token)

        # Typing reaches Bob's long-poll as an ephemeral event.
        await alice.room_typing(room_id, True, timeout=10000)
        typing = None
        while typing is None:
            resp = expect(await bob.sync(timeout=10000), SyncResponse, "sync for typing")
            room = resp.rooms.join.get(room_id)
            for e in room.ephemeral if room else []:
                if isinstance(e, TypingNoticeEvent):
                    typing = e
            check(time.monotonic() - start < 60, "no typing notification")
        check(typing.users == [alice.user_id], f"typing users {typing.users}")
        emit("typing", users=typing.users)

        # Nothing more happens: the long-poll ends empty at its timeout.
        await alice.room_typing(room_id, False)
        expect(await bob.sync(timeout=10000), SyncResponse, "sync for typing stop")
        t0 = time.monotonic()
        quiet = expect(await bob.sync(timeout=1500), SyncResponse, "quiet sync")
        waited = time.monotonic() - t0
        check(waited >= 1.4, f"returned after {waited:.2f} s, before the timeout")
        check(not quiet.rooms.join, f"a quiet long-poll returned room updates: {quiet.rooms.join}")
        emit("timeout", waited_ms=round(waited * 1000, 1))
    finally:
        for c in clients:
            await c.close()


async def main(argv):
    if len(argv) < 3 or argv[2] not in SCENARIOS:
        print(f"usage: {argv[0]} HOMESERVER_URL {{{'|'.join(SCENARIOS)}}} [ARG...]", file=sys.stderr)
        return 2
    url, name, args = argv[1], argv[2], argv[3:]
    try:
        await SCENARIOS[name](url, *args)
    except Failure as e:
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv)))

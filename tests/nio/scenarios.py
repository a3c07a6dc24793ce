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
    WhoamiResponse,
)

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

"""A real appservice framework, mautrix-python's `mautrix.appservice`, against Myelin.

Run by tests/appservice.rs as
    appservice_mautrix.py HS_URL DOMAIN AS_TOKEN HS_TOKEN SENDER_LOCALPART AS_ID PORT ALICE_TOKEN ROOM_ID STATE_DIR
Prints one JSON object per line ({"step": ...}); exits non-zero on failure.
"""

import asyncio
import json
import os
import sys
import time

import logging

import aiohttp
from mautrix.appservice import AppService
from mautrix.appservice.state_store.file import FileASStateStore
from mautrix.types import MessageType, TextMessageEventContent

(hs_url, domain, as_token, hs_token, sender, as_id, port, alice_token, room_id, state_dir) = sys.argv[1:11]
port = int(port)
logging.basicConfig(level=logging.INFO, stream=sys.stderr)


def out(step, **kw):
    print(json.dumps({"step": step, **kw}), flush=True)


async def wait_for(pred, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def main():
    seen = []  # (ephemeral, event)
    appservice = AppService(
        server=hs_url,
        domain=domain,
        as_token=as_token,
        hs_token=hs_token,
        bot_localpart=sender,
        id=as_id,
        state_store=FileASStateStore(path=os.path.join(state_dir, "mx-state.json"), binary=False),
        ephemeral_events=True,
    )

    async def query_user(user_id):
        # A bridge creates its puppets lazily, when the homeserver asks.
        await appservice.intent.user(user_id).ensure_registered()
        return {"registered": True}

    appservice.query_user = query_user

    @appservice.matrix_event_handler
    async def handle(evt):
        seen.append(evt)

    await appservice.start(host="127.0.0.1", port=port)
    try:
        duration = await appservice.ping_self("mautrix-ping")
        out("ping", duration_ms=duration)

        puppet_id = f"@bridge_puppet:{domain}"
        puppet = appservice.intent.user(puppet_id)
        await puppet.ensure_registered()
        whoami = await puppet.whoami()
        out("registered", user_id=puppet_id, whoami=str(whoami.user_id))

        headers = {"Authorization": f"Bearer {alice_token}"}
        async with aiohttp.ClientSession(headers=headers) as alice:

            async def alice_call(method, path, body=None):
                async with alice.request(method, hs_url + path, json=body) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise RuntimeError(f"{method} {path} -> {resp.status} {text}")
                    return json.loads(text)

            await alice_call("POST", f"/_matrix/client/v3/rooms/{room_id}/invite", {"user_id": puppet_id})
            await wait_for(
                lambda: any(
                    str(e.type) == "m.room.member" and e.state_key == puppet_id and str(e.content.membership) == "invite"
                    for e in seen
                ),
                "the invite",
            )
            out("invited")
            await puppet.join_room(room_id)
            for i in range(5):
                await alice_call(
                    "PUT",
                    f"/_matrix/client/v3/rooms/{room_id}/send/m.room.message/mautrix{i}",
                    {"msgtype": "m.text", "body": f"hello bridge {i}"},
                )
            own = await puppet.send_message(
                room_id, TextMessageEventContent(msgtype=MessageType.TEXT, body="from the bridge"), timestamp=1234567890000
            )
            bodies = lambda: [
                e.content.body
                for e in seen
                if str(e.type) == "m.room.message" and str(e.content.body).startswith("hello bridge")
            ]
            await wait_for(lambda: len(bodies()) >= 5, "alice's five messages")
            await wait_for(lambda: any(e.event_id == own for e in seen if hasattr(e, "event_id")), "the bridge's own message")
            mine = next(e for e in seen if getattr(e, "event_id", None) == own)
            out("events", bodies=bodies(), own_event_id=str(own), own_ts=mine.timestamp)

            # A profile lookup of a puppet that does not exist yet makes Myelin ask the appservice.
            lazy = f"@bridge_lazy:{domain}"
            async with alice.get(hs_url + f"/_matrix/client/v3/profile/{lazy}") as resp:
                out("lazy_profile", status=resp.status, body=await resp.json())
    finally:
        await appservice.stop()


asyncio.run(main())

"""A minimal identity server (identity service API v2) for the third-party invite tests.

Serves what a homeserver calls when a user invites by email address: `hash_details`, `lookup`
(sha256 with a pepper, or `none`), `store-invite` (answers a token and a real ed25519 public
key, PyNaCl) and `pubkey/isvalid`. The test drives it through `/_test/...`:

- `POST /_test/bind {"address", "mxid", "hs"}`: binds the address to the user and, as Sydent
  does, calls `PUT {hs}/_matrix/federation/v1/3pid/onbind` with the pending invitations of that
  address, each `signed` block (`mxid`, `sender`, `token`) signed with the server's key; answers
  `{"status", "body"}` of the homeserver's answer.
- `POST /_test/onbind {"hs", "body"}`: sends an arbitrary onbind body (made with `/_test/sign`).
- `POST /_test/sign {"object"}`: the object signed with the server's key.
- `GET /_test/invites`: every store-invite request received (with its Authorization header).
- `POST /_test/config {"refuse", "revoked"}`: refuse every request with 500 / call the key revoked.

Usage: identity_server.py PORT ACCESS_TOKEN. Prints "ready" when listening.
"""

import base64
import hashlib
import json
import secrets
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import nacl.signing

PORT = int(sys.argv[1])
ACCESS_TOKEN = sys.argv[2]
NAME = f"127.0.0.1:{PORT}"
KEY = nacl.signing.SigningKey.generate()
PUBLIC = base64.b64encode(bytes(KEY.verify_key)).decode().rstrip("=")
PEPPER = "matrixrocks"

lock = threading.Lock()
bindings = {}  # "address medium" -> mxid
pending = {}  # address -> [invite]
received = []  # store-invite bodies
config = {"refuse": False, "revoked": False}


def canonical(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def sign(obj):
    obj = dict(obj)
    obj.pop("signatures", None)
    obj.pop("unsigned", None)
    sig = KEY.sign(canonical(obj)).signature
    obj["signatures"] = {NAME: {"ed25519:0": base64.b64encode(sig).decode().rstrip("=")}}
    return obj


def sha256_key(address, medium):
    digest = hashlib.sha256(f"{address} {medium} {PEPPER}".encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def put_json(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            return res.status, json.loads(res.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def authorised(self):
        if self.headers.get("Authorization") == f"Bearer {ACCESS_TOKEN}":
            return True
        self.answer(401, {"errcode": "M_UNAUTHORIZED", "error": "Unrecognised access token"})
        return False

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/_test/invites":
            with lock:
                return self.answer(200, {"invites": received})
        if config["refuse"]:
            return self.answer(500, {"errcode": "M_UNKNOWN", "error": "refusing (test)"})
        if url.path == "/_matrix/identity/v2/hash_details":
            if self.authorised():
                self.answer(200, {"algorithms": ["none", "sha256"], "lookup_pepper": PEPPER})
        elif url.path == "/_matrix/identity/v2/pubkey/isvalid":
            key = urllib.parse.parse_qs(url.query).get("public_key", [""])[0]
            self.answer(200, {"valid": key == PUBLIC and not config["revoked"]})
        else:
            self.answer(404, {"errcode": "M_UNRECOGNIZED", "error": "unknown endpoint"})

    def do_POST(self):
        body = self.body()
        if self.path == "/_test/config":
            config.update(body)
            return self.answer(200, config)
        if self.path == "/_test/sign":
            return self.answer(200, sign(body["object"]))
        if self.path == "/_test/bind":
            address, mxid = body["address"], body["mxid"]
            with lock:
                bindings[f"{address} email"] = mxid
                invites = pending.pop(address, [])
            signed_invites = [
                {
                    "medium": "email",
                    "address": address,
                    "mxid": mxid,
                    "room_id": i["room_id"],
                    "sender": i["sender"],
                    "signed": sign({"mxid": mxid, "sender": i["sender"], "token": i["token"]}),
                }
                for i in invites
            ]
            onbind = {"medium": "email", "address": address, "mxid": mxid, "invites": signed_invites}
            status, answer = put_json(body["hs"] + "/_matrix/federation/v1/3pid/onbind", onbind)
            return self.answer(200, {"status": status, "body": answer, "sent": onbind})
        if self.path == "/_test/onbind":
            status, answer = put_json(body["hs"] + "/_matrix/federation/v1/3pid/onbind", body["body"])
            return self.answer(200, {"status": status, "body": answer})
        if config["refuse"]:
            return self.answer(500, {"errcode": "M_UNKNOWN", "error": "refusing (test)"})
        if not self.authorised():
            return
        if self.path == "/_matrix/identity/v2/lookup":
            with lock:
                if body.get("algorithm") == "sha256" and body.get("pepper") == PEPPER:
                    table = {sha256_key(*k.split(" ")): v for k, v in bindings.items()}
                elif body.get("algorithm") == "none":
                    table = dict(bindings)
                else:
                    return self.answer(400, {"errcode": "M_INVALID_PEPPER", "error": "bad pepper"})
            mappings = {a: table[a] for a in body.get("addresses", []) if a in table}
            self.answer(200, {"mappings": mappings})
        elif self.path == "/_matrix/identity/v2/store-invite":
            token = secrets.token_urlsafe(16)
            with lock:
                received.append({"body": body, "authorization": self.headers.get("Authorization")})
                pending.setdefault(body["address"], []).append(
                    {"room_id": body["room_id"], "sender": body["sender"], "token": token}
                )
            local, _, domain = body["address"].partition("@")
            self.answer(
                200,
                {
                    "token": token,
                    "public_keys": [
                        {
                            "public_key": PUBLIC,
                            "key_validity_url": f"http://{NAME}/_matrix/identity/v2/pubkey/isvalid",
                        }
                    ],
                    "display_name": f"{local[:3]}...@{domain}",
                },
            )
        else:
            self.answer(404, {"errcode": "M_UNRECOGNIZED", "error": "unknown endpoint"})


server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
print("ready", flush=True)
server.serve_forever()

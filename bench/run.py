#!/usr/bin/env python3
"""Runs the myelin-bench scenarios against Myelin and Synapse in one run and writes docs/benchmarks.md.

    python3 bench/run.py                 # full: Myelin + Synapse, SQLite + PostgreSQL, every scenario
    python3 bench/run.py --smoke         # CI: Myelin on SQLite only (big_room_join between two Myelins),
                                         # tiny sizes, fails on any error

Synapse (1.163, or the newest 1.x on PyPI) is installed into $HOME/.cache/myelin-bench/synapse-venv.
PostgreSQL is expected at postgres://root@127.0.0.1:5432 with trust auth; each run creates fresh
databases. See docs/benchmarks.md for what every scenario measures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("MYELINBENCH_CACHE", Path.home() / ".cache" / "myelin-bench"))
VENV = CACHE / "synapse-venv"
SYNAPSE_SPEC = "matrix-synapse==1.163.*"
PG = dict(host="127.0.0.1", port=5432, user="root")
# Prefix of the PostgreSQL databases a run creates (runs of several checkouts on one machine).
PG_PREFIX = os.environ.get("MYELINBENCH_PG_PREFIX", "")

# Scenarios that run on a pair of servers (FED_PAIRS), not on each server of the run.
PAIR_SCENARIOS = ("federation", "big_room_join")

ALL_SERVERS = ["myelin-sqlite", "myelin-postgres", "synapse-sqlite", "synapse-postgres"]
SCENARIOS = ["send_latency", "send_throughput", "fanout", "idle_syncers", "history", "join_storm", "federation",
             "big_room_join", "sliding_sync", "big_account", "storage", "at_rest", "deep_history"]
# deep_history grows one room to 10,000 and then 1,000,000 messages through the client API. At
# Synapse's ~100 messages/s the second size would take about three hours to build, so Synapse is
# measured at the first size only (its figures there are the reference for the flat-cost target).
SYNAPSE_DEEP_HISTORY = ["--deep-history-messages", "10000"]


def log(*a):
    print("[run]", *a, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    log("$", " ".join(str(c) for c in cmd))
    return subprocess.run(cmd, check=True, **kw)


_handed_out: set[int] = set()


def free_port(preferred: int) -> int:
    """A port free now and not handed out before in this run: servers are prepared before any
    of them listens, so two could otherwise get the same port."""
    for port in [preferred] + list(range(preferred + 10, preferred + 500, 7)):
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                _handed_out.add(port)
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------------------------------------------
# installation and build


def ensure_synapse() -> Path:
    py = VENV / "bin" / "python"
    if py.exists():
        r = subprocess.run([py, "-c", "import synapse, psycopg2; print(synapse.__version__)"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.startswith("1."):
            return py
    CACHE.mkdir(parents=True, exist_ok=True)
    sh([sys.executable, "-m", "venv", str(VENV)])
    sh([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    try:
        sh([py, "-m", "pip", "install", "-q", SYNAPSE_SPEC, "psycopg2-binary"])
    except subprocess.CalledProcessError:
        log(f"{SYNAPSE_SPEC} not installable; taking the newest 1.x")
        sh([py, "-m", "pip", "install", "-q", "matrix-synapse>=1,<2", "psycopg2-binary"])
    return py


def synapse_version(py: Path) -> str:
    r = subprocess.run([py, "-c", "import synapse; print(synapse.__version__)"], capture_output=True, text=True)
    return r.stdout.strip()


def target_dir() -> Path:
    """Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and .cargo/config)."""
    r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return Path(json.loads(r.stdout)["target_directory"])


def build(profile: str) -> tuple[Path, Path]:
    cmd = ["cargo", "build", "-p", "myelin", "-p", "myelin-bench"]
    if profile == "release":
        cmd.insert(2, "--release")
    sh(cmd, cwd=REPO)
    out = target_dir() / ("release" if profile == "release" else "debug")
    return out / "myelin", out / "myelin-bench"


# ------------------------------------------------------------------------------------------------
# PostgreSQL


def pg_env():
    env = dict(os.environ)
    env.update(PGHOST=PG["host"], PGPORT=str(PG["port"]), PGUSER=PG["user"])
    return env


def fresh_pg_db(name: str):
    env = pg_env()
    subprocess.run(["dropdb", "--if-exists", name], env=env, check=True)
    subprocess.run(["createdb", "-O", PG["user"], "-E", "UTF8", "--lc-collate=C", "--lc-ctype=C",
                    "-T", "template0", name], env=env, check=True)


def pg_version() -> str:
    try:
        r = subprocess.run(["psql", "-tAc", "show server_version", "postgres"], env=pg_env(),
                           capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or "unavailable"
    except Exception:  # noqa: BLE001
        return "unavailable"


# ------------------------------------------------------------------------------------------------
# servers


class Server:
    def __init__(self, name: str, workdir: Path, port: int, fed_port: int | None = None,
                 tls: dict | None = None):
        self.name = name
        self.dir = workdir / name
        self.port = port
        # With a federation port the server also listens there with TLS, and is named after it.
        self.fed_port = fed_port
        # A port in front of fed_port (a counting relay) that peers reach it at: the name's port.
        self.public_fed_port: int | None = None
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.logfile = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def server_name(self):
        return f"127.0.0.1:{self.public_fed_port or self.fed_port or self.port}"

    def federation_probe(self) -> str | None:
        """None if the server answers GET /_matrix/federation/v1/version on its TLS port, else why not."""
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://127.0.0.1:{self.public_fed_port or self.fed_port}/_matrix/federation/v1/version"
        try:
            with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
                return None if r.status == 200 else f"{url} answered {r.status}"
        except urllib.error.HTTPError as e:
            return f"{self.name} does not serve the federation API ({url} answered {e.code})"
        except Exception as e:  # noqa: BLE001
            return f"{self.name} does not serve the federation API ({url}: {e})"

    def prepare(self):
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)

    def command(self) -> list:
        raise NotImplementedError

    def db_url(self) -> str | None:
        """The database, for myelin-bench's `storage` (a SQLite file or a PostgreSQL URL)."""
        return None

    def start(self, timeout=120):
        self.logfile = open(self.dir / "server.log", "wb")
        log(f"starting {self.name} on {self.url}")
        # Myelin reads MYELIN_<KEY> variables as configuration: the servers get none of the caller's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MYELIN_")}
        self.proc = subprocess.Popen(self.command(), cwd=self.dir, stdout=self.logfile, env=env,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.dir}/server.log")
            try:
                with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=2) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not answer within {timeout} s; see {self.dir}/server.log")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.logfile:
            self.logfile.close()


class Myelin(Server):
    def __init__(self, name, workdir, port, binary: Path, db: str, **kw):
        super().__init__(name, workdir, port, **kw)
        self.binary = binary
        self.db = db

    def prepare(self):
        super().prepare()
        if self.db == "postgres":
            dbname = PG_PREFIX + "myelin_bench_" + self.name.replace("-", "_")
            fresh_pg_db(dbname)
            url = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}"
        else:
            url = f"sqlite://{self.dir}/myelin.db"
        self._db_url = url
        (self.dir / "myelin.toml").write_text(f"""# generated by bench/run.py
server_name = "{self.server_name}"
data_dir = "{self.dir}/data"

[listen]
client = "127.0.0.1:{self.port}"

[database]
url = "{url}"

[registration]
mode = "open"

[rate_limits]
enabled = false

[log]
level = "warn"
""" + (f"""
[federation]
enabled = true
trusted_ca = "{self.tls['ca']}"
allow_private_addresses = true
""" if self.fed_port else ""))
        if self.fed_port:
            # TOML has no "add a key to an earlier table": rewrite [listen] and add [tls].
            text = (self.dir / "myelin.toml").read_text()
            text = text.replace(f'client = "127.0.0.1:{self.port}"\n',
                                f'client = "127.0.0.1:{self.port}"\nfederation = "127.0.0.1:{self.fed_port}"\n')
            text += f"""
[tls]
cert = "{self.tls['cert']}"
key = "{self.tls['key']}"
"""
            (self.dir / "myelin.toml").write_text(text)

    def command(self):
        return [str(self.binary), "serve", "--config", str(self.dir / "myelin.toml")]

    def db_url(self):
        return getattr(self, "_db_url", None)


RC_HIGH = {"per_second": 1_000_000, "burst_count": 1_000_000}


class Synapse(Server):
    def __init__(self, name, workdir, port, python: Path, db: str, **kw):
        super().__init__(name, workdir, port, **kw)
        self.python = python
        self.db = db

    def prepare(self):
        super().prepare()
        if self.db == "postgres":
            dbname = PG_PREFIX + "synapse_bench_" + self.name.replace("-", "_")
            fresh_pg_db(dbname)
            database = {"name": "psycopg2", "args": {"user": PG["user"], "host": PG["host"], "port": PG["port"],
                                                     "database": dbname, "cp_min": 5, "cp_max": 10}}
            self._db_url = f"postgres://{PG['user']}@{PG['host']}:{PG['port']}/{dbname}"
        else:
            database = {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}}
            self._db_url = str(self.dir / "homeserver.db")
        (self.dir / "log.yaml").write_text(f"""version: 1
formatters:
  precise:
    format: '%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s'
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: {self.dir}/homeserver.log
loggers:
  synapse.storage.SQL:
    level: WARNING
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
""")
        rc = {
            "rc_message": RC_HIGH,
            "rc_registration": RC_HIGH,
            "rc_registration_token_validity": RC_HIGH,
            "rc_login": {"address": RC_HIGH, "account": RC_HIGH, "failed_attempts": RC_HIGH},
            "rc_admin_redaction": RC_HIGH,
            "rc_joins": {"local": RC_HIGH, "remote": RC_HIGH},
            "rc_joins_per_room": RC_HIGH,
            "rc_key_requests": RC_HIGH,
            "rc_3pid_validation": RC_HIGH,
            "rc_invites": {"per_room": RC_HIGH, "per_user": RC_HIGH, "per_issuer": RC_HIGH},
            "rc_third_party_invite": RC_HIGH,
            "rc_media_create": RC_HIGH,
            "rc_presence": {"per_user": RC_HIGH},
            "rc_delayed_event_mgmt": RC_HIGH,
            "rc_room_creation": RC_HIGH,
            "rc_reports": RC_HIGH,
            "rc_user_directory": RC_HIGH,
            "rc_profile": RC_HIGH,
            "rc_federation": {"window_size": 1000, "sleep_limit": 1_000_000, "sleep_delay": 0,
                              "reject_limit": 1_000_000, "concurrent": 1_000_000},
            "federation_rr_transactions_per_room_per_second": 1_000_000,
        }
        config = {
            "server_name": self.server_name,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [{
                "port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                "x_forwarded": False, "resources": [{"names": ["client", "federation"], "compress": False}],
            }],
            "database": database,
            "log_config": str(self.dir / "log.yaml"),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "report_stats": False,
            # Registration is set-up, not measured: cheap password hashing for the generator's users.
            "bcrypt_rounds": 4,
            "enable_registration": True,
            "enable_registration_without_verification": True,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            # Presence off for Synapse (its presence handler is a known cost at this scale);
            # Myelin keeps presence on, which can only make its own figures worse.
            "presence": {"enabled": False},
            **rc,
        }
        if self.fed_port:
            config["listeners"].append({
                "port": self.fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
                "x_forwarded": False, "resources": [{"names": ["federation"], "compress": False}],
            })
            config["tls_certificate_path"] = self.tls["cert"]
            config["tls_private_key_path"] = self.tls["key"]
            # Loopback federation: the peer's certificate is from our throw-away CA.
            config["federation_verify_certificates"] = False
            config["ip_range_whitelist"] = ["127.0.0.0/8"]
            config["federation_ip_range_blacklist"] = []
        # JSON is YAML.
        (self.dir / "homeserver.yaml").write_text(json.dumps(config, indent=2))
        sh([str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.dir / "homeserver.yaml"),
            "--generate-keys"], cwd=self.dir, stdout=subprocess.DEVNULL)

    def command(self):
        return [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.dir / "homeserver.yaml")]

    def db_url(self):
        return getattr(self, "_db_url", None)


# ------------------------------------------------------------------------------------------------
# federation


def make_tls(dir: Path) -> dict:
    """A throw-away CA and one certificate for 127.0.0.1 (every server on loopback shares it)."""
    dir.mkdir(parents=True, exist_ok=True)
    q = dict(cwd=dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    subprocess.run(["openssl", "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
                    "-subj", "/CN=myelin-bench CA", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign,cRLSign"], **q)
    subprocess.run(["openssl", "req", *ec, "-keyout", "server.key", "-out", "server.csr",
                    "-subj", "/CN=127.0.0.1"], **q)
    (dir / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                                 "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    subprocess.run(["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "ext.cnf"], **q)
    return {"ca": str(dir / "ca.pem"), "cert": str(dir / "server.pem"), "key": str(dir / "server.key")}


class CountingRelay:
    """A TCP relay on `listen_port` to `target_port` on loopback that counts the bytes each way:
    put in front of a server's federation port, it sees every byte its peers exchange with it
    (TLS records included, TCP/IP headers not)."""

    def __init__(self, listen_port: int, target_port: int):
        self.target_port = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", listen_port))
        self.sock.listen(256)
        self.lock = threading.Lock()
        self.to_server = 0
        self.from_server = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=30)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += 1
            done = threading.Semaphore(0)
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, up, done), daemon=True).start()
            threading.Thread(target=self._close_after, args=(client, server, done), daemon=True).start()

    def _pipe(self, src, dst, up, done):
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
                with self.lock:
                    if up:
                        self.to_server += len(data)
                    else:
                        self.from_server += len(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            done.release()

    @staticmethod
    def _close_after(a, b, done):
        done.acquire()
        done.acquire()
        a.close()
        b.close()

    def counts(self) -> dict:
        with self.lock:
            return {"to_server": self.to_server, "from_server": self.from_server, "connections": self.connections}

    def close(self):
        self.sock.close()


def relay_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


# (label, kind of A, kind of B): A's user creates the rooms, B's users join them through A.
FED_PAIRS = [
    ("myelin→myelin", "myelin", "myelin"),
    ("myelin→synapse", "myelin", "synapse"),
    ("synapse→myelin", "synapse", "myelin"),
    ("synapse→synapse", "synapse", "synapse"),
]


def run_federation(bench: Path, workdir: Path, myelin_bin: Path, synapse_py: Path | None, smoke: bool,
                   extra: list[str], results: list[dict], out_jsonl: Path, pairs: list[str],
                   scenario: str = "federation", suffix: str = ""):
    """Runs a two-server scenario (`federation` or `big_room_join`) once per pair, each pair on two
    fresh servers. For `big_room_join` each server's federation port sits behind a counting relay
    (the port of its server name), and the bytes the relays carry between the generator's
    start and end marks are added to the result, with B's PID for its memory."""
    tls = make_tls(workdir / "tls")
    counted = scenario == "big_room_join"
    for label, ka, kb in FED_PAIRS:
        if label not in pairs:
            continue
        servers = []
        relays: list[CountingRelay] = []
        for side, kind, base in (("a", ka, 18300), ("b", kb, 18310)):
            port, fed_port = free_port(base), free_port(base + 5)
            name = f"{'fed' if scenario == 'federation' else 'bigjoin'}-{label.replace('→', '-')}-{side}"
            if kind == "myelin":
                servers.append(Myelin(name, workdir, port, myelin_bin, "sqlite", fed_port=fed_port, tls=tls))
            elif synapse_py is not None:
                servers.append(Synapse(name, workdir, port, synapse_py, "sqlite", fed_port=fed_port, tls=tls))
            if counted and len(servers) == (1 if side == "a" else 2):
                servers[-1].public_fed_port = free_port(base + 8)
        rec = {"scenario": scenario, "case": "", "label": label + suffix}
        try:
            if len(servers) < 2:
                raise RuntimeError("Synapse is not installed in this run")
            for srv in servers:
                srv.prepare()
                if srv.public_fed_port:
                    relays.append(CountingRelay(srv.public_fed_port, srv.fed_port))
                srv.start()
            time.sleep(1)
            why = next((w for w in (srv.federation_probe() for srv in servers) if w), None)
            if why:
                rec.update(status="not_available", reason=why)
                results.append(rec)
                log(f"{label}: not available ({why})")
                continue
            a, b = servers
            cmd = [str(bench), "--url", a.url, "--url2", b.url, "--pid", str(a.proc.pid), "--label", label,
                   "--scenario", scenario] + (["--smoke"] if smoke else []) + extra
            if counted:
                # Set-up on a Synapse host is long: the case gets two hours.
                cmd += ["--pid2", str(b.proc.pid), "--case-timeout", "7200"]
            log("$", " ".join(cmd))
            marks: dict[str, list[dict]] = {}
            line = None
            with open(a.dir / "bench.log", "wb") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
                for x in proc.stdout:
                    if x.startswith("#mark "):
                        marks[x.split()[-1]] = [r.counts() for r in relays]
                    elif x.startswith("{") and line is None:
                        line = x
                proc.wait(timeout=7800)
            if line is None:
                raise RuntimeError(f"myelin-bench printed nothing; see {a.dir}/bench.log")
            rec = json.loads(line)
            rec["label"] = label + suffix
            if counted and "start" in marks and "end" in marks:
                (a0, b0), (a1, b1) = marks["start"], marks["end"]
                da, db = relay_delta(a0, a1), relay_delta(b0, b1)
                # Every connection between the two servers goes through exactly one relay: B's
                # requests to A through A's, A's requests to B through B's.
                rec["fed_bytes"] = {"b_to_a_port": da["to_server"], "a_port_to_b": da["from_server"],
                                    "a_to_b_port": db["to_server"], "b_port_to_a": db["from_server"],
                                    "connections": da["connections"] + db["connections"],
                                    "total": da["to_server"] + da["from_server"] + db["to_server"]
                                    + db["from_server"]}
            results.append(rec)
            log(f"{label}: {rec['status']}" + (f" ({rec.get('error') or rec.get('reason')})"
                                                 if rec["status"] != "ok" else ""))
        except Exception as e:  # noqa: BLE001
            rec.update(status="error", error=f"{e}")
            results.append(rec)
            log(f"{label}: error {e}")
        finally:
            for srv in servers:
                srv.stop()
            for r in relays:
                r.close()
            with open(out_jsonl, "a") as f:
                f.write(json.dumps(results[-1]) + "\n")


# ------------------------------------------------------------------------------------------------
# running


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run_bench(bench: Path, server: Server, scenarios: list[str], smoke: bool, extra: list[str],
              results: list[dict], out_jsonl: Path):
    cmd = [str(bench), "--url", server.url, "--pid", str(server.proc.pid), "--label", server.name,
           "--scenario", ",".join(scenarios)]
    if smoke:
        cmd.append("--smoke")
    if server.db_url():
        cmd += ["--db", server.db_url()]
    cmd += extra
    log("$", " ".join(cmd))
    with open(server.dir / "bench.log", "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            rec["label"] = server.name
            results.append(rec)
            with open(out_jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")
            log(f"{server.name} {rec['scenario']} {rec.get('case', '')}: {rec['status']}"
                + (f" ({rec.get('error') or rec.get('reason')})" if rec["status"] != "ok" else ""))
        proc.wait()
    if proc.returncode != 0:
        log(f"myelin-bench exited with {proc.returncode} against {server.name}; see {server.dir}/bench.log")
        # Whatever did not print a line is recorded as an error.
        seen = {(r["scenario"]) for r in results if r["label"] == server.name}
        for s in scenarios:
            if s not in seen:
                rec = {"scenario": s, "case": "", "label": server.name, "status": "error",
                       "error": f"myelin-bench exited with {proc.returncode} before reporting"}
                results.append(rec)


def server_errors(server_dir: Path, limit: int = 3) -> list[str]:
    """The first distinct ERROR lines of a server's logs, without timestamps and colours."""
    import re
    out: list[str] = []
    for name in ("server.log", "homeserver.log"):
        f = server_dir / name
        if not f.exists():
            continue
        for line in f.read_text(errors="replace").splitlines():
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)
            if "ERROR" not in line or "on_failure" in line:
                continue
            msg = re.sub(r"^\S+Z\s+|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - ", "", line).strip()[:300]
            if msg not in out:
                out.append(msg)
            if len(out) >= limit:
                return out
    return out


def machine_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram": mem, "kernel": platform.release(),
            "python": platform.python_version()}


def git_rev() -> str:
    if os.environ.get("MYELINBENCH_COMMIT"):  # a run from an exported tree (git archive)
        return os.environ["MYELINBENCH_COMMIT"]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except Exception:  # noqa: BLE001
        return "?"


# ------------------------------------------------------------------------------------------------
# the report

TARGETS_MD = """\
| target (issue 8, and issue 18 for sliding sync) | figure compared |
|---|---|
| send latency p50 ≤ 1/20 of Synapse's | `send_latency` p50, Synapse ÷ Myelin ≥ 20 |
| throughput ≥ 30× Synapse's | `send_throughput` msgs/s, Myelin ÷ Synapse ≥ 30 |
| fan-out delivery p99 ≤ 50 ms at 100 syncers, ≤ 250 ms at 1,000 | `fanout` delivery p99 (absolute) |
| 0 lost, duplicated or reordered | `fanout` (and `history`, `federation`) correctness counts |
| ≤ 8 KiB server memory per idle waiting `/sync` at 10,000 waiters | `idle_syncers` RSS growth ÷ waiters (absolute) |
| history ≥ 10× faster | `history/paginate` total time, Synapse ÷ Myelin ≥ 10 |
| initial sync ≥ 10× faster | `history/initial_sync` p50, Synapse ÷ Myelin ≥ 10 |
| join storm ≥ 10× faster | `join_storm` time to all joined, Synapse ÷ Myelin ≥ 10 |
| sliding sync first window ≥ 10× faster | `sliding_sync` first response p50, Synapse ÷ Myelin ≥ 10 |
| sliding sync wake-up ≥ 10× faster | `sliding_sync` wake latency p99, Synapse ÷ Myelin ≥ 10 |
| first initial sync ≥ 10× faster (issue 23) | `history/initial_sync` first (the server has just stored the rooms), Synapse ÷ Myelin ≥ 10 |
| big account ≥ 10× faster (issue 23) | `big_account` first and p50 initial sync (no filter, Element Web's filter), incremental p50, sliding sync first window p50 |
| incremental sync independent of the number of rooms (issue 23) | `big_account` incremental p50 in 1,000 rooms ÷ in 10 rooms ≤ 2 (absolute) |
| ≤ 1/5 of Synapse's bytes per event (issue 23) | `storage` bytes per message and per state change in the large room, Synapse ÷ Myelin ≥ 5 |
| ≤ 1/5 of Synapse's memory at rest (issue 23) | `at_rest` RSS, Synapse ÷ Myelin ≥ 5 |
| big room join ≥ 10× faster (issue 23) | `big_room_join` time to the full member list on B, Synapse joining ÷ Myelin joining the same host ≥ 10 |
| history reads flat in the room's size (issue 23) | `deep_history` p50 of `/context` and `/messages` (both ways) at the start, middle and end: at 1,000,000 messages ÷ at 10,000 ≤ 2, the worst of the nine (absolute) |
"""


def g(rec, *path):
    v = rec
    for p in path:
        if not isinstance(v, dict) or p not in v:
            return None
        v = v[p]
    return v


def fmt_num(v, unit="", digits=1):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, float):
        if abs(v) >= 100:
            s = f"{v:,.0f}"
        elif abs(v) >= 10:
            s = f"{v:.1f}"
        else:
            s = f"{v:.{max(digits, 2)}f}"
    else:
        s = f"{v:,}"
    return s + unit


# (title, scenario, case, [(row label, path, unit)])
TABLES = [
    ("send_latency — 10 users × 50 sequential messages, one room", "send_latency", "", [
        ("p50", ("latency", "p50_ms"), " ms"), ("p99", ("latency", "p99_ms"), " ms"),
        ("max", ("latency", "max_ms"), " ms"), ("msgs/s", ("msgs_per_s",), ""),
    ]),
    ("send_throughput — 50 concurrent senders over 10 rooms, 30 s", "send_throughput", "", [
        ("msgs/s", ("msgs_per_s",), ""), ("p50", ("latency", "p50_ms"), " ms"),
        ("p99", ("latency", "p99_ms"), " ms"), ("errors", ("errors",), ""),
    ]),
    ("fanout — {n} members long-polling /sync, 50 messages 100 ms apart", "fanout", "*", [
        ("delivery p50", ("delivery", "p50_ms"), " ms"), ("delivery p99", ("delivery", "p99_ms"), " ms"),
        ("delivery max", ("delivery", "max_ms"), " ms"), ("send p50", ("send", "p50_ms"), " ms"),
        ("lost", ("lost",), ""), ("duplicated", ("duplicated",), ""), ("out of order", ("out_of_order",), ""),
    ]),
    ("idle_syncers — {n} held long-polls", "idle_syncers", "*", [
        ("RSS per waiter", ("rss_per_waiter_kib",), " KiB"), ("RSS before", ("rss_before_mib",), " MiB"),
        ("RSS after", ("rss_after_mib",), " MiB"), ("connections held", ("connections_held",), ""),
    ]),
    ("history — paginate a 10,000-message room backwards, /messages limit 100", "history", "paginate", [
        ("total", ("paginate_ms",), " ms"), ("page p50", ("page", "p50_ms"), " ms"),
        ("page p99", ("page", "p99_ms"), " ms"), ("events/s", ("events_per_s",), ""),
        ("lost", ("lost",), ""), ("duplicated", ("duplicated",), ""), ("out of order", ("out_of_order",), ""),
        ("(set-up) fill msgs/s", ("fill_msgs_per_s",), ""),
    ]),
    ("history — initial /sync of a user in 50 rooms × 20 messages", "history", "initial_sync", [
        ("first (the server has just stored the rooms)", ("first_ms",), " ms"), ("p50", ("sync", "p50_ms"), " ms"),
        ("max", ("sync", "max_ms"), " ms"), ("response size", ("response_kib",), " KiB"),
    ]),
    ("join_storm — 200 users join one public room concurrently", "join_storm", "", [
        ("time to all joined", ("total_ms",), " ms"), ("join p50", ("join", "p50_ms"), " ms"),
        ("join p99", ("join", "p99_ms"), " ms"), ("joined members", ("joined_members",), ""),
    ]),
    ("sliding_sync — Element X's room list (MSC4186) of a user in 500 rooms", "sliding_sync", "", [
        ("first response p50", ("first", "p50_ms"), " ms"), ("first response max", ("first", "max_ms"), " ms"),
        ("wake p50", ("wake", "p50_ms"), " ms"), ("wake p99", ("wake", "p99_ms"), " ms"),
        ("response size", ("response_kib",), " KiB"),
    ]),
    ("big_account — a user in 1,000 rooms (50 DMs, 10% encrypted, 5 messages each)", "big_account", "", [
        ("first initial sync, no filter", ("unfiltered", "first_ms"), " ms"),
        ("initial sync p50, no filter", ("unfiltered", "repeat", "p50_ms"), " ms"),
        ("first initial sync, Element filter", ("element", "first_ms"), " ms"),
        ("initial sync p50, Element filter", ("element", "repeat", "p50_ms"), " ms"),
        ("incremental p50 (1,000 rooms)", ("incremental", "sync", "p50_ms"), " ms"),
        ("incremental p50 (10 rooms)", ("incremental_small", "sync", "p50_ms"), " ms"),
        ("incremental 1,000 ÷ 10 rooms", ("incremental_big_over_small",), "×"),
        ("sliding sync first window p50", ("sliding_sync", "first", "p50_ms"), " ms"),
        ("response size, no filter", ("unfiltered_kib",), " KiB"),
        ("response size, Element filter", ("element_kib",), " KiB"),
        ("(set-up) time", ("setup_s",), " s"),
    ]),
    ("storage — database growth (SQLite: file + WAL after a checkpoint; PostgreSQL: pg_database_size)", "storage", "", [
        ("bytes per message", ("bytes_per_message",), " B"),
        ("bytes per state change, 1,001-member room", ("bytes_per_state_change_large_room",), " B"),
        ("bytes per state change, 2-member room", ("bytes_per_state_change_small_room",), " B"),
        ("bytes per member join", ("bytes_per_member_join",), " B"),
        ("database after the other scenarios", ("before_mib",), " MiB"),
    ]),
    ("at_rest — idle server after every scenario, holding the big account", "at_rest", "", [
        ("RSS", ("rss_mib",), " MiB"),
    ]),
    ("deep_history — one room grown to {n} messages: reads at its oldest, middle and newest message",
     "deep_history", "*", [
        ("/context p50 at the start", ("points", "start", "context", "p50_ms"), " ms"),
        ("/context p50 in the middle", ("points", "middle", "context", "p50_ms"), " ms"),
        ("/context p50 at the end", ("points", "end", "context", "p50_ms"), " ms"),
        ("/messages back p50 at the start", ("points", "start", "messages_back", "p50_ms"), " ms"),
        ("/messages back p50 in the middle", ("points", "middle", "messages_back", "p50_ms"), " ms"),
        ("/messages back p50 at the end", ("points", "end", "messages_back", "p50_ms"), " ms"),
        ("/messages forward p50 at the start", ("points", "start", "messages_forward", "p50_ms"), " ms"),
        ("/messages forward p50 in the middle", ("points", "middle", "messages_forward", "p50_ms"), " ms"),
        ("/messages forward p99 in the middle", ("points", "middle", "messages_forward", "p99_ms"), " ms"),
        ("(set-up) fill msgs/s", ("fill_msgs_per_s",), ""),
    ]),
    ("federation — two servers on loopback", "federation", "", [
        ("join p50", ("join", "p50_ms"), " ms"), ("join p99", ("join", "p99_ms"), " ms"),
        ("A→B delivery p50", ("a_to_b", "delivery", "p50_ms"), " ms"),
        ("A→B delivery p99", ("a_to_b", "delivery", "p99_ms"), " ms"),
        ("B→A delivery p50", ("b_to_a", "delivery", "p50_ms"), " ms"),
        ("B→A delivery p99", ("b_to_a", "delivery", "p99_ms"), " ms"),
        ("lost (A→B + B→A)", ("lost_total",), ""),
    ]),
    ("big_room_join — a user of B joins a big room of A (full size: 2,000 members, 5,000 state events, "
     "20,000 messages; this run's sizes in the set-up row)",
     "big_room_join", "", [
        ("/join answered", ("join_ms",), " ms"),
        ("room with its timeline in B's /sync", ("sync_ms",), " ms"),
        ("all members in B's /joined_members", ("members_ms",), " ms"),
        ("bytes between the servers", ("fed_mib",), " MiB"),
        ("… A to B", ("fed_a_to_b_mib",), " MiB"),
        ("… B to A", ("fed_b_to_a_mib",), " MiB"),
        ("B's peak RSS (VmHWM)", ("b_peak_mib",), " MiB"),
        ("B's RSS growth during the join", ("b_growth_mib",), " MiB"),
        ("room state on B (events)", ("room_state_on_b",), ""),
        ("timeline events in the first sync", ("timeline_events",), ""),
        ("(set-up on A) members, state, messages", ("sizes",), ""),
        ("(set-up on A) time", ("setup_min",), " min"),
    ]),
]

# big_room_join: (host, pair where Myelin joins, pair where Synapse joins).
BIGJOIN_HOSTS = [("Myelin", "myelin→myelin", "myelin→synapse"), ("Synapse", "synapse→myelin", "synapse→synapse")]
BIGJOIN_RATIOS = [("/join answered", ("join_ms",)), ("room in /sync", ("sync_ms",)),
                  ("full member list", ("members_ms",)), ("bytes between the servers", ("fed_mib",)),
                  ("B's peak RSS", ("b_peak_mib",))]


def derive(rec):
    """Adds the derived fields the tables show."""
    if rec.get("scenario") == "idle_syncers" and rec.get("status") == "ok":
        rec["rss_per_waiter_kib"] = rec["rss_per_waiter_bytes"] / 1024
        rec["rss_before_mib"] = rec["rss_before_bytes"] / 2**20
        rec["rss_after_mib"] = rec["rss_after_bytes"] / 2**20
    if rec.get("scenario") == "history" and rec.get("case") == "initial_sync" and rec.get("status") == "ok":
        rec["response_kib"] = rec["response_bytes"] / 1024
    if rec.get("scenario") == "sliding_sync" and rec.get("status") == "ok":
        rec["response_kib"] = rec["response_bytes"] / 1024
    if rec.get("scenario") == "big_account" and rec.get("status") == "ok":
        rec["unfiltered_kib"] = (g(rec, "unfiltered", "response_bytes") or 0) / 1024
        rec["element_kib"] = (g(rec, "element", "response_bytes") or 0) / 1024
        rec["setup_s"] = (rec.get("setup_ms") or 0) / 1000
    if rec.get("scenario") == "storage" and rec.get("status") == "ok":
        rec["before_mib"] = rec["bytes_before"] / 2**20
    if rec.get("scenario") == "at_rest" and rec.get("status") == "ok":
        rec["rss_mib"] = rec["rss_bytes"] / 2**20
    if rec.get("scenario") == "big_room_join" and rec.get("status") == "ok":
        fb = rec.get("fed_bytes") or {}
        if fb:
            rec["fed_mib"] = fb["total"] / 2**20
            rec["fed_a_to_b_mib"] = (fb["a_port_to_b"] + fb["a_to_b_port"]) / 2**20
            rec["fed_b_to_a_mib"] = (fb["b_to_a_port"] + fb["b_port_to_a"]) / 2**20
        if rec.get("b_peak_rss_bytes") is not None:
            rec["b_peak_mib"] = rec["b_peak_rss_bytes"] / 2**20
        if rec.get("b_rss_growth_bytes") is not None:
            rec["b_growth_mib"] = rec["b_rss_growth_bytes"] / 2**20
        rec["setup_min"] = (rec.get("setup_s") or 0) / 60
        rec["sizes"] = f"{rec.get('members', 0):,} / {rec.get('state_events', 0):,} / {rec.get('messages', 0):,}"
    if rec.get("scenario") == "federation" and rec.get("status") == "ok":
        rec["lost_total"] = (g(rec, "a_to_b", "lost") or 0) + (g(rec, "b_to_a", "lost") or 0)
    return rec


def find(results, label, scenario, case):
    for r in results:
        if r.get("label") == label and r.get("scenario") == scenario and str(r.get("case", "")) == case:
            return r
    return None


def cell(rec, path, unit):
    if rec is None:
        return "not run"
    if rec.get("status") == "not_available":
        return "not available"
    if rec.get("status") != "ok":
        return "error"
    return fmt_num(g(rec, *path), unit)


def ratio_rows(results, pairs):
    """(target, pair, Myelin, Synapse, ratio, verdict) rows."""
    rows = []

    def val(label, scenario, case, path):
        r = find(results, label, scenario, case)
        if r is None or r.get("status") != "ok":
            return None, (r or {}).get("status", "not run")
        return g(r, *path), "ok"

    relative = [
        ("send latency p50 ≤ 1/20", "send_latency", "", ("latency", "p50_ms"), "lower", 20, " ms"),
        ("throughput ≥ 30×", "send_throughput", "", ("msgs_per_s",), "higher", 30, " msg/s"),
        ("history pagination ≥ 10× faster", "history", "paginate", ("paginate_ms",), "lower", 10, " ms"),
        ("initial sync ≥ 10× faster", "history", "initial_sync", ("sync", "p50_ms"), "lower", 10, " ms"),
        ("join storm ≥ 10× faster", "join_storm", "", ("total_ms",), "lower", 10, " ms"),
        ("sliding sync first window ≥ 10× faster", "sliding_sync", "", ("first", "p50_ms"), "lower", 10, " ms"),
        ("sliding sync wake-up p99 ≥ 10× faster", "sliding_sync", "", ("wake", "p99_ms"), "lower", 10, " ms"),
        ("first initial sync ≥ 10× faster", "history", "initial_sync", ("first_ms",), "lower", 10, " ms"),
        ("big account: first initial sync ≥ 10×", "big_account", "", ("unfiltered", "first_ms"), "lower", 10, " ms"),
        ("big account: initial sync p50 ≥ 10×", "big_account", "", ("unfiltered", "repeat", "p50_ms"), "lower", 10,
         " ms"),
        ("big account: first Element sync ≥ 10×", "big_account", "", ("element", "first_ms"), "lower", 10, " ms"),
        ("big account: Element sync p50 ≥ 10×", "big_account", "", ("element", "repeat", "p50_ms"), "lower", 10,
         " ms"),
        ("big account: incremental p50 ≥ 10×", "big_account", "", ("incremental", "sync", "p50_ms"), "lower", 10,
         " ms"),
        ("big account: sliding sync first window ≥ 10×", "big_account", "", ("sliding_sync", "first", "p50_ms"),
         "lower", 10, " ms"),
        ("bytes per message ≤ 1/5", "storage", "", ("bytes_per_message",), "lower", 5, " B"),
        ("bytes per state change (large room) ≤ 1/5", "storage", "", ("bytes_per_state_change_large_room",),
         "lower", 5, " B"),
        ("memory at rest ≤ 1/5", "at_rest", "", ("rss_mib",), "lower", 5, " MiB"),
    ]
    for my, syn in pairs:
        for title, sc, case, path, better, want, unit in relative:
            m, ms_ = val(my, sc, case, path)
            s, ss = val(syn, sc, case, path)
            if m is None or s is None or m == 0:
                why = f"Myelin {ms_.replace('_', ' ')}" if m is None else f"Synapse {ss.replace('_', ' ')}"
                rows.append((title, f"{my} vs {syn}", fmt_num(m, unit), fmt_num(s, unit), "–",
                             f"not measurable ({why})"))
                continue
            ratio = s / m if better == "lower" else m / s
            verdict = "met" if ratio >= want else "missed"
            rows.append((title, f"{my} vs {syn}", fmt_num(m, unit), fmt_num(s, unit), f"{ratio:.2f}×", verdict))
    absolute = [
        ("fan-out p99 ≤ 50 ms at 100", "fanout", "100", ("delivery", "p99_ms"), 50.0, " ms"),
        ("fan-out p99 ≤ 250 ms at 1,000", "fanout", "1000", ("delivery", "p99_ms"), 250.0, " ms"),
        ("≤ 8 KiB per idle /sync at 10,000", "idle_syncers", "10000", ("rss_per_waiter_kib",), 8.0, " KiB"),
        ("incremental sync: 1,000 rooms ÷ 10 rooms ≤ 2", "big_account", "", ("incremental_big_over_small",), 2.0,
         "×"),
    ]
    for title, sc, case, path, limit, unit in absolute:
        for my, syn in pairs:
            v, st = val(my, sc, case, path)
            sv, _ = val(syn, sc, case, path)
            if v is None:
                rows.append((title, f"{my} ({syn} for reference)", "–", fmt_num(sv, unit), "–",
                             f"not measurable (Myelin {st.replace('_', ' ')})"))
                continue
            rows.append((title, f"{my} ({syn} for reference)", fmt_num(v, unit), fmt_num(sv, unit), "–",
                         "met" if v <= limit else "missed"))
    for host, my, syn in BIGJOIN_HOSTS:
        m, ms_ = val(my, "big_room_join", "", ("members_ms",))
        s, ss = val(syn, "big_room_join", "", ("members_ms",))
        if find(results, my, "big_room_join", "") is None and find(results, syn, "big_room_join", "") is None:
            continue
        title = "big room join ≥ 10× faster (full member list)"
        if m is None or s is None or m == 0:
            why = f"{my} {ms_.replace('_', ' ')}" if m is None else f"{syn} {ss.replace('_', ' ')}"
            rows.append((title, f"{host} hosts: {my} vs {syn}", fmt_num(m, " ms"), fmt_num(s, " ms"), "–",
                         f"not measurable ({why})"))
            continue
        ratio = s / m
        rows.append((title, f"{host} hosts: {my} vs {syn}", fmt_num(m, " ms"), fmt_num(s, " ms"),
                     f"{ratio:.2f}×", "met" if ratio >= 10 else "missed"))
    # deep_history: the worst growth of a read's p50 from the room's smallest size to its largest.
    for my, syn in pairs:
        sizes = sorted({int(r["case"]) for r in results if r.get("label") == my
                        and r.get("scenario") == "deep_history" and r.get("status") == "ok"})
        title = "deep history: reads flat in the room's size (largest ÷ smallest ≤ 2)"
        if len(sizes) < 2:
            if sizes or any(r.get("scenario") == "deep_history" for r in results):
                rows.append((title, my, "–", "–", "–", "not measurable (fewer than two sizes measured)"))
            continue
        small, big = (find(results, my, "deep_history", str(n)) for n in (sizes[0], sizes[-1]))
        worst, where = 0.0, ""
        for point in ("start", "middle", "end"):
            for read in ("context", "messages_back", "messages_forward"):
                a, b = (g(r, "points", point, read, "p50_ms") for r in (small, big))
                if a and b and b / a > worst:
                    worst, where = b / a, f"{read} at the {point}"
        rows.append((title, f"{my}: {sizes[0]:,} → {sizes[-1]:,} messages", "", "", f"{worst:.2f}× ({where})",
                     "met" if worst <= 2 else "missed"))
    labels = []
    for my, syn in pairs:
        labels += [my, syn]
    for label in dict.fromkeys(labels):
        bad = []
        measured = False
        for r in results:
            if r.get("label") != label or r.get("status") != "ok" or "lost" not in r:
                continue
            sc, case = r["scenario"], r.get("case", "")
            measured = True
            n = (r.get("lost") or 0) + (r.get("duplicated") or 0) + (r.get("out_of_order") or 0)
            if n:
                bad.append(f"{sc} {case}: {n}")
        rows.append(("0 lost / duplicated / reordered", label, "", "", "",
                     ("missed (" + ", ".join(bad) + ")") if bad else ("met" if measured else "not measurable")))
    return rows


def bigjoin_ratios(w, recs: dict):
    """The table under big_room_join's: for each host, Synapse joining ÷ Myelin joining."""
    rows = []
    for host, my, syn in BIGJOIN_HOSTS:
        m, s = recs.get(my), recs.get(syn)
        if not (m and s and m.get("status") == "ok" and s.get("status") == "ok"):
            continue
        cells = []
        for _, path in BIGJOIN_RATIOS:
            mv, sv = g(m, *path), g(s, *path)
            cells.append(f"{sv / mv:.2f}×" if mv and sv is not None else "–")
        rows.append(f"| {host} hosts ({syn} ÷ {my}) | " + " | ".join(cells) + " |")
    if not rows:
        return
    w("Synapse joining ÷ Myelin joining the same host (higher is better for Myelin):\n")
    w("| | " + " | ".join(t for t, _ in BIGJOIN_RATIOS) + " |")
    w("|---" * (len(BIGJOIN_RATIOS) + 1) + "|")
    for r in rows:
        w(r)
    w("")


def write_report(path: Path, results: list[dict], meta: dict, servers: list[str]):
    results = [derive(dict(r)) for r in results]
    out = []
    w = out.append
    w("# Benchmarks: Myelin and Synapse, same machine, same run\n")
    w(f"Generated by `bench/run.py` on {meta['date']} from a real run (raw JSON lines at the end). "
      "Do not edit by hand: rerun the script.\n")
    w("## Machine and run\n")
    m = meta["machine"]
    w(f"- CPU: {m['cpu']}, {m['nproc']} cores (`nproc`); RAM {m['ram']}; Linux {m['kernel']}")
    w(f"- Load average before the run: {meta['load_before']}; after: {meta['load_after']}. The load "
      "generator runs on the same cores as the server under test, so every figure includes its cost.")
    w(f"- Myelin: commit {meta['commit']}, {meta['profile']} build. Synapse {meta['synapse_version'] or '(not run)'} "
      f"from PyPI (Python {m['python']}). PostgreSQL {meta['pg_version']} on loopback.")
    w(f"- Servers in this run, one after another, each on a fresh database: {', '.join(servers)}.")
    w(f"- Sizes: {'smoke (tiny; table titles name the full sizes, the raw lines the real ones)' if meta['smoke'] else 'full (as in issue 8)'}; "
      f"wall time {meta['wall_min']:.1f} min.")
    for label, note in meta.get("server_notes", {}).items():
        w(f"- {label}: {note}")
    for note in meta.get("notes", []):
        w(f"- {note}")
    w("")
    w("## Targets\n")
    w(TARGETS_MD)
    pairs = [(a, b) for a, b in [("myelin-sqlite", "synapse-sqlite"), ("myelin-postgres", "synapse-postgres")]
             if a in servers or b in servers]
    rows = ratio_rows(results, pairs)
    w("| target | servers | Myelin | Synapse | ratio | verdict |")
    w("|---|---|---|---|---|---|")
    for r in rows:
        w("| " + " | ".join(r) + " |")
    w("")
    w("Ratios are Synapse ÷ Myelin for times and Myelin ÷ Synapse for rates, so higher is better for Myelin; "
      "absolute targets show the figure of each server.\n")
    w("## Figures\n")
    expanded = []
    for title, sc, case, metrics in TABLES:
        if case == "*":
            cases = sorted({str(r.get("case")) for r in results if r.get("scenario") == sc},
                           key=lambda c: int(c) if c.isdigit() else 0)
            expanded += [(title.replace("{n}", f"{int(c):,}" if c.isdigit() else c), sc, c, metrics)
                         for c in cases]
        else:
            expanded.append((title, sc, case, metrics))
    for title, sc, case, metrics in expanded:
        cols = servers
        if sc in PAIR_SCENARIOS:
            cols = list(dict.fromkeys(r["label"] for r in results if r.get("scenario") == sc))
            title += (" (A→B: A's user creates the rooms, B's users join them through A; both on SQLite)"
                      if sc == "federation" else " (A→B: A hosts, B joins; both on SQLite)")
        recs = {s: find(results, s, sc, case) for s in cols}
        if all(r is None for r in recs.values()):
            continue
        w(f"### {title}\n")
        w("| | " + " | ".join(cols) + " |")
        w("|---" * (len(cols) + 1) + "|")
        for label, fields, unit in metrics:
            w(f"| {label} | " + " | ".join(cell(recs[s], fields, unit) for s in cols) + " |")
        notes = []
        for s in cols:
            r = recs[s]
            if r is None and sc == "deep_history" and s.startswith("synapse"):
                notes.append(f"{s}: not run at this size (building it through Synapse's API would take hours; "
                             "see deep_history under What the scenarios do)")
            if r and r.get("status") == "not_available":
                notes.append(f"{s}: not available — {r.get('reason')}")
            elif r and r.get("status") == "error":
                import re
                err = re.sub(r"\?[^ )\"]*", "", str(r.get("error")))  # no sync tokens and filters
                notes.append(f"{s}: error — {err[:600]}")
            elif r and r.get("all_held") is False:
                notes.append(f"{s}: the server held only {r.get('connections_held')} of {r.get('waiters')} "
                             f"long-polls (the others failed to connect: {r.get('sync_errors')} errors); "
                             "the per-waiter figure is over the held ones")
        if notes:
            w("")
            for n in notes:
                w(f"- {n}")
        w("")
        if sc == "big_room_join":
            bigjoin_ratios(w, recs)
    w("## What the scenarios do\n")
    w(SCENARIOS_MD)
    w("## How to reproduce\n")
    w(REPRODUCE_MD)
    w("## Raw results\n")
    w("<details><summary>JSON lines printed by myelin-bench</summary>\n")
    w("```json")
    for r in results:
        w(json.dumps({k: v for k, v in r.items()
                      if not k.endswith(("_kib", "_mib")) and k not in ("lost_total", "setup_s")}))
    w("```\n</details>\n")
    path.write_text("\n".join(out))
    log(f"wrote {path}")


SCENARIOS_MD = """\
`myelin-bench` (the workspace member in `bench/`) speaks only the public client-server API (spec v1.19), so it
runs against any homeserver. Each run registers its own users with `m.login.dummy` under a random prefix
(without a password where the server allows it; Synapse insists on one, so its config sets
`bcrypt_rounds: 4`: registration is set-up, not a measured figure), retries `429 M_LIMIT_EXCEEDED` after
`retry_after_ms` (and counts it), and prints one JSON line per scenario case. Set-up (registration, room
creation, joins) is never timed unless the scenario is about it. Long-polls use `set_presence=offline` and
an inline filter (timeline limit 100, lazy-loaded members, no presence or account data).

- **send_latency**: 10 users in one room each send 50 messages one after another (the 10 users run
  concurrently); latency of every `PUT /rooms/{id}/send`, and messages ÷ wall time.
- **send_throughput**: 50 senders over 10 rooms (5 per room) send as fast as their answers come back for
  30 s; messages per second and per-send latency.
- **fanout**: N members (100, then 1,000) of one room each long-poll `/sync` (30 s timeout) from a token
  taken after all joins; one more member sends 50 messages 100 ms apart (each send waits for the previous
  answer). Delivery latency is from the start of a send to the moment a recipient has read the sync answer
  carrying it. Per recipient it counts messages lost (not seen within 60 s of the last send), duplicated,
  and out of order (seen after a later message).
- **idle_syncers**: N distinct users (1,000, then 10,000) each hold one `/sync?since=…&timeout=180000` on
  its own connection. The server's VmRSS (`/proc/PID/status`) is read before, and after the server holds
  all the connections (its open fds, `/proc/PID/fd`) and RSS has settled; the difference ÷ N is the cost
  of one waiting `/sync`, connection included.
- **history / paginate**: 10 senders fill one room with 10,000 messages (not timed), then
  `GET /rooms/{id}/messages?dir=b&limit=100` pages from the end to the room's creation; total time, per-page
  latency, and every message checked present once, in order.
- **history / initial_sync**: a user creates 50 rooms with 20 messages each, then runs an unfiltered
  initial `/sync` five times; the first (on a server that has just stored those rooms: what a user meets
  when a client logs in) and the p50, both judged (the p50 includes whatever the server caches after the
  first). Each repeat asks with a different `timeout` (0–4 ms;
  an initial sync never waits): Synapse keeps every sync answer for two minutes keyed on the request's
  parameters, so identical repeats would measure its replay of the first answer, not an initial sync.
- Note on **idle_syncers**: figures can be negative at small sizes when the allocator hands back memory freed by
  the previous case; the 10,000 case is the one the target names.
- **join_storm**: 200 registered users `POST /join/{roomId}` one public room all at once; time until the
  last answer, per-join latency, and `joined_members` checked to be 201.
- **sliding_sync**: a user creates 500 rooms with one message each (not timed), then opens a new simplified
  sliding sync connection (MSC4186, `org.matrix.simplified_msc3575`) ten times with the request Element X's
  room list starts with (rooms 0–19 by recency, one timeline event, the state the list shows, account
  data, receipts and typing extensions); first-response latency. Then 100 times: a request with the
  connection's `pos` waits (30 s timeout), a message is sent to a room below the window, and the wake
  latency runs from the start of the send to the arrival of the answer carrying the message.
- **big_account**: one account in 1,000 rooms, created as fast as the server allows (16 at a time, not
  timed): 50 direct chats (`is_direct`, `trusted_private_chat`, recorded in `m.direct`, encrypted) and 950
  group rooms of mixed sizes (every 50th with 50 members, every 5th with 11, the others 2–4), 100 rooms
  encrypted in all (`m.room.encryption` at creation, `m.room.encrypted` messages), 5 messages per room from
  its other members. Then the first initial `/sync` without a filter and five repeats (different
  `timeout`s, as in `history`), the first with Element Web's filter (uploaded as Element does: timeline
  limit 20, lazy-loaded members, unread thread notifications) and five repeats; then 20 times: another
  member sends one message to one of the rooms and the account's incremental `/sync` (Element's filter,
  no waiting) is timed and must carry it; the same for an account in 10 rooms, and the ratio of the two
  (the incremental sync should not grow with the number of rooms); and sliding sync's first window of the
  account (the `sliding_sync` request), five new connections.
- **storage**: the database's growth while writing (after the scenarios before it; SQLite: the file plus
  its WAL after `PRAGMA wal_checkpoint(TRUNCATE)` from another connection; PostgreSQL:
  `pg_database_size`): 10,000 messages from 10 senders into one room; 1,000 topic changes in a room of
  1,001 members (the run's registered users) and 1,000 in a room of two, so that a state storage that
  grows with the room's state size shows as a difference between the two; the joins of the large room.
- **at_rest**: after every scenario before it, the big account's initial sync runs twice (the caches
  warm), then the server's VmRSS once it has settled (two readings 1 s apart within 256 KiB).
- **deep_history**: 32 senders fill one room with 10,000 messages, then 1,000,000 (the same room grows;
  not timed; Synapse only to 10,000: at its ~100 messages/s the larger room would take three hours to
  build). After each size, at the oldest, the middle and the newest message of the room: `/context` of
  the event (limit 10), and a `/messages` page of 100 backwards from the context's `start` and forwards
  from its `end`, 20 times each, every answer checked to hold messages from that part of the room. The
  target is cost flat in the room's size: no read's p50 at 1,000,000 more than twice its p50 at 10,000.
- **federation**: a user on server A creates 10 public rooms; a user on server B joins each through
  `?via=A` (each a first join of B into the room); then 50 messages 100 ms apart A→B and B→A, measured
  like fan-out.
- **big_room_join**: on server A (not timed, as fast as A allows: 16 requests at a time, 429s honoured) a
  public room with an alias gets 2,000 members (users of A, the creator included), then 5,000 state
  events and 20,000 messages interleaved (one unit of state per batch of messages): the state comes in
  cycles of a name, a topic, a power-level change (a member promoted), a ban of a user who never joined
  and its unban, so the room's state ends with ~3,000 member entries. A fresh user of server B (a fresh
  process) takes an initial sync, starts a long-poll, then `POST /join/#alias?server_name=A&via=A`.
  From the `/join` request: its 200; the first `/sync` answer (Element Web's filter: 20 events,
  lazy-loaded members) that shows the room with a non-empty timeline; the first
  `GET /rooms/{id}/joined_members` on B that lists all 2,001 members (polled every 50 ms: a server that
  joins with partial state lists only some at first). Bytes between the servers: `bench/run.py` puts a
  counting TCP relay in front of each server's federation port (the port of its server name), so every
  byte of every connection between them is counted once, TLS records included, from the moment the
  generator marks the start of the join to the moment the member list is complete. B's memory:
  `VmHWM` (peak RSS since B started, which includes its start-up) and `VmRSS` before and after the
  join, from `/proc/PID/status`. Four pairs, each on two fresh servers on SQLite.

Synapse is configured for loopback: registration open without verification, every `rc_*` rate limit
raised to 1,000,000/s, `trusted_key_servers: []`, `report_stats: false`, presence disabled (Myelin has
no presence; with it on, every sync would wake other users' long-polls), one process, default caches.
Myelin runs with `[registration] mode = "open"` and `[rate_limits] enabled = false`.
"""

REPRODUCE_MD = """\
```sh
export CARGO_TARGET_DIR=$HOME/.cache/myelin-target
python3 bench/run.py             # the full run: builds Myelin (release), installs Synapse, writes this file
python3 bench/run.py --smoke     # CI smoke: Myelin on SQLite (big_room_join: two Myelins), tiny sizes, no Synapse, exit 1 on any error
# big_room_join alone, at a chosen size (the same for every pair):
python3 bench/run.py --scenarios big_room_join --bench-arg=--big-room-messages=5000 --output /tmp/b.md
# parts of a run (report goes elsewhere unless --output is given):
python3 bench/run.py --servers myelin-sqlite,synapse-sqlite --scenarios send_latency,fanout --output /tmp/b.md
# the load generator alone against any homeserver:
cargo run --release -p myelin-bench -- --url http://127.0.0.1:8008 --scenario all --pid $(pidof myelin)
```

Requirements: Python 3 with `venv`, a Rust toolchain, PostgreSQL on `127.0.0.1:5432` accepting `root`
without a password (the PostgreSQL servers are skipped with a note if it is not reachable). Synapse goes
into `$HOME/.cache/myelin-bench/synapse-venv`; servers' data and logs into
`$HOME/.cache/myelin-bench/run/` (kept for inspection). The script raises the open-files limit to the hard
limit for the servers and the generator (10,000 connections each way).
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="Myelin on SQLite only, tiny sizes, exit 1 on error")
    ap.add_argument("--servers", help=f"comma-separated subset of {','.join(ALL_SERVERS)}")
    ap.add_argument("--scenarios", default="all", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    ap.add_argument("--profile", choices=["release", "dev"], help="cargo profile (default: release; dev for --smoke)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries already built")
    ap.add_argument("--bin-dir", help="take myelin and myelin-bench from this directory (no build)")
    ap.add_argument("--output", help="report path (default: docs/benchmarks.md for a full run, "
                                     "$HOME/.cache/myelin-bench/run/report.md otherwise)")
    ap.add_argument("--report-only", metavar="RESULTS_JSONL", help="only rewrite the report from saved results")
    ap.add_argument("--replace", action="append", default=[], metavar="RESULTS_JSONL",
                    help="with --report-only: results of a later run that replace the lines of the same server, "
                         "scenario and case (the replaced lines stay in the raw results, relabelled)")
    ap.add_argument("--fed-pairs", help="comma-separated federation pairs: "
                    + ",".join(p for p, _, _ in FED_PAIRS) + " (default: all whose servers are in the run)")
    ap.add_argument("--label-suffix", default="", help="appended to the pair labels of two-server scenarios "
                    "(results of a variant build, reported beside the others)")
    ap.add_argument("--note", action="append", default=[], help="a line for the report's run section (repeatable)")
    ap.add_argument("--server-bench-arg", action="append", default=[], metavar="SERVER=ARG",
                    help="extra myelin-bench argument for one server, e.g. myelin-sqlite=--setup-concurrency=1")
    ap.add_argument("--bench-arg", action="append", default=[], help="extra argument for myelin-bench (repeatable)")
    args = ap.parse_args()

    servers = args.servers.split(",") if args.servers else (["myelin-sqlite"] if args.smoke else ALL_SERVERS)
    for s in servers:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s}")
    scenarios = SCENARIOS if args.scenarios == "all" else args.scenarios.split(",")
    if args.smoke and args.scenarios == "all":
        scenarios = [x for x in scenarios if x != "federation"]
    profile = args.profile or ("dev" if args.smoke else "release")
    workdir = CACHE / "run"
    full_default = not args.smoke and args.servers is None and args.scenarios == "all"
    output = Path(args.output) if args.output else (REPO / "docs" / "benchmarks.md" if full_default
                                                    else workdir / "report.md")

    if args.report_only:
        lines = Path(args.report_only).read_text().splitlines()
        results = [json.loads(x) for x in lines if x.startswith("{") and not x.startswith('{"meta"')]
        meta = next(json.loads(x)["meta"] for x in lines if x.startswith('{"meta"'))
        meta["notes"] = meta.get("notes", []) + args.note
        for extra in args.replace:
            new = [json.loads(x) for x in Path(extra).read_text().splitlines()
                   if x.startswith("{") and not x.startswith('{"meta"')]
            keys = {(r["label"], r["scenario"], str(r.get("case", ""))) for r in new}
            for r in results:
                if (r.get("label"), r.get("scenario"), str(r.get("case", ""))) in keys:
                    r["label"] += " (replaced)"
            results += new
        for label in meta["servers"]:
            if label not in meta["server_notes"] and any(
                    r.get("label") == label and r.get("status") == "error" for r in results):
                errs = server_errors(workdir / label)
                if errs:
                    meta["server_notes"][label] = "first errors in its log: " + " | ".join(f"`{e}`" for e in errs)
        write_report(output, results, meta, meta["servers"])
        return 0

    started = time.time()
    nofile = raise_nofile()
    log(f"open-files limit {nofile}")
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_info(),
            "load_before": loadavg(), "commit": git_rev(), "profile": profile, "smoke": args.smoke,
            "servers": servers, "synapse_version": None, "pg_version": None, "server_notes": {},
            "notes": args.note}

    myelin_bin, bench_bin = (target_dir() / ("release" if profile == "release" else "debug") / b
                             for b in ("myelin", "myelin-bench"))
    if args.bin_dir:
        myelin_bin, bench_bin = Path(args.bin_dir) / "myelin", Path(args.bin_dir) / "myelin-bench"
    elif not args.no_build:
        myelin_bin, bench_bin = build(profile)
    # Pin the binaries: the target directory is shared, and another build may replace them mid-run.
    (workdir / "bin").mkdir(parents=True, exist_ok=True)
    pinned = []
    for b in (myelin_bin, bench_bin):
        if b.exists() and b.resolve() != (workdir / "bin" / b.name).resolve():
            shutil.copy2(b, workdir / "bin" / b.name)
            pinned.append(workdir / "bin" / b.name)
        else:
            pinned.append(b)
    myelin_bin, bench_bin = pinned
    synapse_py = None
    if any(s.startswith("synapse") for s in servers):
        synapse_py = ensure_synapse()
        meta["synapse_version"] = synapse_version(synapse_py)
    if any(s.endswith("postgres") for s in servers):
        meta["pg_version"] = pg_version()
        if meta["pg_version"] == "unavailable":
            log("PostgreSQL is not reachable: skipping the PostgreSQL servers")
            for s in [s for s in servers if s.endswith("postgres")]:
                meta["server_notes"][s] = "skipped: PostgreSQL not reachable on 127.0.0.1:5432"
            servers = [s for s in servers if not s.endswith("postgres")]
            meta["servers"] = servers

    workdir.mkdir(parents=True, exist_ok=True)
    out_jsonl = workdir / "results.jsonl"
    out_jsonl.write_text("")
    results: list[dict] = []
    ports = {"myelin-sqlite": 18101, "myelin-postgres": 18102, "synapse-sqlite": 18201, "synapse-postgres": 18202}
    for name in servers:
        port = free_port(ports[name])
        db = "postgres" if name.endswith("postgres") else "sqlite"
        if name.startswith("myelin"):
            server = Myelin(name, workdir, port, myelin_bin, db)
        else:
            server = Synapse(name, workdir, port, synapse_py, db)
        t0 = time.time()
        per_server = [x for x in scenarios if x not in PAIR_SCENARIOS]
        if not per_server:
            continue
        try:
            server.prepare()
            server.start()
            extra = args.bench_arg + [a.split("=", 1)[1] for a in args.server_bench_arg
                                      if a.split("=", 1)[0] == name]
            if (name.startswith("synapse") and not args.smoke and "deep_history" in per_server
                    and not any(x.startswith("--deep-history-messages") for x in extra)):
                extra += SYNAPSE_DEEP_HISTORY
            run_bench(bench_bin, server, per_server, args.smoke, extra, results, out_jsonl)
        except Exception as e:  # noqa: BLE001
            log(f"{name}: {e}")
            for s in scenarios:
                if not any(r["label"] == name and r["scenario"] == s for r in results):
                    results.append({"scenario": s, "case": "", "label": name, "status": "error",
                                    "error": f"server did not run: {e}"})
        finally:
            server.stop()
        if any(r["label"] == name and r.get("status") == "error" for r in results):
            errs = server_errors(server.dir)
            if errs:
                meta["server_notes"][name] = "first errors in its log: " + " | ".join(f"`{e}`" for e in errs)
        log(f"{name}: {(time.time() - t0) / 60:.1f} min, load {loadavg()}")

    for scenario in [x for x in scenarios if x in PAIR_SCENARIOS]:
        pairs = [p for p, ka, kb in FED_PAIRS
                 if (ka == "myelin" or synapse_py) and (kb == "myelin" or synapse_py)]
        if args.smoke:
            pairs = ["myelin→myelin"]
        if args.fed_pairs:
            pairs = args.fed_pairs.split(",")
        if "synapse" in ",".join(pairs) and synapse_py is None:
            synapse_py = ensure_synapse()
            meta["synapse_version"] = synapse_version(synapse_py)
        t0 = time.time()
        run_federation(bench_bin, workdir, myelin_bin, synapse_py, args.smoke, args.bench_arg, results,
                       out_jsonl, pairs, scenario, args.label_suffix)
        meta["fed_pairs"] = pairs
        log(f"{scenario}: {(time.time() - t0) / 60:.1f} min, load {loadavg()}")

    meta["load_after"] = loadavg()
    meta["wall_min"] = (time.time() - started) / 60
    with open(out_jsonl, "a") as f:
        f.write(json.dumps({"meta": meta}) + "\n")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_report(output, results, meta, servers)

    errors = [r for r in results if r.get("status") == "error"]
    for r in errors:
        log(f"ERROR {r['label']} {r['scenario']} {r.get('case', '')}: {r.get('error')}")
    ok = sum(r.get("status") == "ok" for r in results)
    na = sum(r.get("status") == "not_available" for r in results)
    # The plain closing line (the smoke run is not a test suite, but say what happened).
    print(f"bench: {ok} ok, {len(errors)} failed, {na} not available", flush=True)
    if args.smoke and errors:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

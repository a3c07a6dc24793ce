#!/usr/bin/env python3
"""Several Myelin processes on one PostgreSQL database (docs/scaling.md).

Starts 1, 2 and 3 `myelin serve` processes with one configuration on a fresh database each time
and runs myelin-bench against all of them at once (`--url a,b,c`: every session sticks to one
process, so senders and long-polling members are spread over the processes):

- send_throughput with 1, 2 and 3 processes (on a small machine this shows the overhead of
  the signals between processes, not scaling);
- fanout with N members long-polling, spread over 3 processes (delivery p50/p99, and the
  correctness counts: lost, duplicated, reordered).

    python3 bench/multiprocess.py [--profile release|debug] [--members 1000] [--duration 20]

Prints one JSON line per case and a Markdown table at the end. Needs `createdb`/`dropdb` on
PATH and PostgreSQL on 127.0.0.1:5432 (user `root`, trust), like the tests.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PG = os.environ.get("PG_BENCH_USER", "root")


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def target_dir() -> Path:
    r = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                       capture_output=True, text=True, check=True)
    return Path(json.loads(r.stdout)["target_directory"])


def build(profile: str) -> tuple[Path, Path]:
    cmd = ["cargo", "build", "-p", "myelin", "-p", "myelin-bench"]
    if profile == "release":
        cmd.insert(2, "--release")
    subprocess.run(cmd, cwd=REPO, check=True)
    out = target_dir() / profile
    return out / "myelin", out / "myelin-bench"


def start_cluster(binary: Path, n: int, work: Path) -> tuple[list, str]:
    db = f"myelin_bench_mp{n}"
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT="5432", PGUSER=PG)
    subprocess.run(["dropdb", "--if-exists", db], env=env, check=True)
    subprocess.run(["createdb", "-E", "UTF8", "-T", "template0", db], env=env, check=True)
    data = work / f"data{n}"
    procs, urls = [], []
    for i in range(n):
        port = free_port()
        cfg = work / f"myelin{n}-{i}.toml"
        cfg.write_text(f"""server_name = "bench.local"
data_dir = "{data}"
[listen]
client = "127.0.0.1:{port}"
[database]
url = "postgres://{PG}@127.0.0.1:5432/{db}"
[registration]
mode = "open"
[rate_limits]
enabled = false
[log]
level = "warn"
""")
        logf = open(work / f"myelin{n}-{i}.log", "wb")
        p = subprocess.Popen([str(binary), "serve", "--config", str(cfg)], stdout=logf, stderr=logf)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/_matrix/client/versions", timeout=2)
                break
            except Exception:
                if time.time() > deadline or p.poll() is not None:
                    raise SystemExit(f"process {i} did not start; see {work}/myelin{n}-{i}.log")
                time.sleep(0.1)
        procs.append(p)
        urls.append(url)
    return procs, ",".join(urls)


def stop(procs):
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


def bench(bench_bin: Path, urls: str, label: str, args: list[str]) -> list[dict]:
    cmd = [str(bench_bin), "--url", urls, "--label", label] + args
    log("$", " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True)
    recs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for r in recs:
        print(json.dumps(r), flush=True)
    if out.returncode != 0:
        log(out.stderr[-2000:])
    return recs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="release", choices=["release", "debug"])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--processes", default="1,2,3")
    a = ap.parse_args()
    myelin, bench_bin = build(a.profile)
    rows = []
    with tempfile.TemporaryDirectory(prefix="myelin-mp-bench-") as work:
        work = Path(work)
        for n in [int(x) for x in a.processes.split(",")]:
            procs, urls = start_cluster(myelin, n, work)
            try:
                for r in bench(bench_bin, urls, f"{n}-proc", ["--scenario", "send_throughput",
                                                               "--duration", str(a.duration)]):
                    rows.append((f"send_throughput, {n} process(es)", r))
                if n == 3:
                    for r in bench(bench_bin, urls, f"{n}-proc", ["--scenario", "fanout",
                                                                   "--fanout-members", str(a.members)]):
                        rows.append((f"fanout {a.members} members over {n} processes", r))
            finally:
                stop(procs)
    print(f"\n| case ({a.profile} build) | result |\n| --- | --- |")
    for name, r in rows:
        if r.get("status") != "ok":
            print(f"| {name} | {r.get('status')}: {r.get('error') or r.get('reason')} |")
        elif r["scenario"] == "send_throughput":
            print(f"| {name} | {r.get('msgs_per_s')} msg/s |")
        else:
            d = r.get("delivery", {})
            print(f"| {name} | delivery p50 {d.get('p50_ms')} ms, p99 {d.get('p99_ms')} ms; "
                  f"lost {r.get('lost')}, duplicated {r.get('duplicated')}, out of order {r.get('out_of_order')} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How fast each tool uploads its backlog once S3 answers again after an outage (issue 14).

Per run and tool: a writer (tests/writer.py) commits at --rate txn/s; the tool replicates through a
fault proxy (tests/faultproxy.py) to one SeaweedFS.  After a warm-up the proxy resets every
connection for --outage seconds (both tools keep reading into local files: walrewind's spool,
Litestream's L0 LTX files), then lets requests through again at T_up.  At T_up the newest local
point is noted (walrewind: the last txid in its spool; Litestream: the highest TXID of its local
L0 files); "drained" is the first LIST of the replica (directly on SeaweedFS, every 20 ms) that
holds it.  Each tool also reports how many requests its probing cost during the outage (proxy
counts) and its CPU seconds over the whole run.

    .venv/bin/python benchmarks/outage_drain.py --runs 3 --outage 15

Both tools run as a user runs them (CLI subprocesses), alternating, on the same server.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _s3 import KeyWatcher, Server, now_us  # noqa: E402  (puts tests/ on sys.path)
from _tools import LITESTREAM, Litestream, Walrewind  # noqa: E402
from faultproxy import FaultProxy  # noqa: E402
from harness import create_db, start_writer  # noqa: E402
from walrewind.engine.daemon.spool import StateDir  # noqa: E402
from walrewind.engine.replica import layout  # noqa: E402

_LTX = re.compile(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")


class Proxied:
    """The Server interface the tools are given, with the proxy as endpoint."""

    def __init__(self, server: Server, proxy: FaultProxy) -> None:
        self.bucket, self.endpoint = server.bucket, proxy.endpoint

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"


def walrewind_local(tool: Walrewind) -> int:
    """The last txid in walrewind's spool (0 when empty)."""
    newest = 0
    for path in sorted(glob.glob(os.path.join(tool.state_dir, "spool", "*")))[-1:]:
        for rec in StateDir.iter_raw(path, repair=False):
            newest = max(newest, rec.txid)
    return newest


def walrewind_remote(seen: dict) -> int:
    out = 0
    for key in seen:
        k = layout.parse_key(key.split("/", 1)[1]) if "/" in key else None
        if isinstance(k, layout.SegmentKey):
            out = max(out, k.last_txid)
    return out


def litestream_local(tool: Litestream) -> int:
    db = tool.dbs[0]
    meta = os.path.join(os.path.dirname(db), "." + os.path.basename(db) + "-litestream", "ltx", "0")
    return max((int(m.group(2), 16) for n in os.listdir(meta) if (m := _LTX.search(n))), default=0)


_REMOTE_LTX = re.compile(r"(?:^|/)(\d+)/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")  # <db>/<level:04d>/<min>-<max>.ltx


def litestream_remote(seen: dict) -> int:
    out = 0
    for key in seen:
        if (m := _REMOTE_LTX.search(key)) and int(m.group(1)) == 0:
            out = max(out, int(m.group(3), 16))
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(kind: str, server: Server, work: str, n: int, outage: float, rate: int) -> dict:
    d = os.path.join(work, f"{kind}-{n}")
    os.makedirs(d)
    db, stop = os.path.join(d, "app.db"), os.path.join(d, "stop")
    create_db(db)
    prefix = f"drain/{kind}-{n}-{os.getpid()}"
    with FaultProxy(server.endpoint, seed=n) as proxy:
        tool = (Walrewind if kind == "walrewind" else Litestream)(Proxied(server, proxy), d, prefix)  # type: ignore[arg-type]
        local, remote = (walrewind_local, walrewind_remote) if kind == "walrewind" else (litestream_local, litestream_remote)
        watcher = KeyWatcher(server, prefix, period=0.5)
        writer = start_writer({"db": db, "rate": rate, "duration": 600, "seed": 200 + n, "stop_file": stop})
        try:
            tool.start([db], watch=False)
            try:
                watcher.wait(lambda seen: remote(seen) > 0, 60, f"{kind} to upload")
            except TimeoutError:
                raise SystemExit(f"{kind} uploaded nothing; its log ends:\n{tool.log_tail()}\nreplica: {watcher.snapshot()}")
            time.sleep(3.0)  # steady state before the outage (the scenario, not synchronisation)
            proxy.down = True
            down_at = time.monotonic()
            before = proxy.refused
            time.sleep(outage)  # the outage itself
            target = local(tool)
            during = proxy.refused - before
            watcher.fast(0.02)
            up_us = now_us()
            proxy.down = False
            watcher.wait(lambda seen: remote(seen) >= target, 120, f"{kind} to drain to {target}")
            drained = max(t for k, (t, _s) in watcher.snapshot().items() if remote({k: 0}) >= target) - up_us
            cpu = cpu_seconds(tool.pid)
            stopped = tool.stop()
        finally:
            open(stop, "w").close()
            writer.wait(60)
            watcher.stop()
            if tool.alive():
                tool.proc.kill()
    res = {"drained_s": round(drained / 1e6, 3), "outage_s": round(time.monotonic() - down_at, 1),
           "requests_during_outage": during, "cpu_s": round(max(cpu, stopped.cpu_s), 2), "target": target}
    print(f"{kind} run {n}: {res}", flush=True)
    server.delete_prefix(prefix)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--outage", type=float, default=15.0)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--tools", default="walrewind,litestream")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    tools = [t for t in args.tools.split(",") if t != "litestream" or LITESTREAM]
    work = tempfile.mkdtemp(prefix="walrewind-drain-")
    server = Server(os.path.join(work, "weed"))
    results: dict = {t: [] for t in tools}
    try:
        for n in range(args.runs):
            for kind in tools:
                results[kind].append(one_run(kind, server, work, n, args.outage, args.rate))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {t: {"drained_s_median": statistics.median(r["drained_s"] for r in rs),
                   "requests_during_outage_median": statistics.median(r["requests_during_outage"] for r in rs),
                   "runs": rs} for t, rs in results.items()}
    if "walrewind" in summary and "litestream" in summary:
        summary["ratio_walrewind_to_litestream"] = round(
            summary["walrewind"]["drained_s_median"] / max(summary["litestream"]["drained_s_median"], 1e-3), 2)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

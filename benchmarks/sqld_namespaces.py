"""walrewind beside a real sqld 0.24.32: how soon a new namespace is replicated, what `db create`
into a new namespace costs, and what the daemon costs with idle namespaces.

    .venv/bin/python benchmarks/sqld_namespaces.py [--quick] [--json FILE]

One `walrewind replicate` process with `[sqld]` (tests/daemon_process.py) watches a sqld started
by tests/sqld_server.py (TRUNCATE checkpoints every 2 s).  Measured:

* **pickup**: `POST /v1/namespaces/NS/create` returned -> the daemon's "replicating NS" line
  (the namespace's base snapshot is in the replica then).  The watcher lists dbs/ every 2 s;
  each namespace is created at a random (seeded) moment of that cycle.
* **db create into a namespace**: wall time of `walrewind db create NEW --from-db NS` (a new
  process: ~0.3 s of it is Python starting), and the restore and load times it reports, for a
  small namespace (~250 rows) and a ~30 MB one, by adopting the file and by a SQL dump.
* **idle CPU**: the daemon's user+system CPU seconds per second (from /proc) with 3 namespaces
  that had their writes and then only sqld's idle checkpoints.

Litestream has no notion of sqld namespaces, so nothing here is compared with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from daemon_process import WALREWIND, Daemon  # noqa: E402
from sqld_server import (  # noqa: E402
    TABLE_SQL,
    SqldError,
    SqldServer,
    ensure_sqld,
    read_writer_log,
    start_writer,
)
from walrewind.engine.daemon.statefile import load_state_file  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def uploaded_ts(state_dir: str) -> int:
    try:
        return (load_state_file(state_dir) or {})["uploaded_ts_us"]  # the point rides on the hashes log
    except (OSError, ValueError, KeyError):
        return -1


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fill(sqld: SqldServer, ns: str, mb: int) -> int:
    """About ``mb`` MB of 4000-byte random blobs over HTTP, 50 rows a request; returns how many
    requests sqld answered SQLITE_BUSY (and were sent again).  sqld 0.24.32 does that to writes
    arriving during its own TRUNCATE checkpoint of a large WAL, with or without walrewind
    (docs/SQLD.md)."""
    sqld.query(ns, "CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB)")
    rows = mb * (1 << 20) // 4096
    busy = 0
    for start in range(0, rows, 50):
        n = min(50, rows - start)
        while True:
            try:
                sqld.query(ns, "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < ?) "
                               "INSERT INTO big(b) SELECT randomblob(4000) FROM s", (n,))
                break
            except SqldError as exc:
                if "SQLITE_BUSY" not in exc.body or busy > 200:
                    raise
                busy += 1
    return busy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, 10 MB instead of 30 MB")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    reps = 2 if args.quick else 3
    big_mb = 10 if args.quick else 30
    work = tempfile.mkdtemp(prefix="walrewind-sqld-bench-", dir=os.environ.get("BENCH_TMP"))
    sqld = SqldServer(ensure_sqld(), work, checkpoint_interval_s=2)
    sqld.start()
    env = {k: v for k, v in os.environ.items() if k != "WALREWIND_CONFIG"}
    env["XDG_STATE_HOME"] = os.path.join(work, "xdg")
    cfg = os.path.join(work, "walrewind.toml")
    with open(cfg, "w") as f:
        f.write(f'data_dir = "wr"\n[sqld]\ndata_dir = "{sqld.data_dir}"\nreplica = "replicas"\nstate_dir = "state"\n'
                f'admin_url = "http://127.0.0.1:{sqld.admin_port}"\nhttp_url = "http://127.0.0.1:{sqld.http_port}"\n'
                'upload_interval = 0.2\n')
    out: dict = {"pickup_s": [], "create": []}
    daemon = None
    try:
        daemon = Daemon(["--config", cfg, "replicate"], work, env)
        daemon.wait_for("watching sqld namespaces")
        # Pickup: namespaces created one after another while the daemon runs, each at a random
        # phase of the watcher's 2 s listing (right after a pickup would always be the worst case).
        rng = random.Random(12)
        for i in range(reps * 2):
            ns = f"new{i}"
            time.sleep(rng.uniform(0.0, 2.0))
            sqld.create_namespace(ns)
            created = time.monotonic()
            out["pickup_s"].append(daemon.wait_for(f"replicating {ns} (sqld namespace)", 30) - created)
        log(f"pickup: {[round(x, 2) for x in out['pickup_s']]}")
        # Three written namespaces, then idle.
        writers = []
        for ns in ("a", "b", "c"):
            sqld.create_namespace(ns)
            sqld.query(ns, TABLE_SQL)
            daemon.wait_for(f"replicating {ns} (sqld namespace)", 30)
            writers.append(start_writer({"port": sqld.http_port, "ns": ns, "rate": 20, "duration": 6, "seed": 1,
                                         "log": os.path.join(work, f"{ns}.jsonl")}))
        for w in writers:
            w.communicate(timeout=120)
        for ns in ("a", "b", "c"):
            last = read_writer_log(os.path.join(work, f"{ns}.jsonl"))[-1]["begin"]
            wait_until(lambda: uploaded_ts(os.path.join(work, "state", ns)) >= last, 60, f"{ns} shipped")
        for i in range(reps * 2):  # only the three written namespaces stay
            sqld.delete_namespace(f"new{i}")
            daemon.wait_for(f"namespace new{i} was deleted", 30)
        seen = {ns: len(sqld.checkpoints().finished.get(ns, [])) for ns in "abc"}
        wait_until(lambda: all(len(sqld.checkpoints().finished.get(ns, [])) >= seen[ns] + 2 for ns in "abc"), 30,
                   "idle checkpoints")
        idle = []
        for _ in range(reps):
            before, t0 = cpu_seconds(daemon.pid), time.monotonic()
            time.sleep(5)  # a measuring window
            idle.append((cpu_seconds(daemon.pid) - before) / (time.monotonic() - t0))
        out["idle_cpu_3_namespaces"] = idle
        log(f"idle CPU (3 namespaces): {[round(x, 3) for x in idle]}")
        # The ~30 MB namespace.
        sqld.create_namespace("big")
        daemon.wait_for("replicating big (sqld namespace)", 30)
        out["fill_busy_answers"] = fill(sqld, "big", big_mb)
        big_file = os.path.getsize(sqld.db_path("big")) + os.path.getsize(sqld.db_path("big") + "-wal")
        wait_until(lambda: uploaded_ts(os.path.join(work, "state", "big")) >= time.time_ns() // 1000 - 3_000_000, 120,
                   "big shipped")
        time.sleep(1.0)  # the last upload interval
        out["big_bytes"] = big_file
        n = 0
        for source, label in (("a", "small"), ("big", f"{big_mb} MB")):
            for method in ("adopt", "dump"):
                for _ in range(reps):
                    n += 1
                    name = f"copy{n}"
                    t0 = time.monotonic()
                    res = subprocess.run(WALREWIND + ["--config", cfg, "db", "create", name, "--from-db", source,
                                                      "--load-method", method, "--json"],
                                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
                    wall = time.monotonic() - t0
                    if res.returncode != 0:
                        raise SystemExit(f"db create failed: {res.stdout}{res.stderr}")
                    doc = json.loads(res.stdout)
                    out["create"].append({"source": label, "method": method, "wall_s": wall,
                                          "restore_s": doc["restore"]["seconds"], "load_s": doc["namespace"]["seconds"],
                                          "bytes": doc["restore"]["size_bytes"]})
                    log(f"db create {label} ({method}): {wall:.2f} s wall, restore {doc['restore']['seconds']:.2f} s, "
                        f"load+check {doc['namespace']['seconds']:.2f} s")
                    sqld.delete_namespace(name)
        rc, said, stop_s = daemon.stop()
        out["sigterm_exit_s"] = stop_s
        out["rc"] = rc
    finally:
        if daemon is not None:
            daemon.kill()
        sqld.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    print("\n| measure | median | all runs |\n| --- | --- | --- |")
    print(f"| namespace created -> replicating (s) | {med(out['pickup_s']):.2f} | "
          f"{', '.join(f'{x:.2f}' for x in out['pickup_s'])} |")
    print(f"| daemon CPU, 3 idle namespaces (s/s) | {med(out['idle_cpu_3_namespaces']):.3f} | "
          f"{', '.join(f'{x:.3f}' for x in out['idle_cpu_3_namespaces'])} |")
    for label in ("small", f"{big_mb} MB"):
        for method in ("adopt", "dump"):
            runs = [c for c in out["create"] if c["source"] == label and c["method"] == method]
            walls = ", ".join(f"{c['wall_s']:.2f}" for c in runs)
            print(f"| db create from a {label} namespace, {method} (wall s; restore s + load/check s) | "
                  f"{med(c['wall_s'] for c in runs):.2f} ({med(c['restore_s'] for c in runs):.2f} + "
                  f"{med(c['load_s'] for c in runs):.2f}) | {walls} |")
    print(f"| SIGTERM -> exit (s) | {out['sigterm_exit_s']:.2f} | exit status {out['rc']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

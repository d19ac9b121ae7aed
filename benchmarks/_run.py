"""One replicated workload, end to end: the steps every compare.py row shares.

``Ctx`` carries the run-wide things (the S3 server, scratch directory, seed, anomaly list).
``Session`` is one tool replicating one database for one run: start it, run the app writer
against it, find when the last commit became restorable, stop it, judge restores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field

from _common import log, read_log, start_writer
from _oracle import InsertOnly, digest_file, random_targets
from _procwatch import Sample, Timed
from _s3 import Server, now_us
from _tools import TOOLS, Point, Replicator, Stopped


@dataclass
class Ctx:
    server: Server
    scratch: str
    seed: int
    args: object
    anomalies: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict)

    def anomaly(self, msg: str) -> None:
        log("ANOMALY: " + msg)
        self.anomalies.append(msg)

    def mkdir(self, name: str) -> str:
        d = os.path.join(self.scratch, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d


def steady_writer(db: str, logp: str, seed: int, **extra) -> dict:
    """The app of the steady rows: 5 rows x 200 B inserted per transaction, app defaults."""
    return {"db": db, "log": logp, "seed": seed, "rate": 100, "big_every": 1, "big_rows": 5, "row_bytes": 200, **extra}


def wait_writer(proc: subprocess.Popen, what: str, timeout: float = 3600, on_tick=None) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if on_tick is not None:
            on_tick()
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{what}: writer still running after {timeout:.0f}s")
        time.sleep(0.05)
    if proc.returncode:
        raise RuntimeError(f"{what}: writer failed ({proc.returncode}): {proc.stderr.read()[-2000:]}")


def last_logged_index(logp: str) -> int:
    """The ``i`` of the last complete line of a writer log (read from its tail only)."""
    try:
        with open(logp, "rb") as f:
            f.seek(max(0, os.path.getsize(logp) - 400))
            lines = f.read().split(b"\n")
    except FileNotFoundError:
        return 0
    for line in reversed(lines[:-1] if not lines[-1].endswith(b"}") else lines):
        if line.startswith(b'{"i": '):
            return int(line[6 : line.index(b",")])
    return 0


class Session:
    """One tool, one database, one run."""

    def __init__(self, ctx: Ctx, tool: str, name: str) -> None:
        self.ctx = ctx
        self.tool_name = tool
        self.dir = ctx.mkdir(name)
        self.prefix = f"{name}-{os.getpid()}"
        self.db = os.path.join(self.dir, "app.db")
        self.logp = os.path.join(self.dir, "app.log")
        self.out = os.path.join(self.dir, "restored.db")
        self.tool: Replicator = TOOLS[tool](ctx.server, os.path.join(self.dir, "tool"), self.prefix)
        self.stopped: Stopped | None = None
        self.oracle: InsertOnly | None = None

    # -- life cycle
    def start(self) -> float:
        self.tool.start([self.db])
        ready = self.tool.wait_ready()
        log(f"  {self.tool_name}: base snapshot listed {ready:.1f}s after start")
        return ready

    def stop(self) -> Stopped:
        self.stopped = self.tool.stop()
        if self.stopped.rc != 0:
            self.ctx.anomaly(f"{self.dir}: {self.tool_name} exited with {self.stopped.rc}: {self.tool.log_tail(5)}")
        problems = self.tool.log_problems()
        if problems:
            self.ctx.anomaly(f"{self.dir}: {self.tool_name} logged {len(problems)} warning/error line(s), first: "
                             f"{problems[0][:300]}")
        return self.stopped

    def stop_quietly(self) -> None:
        """Stop a tool still running after a failure (its numbers are not used)."""
        if self.stopped is None and self.tool.proc is not None:
            try:
                self.stop()
            except Exception as exc:  # best effort on the error path: the first error is what matters
                log(f"  could not stop {self.tool_name}: {exc}")

    def first_point(self) -> int | None:
        """The tool's first restorable point (its base snapshot), once ``start`` returned."""
        pts = self.tool.points(0)
        return pts[0].id if pts else None

    def cleanup(self) -> None:
        if getattr(self.ctx.args, "keep", False):
            return
        self.ctx.server.delete_prefix(self.prefix)
        shutil.rmtree(self.dir, ignore_errors=True)

    def cpu_at(self, at_us: int) -> float:
        """The tool's CPU seconds at the first sample taken at or after wall time ``at_us``."""
        s = self.sample_at(at_us)
        return s.cpu_s if s else float("nan")

    def sample_at(self, at_us: int) -> Sample | None:
        assert self.tool.sampler is not None
        mono = time.monotonic() - (now_us() - at_us) / 1e6
        return next((s for s in self.tool.sampler.samples if s.t >= mono), None)

    # -- the app
    def run_writer(self, cfg: dict, fast_from_index: int | None = None, fast_after_s: float | None = None) -> list[dict]:
        """Run the app writer to completion; the key watcher goes fast when the end is near."""
        proc = start_writer({"db": self.db, "log": self.logp, **cfg})
        t0 = time.monotonic()
        w = self.tool.watcher if self.tool_name != "none" else None

        def tick() -> None:
            if w is None or w.period <= 0.05:
                return
            if (fast_after_s is not None and time.monotonic() - t0 >= fast_after_s) or (
                    fast_from_index is not None and last_logged_index(self.logp) >= fast_from_index):
                w.fast()

        wait_writer(proc, f"{self.dir} writer", on_tick=tick)
        if w is not None:
            w.fast()
        txns, _ = read_log(self.logp)
        return txns

    # -- restores
    def restore(self, target_us: int | None = None, point: int | None = None) -> tuple[dict | None, Timed]:
        """(digest of the restored file or None, the timed run)."""
        run = self.tool.restore(0, self.out, target_us=target_us, point=point)
        if run.rc != 0:
            return None, run
        return digest_file(self.out), run

    def contains_last(self, restored: dict | None) -> bool:
        assert self.oracle is not None
        return restored is not None and self.oracle.index_of(restored) == self.oracle.last

    def wait_restorable(self, hint_point: int | None = None, quiet_s: float = 3.0, timeout: float = 900) -> dict:
        """When did the writer's last commit become restorable?  (See README: compare.py.)

        Wait until the tool's newest point reaches ``hint_point`` (walrewind: its snapshot txid +
        commits; an optimisation only) or its listing has been quiet for ``quiet_s``; restore
        latest, which must hold the last commit; then walk back over earlier points that became
        restorable after the last transaction began (only those can hold it) to find the first
        that does.  Its first-seen time minus the last COMMIT's end is the answer.
        """
        assert self.oracle is not None and self.tool.watcher is not None
        last = self.oracle.txns[-1]
        deadline = time.monotonic() + timeout
        verdict, run = None, None
        while time.monotonic() < deadline:
            newest, quiet_since = None, time.monotonic()
            while time.monotonic() < deadline:
                pts = self.tool.points(0)
                top = pts[-1].id if pts else None
                if top != newest:
                    newest, quiet_since = top, time.monotonic()
                if hint_point is not None and top is not None and top >= hint_point:
                    break
                if time.monotonic() - quiet_since >= quiet_s:
                    break
                time.sleep(0.05)
            restored, run = self.restore()
            verdict = self.oracle.judge(None, restored, None if restored else run.stderr.strip()[-300:])
            if verdict["exact"] or verdict["wrong"]:
                break
            hint_point = None  # the hint was wrong (e.g. a RESYNC folded commits): fall back to quiet
        result = {"latest": verdict, "latest_restore_s": run.wall_s if run else None, "restorable_s": None,
                  "restorable_at_us": None}
        if verdict is None or not verdict["exact"]:
            self.ctx.anomaly(f"{self.dir}: {self.tool_name} latest restore is not the writer's final state: {verdict}")
            return result
        pts = self.tool.points(0)
        got = run.extra.get("point")
        idx = next((n for n, p in enumerate(pts) if p.id == got), len(pts) - 1)
        best: Point = pts[idx]
        for p in reversed(pts[:idx]):
            if p.at_us < last["begin"]:
                break
            restored, _run = self.restore(point=p.id)
            if not self.contains_last(restored):
                break
            best = p
        result["restorable_at_us"] = best.at_us
        result["restorable_s"] = (best.at_us - last["end"]) / 1e6
        return result

    def judge_targets(self, count: int, seed: int, start_us: int | None = None, end_us: int | None = None) -> dict:
        assert self.oracle is not None
        targets = random_targets(self.oracle.txns, count, seed, start_us, end_us)
        verdicts = []
        for t in targets:
            restored, run = self.restore(target_us=t)
            v = self.oracle.judge(t, restored, None if restored else (run.stderr.strip() or run.stdout.strip())[-300:])
            v["restore_s"] = run.wall_s
            verdicts.append(v)
            if v["wrong"]:
                self.ctx.anomaly(f"{self.dir}: {self.tool_name} restore at {t} is SILENTLY WRONG: {v['error']}")
        return summarise(verdicts)


def summarise(verdicts: list[dict]) -> dict:
    missing = [v["missing_ms"] for v in verdicts if v["missing_txns"]]
    return {
        "targets": len(verdicts),
        "exact": sum(v["exact"] for v in verdicts),
        "extra": sum(v["extra"] for v in verdicts),
        "wrong": sum(v["wrong"] for v in verdicts),
        "failed": sum(v["k"] is None and not v["wrong"] for v in verdicts),
        "max_missing_ms": max(missing, default=0.0),
        "max_missing_txns": max((v["missing_txns"] for v in verdicts), default=0),
        "verdicts": verdicts,
    }


def build_db(ctx: Ctx, name: str, mb: float) -> tuple[str, dict]:
    """A database of ~``mb`` MB of incompressible rows (4000 random bytes, one row per 4 KiB page),
    built once per run and reused: (path, its digest)."""
    key = ("db", name)
    if key in ctx.cache:
        return ctx.cache[key]
    from _common import run_writer

    path = os.path.join(ctx.scratch, f"{name}.db")
    rows = max(1, int(mb * 1e6 / 4096))
    per_txn = min(rows, 1000)
    t = time.monotonic()
    run_writer({"db": path, "txns": -(-rows // per_txn), "rate": 0, "row_bytes": 4000, "big_every": 1,
                "big_rows": per_txn, "seed": ctx.seed + 7, "log": os.devnull}, timeout=3600)
    ctx.cache[key] = (path, digest_file(path))
    log(f"built {name}: {os.path.getsize(path) / 1e6:.0f} MB in {time.monotonic() - t:.1f}s")
    return ctx.cache[key]

#!/usr/bin/env python
"""One `walrewind replicate` for a sqld data directory with many namespaces (issue 12's scale figure).

    .venv/bin/python benchmarks/many_namespaces.py --namespaces 1000 [--written 100] [--seconds 30]
        [--targets 4] [--sampled 3] [--profile FILE] [--cprofile FILE] [--json FILE] [--keep]

Layout: ``DATA/dbs/nsNNNN/data`` made with plain SQLite in WAL mode (``_many_writer.py create``:
tests/writer.py's table t) plus the ``stats.json`` id sqld would write; no sqld runs (issue 12: "files
made with plain SQLite are enough for this figure").  One daemon (`walrewind replicate` with
``[sqld] data_dir``, a ``file://`` replica) serves them all.  Every tenth namespace (``--written``)
is written at 1 txn/s (5 rows x 200 B each, staggered over the second) by ONE writer process, for
``--seconds``.  Printed:

* time from the daemon's start until every namespace replicates ("all N database(s) replicating");
* idle cost (namespaces replicating, nothing written) and cost while writing: CPU % of a core
  (process CPU seconds / wall seconds, from /proc), RSS now and peak (VmHWM), threads, open fds;
* the busiest threads while writing (/proc/PID/task/*/stat: CPU seconds each), and with
  ``--profile FILE`` a py-spy raw profile of the write window (``py-spy record -f raw``; it cannot
  keep up with 2,000 threads), or ``--cprofile FILE``: every thread under cProfile with a thread-CPU
  timer, the write window's CPU per function and kind of thread (benchmarks/_many_profile.py);
* after SIGTERM (its final sync; time to exit): ``--targets`` random restore targets in
  ``--sampled`` written namespaces plus their latest state, judged row by row against the writer's
  log (benchmarks/_oracle.py, as compare.py does): exact / wrong / missing / extra.

Measure alone: the box has 2 cores, and another busy process shows up in the daemon's CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import log, read_log  # noqa: E402  (puts tests/ on sys.path too)
from _oracle import InsertOnly, digest_file, random_targets  # noqa: E402
from _procwatch import cpu_seconds, memory_mb  # noqa: E402
from walrewind.engine.replica.format import FLAG_STAMP_LATE  # noqa: E402
from walrewind.engine.replica.index import Replica  # noqa: E402
from walrewind.engine.restore.restorer import restore  # noqa: E402
from walrewind.engine.storage import open_storage  # noqa: E402

WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PY_SPY = (shutil.which("py-spy", path=os.path.dirname(sys.executable))
          or shutil.which("py-spy", path=os.path.join(os.path.dirname(HERE), ".venv", "bin")) or "py-spy")
# Where a sampled stack's CPU goes, by the first of these functions found in it (leaf first).
STAGES = [("observer", "daemon/observer.py"), ("reader", "tailloop.py"), ("reader", "_tail_loop"),
          ("uploader", "uploader.py"), ("inotify dispatcher", "inotifyhub.py"),
          ("observer", "waker.py"), ("prober", "prober.py"),
          ("fleet loop", "fleet.py"), ("maintenance", "maintenance/"), ("start-up", "startup.py"),
          ("namespaces", "namespaces.py")]


KNOWN_THREADS = {"MainThread": "fleet loop (main thread)", "walrewind-observer": "observers",
                 "walrewind-uploader": "uploaders", "walrewind-upload-pool": "uploaders",
                 "walrewind-maintenance": "maintenance",
                 "walrewind-inotify": "inotify dispatcher", "walrewind-prober": "prober"}


def thread_kinds(pid: int) -> dict[int, str]:
    """Native thread id -> what it is, from the thread names ``py-spy dump`` prints (Python 3.11
    does not name OS threads, so /proc only has numbers); {} without py-spy."""
    try:
        out = subprocess.run([PY_SPY, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True,
                             timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    kinds = {}
    for line in out.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            name = line.split('"')[1]
            tid_n = int(tid, 16) if tid.startswith("0x") else int(tid)
            kinds[tid_n] = KNOWN_THREADS.get(name, "readers (walrewind-<db>)" if name.startswith("walrewind-") else name)
    return kinds


def cpu_by_kind(a: "Snapshot", b: "Snapshot", kinds: dict[int, str]) -> dict[str, float]:
    """CPU % of a core over [a, b] per kind of thread (threads py-spy did not name: 'unnamed')."""
    wall = b.t - a.t
    out: dict[str, float] = {}
    for tid, s in b.tasks.items():
        kind = kinds.get(tid, "unnamed")
        out[kind] = out.get(kind, 0.0) + 100 * (s - a.tasks.get(tid, 0.0)) / wall
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def profile_summary(path: str) -> dict[str, float]:
    """Share of the sampled (non-idle) stacks per stage, from a ``py-spy record -f raw`` file."""
    totals: dict[str, int] = {}
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        stage = next((name for frame in reversed(frames) for name, mark in STAGES if mark in frame), "other")
        totals[stage] = totals.get(stage, 0) + int(count)
    n = sum(totals.values()) or 1
    return {k: round(100 * v / n, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


# ------------------------------------------------------------------------------ the process
def threads_and_fds(pid: int) -> tuple[int, int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        return threads, len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return -1, -1


def task_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid``: /proc/PID/task/TID/schedstat's time on a CPU (ns).

    Not stat's utime + stime: those are whole clock ticks per thread, and over 2,000 threads
    that each run a few ms a second the sum came out ~3 % of a core below the process's total
    (measured: process 26.4 %, threads by ticks 23.4 %, by schedstat 26.4 %)."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return out


class Snapshot:
    def __init__(self, pid: int) -> None:
        self.t = time.monotonic()
        self.cpu = cpu_seconds(pid) or 0.0
        self.rss, self.hwm = memory_mb(pid) or (float("nan"), float("nan"))
        self.threads, self.fds = threads_and_fds(pid)
        self.tasks = task_cpu(pid)


def cpu_pct(a: Snapshot, b: Snapshot) -> float:
    return 100.0 * (b.cpu - a.cpu) / (b.t - a.t)


def busiest(a: Snapshot, b: Snapshot, top: int = 8) -> list[tuple[int, float]]:
    used = sorted(((tid, b.tasks[tid] - a.tasks.get(tid, 0.0)) for tid in b.tasks), key=lambda x: -x[1])
    return [(tid, round(s, 2)) for tid, s in used[:top]]


def task_histogram(a: Snapshot, b: Snapshot) -> dict[str, int]:
    """How many threads used how much CPU over the window (per-thread share of a core)."""
    wall = b.t - a.t
    bins = {"0": 0, "<0.1%": 0, "0.1-1%": 0, "1-10%": 0, ">10%": 0}
    for tid, s in b.tasks.items():
        share = 100 * (s - a.tasks.get(tid, 0.0)) / wall
        key = "0" if share == 0 else "<0.1%" if share < 0.1 else "0.1-1%" if share < 1 else "1-10%" if share < 10 else ">10%"
        bins[key] += 1
    return bins


# ------------------------------------------------------------------------------ the data directory
def make_data_dir(data_dir: str, n: int, seed: int) -> list[str]:
    """dbs/nsNNNN/{data,data-wal,data-shm,stats.json}: what sqld leaves for a ready namespace."""
    names = [f"ns{i:04d}" for i in range(n)]
    paths = []
    rng = random.Random(seed)
    for name in names:
        d = os.path.join(data_dir, "dbs", name)
        os.makedirs(d)
        paths.append(os.path.join(d, "data"))
        with open(os.path.join(d, "stats.json"), "w") as f:
            json.dump({"id": str(uuid.UUID(int=rng.getrandbits(128), version=4))}, f)
    subprocess.run([sys.executable, os.path.join(HERE, "_many_writer.py"), json.dumps({"dbs": paths, "create": True})],
                   check=True, timeout=1800)
    for p in paths:  # the last connection closed removed them; sqld keeps its namespaces open
        for suffix in ("-wal", "-shm"):
            open(p + suffix, "ab").close()
    with open(os.path.join(data_dir, ".version"), "w") as f:
        f.write("4")
    return paths


class LogFile:
    """The daemon's stderr, written to a file (a pipe would fill up with thousands of lines)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def text(self) -> str:
        with open(self.path, errors="replace") as f:
            return f.read()

    def wait_for(self, text: str, timeout: float, proc: subprocess.Popen) -> float:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out after {timeout:.0f} s waiting for {text!r}:\n{self.text()[-3000:]}")
            time.sleep(0.2)
        return time.monotonic()


def problems(text: str) -> list[str]:
    return [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line or "Traceback" in line]


# ------------------------------------------------------------------------------ one run
def run(a: argparse.Namespace) -> dict:
    base = tempfile.mkdtemp(prefix="walrewind-many-ns-", dir=os.environ.get("BENCH_TMP") or None)
    data_dir, replica, logdir = (os.path.join(base, x) for x in ("data.sqld", "replica", "logs"))
    os.makedirs(logdir)
    written_every = max(1, a.namespaces // max(1, a.written))
    written = list(range(0, a.namespaces, written_every))[: a.written]
    res: dict = {"namespaces": a.namespaces, "written": len(written), "seconds": a.seconds}
    try:
        t0 = time.monotonic()
        paths = make_data_dir(data_dir, a.namespaces, a.seed)
        log(f"{a.namespaces} namespaces created in {time.monotonic() - t0:.1f} s under {data_dir}")
        cfg = os.path.join(base, "walrewind.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "wr"\n[sqld]\ndata_dir = "{data_dir}"\nreplica = "file://{replica}"\n'
                    f'state_dir = "{os.path.join(base, "state")}"\n')
        env = {k: v for k, v in os.environ.items() if k != "WALREWIND_CONFIG"}
        env["XDG_STATE_HOME"] = os.path.join(base, "xdg")
        logf = LogFile(os.path.join(base, "daemon.log"))
        with open(logf.path, "wb") as err:
            cmd = ([sys.executable, os.path.join(HERE, "_many_profile.py"), a.cprofile] if a.cprofile else WALREWIND)
            proc = subprocess.Popen(cmd + ["--config", cfg, "replicate"], cwd=base, env=env,
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        started = time.monotonic()
        try:
            ready = logf.wait_for(f"all {a.namespaces} database(s) replicating", a.ready_timeout, proc)
            res["ready_s"] = round(ready - started, 1)
            log(f"all {a.namespaces} replicating {res['ready_s']} s after the start")
            time.sleep(a.settle)
            i0 = Snapshot(proc.pid)
            time.sleep(a.idle_seconds)
            i1 = Snapshot(proc.pid)
            res.update(idle_cpu_pct=round(cpu_pct(i0, i1), 1), idle_rss_mb=round(i1.rss, 0), threads=i1.threads,
                       fds=i1.fds, idle_threads=task_histogram(i0, i1))
            log(f"idle: CPU {res['idle_cpu_pct']} % of a core, RSS {i1.rss:.0f} MB, {i1.threads} threads, {i1.fds} fds")
            seed = a.seed + 1
            writer = subprocess.Popen([sys.executable, os.path.join(HERE, "_many_writer.py"), json.dumps(
                {"dbs": paths, "write": written, "rate": a.rate, "duration": a.seconds, "seed": seed, "logdir": logdir})])
            w0 = Snapshot(proc.pid)
            if a.cprofile:
                proc.send_signal(signal.SIGUSR1)
            spy = None
            if a.profile:
                spy = subprocess.Popen([PY_SPY, "record", "-p", str(proc.pid), "-f", "raw", "-o", a.profile, "-d",
                                        str(int(a.seconds)), "-r", str(a.profile_rate), "--nonblocking", "--threads"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            mid = []
            while writer.poll() is None:
                time.sleep(1.0)
                mid.append(Snapshot(proc.pid))
            w1 = Snapshot(proc.pid)
            if a.cprofile:
                proc.send_signal(signal.SIGUSR2)
            kinds = thread_kinds(proc.pid)
            if kinds:
                res["writing_cpu_pct_by_thread"] = cpu_by_kind(w0, w1, kinds)
                res["idle_cpu_pct_by_thread"] = cpu_by_kind(i0, i1, kinds)
                log(f"CPU % of a core by thread, idle: {res['idle_cpu_pct_by_thread']}")
                log(f"CPU % of a core by thread, writing: {res['writing_cpu_pct_by_thread']}")
            if writer.returncode != 0:
                raise SystemExit(f"the writer failed ({writer.returncode})")
            if spy is not None:
                try:
                    spy.wait(120)
                except subprocess.TimeoutExpired:
                    spy.kill()
                    spy.wait()
                if os.path.exists(a.profile):
                    res["profile_pct"] = profile_summary(a.profile)
                    log(f"py-spy, share of sampled CPU by stage: {res['profile_pct']}")
            res.update(cpu_pct=round(cpu_pct(w0, w1), 1), rss_mb=round(w1.rss, 0),
                       rss_max_sampled_mb=round(max(s.rss for s in mid + [w1]), 0), peak_rss_mb=round(w1.hwm, 0),
                       threads_writing=w1.threads, fds_writing=w1.fds, busiest_threads_cpu_s=busiest(w0, w1),
                       writing_threads=task_histogram(w0, w1))
            log(f"writing: CPU {res['cpu_pct']} % of a core, RSS {w1.rss:.0f} MB (peak {w1.hwm:.0f}), "
                f"{w1.threads} threads, {w1.fds} fds; busiest threads (tid, CPU s): {res['busiest_threads_cpu_s']}")
        finally:
            t_stop = time.monotonic()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(a.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            res["stop_s"] = round(time.monotonic() - t_stop, 1)
            res["exit"] = rc
        text = logf.text()
        res["warnings"] = len(problems(text))
        if res["warnings"]:
            log(f"{res['warnings']} warning/error line(s), first: {problems(text)[0][:300]}")
        res.update(judge(a, written, replica, logdir, seed, base))
        return res
    finally:
        if a.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def judge(a: argparse.Namespace, written: list[int], replica: str, logdir: str, seed: int, base: str) -> dict:
    """Restore random targets (and the latest state) of a few written namespaces; judge the rows."""
    picks = sorted({written[round(k * (len(written) - 1) / max(1, a.sampled - 1))] for k in range(a.sampled)})
    exact = checked = 0
    bad = []
    out = os.path.join(base, "restored.db")
    for i in picks:
        txns, _ = read_log(os.path.join(logdir, f"db{i:04d}.log"))
        oracle = InsertOnly(seed + i, 5, 200, txns)
        storage = open_storage(f"file://{replica}/ns{i:04d}")
        for target in random_targets(txns, a.targets, a.seed + i) + [None]:
            if os.path.exists(out):
                os.unlink(out)
            error = None
            try:
                restore(storage, out, target_us=target)
            except Exception as exc:  # judged as not exact, with the reason
                error = f"{type(exc).__name__}: {exc}"
            verdict = oracle.judge(target, digest_file(out) if error is None else None, error)
            checked += 1
            exact += verdict["exact"]
            if not verdict["exact"]:
                bad.append({"ns": f"ns{i:04d}", **verdict})
    log(f"targets: {exact}/{checked} exact in namespaces {', '.join(f'ns{i:04d}' for i in picks)}")
    for v in bad:
        log(f"  NOT EXACT: {v}")
    stamps = stamp_report(replica, logdir, written)
    log(f"stamps: {stamps['late_stamps']} of {stamps['commits_shipped']} shipped commits flagged late "
        f"(FLAG_STAMP_LATE); stamp after the writer's COMMIT returned: p50 {stamps['after_commit_p50_ms']} ms, "
        f"p99 {stamps['after_commit_p99_ms']} ms, max {stamps['after_commit_max_ms']} ms; "
        f"{stamps['before_begin']} before their BEGIN")
    return {"targets_exact": exact, "targets_checked": checked, "not_exact": bad, **stamps}


def stamp_report(replica: str, logdir: str, written: list[int]) -> dict:
    """How late the written namespaces' commits were stamped: the stamp less the time the
    writer's COMMIT returned (its log), over every shipped commit, and how many are flagged as
    only an upper bound (FLAG_STAMP_LATE: seen late by a starved or busy observer).  A stamp
    before its BEGIN would be a bug.  The replica holds exactly the logged commits, in order."""
    late = shipped = early = 0
    after: list[int] = []
    for i in written:
        txns = [t for t in read_log(os.path.join(logdir, f"db{i:04d}.log"))[0] if t["kind"] != "initial"]
        index = Replica(open_storage(f"file://{replica}/ns{i:04d}"))
        records = [rec for gen in index.generations for seg in gen.segments for rec in index.load_segment(seg)[1]]
        records.sort(key=lambda rec: rec.txid)
        for rec, txn in zip(records[-len(txns):] if txns else [], txns):
            after.append(rec.commit_ts_us - txn["end"])
            early += rec.commit_ts_us < txn["begin"]
        shipped += len(records)
        late += sum(bool(rec.flags & FLAG_STAMP_LATE) for rec in records)
    after.sort()

    def ms(q: float) -> float | None:
        return round(after[min(len(after) - 1, int(q * len(after)))] / 1000, 1) if after else None

    return {"late_stamps": late, "commits_shipped": shipped, "after_commit_p50_ms": ms(0.5),
            "after_commit_p99_ms": ms(0.99), "after_commit_max_ms": ms(1.0), "before_begin": early}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespaces", type=int, default=1000)
    ap.add_argument("--written", type=int, default=None, help="namespaces written (default: a tenth)")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long they are written")
    ap.add_argument("--rate", type=float, default=1.0, help="transactions per second per written namespace")
    ap.add_argument("--idle-seconds", type=float, default=10.0, help="idle window measured before the writes")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds after 'all replicating' before measuring")
    ap.add_argument("--targets", type=int, default=4, help="random restore targets per sampled namespace")
    ap.add_argument("--sampled", type=int, default=3, help="written namespaces whose targets are restored")
    ap.add_argument("--ready-timeout", type=float, default=900.0)
    ap.add_argument("--stop-timeout", type=float, default=300.0)
    ap.add_argument("--profile", help="py-spy raw profile of the write window into this file")
    ap.add_argument("--cprofile", help="cProfile every thread; the write window by function and thread into this file")
    ap.add_argument("--profile-rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.written is None:
        a.written = max(1, a.namespaces // 10)
    res = run(a)
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()

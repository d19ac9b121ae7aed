"""What a process costs, read from /proc (no psutil): CPU seconds, RSS, peak RSS; timed children.

CPU is user + system time of the process *and of its waited-for children* (fields 14-17 of
/proc/PID/stat), so a tool that forks helpers pays for them too.  Peak RSS is the kernel's own
high-water mark (VmHWM), which sees peaks between two samples.  Both are read while the process
is alive: once it is reaped /proc forgets it, so every tool is sampled on a thread and read one
last time right before it is stopped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of ``pid`` in seconds, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # fields 14..17 of stat(5)


def memory_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of ``pid`` in MB (10^6 bytes), None if it is gone or a zombie."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024 / 1e6
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024 / 1e6
    except (FileNotFoundError, ProcessLookupError):
        return None
    if rss is None or hwm is None:
        return None
    return rss, hwm


@dataclass
class Sample:
    t: float  # time.monotonic()
    cpu_s: float
    rss_mb: float
    hwm_mb: float


class ProcSampler:
    """Samples a process every ``period`` seconds on a thread until stopped or the process ends."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)
        self._thread.start()

    def sample(self) -> Sample | None:
        """Read now (also from the caller's thread); appended to ``samples``."""
        cpu, mem = cpu_seconds(self.pid), memory_mb(self.pid)
        if cpu is None or mem is None:
            return None
        s = Sample(time.monotonic(), cpu, mem[0], mem[1])
        self.samples.append(s)
        return s

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.sample() is None:
                return
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max((s.hwm_mb for s in self.samples), default=float("nan"))

    def rss_between(self, t0: float, t1: float) -> list[float]:
        return [s.rss_mb for s in self.samples if t0 <= s.t <= t1]


@dataclass
class Timed:
    """A finished child: wall seconds (fork to exit), exit code, output, its own peak RSS and CPU."""

    cmd: list[str]
    wall_s: float
    rc: int
    stdout: str
    stderr: str
    maxrss_mb: float
    cpu_s: float
    extra: dict = field(default_factory=dict)


GNU_TIME = shutil.which("time", path="/usr/bin:/bin")


def run_timed(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> Timed:
    """Run ``cmd`` to completion: wall time from fork to exit (process start-up and imports
    included, as a user at a shell prompt waits), the child's own peak RSS and CPU.

    Peak RSS is *not* the ru_maxrss of a child forked from this process: Linux carries the
    high-water mark across fork and exec, so every child would start at this (large) Python
    process's RSS.  The child is therefore started by GNU time (``/usr/bin/time``, ~2 MB), whose
    own child's ru_maxrss is the true figure.  Without GNU time, VmHWM is polled every 5 ms.
    """
    stats = None
    if GNU_TIME:
        fd, stats = tempfile.mkstemp(prefix="time-", suffix=".txt")
        os.close(fd)
        full = [GNU_TIME, "-q", "-f", "%M %U %S", "-o", stats] + cmd
    else:
        full = cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True)
    peak = [0.0]
    polling = threading.Event()

    def poll_hwm() -> None:
        while not polling.is_set():
            mem = memory_mb(proc.pid)
            if mem:
                peak[0] = max(peak[0], mem[1])
            polling.wait(0.005)

    poller = None if GNU_TIME else threading.Thread(target=poll_hwm, daemon=True)
    if poller:
        poller.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    wall = time.perf_counter() - t0
    polling.set()
    rss, cpu = peak[0], float("nan")
    if stats:
        try:
            with open(stats) as f:
                last = f.read().strip().splitlines()[-1].split()
            rss, cpu = int(last[0]) * 1024 / 1e6, float(last[1]) + float(last[2])
        except (OSError, IndexError, ValueError):
            pass
        os.unlink(stats)
    return Timed(cmd, wall, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"), rss, cpu)


class Neighbours:
    """CPU the *rest of the box* used while a row ran, in cores: all busy time (/proc/stat) minus
    this process, its reaped children (writers, tools, restores) and the given live helpers
    (our SeaweedFS).  On a shared box this says how much the numbers were disturbed."""

    def __init__(self, helper_pids: list[int]) -> None:
        self.helpers = helper_pids
        self.t0, self.busy0, self.ours0 = self._read()

    def _read(self) -> tuple[float, float, float]:
        import resource

        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        busy = (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK
        ours = sum(getattr(resource.getrusage(w), a) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for a in ("ru_utime", "ru_stime"))
        ours += sum(cpu_seconds(p) or 0.0 for p in self.helpers)
        return time.monotonic(), busy, ours

    def cores(self) -> float:
        t1, busy1, ours1 = self._read()
        return max(0.0, ((busy1 - self.busy0) - (ours1 - self.ours0)) / max(1e-9, t1 - self.t0))


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def busy_cpu_fraction(seconds: float = 1.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat): the neighbours' load."""

    def snap() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:]]
        idle = vals[3] + vals[4]
        return sum(vals), idle

    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def profile_table(profile) -> dict:
    """(calls, inline, cumulative) per function so far of a ``cProfile.Profile`` (tables diffed
    between two moments: the measured window only; benchmarks/_many_profile.py does the same)."""
    out = {}
    for e in profile.getstats():
        code = e.code
        key = code if isinstance(code, str) else f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"
        out[key] = (e.callcount, e.inlinetime, e.totaltime)
    return out

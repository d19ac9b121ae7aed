"""Run the walrewind daemon for one database in a process of its own (for benchmarks/daemon_bench.py).

    _daemon_proc.py DB REPLICA_URL STATE_DIR [UPLOAD_INTERVAL]

Prints READY on stdout once the daemon is up; SIGTERM makes it sync and exit.  Like the CLI, it
constructs the daemon and calls run(); it does not depend on the CLI's options.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.storage import open_storage


def main() -> None:
    db, url, state = sys.argv[1:4]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    daemon = Replicator(db, open_storage(url), state_dir=state, upload_interval=interval)
    daemon.install_signal_handlers()

    def announce() -> None:
        daemon.ready.wait()
        sys.stdout.write("READY\n")
        sys.stdout.flush()

    threading.Thread(target=announce, daemon=True).start()
    if os.environ.get("WALREWIND_TRACEMALLOC"):
        import tracemalloc

        tracemalloc.start()

        def dump() -> None:
            stats = tracemalloc.take_snapshot().statistics("lineno")[:12]
            logging.info("tracemalloc top (traced now %.1f MB, peak %.1f MB):\n%s",
                         *(v / 1e6 for v in tracemalloc.get_traced_memory()), "\n".join(map(str, stats)))

        import atexit

        atexit.register(dump)
        signal_dump = threading.Thread(target=lambda: (daemon.ready.wait(), None), daemon=True)
        signal_dump.start()
    profile = os.environ.get("WALREWIND_CPROFILE")  # a path: cProfile the tail thread into it
    if profile:
        import cProfile

        cProfile.runctx("daemon.run()", globals(), {"daemon": daemon}, profile)
    else:
        daemon.run()
    st = daemon.stats
    logging.info("wake-ups: %d changes, %d looks, %d timeouts; %d transactions",
                 st.wake_changes, st.wake_looks, st.wake_timeouts, st.transactions)


if __name__ == "__main__":
    main()

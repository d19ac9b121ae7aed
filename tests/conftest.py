"""Shared fixtures.  The SeaweedFS S3 server fixture lives in seaweed_server.py.

Two ways to run the suite (from the repository root, after ``pip install -e '.[test]'``):

    .venv/bin/python -m pytest -q -p no:cacheprovider -m "not slow"   # fast loop, under a minute
    .venv/bin/python -m pytest -q -p no:cacheprovider                 # full suite (what CI runs)

``slow`` marks seconds-long scenarios (stress, outages, kill -9, every PITR workload); each area
keeps a quick test in the fast loop.  ``-m "not s3"`` skips everything that needs SeaweedFS.

File names: ``test_<package>_<module>.py`` tests one engine module (engine/<package>/<module>.py),
e.g. test_sqlite_walfile.py; scenario tests across the engine are named for the scenario
(test_pitr, test_torture, test_daemon_restart, test_writers); ``test_s3_*`` run on SeaweedFS.
Shared helpers live in harness.py (writer processes, the daemon thread, the restore oracle).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings
from seaweed_server import seaweed_s3  # noqa: F401  (session fixture, re-exported for pytest)

# Property tests draw the same examples on every run (all randomness in tests is seeded); set
# WALREWIND_HYPOTHESIS=explore to search new examples locally.
settings.register_profile("seeded", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("WALREWIND_HYPOTHESIS", "seeded"))


@pytest.fixture
def many(monkeypatch):
    """This test process serves "many" databases (what Fleet.run decides for sqld or > 8)."""
    from walrewind.engine.daemon.replicator import Replicator

    monkeypatch.setattr(Replicator, "many_databases", True)
    monkeypatch.setattr(Replicator, "gil_switch_interval", None)


def pytest_collection_modifyitems(config, items):
    """Tests that start a real server (SeaweedFS, sqld) belong to the full suite, not the fast loop:
    starting either costs seconds.  The fast loop keeps a local-replica test of every area."""
    for item in items:
        module = os.path.basename(str(item.fspath))
        if ("seaweed_s3" in getattr(item, "fixturenames", ()) or module.startswith("test_s3_")
                or item.name.startswith("test_s3_") or "[s3" in item.name):
            item.add_marker(pytest.mark.s3)
            item.add_marker(pytest.mark.slow)
        elif module.startswith("test_sqld") and module != "test_sqld_config.py":
            item.add_marker(pytest.mark.slow)

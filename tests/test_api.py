"""The Python API (engine/api/, installed as `walrewind`): docs/API.md's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import walrewind
from harness import DaemonThread, create_db, run_writer

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "API.md")


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """A directory holding app.db and its replica backups/, with a few transactions (txids 2..) and
    a mark `deploy-1` at the last of them (docs/API.md's mark examples restore it)."""
    base = tmp_path_factory.mktemp("api")
    db = str(base / "app.db")
    create_db(db)
    with DaemonThread(db, str(base / "backups"), str(base / "state"), upload_interval=0.05) as daemon:
        run_writer({"db": db, "txns": 12, "rate": 50, "seed": 5, "log": os.devnull})
        deadline = time.monotonic() + 30
        while daemon.stats.uploaded_txid < daemon.stats.last_txid or daemon.stats.last_txid < 12:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        walrewind.mark(str(base / "backups"), "deploy-1", note="quick start")
    return base


def examples() -> list[str]:
    with open(DOC) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.mark.parametrize("index", range(len(examples())))
def test_docs_examples_run(quick_start, index):
    code = examples()[index]
    res = subprocess.run([sys.executable, "-c", code], cwd=quick_start, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "WALREWIND_CONFIG": ""})
    assert res.returncode == 0, f"example {index} failed:\n{code}\n{res.stderr}"


def test_restore_returns_an_aware_utc_moment_and_maps_errors(quick_start, tmp_path):
    result = walrewind.restore(str(quick_start / "backups"), tmp_path / "x.db", txid=5)
    assert result.txid == 5 and result.committed_at.tzinfo == timezone.utc and len(result.checksum) == 16
    naive = result.committed_at.replace(tzinfo=None)
    again = walrewind.restore(str(quick_start / "backups"), tmp_path / "y.db", timestamp=naive)
    # Inclusive: the last transaction stamped at that moment (several can share a stamp when the
    # daemon read them in one pass).
    assert again.txid >= 5 and again.committed_at == result.committed_at
    with pytest.raises(walrewind.OutputExists):
        walrewind.restore(str(quick_start / "backups"), tmp_path / "x.db")
    with pytest.raises(walrewind.UnknownSource):
        walrewind.restore("no-such-database", tmp_path / "z.db")
    with pytest.raises(walrewind.TimestampError):
        walrewind.restore(str(quick_start / "backups"), tmp_path / "z.db", timestamp=datetime(2999, 1, 1))
    assert issubclass(walrewind.TargetTooOld, walrewind.WalrewindError)

"""engine/logs.py: one line per event, naming its database; text or JSON; never a credential."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from walrewind.engine import logs


@pytest.fixture
def captured():
    """Set up walrewind's logging into a buffer for one test, and take it down again."""

    def setup(fmt: str, verbose: bool = False) -> io.StringIO:
        out = io.StringIO()
        handlers.append(logs.setup(fmt, verbose, stream=out))
        return out

    handlers: list[logging.Handler] = []
    root = logging.getLogger("walrewind")
    level = root.level
    yield setup
    for h in handlers:
        root.removeHandler(h)
    root.setLevel(level)
    logs.bind(None)


def test_json_lines_have_ts_level_db_event_message(captured):
    out = captured("json")
    logs.event("replicating", "app", "replicating app: /data/app.db -> s3://bucket/app")
    done = threading.Event()

    def worker():
        logging.getLogger("walrewind.shipper").warning("replica unreachable: refused", extra={"event": "replica_unreachable"})
        logging.getLogger("walrewind.lease").error("lost the lease")
        done.set()

    threading.Thread(target=logs.bound_to("orders", worker)).start()
    assert done.wait(10)
    logging.getLogger("walrewind.shipper").info("detail")  # below WARNING without --verbose: not shown
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(d["level"], d["db"], d["event"]) for d in lines] == [
        ("info", "app", "replicating"), ("warning", "orders", "replica_unreachable"), ("error", "orders", "lease")]
    assert lines[1]["message"] == "replica unreachable: refused"
    assert all(set(d) == {"ts", "level", "db", "event", "message"} and d["ts"].endswith("Z") for d in lines)


def test_text_lines_name_the_database_and_keep_event_lines_plain(captured):
    out = captured("text", verbose=True)
    logs.event("failed", "app", "app: FAILED: boom; retrying in 1 s")
    logs.bind("app")
    logging.getLogger("walrewind.shipper").info("base snapshot uploaded")
    logs.bind(None)
    logging.getLogger("walrewind.fleet").warning("no database")
    first, second, third = out.getvalue().splitlines()
    assert first == "app: FAILED: boom; retrying in 1 s"
    assert second.endswith(" INFO app: base snapshot uploaded") and second[:4].isdigit()
    assert third.endswith(" WARNING no database")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_never_reach_a_line(captured, fmt):
    out = captured(fmt)
    url = "s3://AKIAEXAMPLEKEY:wJalr%2FSECRET@bucket/prefix?endpoint=http://127.0.0.1:9"
    logs.event("replicating", "app", f"replicating app -> {url}")
    try:
        raise RuntimeError(f"could not open {url}")
    except RuntimeError:
        logging.getLogger("walrewind.fleet").exception("unexpected error")
    text = out.getvalue()
    assert "AKIAEXAMPLEKEY" not in text and "SECRET" not in text
    assert "s3://***@bucket/prefix" in text


def test_brief_reasons_and_durations():
    exc = RuntimeError('s3://b/p/generations/g/segments/x.seg: put failed: cannot reach endpoint http://127.0.0.1:1: '
                       'Could not connect to the endpoint URL: "http://127.0.0.1:1/b/p/generations/g/segments/x.seg" '
                       "(after 5 attempts)\nsecond line")
    assert logs.brief(exc) == ("put failed: cannot reach endpoint http://127.0.0.1:1: Could not connect to the "
                               "endpoint URL (after 5 attempts)")
    assert len(logs.brief(RuntimeError("x" * 500))) == 200
    assert logs.brief(TimeoutError()) == "TimeoutError"
    assert [logs.duration(s) for s in (0.25, 42, 125, 7300)] == ["0.2 s", "42 s", "2m05s", "2h01m"]
    with pytest.raises(ValueError):
        logs.setup("xml")

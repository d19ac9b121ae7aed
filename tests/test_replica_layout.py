"""Object key names (engine/replica/layout.py): round trips, numeric order, and foreign keys."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from walrewind.engine.replica import layout

U32 = st.integers(min_value=0, max_value=2**32 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)

GENERATIONS = st.builds(lambda t, r: f"{t:016x}-{r:08x}", U64, U32)


@settings(max_examples=200, deadline=None)
@given(gen=GENERATIONS, a=U64, b=U64, c=U64, d=U64)
@example(gen="0000000000000000-00000000", a=0, b=0, c=0, d=0)
@example(gen="ffffffffffffffff-ffffffff", a=2**64 - 1, b=2**64 - 1, c=2**64 - 1, d=2**64 - 1)
def test_keys_round_trip(gen, a, b, c, d):
    for key in (
        layout.SnapshotKey(gen, a, b),
        layout.SegmentKey(gen, a, b, c, d),
        layout.HeartbeatKey(gen, a, b),
    ):
        assert layout.parse_key(key.key) == key
        assert type(layout.parse_key(key.key)) is type(key)
        assert key.key.startswith(f"generations/{gen}/")


@settings(max_examples=100, deadline=None)
@given(keys=st.lists(st.tuples(GENERATIONS, U64, U64, U64, U64), min_size=2, max_size=10))
def test_key_order_is_numeric_order(keys):
    segs = [layout.SegmentKey(*k) for k in keys]
    assert sorted(segs, key=lambda s: s.key) == sorted(segs)
    snaps = [layout.SnapshotKey(g, a, b) for g, a, b, _, _ in keys]
    assert sorted(snaps, key=lambda s: s.key) == sorted(snaps)


@settings(max_examples=50, deadline=None)
@given(now=st.integers(min_value=0, max_value=2**63 - 1))
def test_new_generation_ids(now):
    gen = layout.new_generation_id(now)
    assert layout.GEN_RE.match(gen)
    assert int(gen[:16], 16) == now
    assert layout.parse_key(layout.HeartbeatKey(gen, 1, 2).key) == layout.HeartbeatKey(gen, 1, 2)


G = "0123456789abcdef-01234567"
H16 = "0000000000000001"
FOREIGN = [
    "",
    "README.md",
    "generations/",
    f"generations/{G}/",
    f"generations/{G}/snapshots/{H16}-{H16}.snap.tmp",
    f"generations/{G}/snapshots/{H16}-{H16}",
    f"generations/{G}/snapshots/{H16}-{H16}.seg",
    f"generations/{G}/segments/{H16}-{H16}-{H16}.seg",
    f"generations/{G}/segments/{H16}-{H16}-{H16}-{H16}.snap",
    f"generations/{G}/heartbeats/{H16}-{H16}.json",
    f"generations/{G}/heartbeats/{H16}",
    f"generations/{G.upper()}/snapshots/{H16}-{H16}.snap",
    f"generations/{G}/snapshots/{H16.upper().replace('1', 'A')}-{H16}.snap",
    f"generations/0123456789abcdef/snapshots/{H16}-{H16}.snap",
    f"generations/{G}0/snapshots/{H16}-{H16}.snap",
    f"generations/{G}/snapshots/1-{H16}.snap",
    f"generations/{G}/snapshots/{H16}0-{H16}.snap",
    f"generations/{G}/snapshots/-000000000000001-{H16}.snap",
    f"backup/generations/{G}/snapshots/{H16}-{H16}.snap",
    f"/generations/{G}/snapshots/{H16}-{H16}.snap",
    f"generations/{G}/snapshots/{H16}-{H16}.snap/extra",
    f"generations/{G}/other/{H16}-{H16}.snap",
    f"generations/{G}/snapshots/{H16}-{H16}.snap ",
]


@pytest.mark.parametrize("key", FOREIGN)
def test_foreign_keys_are_ignored(key):
    assert layout.parse_key(key) is None


def test_key_with_trailing_newline_is_foreign():
    assert layout.parse_key(f"generations/{G}/snapshots/{H16}-{H16}.snap\n") is None

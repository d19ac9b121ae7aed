"""The whole-database checksum and per-page hashes (engine/sqlite/pagehash.py): incremental
updates equal a full recompute over any history of growth, shrinking and re-growth."""

from __future__ import annotations

import os
import random
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from walrewind.engine.sqlite.pagehash import (
    PageHashes,
    checksum_file,
    checksum_pages,
    page_hash,
)

PAGE = 512


def image_checksum(image: dict[int, bytes], db_pages: int) -> int:
    zero = bytes(PAGE)
    return checksum_pages((p, image.get(p, zero)) for p in range(1, db_pages + 1))


@st.composite
def histories(draw):
    """Random transactions: growth, shrinking, re-growth, pages beyond the new size."""
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = random.Random(seed)
    txns = []
    size = 0
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        kind = draw(st.sampled_from(["grow", "shrink", "same", "jump"]))
        if kind == "grow":
            new = size + draw(st.integers(min_value=1, max_value=5))
        elif kind == "shrink":
            new = max(1, size - draw(st.integers(min_value=1, max_value=6)))
        elif kind == "jump":
            new = size + draw(st.integers(min_value=6, max_value=40))  # leaves never-written pages
        else:
            new = max(size, 1)
        top = max(new, size) + 3  # includes pages beyond the commit size, which must be ignored
        pgnos = draw(st.lists(st.integers(min_value=1, max_value=top), max_size=6, unique=True))
        pages = {p: rng.choice([bytes(PAGE), rng.randbytes(PAGE)]) for p in pgnos}
        txns.append((pages, new))
        size = new
    return txns


def apply_model(image: dict[int, bytes], pages: dict[int, bytes], db_pages: int) -> None:
    for p, data in pages.items():
        if p <= db_pages:
            image[p] = data
    for p in [p for p in image if p > db_pages]:
        del image[p]  # truncated away: if the file grows again these read back as zeros


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=histories())
def test_incremental_checksum_equals_full_recompute_and_file(history):
    hashes = PageHashes(PAGE)
    assert hashes.db_pages == 0 and hashes.checksum == 0
    image: dict[int, bytes] = {}
    for pages, db_pages in history:
        got = hashes.apply(pages, db_pages)
        apply_model(image, pages, db_pages)
        assert got == hashes.checksum
        assert hashes.db_pages == db_pages
        assert got == image_checksum(image, db_pages)
    db_pages = history[-1][1]
    blob = b"".join(image.get(p, bytes(PAGE)) for p in range(1, db_pages + 1))
    assert len(blob) == db_pages * PAGE
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "db")
        with open(path, "wb") as f:
            f.write(blob)
        seen = []
        assert checksum_file(path, PAGE, progress=seen.append) == hashes.checksum
        assert sum(seen) == len(blob)
    for p in range(1, db_pages + 1):
        assert not hashes.differs(p, image.get(p, bytes(PAGE)))
    assert hashes.differs(db_pages + 1, bytes(PAGE))


@settings(max_examples=40, deadline=None)
@given(history=histories())
def test_page_hashes_bytes_round_trip(history):
    hashes = PageHashes(PAGE)
    for pages, db_pages in history[:-1]:
        hashes.apply(pages, db_pages)
    clone = PageHashes.from_bytes(hashes.to_bytes())
    assert clone.page_size == hashes.page_size
    assert clone.checksum == hashes.checksum
    assert list(clone.hashes) == list(hashes.hashes)
    assert clone.to_bytes() == hashes.to_bytes()
    copy = hashes.copy()
    last_pages, last_size = history[-1]
    assert clone.apply(last_pages, last_size) == hashes.apply(last_pages, last_size)
    assert copy.apply(last_pages, last_size) == hashes.checksum
    assert list(clone.hashes) == list(hashes.hashes)


def test_copy_is_independent():
    a = PageHashes(PAGE)
    a.apply({1: b"\x01" * PAGE}, 1)
    b = a.copy()
    b.apply({1: b"\x02" * PAGE}, 2)
    assert a.db_pages == 1 and a.checksum == checksum_pages([(1, b"\x01" * PAGE)])


def test_checksum_sees_swapped_and_moved_pages():
    x, y = b"\x01" * PAGE, b"\x02" * PAGE
    assert checksum_pages([(1, x), (2, y)]) != checksum_pages([(1, y), (2, x)])
    assert page_hash(1, x) != page_hash(2, x)
    assert checksum_pages([]) == 0


def test_empty_file_checksum(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    assert checksum_file(str(tmp_path / "e"), PAGE) == 0 == PageHashes(PAGE).checksum

"""restore(T) equals the database as it was at T: real writer process, real daemon, real restores."""

from __future__ import annotations

import pytest
from harness import (
    PITR_WORKLOADS,
    check_latest_restore,
    check_restore_at_fraction,
    check_restore_window_edges,
    pitr_params,
    replicate_workload,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(scope="module", params=pitr_params())
def replicated(request, tmp_path_factory):
    """One workload replicated end to end; the writer's log is the ground truth."""
    base = tmp_path_factory.mktemp(request.param)
    return replicate_workload(base, str(base / "replica"), PITR_WORKLOADS[request.param])


def test_latest_restore_equals_final_state(replicated, tmp_path):
    check_latest_restore(replicated, str(tmp_path / "latest.db"))


def test_window_edges(replicated, tmp_path):
    check_restore_window_edges(replicated, str(tmp_path))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(min_value=0.0, max_value=1.0), whole_second=st.booleans())
def test_restore_at_random_time_is_exact(replicated, tmp_path_factory, fraction, whole_second):
    check_restore_at_fraction(replicated, str(tmp_path_factory.mktemp("r") / "at.db"), fraction, whole_second)

"""Shared fixtures.  The SeaweedFS S3 server fixture lives in seaweed_server.py."""

from __future__ import annotations

import os

from hypothesis import settings
from seaweed_server import seaweed_s3  # noqa: F401  (session fixture, re-exported for pytest)

# Property tests draw the same examples on every run (all randomness in tests is seeded); set
# WALREWIND_HYPOTHESIS=explore to search new examples locally.
settings.register_profile("seeded", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("WALREWIND_HYPOTHESIS", "seeded"))

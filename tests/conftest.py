"""Shared fixtures.  The SeaweedFS S3 server fixture lives in seaweed_server.py."""

from __future__ import annotations

from seaweed_server import seaweed_s3  # noqa: F401  (session fixture, re-exported for pytest)

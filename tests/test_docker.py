"""docker/check.sh: the static checks of the image, the compose file and the systemd unit pass."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_docker_static_checks_pass_and_cover_the_healthcheck():
    done = subprocess.run(["bash", os.path.join(ROOT, "docker", "check.sh")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok:   HEALTHCHECK runs walrewind status" in done.stdout

"""service/config.py: a bad setting stops the start, naming the variable."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RANKER_PORT": "eighty"}, "RANKER_PORT"),
        ({"RANKER_FUSION_A": "9"}, "RANKER_FUSION_A"),
        ({"RANKER_PROVIDERS": "tpu"}, "RANKER_PROVIDERS"),
        ({"RANKER_ADMIN_TOKEN": "short"}, "RANKER_ADMIN_TOKEN must be at least 16"),
        ({"RANKER_MAX_QUEUED_ROWS": "10"}, "RANKER_MAX_QUEUED_ROWS"),
    ],
)
def test_bad_settings_stop_the_start_naming_the_variable(env, needle, tmp_path):
    import os
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "service"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and needle in r.stderr, r.stderr

"""service/engine.py: what the engine refuses to load."""

from __future__ import annotations

import json

import pytest

from loadtest.parts import copy_version


def test_missing_model_is_a_clear_error(tmp_path):
    from service.model_folder import ModelError, newest_version

    with pytest.raises(ModelError, match="make train"):
        newest_version(tmp_path)


def test_a_manifest_whose_digest_does_not_match_its_content_is_refused(exported, tmp_path):
    from service.engine import Engine
    from service.model_folder import ModelError

    copy = copy_version(exported, tmp_path, "tampered")
    m = json.loads((copy / "manifest.json").read_text())
    m["calibration"] = {"pctr": {"method": "platt", "a": 2.0, "b": 0.0}}  # changes every score
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="digest"):
        Engine(copy)

"""training/scorer_cost.py: a model's exported item scorer timed per candidate row on one thread,
its user tower per user and its user representation's bytes, models side by side."""

from __future__ import annotations

import json

import pytest

from features import manifest
from training import scorer_cost


def test_each_model_gets_its_cost_and_its_user_bytes(exported, attn_spec_model, capsys):
    scorer_cost.main(
        [str(exported), str(attn_spec_model), "--rows", "40", "--users", "3", "--seconds", "0.05"]
        + ["--rounds", "1"]
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["model"] for r in rows] == [str(exported), str(attn_spec_model)]
    for r, folder in zip(rows, (exported, attn_spec_model), strict=True):
        assert r["user_repr_bytes"] == 4 * manifest.read(folder).user_repr_dim
        assert r["scorer_us_per_row"] > 0 and r["user_tower_us"] > 0
        assert (r["rows_per_run"], r["users_per_run"]) == (40, 3)
    assert rows[0]["scorer_vs_first"] == 1.0
    # the attention model caches its users' heaviest list members beside the towers' halves
    assert rows[1]["user_repr_bytes"] > rows[0]["user_repr_bytes"]


def test_bad_arguments_are_refused(exported):
    with pytest.raises(SystemExit):
        scorer_cost.main([str(exported), "--users", "0"])

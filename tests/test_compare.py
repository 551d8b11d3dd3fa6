"""training.compare: the Table-2 layout from real training runs, and resuming a comparison."""

from __future__ import annotations

import json
import logging

import pytest

from training.compare import compare, parse_model, run_key


@pytest.fixture(scope="module")
def compared(generated, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    return out, compare(generated, ["base", "esmm"], seeds=2, out=out, epochs=1)


def test_the_table_has_every_model_with_mean_and_spread(compared):
    out, result = compared
    assert list(result["models"]) == ["base", "esmm"]
    for row in result["models"].values():
        assert row["seeds"] == 2
        for key in ("cvr_auc", "ctcvr_auc", "ctr_auc"):
            values = row[key]["values"]
            assert len(values) == 2 and all(0.5 < v < 1 for v in values)
            assert min(values) <= row[key]["mean"] <= max(values)
            assert row[key]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    # different seeds really train differently
    assert len(set(result["models"]["esmm"]["cvr_auc"]["values"])) == 2
    best = max(r["cvr_auc"]["mean"] for r in result["models"].values())
    assert result["oracle"]["cvr_auc"] > best
    assert json.loads((out / "compare.json").read_text()) == result
    md = (out / "compare.md").read_text()
    assert "| base | 2 |" in md and "| esmm | 2 |" in md and "oracle" in md
    assert (out / "compare.png").stat().st_size > 1000
    assert not list(out.glob("runs/*/checkpoint.pt"))


def test_a_comparison_resumes_and_grows(compared, generated, caplog):
    """Finished runs are reused (same figures, no training); only the new seed trains."""
    out, first = compared
    with caplog.at_level(logging.INFO, logger="training.compare"):
        again = compare(generated, ["esmm"], seeds=3, out=out, epochs=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "training.compare"]
    assert sum(m.startswith("reusing esmm") for m in messages) == 2
    assert messages.count("training esmm, seed 2") == 1
    assert (
        again["models"]["esmm"]["cvr_auc"]["values"][:2]
        == (first["models"]["esmm"]["cvr_auc"]["values"])
    )
    assert again["models"]["esmm"]["seeds"] == 3


def test_a_run_is_keyed_by_its_data_files_spec_seed_and_epochs(tmp_path):
    (tmp_path / "sample_skeleton_train.csv").write_text("1,0,0,x,1,y\n")
    key = run_key(tmp_path, "esmm", 0, 3)
    assert run_key(tmp_path, "esmm", 0, 3) == key
    assert run_key(tmp_path, "esmm", 1, 3) != key
    assert run_key(tmp_path, "esmm", 0, 2) != key
    assert run_key(tmp_path, "esmm:ips=0.5", 0, 3) != key
    (tmp_path / "sample_skeleton_train.csv").write_text("1,0,0,x,1,y\n2,0,0,x,1,y\n")
    assert run_key(tmp_path, "esmm", 0, 3) != key


def test_model_specs_parse_and_bad_options_are_named():
    assert parse_model("esmm:ips=0.5:cal=platt") == {
        "model": "esmm",
        "ips_weight": 0.5,
        "calibration": "platt",
    }
    assert parse_model("mmoe:experts=8") == {"model": "mmoe", "experts": 8}
    with pytest.raises(SystemExit, match="unknown option 'depth=3'"):
        parse_model("esmm:depth=3")

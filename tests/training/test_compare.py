"""training.compare: the Table-2 layout from real training runs, and resuming a comparison."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from training.compare import compare, parse_model, resolve_items, run_key
from training.config import TrainConfig
from training.reference import STRONG

# the towers alone: after the blend (the default wide term, fitted on validation by a logistic
# fit) Platt scaling has next to nothing left to correct
CAL = "esmm:cal=platt:wide=none"


@pytest.fixture(scope="module")
def compared(small_generated, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as patch:
        # each run's wide term (the default): a short L2 path (the path itself: test_wide)
        patch.setitem(STRONG, "l2", (1e-2, 1e-3))
        patch.setitem(STRONG, "max_evals", 30)
        return out, compare(small_generated, ["base", CAL], seeds=2, out=out, epochs=1)


def test_the_table_has_every_model_with_mean_and_spread(compared):
    out, result = compared
    assert list(result["models"]) == ["base", CAL]
    for row in result["models"].values():
        assert row["seeds"] == 2
        for key in ("cvr_auc", "ctcvr_auc", "ctr_auc"):
            values = row[key]["values"]
            assert len(values) == 2 and all(0.5 < v < 1 for v in values)
            assert min(values) <= row[key]["mean"] <= max(values)
            assert row[key]["std"] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)
    # different seeds really train differently
    assert len(set(result["models"][CAL]["cvr_auc"]["values"])) == 2
    best = max(r["cvr_auc"]["mean"] for r in result["models"].values())
    assert result["oracle"]["cvr_auc"] > best
    assert json.loads((out / "compare.json").read_text()) == result
    md = (out / "compare.md").read_text()
    # generated data: the entire-space CVR AUC too, under its ceiling
    for row in result["models"].values():
        assert 0.5 < row["cvr_auc_entire"]["mean"] < result["oracle"]["cvr_auc_entire"]
    assert "CVR AUC, entire space |" in md
    assert "| base | 2 |" in md and f"| {CAL} | 2 |" in md and "oracle" in md
    # each model against the first: the mean difference and its standard error
    d = result["differences"]["models"][CAL]["cvr_auc"]
    base, cal = result["models"]["base"]["cvr_auc"], result["models"][CAL]["cvr_auc"]
    assert d["diff"] == pytest.approx(cal["mean"] - base["mean"])
    assert d["se"] == pytest.approx(((cal["std"] ** 2 + base["std"] ** 2) / 2) ** 0.5)
    assert "Difference from base" in md and f"| {CAL} | {d['diff']:+.4f} ± {d['se']:.4f} |" in md
    # the calibrated model gets its ECE before and after, the uncalibrated one none
    assert "ece" not in result["models"]["base"]
    ece = result["models"][CAL]["ece"]
    assert ece["after"]["cvr"]["mean"] < ece["before"]["cvr"]["mean"]
    assert "| model | ECE pCTR | ECE pCVR | ECE pCTCVR |" in md and f"| {CAL} | 0." in md
    # the true probabilities' ECE on the same labels: what no calibration can go below
    assert result["ece_floor"]["cvr"] < ece["before"]["cvr"]["mean"]
    assert "| true probabilities (the floor) | 0." in md
    assert (out / "compare.png").stat().st_size > 1000
    assert not list(out.glob("runs/*/checkpoint.pt"))


def test_a_comparison_resumes_and_grows(compared, small_generated, caplog):
    """Finished runs are reused (same figures, no training); only the new seed trains."""
    out, first = compared
    with caplog.at_level(logging.INFO, logger="training.compare"):
        again = compare(small_generated, [CAL], seeds=3, out=out, epochs=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "training.compare"]
    assert sum(m.startswith(f"reusing {CAL}") for m in messages) == 2
    assert messages.count(f"training {CAL}, seed 2") == 1
    was, now = first["models"][CAL], again["models"][CAL]
    assert now["cvr_auc"]["values"][:2] == was["cvr_auc"]["values"]
    assert now["seeds"] == 3


def test_a_run_is_keyed_by_its_resolved_settings_and_files(tmp_path):
    (tmp_path / "sample_skeleton_train.csv").write_text("1,0,0,x,1,y\n")

    def key(spec: str, seed: int = 0, epochs: int = 3, out: str = "run") -> dict:
        fields = resolve_items(parse_model(spec), tmp_path)
        cfg = TrainConfig(data=tmp_path, out=tmp_path / out, seed=seed, epochs=epochs, **fields)
        return run_key(cfg, "model" not in fields)

    k = key("esmm")
    assert key("esmm") == k and key("esmm", out="elsewhere") == k  # where it writes: no matter
    assert key("esmm", seed=1) != k
    assert key("esmm", epochs=2) != k
    assert key("esmm:ips=0.5") != k
    assert key("esmm:cvr=0.3") == k and key("esmm:cvr=0") != k  # the default, resolved
    (tmp_path / "items.csv").write_text("205,price\n1,2.0\n")
    assert key("lr") != key("lr:items=items.csv") and key("lr") != k
    with_items = key("esmm:items=items.csv")
    (tmp_path / "items.csv").write_text("205,price\n1,3.50\n")
    assert key("esmm:items=items.csv") != with_items  # the item table changed
    (tmp_path / "sample_skeleton_train.csv").write_text("1,0,0,x,1,y\n2,0,0,x,1,y\n")
    assert key("esmm") != k


def test_model_specs_parse_and_bad_options_are_named():
    assert parse_model("esmm:ips=0.5:cal=platt") == {
        "model": "esmm",
        "ips_weight": 0.5,
        "calibration": "platt",
    }
    assert parse_model("mmoe:experts=8") == {"model": "mmoe", "experts": 8}
    assert parse_model("mmoe:experts=8:hidden=64x32")["hidden"] == (64, 32)
    with pytest.raises(SystemExit, match="unknown option 'depth=3'"):
        parse_model("esmm:depth=3")
    # what training would refuse is refused here, before any run: a wrong kind, ESCM2-IPS on a
    # kind without it, no experts
    for bad, why in (
        ("esmn", "unknown model kind"),
        ("base:ips=0.5", "ESCM2-IPS applies to"),
        ("mmoe:experts=0", "experts must be >= 1"),
    ):
        with pytest.raises(SystemExit, match=why):
            parse_model(bad)
    for bad in ("esmm:cal=sigmoid", "mmoe:hidden=64x0", "mmoe:experts=many", "esmm:ips="):
        with pytest.raises(SystemExit, match=bad.split(":")[-1]):
            parse_model(bad)


def test_a_bad_spec_stops_the_comparison_before_any_training(generated, tmp_path):
    with pytest.raises(SystemExit, match="cal=sigmoid"):
        compare(generated, ["esmm", "esmm:cal=sigmoid"], seeds=1, out=tmp_path, epochs=1)
    assert not (tmp_path / "runs").exists()


def test_the_logistic_references_are_a_row_like_any_model(small_generated, tmp_path):
    """`lr`: one logistic regression per head on the same data, split and seed, tabulated (and
    differenced) like the models, the entire-space CVR AUC included."""
    result = compare(small_generated, ["lr"], seeds=1, out=tmp_path, epochs=1)
    row = result["models"]["lr"]
    for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "cvr_auc_entire"):
        assert 0.5 < row[key]["mean"] < result["oracle"][key], key
    metrics = json.loads(next(tmp_path.glob("runs/lr-seed0/metrics.json")).read_text())
    ref = metrics["reference"]
    assert ref["cvr_train_rows"] < ref["ctr_train_rows"] == ref["ctcvr_train_rows"]
    assert "| lr | 1 |" in (tmp_path / "compare.md").read_text()
    assert parse_model("lr") == {}
    assert parse_model("lr:items=items.parquet") == {"items": Path("items.parquet")}
    assert parse_model("lr-strong:without=508+853") == {"without": ("508", "853")}
    with pytest.raises(SystemExit, match="items= and without= only"):
        parse_model("lr:ips=0.5")


def test_the_strong_reference_is_a_row_fitted_to_its_l2_on_validation(
    small_generated, tmp_path, monkeypatch
):
    """`lr-strong`: an L2 logistic regression per head fitted by L-BFGS on all its rows, its
    strength chosen on the validation split; differenced against like `lr`, and on this data
    at least as good as the cheap reference on the heads fitted on every impression. (A short
    path and few evaluations: the test proves the path, make compare measures.)"""
    monkeypatch.setitem(STRONG, "l2", (1e-3, 1e-4))
    monkeypatch.setitem(STRONG, "max_evals", 30)
    result = compare(small_generated, ["lr-strong", "lr"], seeds=1, out=tmp_path, epochs=1)
    strong, cheap = result["models"]["lr-strong"], result["models"]["lr"]
    for key in ("ctr_auc", "cvr_auc", "ctcvr_auc", "cvr_auc_entire"):
        assert 0.5 < strong[key]["mean"] < result["oracle"][key], key
    for key in ("ctr_auc", "ctcvr_auc"):
        assert strong[key]["mean"] >= cheap[key]["mean"] - 0.005, key
    metrics = json.loads(next(tmp_path.glob("runs/lr-strong-seed0/metrics.json")).read_text())
    ref = metrics["reference"]
    assert metrics["model"] == "lr-strong"
    for head in ("ctr", "cvr", "ctcvr"):
        assert ref[f"{head}_l2"] in STRONG["l2"] and ref[f"{head}_evals"] > 0
    assert "| lr-strong | 1 |" in (tmp_path / "compare.md").read_text()
    assert parse_model("lr-strong:items=items.parquet") == {"items": Path("items.parquet")}


def test_a_spec_compares_on_its_named_tables_with_interactions(spec_generated, tmp_path):
    """`--spec`: the same table from a feature spec's tables (the references included), its
    runs keyed by the spec and the tables beside it; target attention as a model option
    (`inter=attn:k=N`); an Ali-CCP folder's item table (items=) refused there."""
    models = ["lr", "esmm", "esmm:inter=attn:k=4"]
    result = compare(None, models, seeds=1, out=tmp_path, epochs=1, spec=spec_generated)
    assert result["data"] == str(spec_generated)
    for name in models:
        row = result["models"][name]
        assert 0.5 < row["ctr_auc"]["mean"] < result["oracle"]["ctr_auc"], name
    key = json.loads((tmp_path / "runs" / "esmm_inter=attn_k=4-seed0" / "run_key.json").read_text())
    assert key["settings"]["interactions"] == "attn" and key["settings"]["attn_k"] == 4
    assert str(spec_generated.resolve()) in [f[0] for f in key["files"]]
    assert parse_model("esmm:inter=dot") == {"model": "esmm", "interactions": "dot"}
    with pytest.raises(SystemExit, match="unknown interactions"):
        parse_model("esmm:inter=fm")
    with pytest.raises(SystemExit, match="a feature spec names its own"):
        compare(None, ["esmm:items=items.parquet"], seeds=1, out=tmp_path, spec=spec_generated)


def test_an_option_of_the_other_route_is_refused_before_any_run(tmp_path):
    """A spec's comparison refuses `without=` and the Ali-CCP interactions by name, before it
    trains its first model (it ended in a traceback at that model's run)."""
    for model in ("esmm:inter=counts", "esmm:without=508"):
        with pytest.raises(SystemExit, match=model):
            compare(None, ["esmm", model], 1, tmp_path / "out", spec=tmp_path / "spec.yaml")
    assert not (tmp_path / "out" / "runs").exists()

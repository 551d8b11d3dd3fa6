"""training/tune.py: a real (tiny) Optuna study over the trainer, continued from its SQLite file,
whose best trial exports like any run; bad arguments are refused before anything is trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.reference import STRONG
from training.tune import default_params, main, tune

# Small enough for a few one-epoch trials on 2 shared cores.
IMPRESSIONS = 8_000


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    from training.generate import generate

    out = tmp_path_factory.mktemp("tune-data")
    generate(out, impressions=IMPRESSIONS, seed=11)
    return out


@pytest.fixture(scope="module")
def study(small, tmp_path_factory) -> tuple[Path, dict, dict]:
    """Two trials, then the same study continued with one more: (OUT, first, second)."""
    out = tmp_path_factory.mktemp("tune")
    with pytest.MonkeyPatch.context() as patch:
        # each trial's wide term (the default): a short L2 path (the path itself: test_wide)
        patch.setitem(STRONG, "l2", (1e-2, 1e-3))
        patch.setitem(STRONG, "max_evals", 30)
        first = tune(small, out, trials=2, epochs=1, objective="ctcvr_auc")
        second = tune(small, out, trials=1, epochs=1, objective="ctcvr_auc")
    return out, first, second


def test_writes_every_trial_and_the_best_recipe(study, small):
    out, first, second = study
    assert [t["number"] for t in first["trials"]] == [0, 1]
    assert all(t["state"] == "COMPLETE" for t in first["trials"])
    # a new study starts from the default recipe
    assert first["trials"][0]["params"] == default_params("esmm", "ctcvr_auc")
    best = first["best"]
    values = [t["value"] for t in first["trials"]]
    assert best["value"] == max(values)  # AUC: maximised
    # the score is the trainer's validation figure at its kept epoch, not a test figure
    chosen = first["trials"][best["number"]]
    assert best["value"] == chosen["validation"]["val_ctcvr_auc"]
    assert set(best["test_reported_not_tuned"]) == {"ctr_auc", "cvr_auc", "ctcvr_auc"}
    assert best["command"].startswith(f"ranker train --data {small.resolve()} --out RUN")
    assert "--hidden " in best["command"] and "--ips-weight " in best["command"]
    md = (out / "tune.md").read_text()  # as the last call left it
    assert "test (reported, not tuned on)" in md and second["best"]["command"] in md
    assert md.count("| COMPLETE |") == 3


def test_a_second_call_continues_the_study(study):
    out, first, second = study
    assert [t["number"] for t in second["trials"]] == [0, 1, 2]
    assert second["trials"][:2] == first["trials"]
    # reseeded by the trials already run: not a redraw of the first call's random trial
    assert second["trials"][2]["params"] != first["trials"][1]["params"]
    assert json.loads((out / "tune.json").read_text()) == second


def test_only_the_best_checkpoint_is_kept_and_it_exports(study, tmp_path):
    from training.export import export

    out, _, second = study
    best = out / "best"
    assert json.loads((best / "trial.json").read_text())["number"] == second["best"]["number"]
    assert (best / "metrics.json").is_file()
    assert sorted(p.name for p in out.glob("trials/*/checkpoint.pt")) == []
    assert len(list(out.glob("trials/*/metrics.json"))) == 3
    model = tmp_path / "models" / "esmm" / "v1"
    export(best, model)
    assert (model / "manifest.json").is_file()


def test_ips_weight_is_searched_under_an_auc_objective_only():
    # the validation objective is the loss, which grows with the IPS term it would weigh
    assert "ips_weight" in default_params("esmm", "ctcvr_auc")
    assert default_params("esmm", "ctcvr_auc")["cvr_weight"] == 0.3
    assert "ips_weight" not in default_params("esmm", "val_objective")
    assert "ips_weight" not in default_params("base", "ctcvr_auc")


def test_other_settings_on_the_same_study_are_refused(study, small):
    out, _, _ = study
    with pytest.raises(SystemExit, match=r"objective 'ctcvr_auc' -> 'val_objective'"):
        tune(small, out, trials=1, epochs=1, objective="val_objective")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --trials or --budget-minutes"),
        (["--trials", "0"], "trials must be >= 1"),
        (["--budget-minutes", "-1"], "budget_minutes must be > 0"),
        (["--trials", "1", "--objective", "auc"], "invalid choice: 'auc'"),
        (["--trials", "1", "--epochs", "0"], "epochs must be >= 1"),
        (["--trials", "1", "--model", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(small, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        main(["--data", str(small), "--out", str(tmp_path / "t"), *extra])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before anything was written


def test_a_folder_without_data_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--out", str(tmp_path / "t"), "--trials", "1"])
    assert "no sample_skeleton_train.csv" in capsys.readouterr().err

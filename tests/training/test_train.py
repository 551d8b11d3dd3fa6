"""One real training run on generated data (session fixture), checked against the oracle."""

import json

import pytest

from training.train import main, parse_args


@pytest.fixture(scope="module")
def metrics(trained_run) -> dict:
    return json.loads((trained_run / "metrics.json").read_text())


def test_metrics_file_has_every_figure(metrics):
    for key in (
        "ctr_auc",
        "cvr_auc",
        "ctcvr_auc",
        "ctr_logloss",
        "cvr_logloss",
        "ctcvr_logloss",
        "ctr_mean_pred",
        "ctr_observed",
        "cvr_mean_pred",
        "cvr_observed",
        "ctcvr_mean_pred",
        "ctcvr_observed",
        "n_train",
        "n_val",
        "n_test",
        "train_seconds",
        "samples_per_second",
        "best_epoch",
        "epochs",
    ):
        assert key in metrics, key
    assert metrics["n_train"] + metrics["n_val"] > 100_000 and metrics["n_test"] > 30_000
    assert 1 <= metrics["best_epoch"] <= len(metrics["epochs"])


def test_ctr_auc_is_close_to_the_oracle(metrics):
    oracle = metrics["oracle"]
    assert oracle["ctr_auc"] > 0.7  # the generator planted a learnable signal
    assert metrics["ctr_auc"] > oracle["ctr_auc"] - 0.06
    assert metrics["ctr_auc"] < oracle["ctr_auc"] + 0.01  # above the oracle means a leak


def test_no_dead_collapsed_or_leaking_tower(metrics):
    # a dead CVR tower gives AUC 0.5; a label leaking into features gives ~1.0
    assert 0.58 < metrics["cvr_auc"] < metrics["oracle"]["cvr_auc"] + 0.02
    assert 0.6 < metrics["ctcvr_auc"] < metrics["oracle"]["ctcvr_auc"] + 0.02
    # pCVR over every impression against the true P(conversion | click): learnt, under the ceiling
    assert 0.55 < metrics["cvr_auc_entire"] < metrics["oracle"]["cvr_auc_entire"]
    # towers that collapse pCVR to 0 (shared weights) fail calibration-in-the-large
    for head in ("ctr", "cvr", "ctcvr"):
        pred, seen = metrics[f"{head}_mean_pred"], metrics[f"{head}_observed"]
        assert seen / 2 < pred < seen * 2, head


def test_checkpoint_describes_itself(trained_run):
    import torch

    from training.export import load_run

    ckpt = torch.load(trained_run / "checkpoint.pt", weights_only=True)
    assert ckpt["model_args"]["kind"] == "esmm"
    assert ckpt["model_args"]["contract"]["fields"][0]["buckets"] > 0
    model, contract, _ = load_run(trained_run)
    assert contract.fitted and model.repr_dim == 2 * ckpt["model_args"]["hidden"][0]


def test_cli_validates_arguments():
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", "--model", "dnn"])
    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", "--val-fraction", "1.5"])
    cfg = parse_args(["--data", "d", "--out", "o", "--max-len", "110_14=64", "--hidden", "64,32"])
    assert cfg.max_len == {"110_14": 64} and cfg.hidden == (64, 32)


def test_main_takes_argv_and_prints_the_summary(tmp_path, capsys):
    """What the `ranker train ...` console script will call."""
    from training.generate import generate

    generate(tmp_path / "data", impressions=1500, seed=1)
    main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--epochs", "1"])
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert printed["ctr_auc"] == written["ctr_auc"] and printed["reference"] == written["reference"]
    assert printed["oracle"] == written["oracle"]
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

"""Search a training recipe with Optuna: the best validation trial, kept as a run to export.

    ranker tune --data DIR --out DIR [--model esmm] [--budget-minutes M] [--trials N] [--seed S]
                [--objective val_objective|ctcvr_auc|cvr_auc|ctr_auc] [--epochs E] [--patience P]

Each trial is one `ranker train` run (training/train.py) with its recipe drawn by a TPE sampler
seeded with --seed. The score is read from the trainer's own validation figures at the epoch it
kept (metrics["epochs"][best_epoch - 1]); the test split never steers the search. Test AUCs of
the best trial are reported, labelled as test, for information only.

The study lives in OUT/study.db (SQLite): running the command again with the same OUT continues
it, and --trials / --budget-minutes count for this call. The first trial of a new study is the
default recipe, so the best is never worse on validation than `ranker train` with no options.
OUT/best is the best trial's run folder (checkpoint.pt, metrics.json), ready for `ranker export
--run OUT/best`; other trials keep only their metrics.json under OUT/trials/. OUT/tune.json and
OUT/tune.md list every trial and give the best recipe as a `ranker train` command line.

Search space (the defaults of training/config.py sit inside every range):
  lr          log-uniform 3e-4..1e-2: Adam's usual dense range around the 1e-3 of the official
              ESMM script and our 2e-3 default; above 1e-2 the towers diverge within an epoch.
  embed_lr    log-uniform 2e-3..1e-1: sparse ids are each seen a few times per epoch, so their
              rows want larger steps than dense layers (default 2e-2); 1e-1 is where the
              validation objective stops being finite on generated data.
  embed_dim   8, 12, 18, 32: the paper's 18, half, and about double.
  hidden      64x32, 128x64, 200x80, 256x128x64: the paper's 200x80, smaller and larger towers.
  batch_size  512..4096: the official script's 5000 at the top, small batches for small data.
  min_count   1, 2, 3, 5, 10: ids seen fewer times share a row per field; rare ids are mostly
              noise that the model memorises, which the sparse generated preset shows.
  pooling     the four choices of --pooling.
  cvr_weight  0..1, with ips_weight and for the same reason under an AUC objective only: the
              weight of the clicked-rows CVR loss (default 0.3).
  ips_weight  0..1 (models taking ESCM2-IPS only): 0 is plain ESMM; ESCM2 weights its
              counterfactual loss below the main losses. Searched under an AUC objective only:
              the validation objective is the model's loss, which includes the weighted IPS
              term, so it would score the weight with the model (in a first 300k-impression
              study a trial with ips_weight 0.13 lost to the default on that objective while
              its validation CVR and CTCVR AUCs were higher).
--epochs (cap) and --patience are fixed for the study: the trainer's early stopping picks the
epoch, the search picks the recipe. No pruner: the trainer reports its per-epoch figures only
when a run ends, so there is nothing for a pruner to act on mid-run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
from pathlib import Path

import optuna

from training import setup_logging
from training.cli import prog as cli_prog
from training.config import POOLING, TrainConfig
from training.model import IPS_KINDS, KINDS
from training.train import train

log = logging.getLogger("training.tune")

# objective -> (key of a validation epoch, direction)
OBJECTIVES = {
    "val_objective": ("val_objective", "minimize"),
    "ctcvr_auc": ("val_ctcvr_auc", "maximize"),
    "cvr_auc": ("val_cvr_auc", "maximize"),
    "ctr_auc": ("val_ctr_auc", "maximize"),
}
HIDDEN = ("64x32", "128x64", "200x80", "256x128x64")
STUDY = "tune"


def searches_ips(model: str, objective: str) -> bool:
    """Whether ips_weight is part of the search (see the module docstring)."""
    return model in IPS_KINDS and objective != "val_objective"


def suggest(trial: optuna.Trial, model: str, objective: str) -> dict:
    """TrainConfig fields for one trial (ranges justified in the module docstring)."""
    params = {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "embed_lr": trial.suggest_float("embed_lr", 2e-3, 1e-1, log=True),
        "embed_dim": trial.suggest_categorical("embed_dim", [8, 12, 18, 32]),
        "hidden": tuple(int(w) for w in trial.suggest_categorical("hidden", HIDDEN).split("x")),
        "batch_size": trial.suggest_categorical("batch_size", [512, 1024, 2048, 4096]),
        "min_count": trial.suggest_categorical("min_count", [1, 2, 3, 5, 10]),
        "pooling": trial.suggest_categorical("pooling", list(POOLING)),
    }
    if searches_ips(model, objective):
        params["ips_weight"] = trial.suggest_float("ips_weight", 0.0, 1.0)
        params["cvr_weight"] = trial.suggest_float("cvr_weight", 0.0, 1.0)
    return params


def default_params(model: str, objective: str) -> dict:
    """The default recipe in the sampler's terms: enqueued as a new study's first trial."""
    d = TrainConfig(data=Path("."), out=Path("."), model=model)
    params = {
        "lr": d.lr,
        "embed_lr": d.embed_lr,
        "embed_dim": d.embed_dim,
        "hidden": "x".join(map(str, d.hidden)),
        "batch_size": d.batch_size,
        "min_count": d.min_count,
        "pooling": d.pooling,
    }
    if searches_ips(model, objective):
        params["ips_weight"] = d.ips_weight
        params["cvr_weight"] = d.cvr_weight
    return params


class TrialFailed(Exception):
    """A trial's run stopped (e.g. a non-finite validation objective): recorded as failed, and
    the study goes on."""


def _study(out: Path, settings: dict) -> optuna.Study:
    """The study in OUT/study.db, created with `settings` or continued if they match."""
    study = optuna.create_study(
        storage=f"sqlite:///{(out / 'study.db').resolve()}",
        study_name=STUDY,
        load_if_exists=True,
        direction=OBJECTIVES[settings["objective"]][1],
        pruner=optuna.pruners.NopPruner(),
    )
    # Reseeded by the trials already run: a continued study must not redraw the first call's
    # random start-up trials.
    study.sampler = optuna.samplers.TPESampler(seed=settings["seed"] + len(study.trials))
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        study.enqueue_trial(default_params(settings["model"], settings["objective"]))
    elif stored != settings:
        changed = ", ".join(
            f"{k} {stored.get(k)!r} -> {settings[k]!r}"
            for k in settings
            if stored.get(k) != settings[k]
        )
        raise SystemExit(
            f"{out} holds a study with other settings ({changed}): trials would not be "
            "comparable; pass the same settings to continue it, or another --out"
        )
    return study


def _keep_if_best(study: optuna.Study, trial: optuna.trial.FrozenTrial, out: Path) -> None:
    """OUT/best becomes this trial's run if it is the best so far; every other checkpoint goes.
    The new best is assembled beside OUT/best and swapped in, so OUT/best is always whole."""
    run = out / "trials" / str(trial.number)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done and study.best_trial.number == trial.number:
        staging, old = out / "best.new", out / "best.old"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(run / "metrics.json", staging / "metrics.json")
        os.replace(run / "checkpoint.pt", staging / "checkpoint.pt")
        (staging / "trial.json").write_text(
            json.dumps({"number": trial.number, "params": trial.params}, indent=2)
        )
        if (out / "best").exists():
            os.replace(out / "best", old)
        os.replace(staging, out / "best")
        shutil.rmtree(old, ignore_errors=True)
        log.info("trial %d is the best so far (%.5f)", trial.number, trial.value)
    (run / "checkpoint.pt").unlink(missing_ok=True)


def tune(
    data: Path,
    out: Path,
    model: str = "esmm",
    budget_minutes: float | None = None,
    trials: int | None = None,
    seed: int = 0,
    objective: str = "val_objective",
    epochs: int = 3,
    patience: int = 1,
) -> dict:
    """Run up to `trials` more trials or `budget_minutes`, whichever ends first, then write
    OUT/tune.json and OUT/tune.md; returns what tune.json holds."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {tuple(OBJECTIVES)}")
    if trials is None and budget_minutes is None:
        raise ValueError("give --trials or --budget-minutes (or both): a study needs an end")
    if trials is not None and trials < 1:
        raise ValueError("trials must be >= 1")
    if budget_minutes is not None and not budget_minutes > 0:
        raise ValueError("budget_minutes must be > 0")
    if patience < 1:
        raise ValueError("patience must be >= 1")
    # the options, as training checks them
    TrainConfig(data=data, out=out, model=model, epochs=epochs, patience=patience, seed=seed)
    if not (Path(data) / "sample_skeleton_train.csv").is_file():
        raise ValueError(f"{data} has no sample_skeleton_train.csv (Ali-CCP layout expected)")
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "data": str(Path(data).resolve()),
        "model": model,
        "objective": objective,
        "seed": seed,
        "epochs": epochs,
        "patience": patience,
    }
    study = _study(out, settings)
    key = OBJECTIVES[objective][0]
    # One encoded cache for every trial: the trainer's DATA/.encoded, or OUT/encoded where DATA
    # is read-only (the trainer's own fallback would be one cache per trial folder).
    cache = None if os.access(data, os.W_OK) else out / "encoded"

    def run_trial(trial: optuna.Trial) -> float:
        cfg = TrainConfig(
            data=data,
            out=out / "trials" / str(trial.number),
            model=model,
            epochs=epochs,
            patience=patience,
            seed=seed,
            reference=False,
            progress=False,
            cache=cache,
            **suggest(trial, model, objective),
        )
        try:
            m = train(cfg)
        except SystemExit as e:  # the trainer's own stop, e.g. a non-finite objective
            raise TrialFailed(str(e)) from None
        kept = m["epochs"][m["best_epoch"] - 1]
        trial.set_user_attr("best_epoch", m["best_epoch"])
        trial.set_user_attr("validation", {k: v for k, v in kept.items() if k.startswith("val_")})
        trial.set_user_attr("test", {k: m[k] for k in ("ctr_auc", "cvr_auc", "ctcvr_auc")})
        return kept[key]

    study.optimize(
        run_trial,
        n_trials=trials,
        timeout=None if budget_minutes is None else budget_minutes * 60,
        catch=(TrialFailed,),
        callbacks=[lambda s, t: _keep_if_best(s, t, out)],
        gc_after_trial=True,
    )
    result = summary(study, settings, out)
    (out / "tune.json").write_text(json.dumps(result, indent=2))
    (out / "tune.md").write_text(markdown(result))
    return result


def summary(study: optuna.Study, settings: dict, out: Path) -> dict:
    """Every trial of the study, and the best with its `ranker train` command line."""
    rows = []
    for t in study.trials:
        seconds = None
        if t.datetime_start and t.datetime_complete:
            seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": t.params,
                "value": t.value,
                "seconds": seconds,
                "best_epoch": t.user_attrs.get("best_epoch"),
                "validation": t.user_attrs.get("validation"),
            }
        )
    result: dict = {**settings, "direction": study.direction.name.lower(), "trials": rows}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if done:
        b = study.best_trial
        result["best"] = {
            "number": b.number,
            "value": b.value,
            "params": b.params,
            "run": str(out / "best"),
            "validation": b.user_attrs["validation"],
            # reported, never used to choose: the study sees validation figures only
            "test_reported_not_tuned": b.user_attrs["test"],
            "command": train_command(settings, b.params),
        }
    return result


def train_command(settings: dict, params: dict) -> str:
    """The best recipe as a `ranker train` command line to paste."""
    argv = ["ranker", "train", "--data", settings["data"], "--out", "RUN", "--model"]
    argv += [settings["model"], "--epochs", str(settings["epochs"])]
    argv += ["--patience", str(settings["patience"]), "--seed", str(settings["seed"])]
    for name, value in params.items():
        text = value.replace("x", ",") if name == "hidden" else str(value)
        argv += ["--" + name.replace("_", "-"), text]
    return shlex.join(argv)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def markdown(r: dict) -> str:
    """OUT/tune.md: settings, every trial, the best with its command line."""
    lines = [
        f"# Tuning {r['model']} on {r['data']}",
        "",
        f"Objective: validation {r['objective']} ({r['direction']}); epochs at most "
        f"{r['epochs']}, patience {r['patience']}, seed {r['seed']}. "
        f"{len(r['trials'])} trial(s).",
        "",
    ]
    if "best" in r:
        b = r["best"]
        v, t = b["validation"], b["test_reported_not_tuned"]
        lines += [
            f"## Best: trial {b['number']} (validation {r['objective']} {b['value']:.5f})",
            "",
            "| split | CTR AUC | CVR AUC | CTCVR AUC |",
            "|---|---|---|---|",
            f"| validation | {_fmt(v['val_ctr_auc'])} | {_fmt(v['val_cvr_auc'])} | "
            f"{_fmt(v['val_ctcvr_auc'])} |",
            f"| test (reported, not tuned on) | {_fmt(t['ctr_auc'])} | {_fmt(t['cvr_auc'])} | "
            f"{_fmt(t['ctcvr_auc'])} |",
            "",
            f"Run folder: `{b['run']}`; export it with `ranker export --run {b['run']} "
            f"--out models/{r['model']}/VERSION`. To train it again:",
            "",
            "```",
            b["command"],
            "```",
            "",
        ]
    lines += [
        "## Trials",
        "",
        "| # | state | validation objective | seconds | best epoch | params |",
        "|---|---|---|---|---|---|",
    ]
    for t in r["trials"]:
        params = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items()
        )
        seconds = "-" if t["seconds"] is None else f"{t['seconds']:.0f}"
        lines.append(
            f"| {t['number']} | {t['state']} | {_fmt(t['value'])} | {seconds} | "
            f"{t['best_epoch'] or '-'} | {params} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(
        prog=cli_prog("training.tune"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="Ali-CCP-layout folder")
    p.add_argument("--out", type=Path, required=True, help="study folder (continued if present)")
    p.add_argument("--model", default="esmm", choices=KINDS)
    p.add_argument("--budget-minutes", type=float, help="stop starting trials after this long")
    p.add_argument("--trials", type=int, help="at most this many more trials")
    p.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    p.add_argument("--objective", default="val_objective", choices=tuple(OBJECTIVES))
    p.add_argument("--epochs", type=int, default=3, help="epoch cap of every trial")
    p.add_argument("--patience", type=int, default=1, help="early stopping of every trial")
    a = p.parse_args(argv)
    try:
        r = tune(
            a.data,
            a.out,
            a.model,
            a.budget_minutes,
            a.trials,
            a.seed,
            a.objective,
            a.epochs,
            a.patience,
        )
    except ValueError as e:
        p.error(str(e))
    print((a.out / "tune.md").read_text())
    if "best" not in r:
        raise SystemExit("no trial finished: see the log for why")


if __name__ == "__main__":
    main()

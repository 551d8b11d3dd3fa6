"""Train ESMM (or a paper baseline) on Ali-CCP-layout data and write a self-describing run.

    python -m training.train --data DIR --out RUN_DIR [--model esmm|base|esmm-ns] [--epochs E]
    torchrun --nproc-per-node N -m training.train ...   (several processes: training/distributed.py)

RUN_DIR receives checkpoint.pt (model config, feature contract, weights, sample test rows: export
needs nothing else) and metrics.json. A validation split of sessions is carved from the training
file; the epoch kept is the one with the lowest validation objective, and training stops after
`--patience` epochs without improvement (sparse-id models usually peak early, then memorise).
The test split is only evaluated with the kept weights.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import resource
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from features.contract import FeatureContract
from features.spec import SpecError
from training import cli, setup_logging
from training import distributed as dist
from training.batches import iter_batches, make_batch, session_order
from training.calibrate import fit_calibration
from training.cli import prog as cli_prog
from training.config import TrainConfig
from training.encoded import EncodedSplit
from training.inputs import test_truth
from training.metrics import (
    funnel_eces,
    funnel_metrics,
    oracle_metrics,
    soft_auc,
    truth_predictions,
)
from training.model import ModelConfig, RankingModel, build_model
from training.optim import labels, make_optimizers, step, to_torch
from training.prepare import read_and_choose
from training.progress import Progress, duration
from training.reference import logistic_reference
from training.wide import fit_wide

log = logging.getLogger("training.train")
SAMPLE_ROWS = 512  # test rows stored in the checkpoint for export's parity checks


# ---- passes over a split -------------------------------------------------------------------
def run_epoch(
    model: RankingModel,
    opts: list,
    split: EncodedSplit,
    contract: FeatureContract,
    rows: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
    desc: str,
    world: dist.World = dist.LOCAL,
) -> tuple[float, float]:
    """One pass over `rows` in session order; returns (mean loss, samples per second), both
    over every rank. `model` may be `dist.wrap`'s DDP: each rank then trains on its shard."""
    model.train()
    loss_of = dist.unwrap(model).loss
    order = session_order(split, rows, rng)
    batches = dist.shard(world, split, order, cfg.batch_size)
    n_rows = sum(len(b) for b in batches)
    total, seen, t0 = 0.0, 0, time.perf_counter()
    # a bar at a terminal, log lines every 10 s elsewhere (a log file, a pipe, CI)
    bar = tqdm(
        total=n_rows,
        desc=desc,
        unit="row",
        unit_scale=True,
        leave=False,
        disable=not (_show_progress(cfg) and world.main),  # one bar, rank 0's
    )
    lines = None if not bar.disable else Progress(log, desc, n_rows)
    for b in (make_batch(split, contract, r) for r in batches):
        loss, _ = loss_of(model(**to_torch(b)), *labels(b))
        step(opts, loss)
        n = len(b.rows)
        total += loss.item() * n
        seen += n
        if lines is None:
            bar.update(n)
            rate = seen / (time.perf_counter() - t0)
            bar.set_postfix(loss=f"{total / seen:.4f}", rows_s=f"{rate:,.0f}")
        else:
            lines.update(seen, loss=total / seen)
    bar.close()
    total, seen = dist.total(world, total, seen)
    return total / max(seen, 1), seen / (time.perf_counter() - t0)


@torch.no_grad()
def predict(
    model: RankingModel,
    split: EncodedSplit,
    contract: FeatureContract,
    rows: np.ndarray,
    batch_size: int = 8192,
) -> dict[str, np.ndarray]:
    model.eval()
    out: dict[str, list[np.ndarray]] = {"pctr": [], "pcvr": [], "pctcvr": []}
    for b in iter_batches(split, contract, rows, batch_size):
        for k, v in model.probabilities(model(**to_torch(b))).items():
            out[k].append(v.numpy())
    return {k: np.concatenate(v) if v else np.zeros(0, np.float32) for k, v in out.items()}


@torch.no_grad()
def objective(
    model: RankingModel,
    split: EncodedSplit,
    contract: FeatureContract,
    rows: np.ndarray,
    batch_size: int = 8192,
) -> float:
    """The model's own training loss over `rows` (row-weighted mean of batch losses)."""
    model.eval()
    total = 0.0
    for b in iter_batches(split, contract, rows, batch_size):
        loss, _ = model.loss(model(**to_torch(b)), *labels(b))
        total += loss.item() * len(b.rows)
    return total / max(len(rows), 1)


def evaluate(
    model: RankingModel, split: EncodedSplit, contract: FeatureContract, rows: np.ndarray
) -> dict[str, float]:
    p = predict(model, split, contract, rows)
    return funnel_metrics(split.click[rows], split.conv[rows], p["pctr"], p["pcvr"], p["pctcvr"])


# ---- the steps of a run --------------------------------------------------------------------
@dataclasses.dataclass
class Fitted:
    """What fitting left besides the weights: per-epoch figures, the epoch kept, and the time
    and rows of the training passes alone."""

    history: list[dict]
    best_epoch: int
    seconds: float
    rows: int


def fit(
    model: RankingModel,
    cfg: TrainConfig,
    split: EncodedSplit,
    contract: FeatureContract,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    world: dist.World = dist.LOCAL,
) -> Fitted:
    """Epochs until `cfg.epochs`, or `cfg.patience` epochs without a lower validation objective;
    leaves the model with the kept epoch's weights. Under torchrun every rank trains on its
    shard; rank 0 validates and sends its objective, so every rank keeps the same epoch and
    stops at the same one."""
    net = dist.wrap(model, world)
    opts = make_optimizers(model, cfg.lr, cfg.embed_lr)
    rng = np.random.default_rng(cfg.seed)
    out = Fitted([], 0, 0.0, 0)
    best, best_state, stale = float("inf"), None, 0
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss, rate = run_epoch(
            net,
            opts,
            split,
            contract,
            train_rows,
            cfg,
            rng,
            f"epoch {epoch}/{cfg.epochs}",
            world,
        )
        out.seconds += time.perf_counter() - t0
        out.rows += len(train_rows)
        dist.same_buffers(world, model)  # the epoch's state: rank 0's, on every rank
        if world.main:  # the others wait in from_main
            val_obj = objective(model, split, contract, val_rows)
            val = evaluate(model, split, contract, val_rows)
            out.history.append(
                {
                    "epoch": epoch,
                    "train_loss": loss,
                    "samples_per_second": rate,
                    "val_objective": val_obj,
                    **{f"val_{h}_auc": val[f"{h}_auc"] for h in ("ctr", "cvr", "ctcvr")},
                }
            )
            left = cfg.epochs - epoch
            log.info(
                "epoch %d/%d: train loss %.5f (%.0f rows/s, %s), val objective %.5f, "
                "val AUC ctr %.4f cvr %.4f ctcvr %.4f%s",
                epoch,
                cfg.epochs,
                loss,
                rate,
                duration(time.perf_counter() - t0),
                val_obj,
                val["ctr_auc"],
                val["cvr_auc"],
                val["ctcvr_auc"],
                # at most: early stopping may end sooner
                f"; at most {left} more epoch(s), ETA {duration(left * (time.perf_counter() - t0))}"
                if left
                else "",
            )
        val_obj = dist.from_main(world, val_obj if world.main else 0.0)
        if val_obj < best:
            best, best_state, stale = val_obj, copy.deepcopy(model.state_dict()), 0
            out.best_epoch = epoch
        else:
            stale += 1
            if stale >= cfg.patience:
                log.info("validation objective has not improved for %d epoch(s): stopping", stale)
                break
    if best_state is None:
        raise SystemExit("the validation objective was never finite: lower --lr/--embed-lr")
    model.load_state_dict(best_state)
    return out


def against_truth(
    metrics: dict, truth: dict[str, np.ndarray], test: EncodedSplit, pred: dict
) -> None:
    """Generated data: pCVR scored where it serves, on every impression (against the true
    P(conversion | click)), the oracle's AUCs, and the true probabilities' ECE: the floor."""
    metrics["cvr_auc_entire"] = soft_auc(truth["p_conversion"], pred["pcvr"])
    metrics["oracle"] = oracle_metrics(truth, test.click, test.conv)
    if "calibration" in metrics:
        metrics["calibration"]["test_ece_oracle"] = funnel_eces(
            test.click, test.conv, truth_predictions(truth)
        )


def save_run(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    model: RankingModel,
    metrics: dict,
    calibration: dict | None,
    test: EncodedSplit,
) -> None:
    """RUN/checkpoint.pt, everything export needs, and RUN/metrics.json."""
    sample = test.take(np.arange(min(SAMPLE_ROWS, len(test))))
    torch.save(
        {
            "model_args": dataclasses.asdict(model_cfg),
            "state_dict": model.state_dict(),
            "metrics": metrics,
            "calibration": calibration,
            "train_config": json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
            "samples": {
                k: torch.from_numpy(np.ascontiguousarray(getattr(sample, k)))
                for k in ("user_ids", "user_vals", "item_ids", "item_vals", "row_user")
            },
        },
        cfg.out / "checkpoint.pt",
    )
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))


def train(cfg: TrainConfig) -> dict:
    """One run: read, fit, evaluate on the test split, write RUN_DIR; returns the metrics.

    Under torchrun (training/distributed.py) every rank reads and fits; rank 0 alone evaluates
    and writes RUN_DIR and returns the metrics, the other ranks return {}."""
    world = dist.init()
    try:
        return _train(cfg, world)
    finally:
        dist.close(world)


def _train(cfg: TrainConfig, world: dist.World) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world.main:
        cfg.out.mkdir(parents=True, exist_ok=True)
    d = read_and_choose(cfg, world)
    cfg, contract, train_split, test_split = d.cfg, d.contract, d.train_split, d.test_split
    train_rows, val_rows, interactions = d.train_rows, d.val_rows, d.interactions
    if world.main:
        log.info("interactions: %s (%s: %s)", interactions, cfg.interactions, d.why)
    model_cfg = ModelConfig(
        contract.to_dict(),
        cfg.model,
        cfg.embed_dim,
        cfg.hidden,
        cfg.ips_weight,
        cfg.ips_clip,
        cfg.experts,
        cfg.cvr_weight,
        interactions,
        cfg.attn_k,
        cfg.wide,
    )
    model = build_model(model_cfg)
    if interactions == "aligned":
        for inter in model.inter:
            inter.set_alignment(contract, [a for a in d.alignments if a.holds])
    fitted = fit(model, cfg, train_split, contract, train_rows, val_rows, world)
    wide = (
        fit_wide(model, contract, train_split, train_rows, val_rows)
        if model_cfg.wide != "none"
        else None
    )
    digests = dist.digests(world, model)
    if not world.main:
        return {}

    test_pred = predict(model, test_split, contract, np.arange(len(test_split)))
    metrics = {
        "model": cfg.model,
        **funnel_metrics(
            test_split.click,
            test_split.conv,
            test_pred["pctr"],
            test_pred["pcvr"],
            test_pred["pctcvr"],
        ),
        "best_epoch": fitted.best_epoch,
        "epochs": fitted.history,
        "n_train": int(len(train_rows)),
        "n_val": int(len(val_rows)),
        "n_test": int(len(test_split)),
        "train_seconds": fitted.seconds,
        "samples_per_second": fitted.rows / fitted.seconds,
        "embedding_rows": contract.num_rows,
        "interactions": interactions,
        "without": list(cfg.without),  # auto's choice included
    }
    if d.alignments is not None:  # learned: kept, or none held and auto trained without
        metrics["alignment"] = {a.names[2]: a.figures() for a in d.alignments}
    if wide is not None:  # the wide term's fit, after the towers' (not in train_seconds)
        metrics["wide"] = wide
    if world.size > 1:
        metrics["distributed"] = {"world_size": world.size, "weights_sha256": digests}
        if len(set(digests)) > 1:
            log.error("the ranks' weights differ after training: %s", digests)
    calibration = None
    if cfg.calibration != "none":
        calibration, metrics["calibration"] = fit_calibration(
            cfg.calibration,
            train_split.click[val_rows],
            train_split.conv[val_rows],
            predict(model, train_split, contract, val_rows),
            test_split.click,
            test_split.conv,
            test_pred,
        )
    truth = test_truth(cfg, test_split)
    if cfg.reference:
        metrics["reference"] = logistic_reference(
            contract, train_split, train_rows, val_rows, test_split, cfg.seed, truth=truth
        )
    if truth is not None:
        against_truth(metrics, truth, test_split, test_pred)
    metrics["data"] = {
        "train": dataclasses.asdict(train_split.report),
        "test": dataclasses.asdict(test_split.report),
        "orphans": cfg.orphans,
    }
    metrics["total_seconds"] = time.perf_counter() - t_start
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    save_run(cfg, model_cfg, model, metrics, calibration, test_split)
    log.info(
        "test AUC ctr %.4f cvr %.4f ctcvr %.4f; wrote %s",
        metrics["ctr_auc"],
        metrics["cvr_auc"],
        metrics["ctcvr_auc"],
        cfg.out,
    )
    return metrics


def _show_progress(cfg: TrainConfig) -> bool:
    return sys.stderr.isatty() if cfg.progress is None else cfg.progress


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line is TrainConfig's fields (training/cli.py); bad values exit with usage."""
    p = argparse.ArgumentParser(
        prog=cli_prog("training.train"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.add_options(p, TrainConfig)
    return cli.parse(p, TrainConfig, argv)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    cfg = parse_args(argv)
    try:
        m = train(cfg)
    except SpecError as e:  # the spec or its tables: what to fix, not a trace
        print(f"{cli_prog('training.train')}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if not m:  # a rank other than 0: rank 0 reports
        return
    summary = {k: m[k] for k in ("ctr_auc", "cvr_auc", "ctcvr_auc", "samples_per_second")}
    print(
        json.dumps(
            {**summary, "reference": m.get("reference"), "oracle": m.get("oracle")}, indent=2
        )
    )


if __name__ == "__main__":
    main()

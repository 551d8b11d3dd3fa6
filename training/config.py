"""What a training run depends on: `TrainConfig`, one field per option of `python -m training.train`
(training/cli.py derives the command line from these fields, their defaults and help)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from features.calibration import FITS
from features.contract import DEFAULT_MAX_LEN, FeatureContract
from training.cli import option
from training.encoded import OrphanPolicy
from training.model import AUTO, INTERACTIONS, IPS_KINDS, KINDS, WIDE, check_options

CALIBRATIONS = ("none", *FITS)
# The clicked-rows CVR loss's default weight for the entire-space kinds: with it ESMM's CVR AUC
# rose on every generated regime (3 seeds each, docs/model-evidence.md), CTCVR held, CTR gave
# up at most 0.003; at weight 1 CTR and CTCVR fell more on the shared-factor regime.
DEFAULT_CVR_WEIGHT = 0.3
# Pooling choices -> feature-contract flags. The default averages multi-hot lists weighted by
# their values (counts): with Adam every id of a summed list moves at the full step, so a
# 400-id behaviour list moves its pooled vector ~400 times faster than a single-id field.
# Measured on 200k generated impressions: test CTR AUC 0.685 (sum) vs 0.709 (weighted mean).
POOLING = {
    "sum": {"weighted": False, "mean": False},
    "weighted-sum": {"weighted": True, "mean": False},
    "mean": {"weighted": False, "mean": True},
    "weighted-mean": {"weighted": True, "mean": True},
}


@dataclasses.dataclass
class TrainConfig:
    out: Path = option(help="run folder to write")
    spec: Path | None = option(
        None,
        help="a feature spec (YAML, docs/spec.md): your own tables and features by name; "
        "give this or --data",
    )
    data: Path | None = option(
        None,
        help="folder in the Ali-CCP layout: sample_skeleton_{train,test}.csv and "
        "common_features_{train,test}.csv; give this or --spec",
    )
    model: str = option("esmm", choices=KINDS)
    epochs: int = option(3, help="at most this many epochs")
    patience: int = option(
        1, help="stop after this many epochs without a better validation objective"
    )
    batch_size: int = 1024
    lr: float = option(2e-3, help="Adam learning rate of dense layers")
    embed_lr: float = option(2e-2, help="(sparse) Adam learning rate of the embedding tables")
    embed_dim: int = 18
    hidden: tuple[int, ...] = option((200, 80), help="tower widths, e.g. 200,80")
    ips_weight: float = option(
        0.0,
        help="ESCM2-IPS: weight of the inverse-propensity CVR loss "
        f"({', '.join(IPS_KINDS)}; 0: off)",
    )
    ips_clip: float = option(0.05, help="ESCM2-IPS: lowest propensity (pCTR)")
    cvr_weight: float | None = option(
        None,
        help="weight of a CVR loss on clicked impressions (BASE's) added to the entire-space "
        f"loss of {', '.join(IPS_KINDS)} (default {DEFAULT_CVR_WEIGHT}; 0: the paper's ESMM "
        "loss alone; docs/model-evidence.md has the comparison)",
    )
    experts: int = option(4, help="mmoe: number of experts")
    interactions: str = option(
        AUTO,
        choices=(AUTO, *INTERACTIONS),
        help="explicit user x item interactions in the towers (two-tower kinds): dot, every "
        "user field's pooled vector dotted with every item field's; attn, each item field "
        "against the heaviest members of the user list in its embedding group; match, the "
        "weight of each item field's own id in the user list of its group (exact, whole list); "
        "counts, the counts Ali-CCP's combination fields carry as their values; aligned, those "
        "fields left out (--without) and rebuilt as matches through a rule learned from the "
        "training rows; auto (default): on Ali-CCP data, aligned with the combination fields "
        "left out where every one's learned rule holds and rebuilds most of it (the run's "
        "--without then names them), else counts (aligned where --without leaves them out); "
        "on a spec, match where a list and an item field share a group that no cross counts; "
        "else none",
    )
    attn_k: int = option(16, help="attn: the members of each user list a candidate meets")
    wide: str = option(
        AUTO,
        choices=(AUTO, *WIDE),
        help="wide & deep (two-tower kinds): after the towers train, blend each head's logit "
        "with an L2 logistic regression's, the blend fitted on the validation split; ctr: the "
        "CTR tower's alone, all: both towers', none: the towers alone; auto (default): all "
        "for two-tower kinds, none for the others",
    )
    calibration: str = option(
        "none",
        choices=CALIBRATIONS,
        help="post-hoc calibration of pCTR and pCVR, fitted on the validation split, stored "
        "with the model and applied in serving",
    )
    val_fraction: float = 0.1
    pooling: str = option(
        "weighted-mean",
        choices=tuple(POOLING),
        help="how a field's ids are pooled: weighted by the feature values or not, summed or "
        "averaged over a multi-hot list (single-valued fields are the same either way)",
    )
    orphans: OrphanPolicy = option(
        "drop",
        choices=typing.get_args(OrphanPolicy),
        help="rows with conversion=1 and click=0: drop them, count them as a "
        "click that converted, or as no conversion",
    )
    max_len: dict[str, int] = option(
        factory=dict,
        metavar="FIELD=N",
        help=f"columns per multi-hot field (defaults {DEFAULT_MAX_LEN})",
    )
    without: tuple[str, ...] = option(
        (),
        metavar="FIELDS",
        help="fields the model leaves out, e.g. 508,509,702,853: the combination fields, which "
        "an id-only /rank request cannot give (README: ranking by ids)",
    )
    max_buckets: int = option(1 << 20, help="largest hash space of one field")
    min_count: int = option(
        1,
        help="ids seen fewer times than this in the training split share one row per field "
        "(1: every id its own row)",
    )
    items: Path | None = option(
        None,
        help="item table (Parquet, CSV or a built .npz; keyed by item id) whose numeric "
        "columns enter the model as bucketised features (training/attributes.py)",
    )
    numeric: tuple[str, ...] = option(
        (),
        metavar="COLUMNS",
        help="the numeric columns of --items to use, e.g. price,rating (default: every one)",
    )
    numeric_buckets: int = option(32, help="quantile buckets of a numeric column")
    seed: int = 0
    threads: int = option(0, help="torch threads (0: default)")
    cache: Path | None = option(
        None, help="where encoded arrays are kept (default DATA/.encoded, or RUN/encoded)"
    )
    reference: bool = option(True, help="skip the logistic-regression reference")  # --no-
    progress: bool | None = option(None, cli=False)  # None: only on a terminal

    def __post_init__(self) -> None:
        """Every value is checked here, before any data is read."""
        check_options(
            self.model,
            self.ips_weight,
            self.ips_clip,
            self.experts,
            self.cvr_weight or 0.0,
            self.interactions,
            self.attn_k,
            self.wide,
        )
        if self.cvr_weight is None:  # the kind's default
            self.cvr_weight = DEFAULT_CVR_WEIGHT if self.model in IPS_KINDS else 0.0
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                raise ValueError(
                    f"unknown {f.name} {getattr(self, f.name)!r}; choose one of {choices}"
                )
        if (self.spec is None) == (self.data is None):
            raise ValueError("give the data as --spec SPEC (your tables) or --data DIR (Ali-CCP)")
        if self.spec is not None and self.interactions in ("counts", "aligned"):
            raise ValueError(
                f"--interactions {self.interactions} reads Ali-CCP's combination fields: give "
                "--data (a spec's crosses are its own features)"
            )
        if self.spec is not None:
            for name in ("max_len", "without", "items", "numeric"):
                if getattr(self, name):
                    raise ValueError(
                        f"--{name.replace('_', '-')} is for --data; with --spec the spec "
                        "declares the features"
                    )
        if self.numeric and self.items is None:
            raise ValueError("--numeric names columns of --items: give the table")
        if self.numeric_buckets < 2:
            raise ValueError("numeric_buckets must be >= 2")
        for name in ("epochs", "batch_size", "embed_dim", "min_count"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError("val_fraction must be between 0 and 1")
        try:  # unknown fields, lengths below 1, store keys left out
            FeatureContract.default(self.max_len, without=self.without)
        except KeyError as e:
            raise ValueError(f"max_len or without: {e.args[0]}") from None

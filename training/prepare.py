"""What a run trains on, and with which interactions: the data read under the run's contract, its
training split carved into training and validation sessions, and `--wide` and `--interactions`
made concrete, which on Ali-CCP data may change the contract itself (`auto` leaves the
combination fields out where their learned rules rebuild them: training/alignment.py)."""

from __future__ import annotations

import dataclasses

import numpy as np

from features.contract import FeatureContract
from training import distributed as dist
from training.alignment import Alignment, fit_alignments, rebuilds
from training.batches import split_sessions
from training.config import TrainConfig
from training.encoded import EncodedSplit
from training.inputs import load_data
from training.interactions import chosen_interactions
from training.model import AUTO, TWO_TOWER_KINDS, chosen_wide


@dataclasses.dataclass
class RunData:
    """What a run trains on and with: its config (`auto` may have left the combination fields
    out), the contract and splits read under it, the rows of the training split that train and
    validate, the interactions chosen and why, and the alignments learned (or None)."""

    cfg: TrainConfig
    contract: FeatureContract
    train_split: EncodedSplit
    test_split: EncodedSplit
    train_rows: np.ndarray
    val_rows: np.ndarray
    interactions: str
    why: str
    alignments: list[Alignment] | None


def read_and_choose(cfg: TrainConfig, world: dist.World = dist.LOCAL) -> RunData:
    """Read the data and make `--wide` (training/model.py chosen_wide) and `--interactions`
    concrete (training/interactions.py chosen_interactions). On an Ali-CCP folder whose
    contract reads the combination fields, `auto` learns their rules first
    (training/alignment.py): where every one rebuilds its field, the fields are left out
    (`--without`, kept in the run's config) and the data read again without them, for
    aligned matches; otherwise their counts are read. An aligned run whose rules all fail
    trains plain towers under `auto` and stops when asked for by name."""
    cfg = dataclasses.replace(cfg, wide=chosen_wide(cfg.wide, cfg.model))
    with dist.main_first(world):
        contract, train_split, test_split = load_data(cfg)
    train_rows, val_rows = carve(cfg, train_split)
    two_towers = cfg.model in TWO_TOWER_KINDS
    interactions, why = chosen_interactions(cfg.interactions, two_towers, contract)
    alignments = None
    if interactions == "counts" and cfg.interactions == AUTO:
        # read the combination fields, or leave them out and rebuild them: this data's rules say
        alignments = fit_alignments(cfg, train_split, train_rows, val_rows)
        fields = [f.name for f, _ in contract.counted_fields()]
        leave, because = rebuilds(alignments, fields)
        if leave and not set(fields) <= set(contract.combines()):
            leave, because = False, "the user list or item field of one is left out"
        if leave:
            cfg = dataclasses.replace(cfg, without=(*cfg.without, *fields))
            with dist.main_first(world):
                contract, train_split, test_split = load_data(cfg)
            train_rows, val_rows = carve(cfg, train_split)
            interactions = "aligned"
            why = (
                f"combination fields {', '.join(fields)} left out, rebuilt from the ids they "
                f"combine ({because}); --interactions counts reads them"
            )
        else:
            why += f", read: not every one is rebuilt from ids ({because})"
    elif interactions == "aligned":  # learned first: where none holds, auto trains without
        alignments = fit_alignments(cfg, train_split, train_rows, val_rows)
        if not any(a.holds for a in alignments):
            fails = "; ".join(
                f"{a.names[2]}: recall {a.recall:.3f}, precision {a.precision:.3f}"
                for a in alignments
            )
            if cfg.interactions != AUTO:
                raise SystemExit(f"--interactions aligned: no alignment holds ({fails})")
            interactions, why = "none", f"no combination field's alignment holds ({fails})"
    return RunData(
        cfg, contract, train_split, test_split, train_rows, val_rows, interactions, why, alignments
    )


def carve(cfg: TrainConfig, split: EncodedSplit) -> tuple[np.ndarray, np.ndarray]:
    """The training split's (training rows, validation rows): sessions drawn by the seed."""
    train_rows, val_rows = split_sessions(split, cfg.val_fraction, cfg.seed)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise SystemExit("the training file is too small to carve a validation split from")
    return train_rows, val_rows

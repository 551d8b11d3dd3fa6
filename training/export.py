"""Checkpoint -> ONNX graphs + manifest, verified before anything is written.

    python -m training.export --run RUN_DIR --out models/NAME/VERSION

Writes VERSION/ as features/manifest.py defines it: the user tower, item scorer and full
graphs, samples.npz (real test rows with the probabilities PyTorch gives them) and
manifest.json (feature contract, graph signatures, content digest, metrics, parity figures).
Ids are embedding rows from `features.contract.FeatureContract.hash_side`; weights are its
pooling weights. The export checks that the split path (user tower, then item scorer) and the
full graph agree with PyTorch to 1e-5 on random and on real rows at batch sizes 1, 7 and 257,
and that pctcvr equals pctr * pcvr; a failed check writes nothing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from features import manifest, parity
from features.contract import FeatureContract
from features.manifest import OUTPUTS, SIGNATURES
from training import setup_logging
from training.cli import prog as cli_prog
from training.layers import FieldPooling
from training.model import ModelConfig, RankingModel, build_model

log = logging.getLogger("training.export")
OPSET = 18
PARITY_BATCHES = (1, 7, 257)


class UserTower(nn.Module):
    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model

    def forward(self, user_ids: torch.Tensor, user_weights: torch.Tensor) -> torch.Tensor:
        return self.model.user_repr(user_ids, user_weights)


class ItemScorer(nn.Module):
    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model

    def forward(self, user_repr, user_index, item_ids, item_weights):
        p = self.model.probabilities(
            self.model.score(user_repr, user_index, item_ids, item_weights)
        )
        return p["pctr"], p["pcvr"], p["pctcvr"]


class FullModel(nn.Module):
    """User features given per row: the single graph other servers can run as it is."""

    def __init__(self, model: RankingModel):
        super().__init__()
        self.model = model

    def forward(self, user_ids, user_weights, item_ids, item_weights):
        index = torch.arange(user_ids.shape[0], device=user_ids.device)
        p = self.model.probabilities(
            self.model(user_ids, user_weights, index, item_ids, item_weights)
        )
        return p["pctr"], p["pcvr"], p["pctcvr"]


def load_run(run_dir: Path) -> tuple[RankingModel, FeatureContract, dict]:
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(ModelConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, FeatureContract.from_dict(ckpt["model_args"]["contract"]), ckpt


# ---- inputs -------------------------------------------------------------------------------
def random_side(
    contract: FeatureContract, side: str, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """n random entities: every field absent, single or multi-hot up to its max_len."""
    ids = np.full((n, contract.width(side)), -1, dtype=np.int64)
    vals = np.zeros(ids.shape, dtype=np.float32)
    for f, cols in contract.columns(side):
        length = rng.integers(0, f.max_len + 1, size=n)
        mask = np.arange(f.max_len)[None, :] < length[:, None]
        ids[:, cols] = np.where(mask, rng.integers(0, 1 << 40, size=mask.shape), -1)
        vals[:, cols] = np.where(mask, rng.uniform(0.5, 5.0, size=mask.shape), 0)
    return contract.hash_side(side, ids, vals)


def random_case(contract: FeatureContract, n: int, rng: np.random.Generator) -> dict:
    n_users = max(1, min(n, 5))
    uid, uw = random_side(contract, "user", n_users, rng)
    iid, iw = random_side(contract, "item", n, rng)
    index = rng.integers(0, n_users, size=n).astype(np.int64)
    index[:n_users] = np.arange(n_users)[:n]  # every user used at least once
    return {
        "user_ids": uid,
        "user_weights": uw,
        "user_index": index,
        "item_ids": iid,
        "item_weights": iw,
    }


def sample_case(contract: FeatureContract, samples: dict, n: int) -> dict:
    rows = np.arange(min(n, len(samples["row_user"])))
    users, index = np.unique(samples["row_user"][rows], return_inverse=True)
    uid, uw = contract.hash_side("user", samples["user_ids"][users], samples["user_vals"][users])
    iid, iw = contract.hash_side("item", samples["item_ids"][rows], samples["item_vals"][rows])
    return {
        "user_ids": uid,
        "user_weights": uw,
        "user_index": index.astype(np.int64),
        "item_ids": iid,
        "item_weights": iw,
    }


# ---- export -------------------------------------------------------------------------------
def _export(
    module: nn.Module,
    example: dict,
    names: tuple[str, ...],
    outputs: tuple[str, ...],
    dynamic: dict[str, dict[int, str]],
    path: Path,
) -> None:
    args = tuple(torch.from_numpy(example[n]) for n in names)
    dims = {d: torch.export.Dim(d) for spec in dynamic.values() for d in spec.values()}
    shapes = {n: {axis: dims[d] for axis, d in dynamic.get(n, {}).items()} or None for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))


def side_model(model: RankingModel, contract: FeatureContract, side: str) -> RankingModel:
    """The model with every embedding table (the towers', a wide term's) cut to the rows one
    side's graph reads."""
    lo, hi = contract.side_rows(side)
    m = copy.deepcopy(model)
    for name, pool in list(m.named_modules()):
        if isinstance(pool, FieldPooling):
            parent, _, attr = name.rpartition(".")
            setattr(m.get_submodule(parent), attr, pool.restricted(lo, hi))
    return m.eval()


def export_graphs(model: RankingModel, contract: FeatureContract, out: Path) -> None:
    # Different U and N, both > 1, so that neither dimension is specialised to a constant.
    example = random_case(contract, 7, np.random.default_rng(0))
    example["user_repr"] = (
        model.user_repr(
            torch.from_numpy(example["user_ids"]), torch.from_numpy(example["user_weights"])
        )
        .detach()
        .numpy()
    )
    per_row = tiled_per_row(example)
    _export(
        UserTower(side_model(model, contract, "user")),
        example,
        *SIGNATURES["user_tower"],
        {"user_ids": {0: "U"}, "user_weights": {0: "U"}},
        out / "user_tower.onnx",
    )
    _export(
        ItemScorer(side_model(model, contract, "item")),
        example,
        *SIGNATURES["item_scorer"],
        {
            "user_repr": {0: "U"},
            "user_index": {0: "N"},
            "item_ids": {0: "N"},
            "item_weights": {0: "N"},
        },
        out / "item_scorer.onnx",
    )
    _export(
        FullModel(model),
        per_row,
        *SIGNATURES["full"],
        {k: {0: "N"} for k in SIGNATURES["full"][0]},
        out / "full.onnx",
    )


def tiled_per_row(case: dict) -> dict:
    """The same rows with the user features tiled per row (the full graph's input)."""
    i = case["user_index"]
    return {
        "user_ids": case["user_ids"][i],
        "user_weights": case["user_weights"][i],
        "item_ids": case["item_ids"],
        "item_weights": case["item_weights"],
    }


# ---- verification -------------------------------------------------------------------------
class Graphs:
    def __init__(self, folder: Path):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {
            name: ort.InferenceSession(
                str(folder / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"]
            )
            for name in manifest.GRAPHS
        }

    def run(self, name: str, feeds: dict) -> list[np.ndarray]:
        s = self.sessions[name]
        return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})

    def split(self, case: dict) -> dict[str, np.ndarray]:
        (user_repr,) = self.run("user_tower", case)
        return dict(
            zip(OUTPUTS, self.run("item_scorer", {**case, "user_repr": user_repr}), strict=True)
        )

    def full(self, case: dict) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUTS, self.run("full", tiled_per_row(case)), strict=True))


@torch.no_grad()
def torch_probs(model: RankingModel, case: dict) -> dict[str, np.ndarray]:
    t = {k: torch.from_numpy(v) for k, v in case.items()}
    logits = model(
        t["user_ids"], t["user_weights"], t["user_index"], t["item_ids"], t["item_weights"]
    )
    return {k: v.numpy() for k, v in model.probabilities(logits).items()}


def verify(model: RankingModel, contract: FeatureContract, folder: Path, samples: dict) -> dict:
    """Max abs errors of each path against PyTorch; raises unless every output is within
    features/parity.py's tolerance for the model's kind (1e-5 absolute)."""
    graphs, rng, report = Graphs(folder), np.random.default_rng(1), []
    tol = parity.tolerance(model.cfg.kind)
    for source in ("random", "real"):
        for n in PARITY_BATCHES:
            case = (
                random_case(contract, n, rng)
                if source == "random"
                else sample_case(contract, samples, n)
            )
            ref = torch_probs(model, case)
            row = {
                "source": source,
                "rows": len(case["user_index"]),
                "users": len(case["user_ids"]),
            }
            for path, got in (("split", graphs.split(case)), ("full", graphs.full(case))):
                row[path] = max(float(np.abs(got[k] - ref[k]).max()) for k in OUTPUTS)
                product = float(np.abs(got["pctcvr"] - got["pctr"] * got["pcvr"]).max())
                row[f"{path}_product"] = product
                if not all(parity.close(got[k], ref[k], **tol) for k in OUTPUTS) or product > 1e-6:
                    raise AssertionError(
                        f"{path} graph disagrees with PyTorch on {source} rows at batch {n}: {row}"
                    )
            report.append(row)
    return {
        "tolerance": tol,
        "max_abs_error": max(max(r["split"], r["full"]) for r in report),
        "cases": report,
    }


# ---- manifest -----------------------------------------------------------------------------
def _graph_spec(path: Path) -> manifest.Graph:
    m = onnx.load(str(path), load_external_data=False)

    def describe(v) -> manifest.Tensor:
        t = v.type.tensor_type
        return manifest.Tensor(
            v.name,
            onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            tuple(d.dim_param or d.dim_value for d in t.shape.dim),
        )

    return manifest.graph_spec(
        path, [describe(v) for v in m.graph.input], [describe(v) for v in m.graph.output]
    )


def export(run_dir: Path, out: Path, force: bool = False) -> dict:
    out = Path(out)
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pick a new version or pass --force")
    model, contract, ckpt = load_run(run_dir)
    samples = {k: v.numpy() for k, v in ckpt["samples"].items()}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        export_graphs(model, contract, tmp)
        parity = verify(model, contract, tmp, samples)
        real = sample_case(contract, samples, len(samples["row_user"]))
        np.savez(tmp / "samples.npz", **samples, **torch_probs(model, real))
        written = manifest.Manifest(
            name=out.parent.name,
            version=out.name,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            model={
                k: ckpt["model_args"].get(k)
                for k in (
                    "kind",
                    "embed_dim",
                    "hidden",
                    "ips_weight",
                    "ips_clip",
                    "experts",
                    "cvr_weight",
                    "interactions",
                    "attn_k",
                    "wide",
                )
            }
            | {"user_repr_dim": model.repr_dim},
            contract=contract,
            graphs={g: _graph_spec(tmp / f"{g}.onnx") for g in manifest.GRAPHS},
            calibration=ckpt.get("calibration"),
            metrics=ckpt["metrics"],
            parity=parity,
            exported_with={
                "torch": torch.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "opset": OPSET,
            },
        ).with_digest()
        written.write(tmp)
        manifest.read(tmp)  # what the service will read: checked before the folder appears
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (parity max abs error %.2e)", out, parity["max_abs_error"])
    return written.to_dict()


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(
        prog=cli_prog("training.export"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="run folder holding checkpoint.pt")
    p.add_argument("--out", type=Path, required=True, help="models/NAME/VERSION to create")
    p.add_argument("--force", action="store_true", help="replace an existing VERSION folder")
    a = p.parse_args(argv)
    try:
        m = export(a.run, a.out, a.force)
    except (FileExistsError, FileNotFoundError, AssertionError) as e:
        sys.exit(f"export failed: {e}")
    print(
        json.dumps(
            {
                "model": str(a.out),
                "parity": {k: m["parity"][k] for k in ("tolerance", "max_abs_error")},
            }
        )
    )


if __name__ == "__main__":
    main()

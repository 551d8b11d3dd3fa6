"""Evidence in the layout of the ESMM paper's Table 2: each model trained with K seeds on one
data set, CVR AUC on clicked test impressions and CTCVR AUC on all of them, mean +- std.

    python -m training.compare --data DIR --models base,division,esmm-ns,esmm --seeds 3 --out DIR
    python -m training.compare --spec SPEC.yaml --models lr-strong,esmm,esmm:inter=attn ...

A model name is a kind of training/model.py, optionally with options after colons:
`esmm:ips=0.5` (ESCM2-IPS weight), `esmm:cvr=1` (clicked-rows CVR loss weight),
`esmm:cal=isotonic` (adds a table of test ECE before and after), `mmoe:experts=8:hidden=64x32`,
`esmm:items=items.parquet` (the numeric columns of the data folder's item table as features;
`lr:items=items.parquet`: the references with them), `esmm:inter=attn:k=16`, `esmm:inter=match`,
`esmm:inter=none` (user x item interactions in the towers, training/interactions.py; the default,
`auto`, on an Ali-CCP folder leaves its combination fields out and rebuilds them by aligned
matches where their learned rules hold, else reads their counts; `esmm:inter=counts` always
reads them), `esmm:without=508+509+702+853` (fields left out, here the combination fields: what
an id-only request serves; `lr-strong:without=...` the reference without them too),
`esmm:wide=all` (wide & deep: each tower's logit blended with an L2 logistic regression's on
the validation split; `wide=ctr`, the CTR tower's alone; training/wide.py). `--spec` compares
on a feature spec's named tables instead of an Ali-CCP folder (items= does not apply: a spec
names its own).
Writes OUT/compare.{json,md} and OUT/compare.png (mean +- std per model), and keeps each run's
metrics.json under OUT/runs/.
The tables: AUCs (plus the entire-space CVR AUC on generated data), each model's difference
from the first with its standard error, and ECE before/after for calibrated models.
The data is read and encoded once (cached under DATA/.encoded) and reused by every run. A run
already in OUT for the same model, seed, epoch cap and data files is reused, so an interrupted
comparison resumes and seeds or models can be added later. The key does not cover the code:
after changing training, pass `--fresh` (removes OUT first).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path

from features.spec import load as load_spec
from training import setup_logging
from training.cli import prog as cli_prog
from training.compare_report import differences, markdown, plot, summarise
from training.reference import reference_metrics
from training.train import TrainConfig, train

log = logging.getLogger("training.compare")


def _widths(value: str) -> tuple[int, ...]:
    """`64x32` -> (64, 32)."""
    widths = tuple(int(w) for w in value.split("x"))
    if not widths or min(widths) < 1:
        raise ValueError(value)
    return widths


# The logistic references (training/reference.py: one per head) as rows of the tables: the
# cheap one and the strong one (L2, L-BFGS, its strength chosen on validation).
LR = "lr"
LR_STRONG = "lr-strong"
REFERENCES = (LR, LR_STRONG)

OPTIONS = {
    "ips": ("ips_weight", float),
    "cvr": ("cvr_weight", float),
    "cal": ("calibration", str),
    "experts": ("experts", int),
    "inter": ("interactions", str),
    "k": ("attn_k", int),
    "wide": ("wide", str),
    "hidden": ("hidden", _widths),
    "items": ("items", Path),
    # fields left out, joined by "+": `without=508+509+702+853`, the combination fields
    "without": ("without", lambda v: tuple(v.split("+"))),
}
# the options the logistic references take: the data's, not a model's
REFERENCE_OPTIONS = ("items", "without")


def parse_model(spec: str) -> dict:
    """`esmm:ips=0.5:cal=platt` -> TrainConfig fields; `lr`, the logistic references, takes
    the default model's (only the data, seed and contract matter to it) and two options, as
    every model does: `items=FILE`, the numeric columns of an item table as features, FILE
    relative to the data folder unless absolute; `without=A+B`, fields left out."""
    kind, *opts = spec.split(":")
    fields = {} if kind in REFERENCES else {"model": kind}
    for opt in opts:
        key, _, value = opt.partition("=")
        if kind in REFERENCES and key not in REFERENCE_OPTIONS:
            raise SystemExit(
                f"{spec!r}: the logistic references take {'= and '.join(REFERENCE_OPTIONS)}= only"
            )
        if key not in OPTIONS or not value:
            raise SystemExit(f"unknown option {opt!r} in {spec!r}; options: {sorted(OPTIONS)}")
        name, cast = OPTIONS[key]
        try:
            fields[name] = cast(value)
        except ValueError:
            raise SystemExit(f"bad value in {opt!r} of {spec!r}") from None
    try:  # the kind and its options, as training itself checks them
        TrainConfig(data=Path("."), out=Path("."), **fields)
    except ValueError as e:
        raise SystemExit(f"{spec!r}: {e}") from None
    return fields


def resolve_items(fields: dict, data: Path | None) -> dict:
    """A spec's `items=` file relative to the data folder (an absolute one stays), which must
    exist; refused on a feature spec, which names its own item table."""
    if "items" in fields and data is None:
        raise SystemExit("items= adds an Ali-CCP folder's item table; a feature spec names its own")
    if "items" in fields:
        fields["items"] = Path(data) / fields["items"]
        if not fields["items"].is_file():
            raise SystemExit(f"items={fields['items']}: no such file")
    return fields


# settings that change where a run writes or how fast it goes, not its metrics
_NOT_KEYED = ("out", "threads", "cache", "progress")


def run_key(cfg: TrainConfig, reference: bool | str) -> dict:
    """What a finished run's metrics depend on: every setting of its training run as resolved
    (defaults included: a run made before a default changed trains again), whether it is the
    logistic reference, and the files it reads, by name, size and modification time (the data
    folder's CSVs and the item table; or the spec, its tables and truth). JSON's form, as it is
    stored."""
    settings = {
        k: str(v) if isinstance(v, Path) else v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in _NOT_KEYED
    }
    if cfg.spec is not None:  # the spec, the tables it names, the generator's truth beside it
        spec = load_spec(cfg.spec)
        named = [*spec.events.values(), spec.users, spec.items, "truth_test.csv"]
        files = [Path(cfg.spec), *(spec.root / p for p in named if p)]
        files = sorted(p for p in files if p.is_file())
    else:
        files = sorted(p for p in Path(cfg.data).glob("*.csv") if p.is_file())
    if cfg.items is not None:
        files.append(Path(cfg.items))
    key = {
        "settings": settings,
        "reference": reference,
        "files": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }
    return json.loads(json.dumps(key))


def _finished(run: Path, key: dict) -> dict | None:
    """The metrics of an earlier run with the same key, or None."""
    try:
        if json.loads((run / "run_key.json").read_text()) == key:
            return json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    return None


def compare(
    data: Path | None,
    models: list[str],
    seeds: int,
    out: Path,
    epochs: int = 3,
    spec: Path | None = None,
) -> dict:
    """Train what is missing and tabulate, on an Ali-CCP folder (`data`) or a feature spec's
    tables (`spec`). A run already in OUT with the same key is reused, so an interrupted
    comparison resumes and more seeds or models can be added later."""
    out.mkdir(parents=True, exist_ok=True)
    # a spec's arrays are written anew by every run (training/inputs.py): under OUT, not beside
    # tables another comparison may be reading
    source = {"data": data} if spec is None else {"spec": spec, "cache": out / "encoded"}
    runs: dict[str, list[dict]] = {}
    oracle = floor = None
    # every model checked before any run
    parsed = {name: resolve_items(parse_model(name), data) for name in models}
    for name, fields in parsed.items():  # and with this data: an option of the other route
        try:
            TrainConfig(out=out, **source, **fields)
        except ValueError as e:
            raise SystemExit(f"{name!r}: {e}") from None
    for name, fields in parsed.items():
        for seed in range(seeds):
            run = out / "runs" / f"{name.replace(':', '_')}-seed{seed}"
            cfg = TrainConfig(
                out=run, seed=seed, epochs=epochs, reference=False, **source, **fields
            )
            lr = "model" not in fields  # parse_model leaves the kind out for the references
            strong = name.split(":")[0] == LR_STRONG
            key = run_key(cfg, LR_STRONG if strong else lr)
            m = _finished(run, key)
            if m is not None:
                log.info("reusing %s, seed %d (%s)", name, seed, run)
            else:
                log.info("training %s, seed %d", name, seed)
                (run / "run_key.json").unlink(missing_ok=True)
                m = reference_metrics(cfg, strong) if lr else train(cfg)
                (run / "checkpoint.pt").unlink(missing_ok=True)  # the metrics are compared
                (run / "run_key.json").write_text(json.dumps(key))
            runs.setdefault(name, []).append(m)
            oracle = oracle or m.get("oracle")
            floor = floor or m.get("calibration", {}).get("test_ece_oracle")
    table = summarise(runs)
    result = {
        "data": str(data if spec is None else spec),
        "seeds": seeds,
        "epochs": epochs,
        "models": table,
        "oracle": oracle,
        "ece_floor": floor,
        "differences": differences(table),
    }
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    md = markdown(table, oracle, str(data if spec is None else spec), floor)
    (out / "compare.md").write_text(md)
    plot(table, out / "compare.png")
    print(md)
    return result


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(
        prog=cli_prog("training.compare"),
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="a folder in the Ali-CCP layout")
    src.add_argument("--spec", type=Path, help="a feature spec (its named tables)")
    p.add_argument("--models", default="base,division,esmm-ns,esmm")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument(
        "--epochs", type=int, default=3, help="at most; the best validation epoch is kept"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fresh", action="store_true", help="remove OUT first")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be >= 1")
    if a.fresh:
        shutil.rmtree(a.out, ignore_errors=True)
    models = [m for m in a.models.split(",") if m]
    compare(a.data, models, a.seeds, a.out, a.epochs, a.spec)


if __name__ == "__main__":
    main()

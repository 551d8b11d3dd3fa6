"""Session fixtures: one generated data set, one really trained run, one real export."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Big enough that AUCs are stable to a point or two, small enough for 2 cores.
IMPRESSIONS = 200_000
SMALL_IMPRESSIONS = 100_000


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    from training.generate import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, impressions=IMPRESSIONS, seed=7, action_label=True)  # ESM2's label too
    return out


@pytest.fixture(scope="session")
def small_generated(tmp_path_factory) -> Path:
    """Half the impressions, for tests that train a model of their own to prove a path (every
    variant, a comparison's rows, replay's models), not a figure: 1 epoch trains in about 2 s
    here (4x less than on `generated`), and every head's AUC stays above 0.6."""
    from training.generate import generate

    out = tmp_path_factory.mktemp("synthetic-small")
    generate(out, impressions=SMALL_IMPRESSIONS, seed=7, action_label=True)
    return out


@pytest.fixture(scope="session")
def id_only(small_generated, tmp_path_factory):
    """(training config, metrics, exported model) of ESMM trained by default without Ali-CCP's
    combination fields (the way to serve by ids alone; `auto` rebuilds them by aligned
    matches), one epoch on the small set: tests/training/test_alignment.py reads its run,
    tests/ranker/test_replay.py serves it."""
    from training.export import export
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("id-only-run")
    without = ("508", "509", "702", "853")
    cfg = TrainConfig(
        data=small_generated, out=run, epochs=1, seed=1, without=without, reference=False
    )
    metrics = train(cfg)
    out = tmp_path_factory.mktemp("id-only") / "esmm" / "v1"
    export(run, out)
    return cfg, metrics, out


@pytest.fixture(scope="session")
def trained_run(generated, tmp_path_factory) -> Path:
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    # the logistic references are tested on their own (test_compare's `lr` row); the model
    # reads every field, combination fields as counts (the model by features: `auto` would
    # leave them out where their rules hold, which the id-only fixture and test_alignment prove)
    cfg = TrainConfig(
        data=generated,
        out=run,
        epochs=2,
        seed=0,
        interactions="counts",
        wide="none",  # the towers alone (the blend: test_wide, test_variants, test_replay)
        reference=False,
    )
    train(cfg)
    return run


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory) -> Path:
    from training.export import export

    out = tmp_path_factory.mktemp("models") / "esmm" / "v1"
    export(trained_run, out)
    return out


@pytest.fixture(scope="session")
def samples(exported):
    """(feature contract, sample rows) stored with the exported model."""
    import json

    import numpy as np

    from features.contract import FeatureContract

    manifest = json.loads((exported / "manifest.json").read_text())
    return FeatureContract.from_dict(manifest["feature_contract"]), np.load(
        exported / "samples.npz"
    )


# ---- the spec route: the generator's named tables, and a shop's own -------------------------
@pytest.fixture(scope="session")
def spec_generated(tmp_path_factory) -> Path:
    """The generator's named tables (layout tables): their spec.yaml."""
    from training.generate import TABLES_DIR, generate

    out = tmp_path_factory.mktemp("synthetic-tables")
    generate(out, impressions=40_000, seed=7, layout="tables")
    return out / TABLES_DIR / "spec.yaml"


@pytest.fixture(scope="session")
def shop_spec(tmp_path_factory) -> Path:
    """A shop's own tables, shaped unlike the generator's (tests/support.py): their spec."""
    from support import write_shop

    return write_shop(tmp_path_factory.mktemp("shop"))


def _spec_model(spec: Path, tmp_path_factory, name: str, **options) -> Path:
    from training.export import export
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp(f"{name}-run")
    cfg = TrainConfig(
        spec=spec, out=run, model="esmm", epochs=1, seed=0, reference=False, **options
    )
    train(cfg)
    out = tmp_path_factory.mktemp(name) / "esmm" / "v1"
    export(run, out)
    return out


@pytest.fixture(scope="session")
def spec_model(spec_generated, tmp_path_factory) -> Path:
    return _spec_model(spec_generated, tmp_path_factory, "spec-model")


@pytest.fixture(scope="session")
def attn_spec_model(spec_generated, tmp_path_factory) -> Path:
    """The generator's tables with target attention over its shared groups
    (training/interactions.py)."""
    return _spec_model(spec_generated, tmp_path_factory, "attn-model", interactions="attn")


@pytest.fixture(scope="session")
def match_spec_model(spec_generated, tmp_path_factory) -> Path:
    """The generator's tables with exact matches over its shared groups and the wide term
    reading them (training/interactions.py MatchCounts, training/wide.py)."""
    return _spec_model(
        spec_generated, tmp_path_factory, "match-model", interactions="match", wide="all"
    )


@pytest.fixture(scope="session")
def shop_model(shop_spec, tmp_path_factory) -> Path:
    return _spec_model(shop_spec, tmp_path_factory, "shop-model")

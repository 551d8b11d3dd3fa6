"""Session fixtures: one generated data set, one really trained run, one real export."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Big enough that AUCs are stable to a point or two, small enough for 2 cores.
IMPRESSIONS = 200_000


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    assert path.is_dir(), f"{path} is missing: the project expects ../shared beside the checkout"
    return path


@pytest.fixture(scope="session")
def generated(tmp_path_factory) -> Path:
    from training.generate import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(out, impressions=IMPRESSIONS, seed=7, action_label=True)  # ESM2's label too
    return out


@pytest.fixture(scope="session")
def trained_run(generated, tmp_path_factory) -> Path:
    from training.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    # the logistic references are tested on their own (test_compare's `lr` row)
    train(TrainConfig(data=generated, out=run, model="esmm", epochs=2, seed=0, reference=False))
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

"""Fixtures of the service tests on the session's real model (tests/conftest.py trains and
exports it): a client, one /rank body per sample user, and a second, really different export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from support import request_for

from service.config import Settings
from service.main import create_app


@pytest.fixture(scope="module")
def client(exported):
    app = create_app(Settings(model_dir=exported.parent, max_candidates=600))
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def bodies(samples) -> list[dict]:
    """One /rank body per sample user, with that user's sample rows as candidates."""
    contract, s = samples
    return [request_for(contract, s, int(u))[0] for u in np.unique(s["row_user"])]


@pytest.fixture(scope="module")
def second_model(trained_run, tmp_path_factory):
    """The same run with its CTR tower's output bias moved by +0.5: really exported (checked by
    export's parity test), and scoring differently from the first."""
    from training.export import export

    run = tmp_path_factory.mktemp("run-b")
    ckpt = torch.load(trained_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    key = max(
        (k for k, v in ckpt["state_dict"].items() if k.startswith("ctr.") and v.shape == (1,)),
        key=len,
    )
    ckpt["state_dict"][key] += 0.5
    torch.save(ckpt, run / "checkpoint.pt")
    out = tmp_path_factory.mktemp("models-b") / "esmm" / "b"
    export(run, out)
    return out

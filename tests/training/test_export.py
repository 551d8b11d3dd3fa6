"""The real export of the session's trained run: split and full graphs, verified."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from features.contract import FeatureContract
from training.export import OUTPUTS, PARITY_BATCHES, export


@pytest.fixture(scope="module")
def manifest(exported) -> dict:
    return json.loads((exported / "manifest.json").read_text())


def session(folder, name):
    return ort.InferenceSession(str(folder / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def test_files_and_manifest(exported, manifest):
    for name in ("user_tower.onnx", "item_scorer.onnx", "full.onnx", "samples.npz"):
        assert (exported / name).is_file()
    assert manifest["name"] == "esmm" and manifest["version"] == "v1"
    assert manifest["outputs"] == ["pctr", "pcvr", "pctcvr"]
    scorer = manifest["graphs"]["item_scorer"]
    assert [i["name"] for i in scorer["inputs"]] == [
        "user_repr",
        "user_index",
        "item_ids",
        "item_weights",
    ]
    assert [o["name"] for o in scorer["outputs"]] == list(OUTPUTS)
    assert scorer["inputs"][0]["shape"] == ["U", manifest["model"]["user_repr_dim"]]
    assert scorer["inputs"][1]["shape"] == ["N"]
    assert manifest["metrics"]["ctr_auc"] > 0.6
    FeatureContract.from_dict(manifest["feature_contract"])  # loads back


def test_parity_was_checked_at_every_batch_size(manifest):
    p = manifest["parity"]
    assert p["max_abs_error"] <= 1e-5
    seen = {(c["source"], c["rows"]) for c in p["cases"]}
    for source in ("random", "real"):
        for n in PARITY_BATCHES:
            assert (source, n) in seen


def test_samples_reproduce_from_raw_ids_through_the_contract(exported, manifest):
    """What the service will do: raw ids -> contract -> user tower once -> item scorer."""
    contract = FeatureContract.from_dict(manifest["feature_contract"])
    s = np.load(exported / "samples.npz")
    uid, uw = contract.hash_side("user", s["user_ids"], s["user_vals"])
    iid, iw = contract.hash_side("item", s["item_ids"], s["item_vals"])
    (repr_,) = session(exported, "user_tower").run(None, {"user_ids": uid, "user_weights": uw})
    out = session(exported, "item_scorer").run(
        None, {"user_repr": repr_, "user_index": s["row_user"], "item_ids": iid, "item_weights": iw}
    )
    assert len(set(s["row_user"].tolist())) > 1  # several users scored in one run
    for name, got in zip(OUTPUTS, out, strict=True):
        np.testing.assert_allclose(got, s[name], atol=1e-5, rtol=0)
    full = session(exported, "full").run(
        None,
        {
            "user_ids": uid[s["row_user"]],
            "user_weights": uw[s["row_user"]],
            "item_ids": iid,
            "item_weights": iw,
        },
    )
    np.testing.assert_allclose(full[0], s["pctr"], atol=1e-5, rtol=0)


def test_one_user_scored_alone_equals_scored_among_others(exported, manifest):
    contract = FeatureContract.from_dict(manifest["feature_contract"])
    s = np.load(exported / "samples.npz")
    uid, uw = contract.hash_side("user", s["user_ids"], s["user_vals"])
    iid, iw = contract.hash_side("item", s["item_ids"], s["item_vals"])
    (repr_,) = session(exported, "user_tower").run(None, {"user_ids": uid, "user_weights": uw})
    rows = np.flatnonzero(s["row_user"] == s["row_user"][-1])
    (alone,) = session(exported, "user_tower").run(
        None, {"user_ids": uid[-1:], "user_weights": uw[-1:]}
    )
    np.testing.assert_allclose(alone[0], repr_[-1], atol=1e-6, rtol=0)
    out = session(exported, "item_scorer").run(
        ["pctcvr"],
        {
            "user_repr": alone,
            "user_index": np.zeros(len(rows), np.int64),
            "item_ids": iid[rows],
            "item_weights": iw[rows],
        },
    )
    np.testing.assert_allclose(out[0], s["pctcvr"][rows], atol=1e-6, rtol=0)


def test_export_refuses_to_overwrite(trained_run, exported):
    with pytest.raises(FileExistsError):
        export(trained_run, exported)


def test_split_graphs_carry_only_their_sides_rows(exported):
    """The user tower holds the user rows, the item scorer the item rows: together about one
    copy of the table (the full graph's size), not two."""
    size = {n: (exported / f"{n}.onnx").stat().st_size for n in ("user_tower", "item_scorer")}
    full = (exported / "full.onnx").stat().st_size
    assert size["user_tower"] < 0.8 * full and size["item_scorer"] < 0.8 * full
    assert size["user_tower"] + size["item_scorer"] < 1.15 * full

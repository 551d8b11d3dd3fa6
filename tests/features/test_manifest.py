"""features/manifest.py: one definition of the manifest, written by export, read with named
checks, and the model's identity taken from its content."""

from __future__ import annotations

import json
import shutil

import pytest

from features import manifest
from features.manifest import ManifestError


@pytest.fixture
def copy(exported, tmp_path):
    dst = tmp_path / "v"
    shutil.copytree(exported, dst)
    return dst


def edit(folder, change) -> None:
    d = json.loads((folder / manifest.FILE).read_text())
    change(d)
    (folder / manifest.FILE).write_text(json.dumps(d))


def test_export_writes_what_read_reads(exported):
    m = manifest.read(exported)
    assert m.label == "esmm/v1" and m.kind == "esmm" and len(m.digest) == 64
    assert m.digest == m.content_digest()
    assert {
        g: (tuple(t.name for t in s.inputs), tuple(t.name for t in s.outputs))
        for g, s in m.graphs.items()
    } == manifest.SIGNATURES


def test_the_digest_follows_content_not_names(copy, exported):
    edit(copy, lambda d: d.update(name="other", version="renamed"))
    assert manifest.read(copy).digest == manifest.read(exported).digest


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda d: d.pop("feature_contract"), "feature_contract is missing"),
        (lambda d: d.update(format_version=9), "format_version 9"),
        (lambda d: d["model"].pop("user_repr_dim"), "model.user_repr_dim"),
        (lambda d: d.update(outputs=["pcvr", "pctr", "pctcvr"]), "outputs"),
        (lambda d: d["graphs"]["item_scorer"]["outputs"].reverse(), "graphs.item_scorer"),
        (lambda d: d["graphs"]["full"].update(file="../x.onnx"), "graphs.full.file"),
        (lambda d: d.update(calibration={"pctr": {"method": "platt"}}), "digest"),
        (lambda d: d.update(digest="0" * 64), "digest"),
    ],
)
def test_a_wrong_manifest_is_refused_naming_what_is_wrong(copy, change, needle):
    edit(copy, change)
    with pytest.raises(ManifestError, match=needle.replace("(", r"\(")):
        manifest.read(copy)


def test_a_graph_whose_bytes_changed_is_refused(copy):
    with open(copy / "user_tower.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="user_tower.onnx does not match"):
        manifest.read(copy)


def test_a_manifest_of_format_1_is_read_with_its_digest_computed(copy, exported):
    edit(copy, lambda d: (d.update(format_version=1), d.pop("digest")))
    assert manifest.read(copy).digest == manifest.read(exported).digest

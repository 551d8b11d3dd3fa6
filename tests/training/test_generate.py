"""The synthetic Ali-CCP generator: raw layout, planted truth, determinism."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from features.contract import COMBINATION_FIELDS, CONTEXT_FIELDS, ITEM_FIELDS, USER_FIELDS
from training.generate import PRESETS, generate, main

SPLITS = ("train", "test")
RAW_FILES = ("sample_skeleton", "common_features")
BEHAVIOUR_FIELDS = ("109_14", "110_14", "127_14", "150_14")
SKELETON_FIELDS = set(ITEM_FIELDS + COMBINATION_FIELDS + CONTEXT_FIELDS)


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC, ties at their average rank."""
    labels = np.asarray(labels, dtype=bool)
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = avg_rank[inv]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def parse_features(text: str) -> list[tuple[str, int, float]]:
    out = []
    for feat in text.split("\x01"):
        field, rest = feat.split("\x02")
        fid, value = rest.split("\x03")
        out.append((field, int(fid), float(value)))
    return out


def read_skeleton(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split(",")
        assert len(parts) == 6, line[:80]
        feats = parse_features(parts[5])
        assert int(parts[4]) == len(feats)
        rows.append(
            {
                "sample_id": int(parts[0]),
                "click": int(parts[1]),
                "conv": int(parts[2]),
                "cfi": parts[3],
                "feats": feats,
            }
        )
    return rows


def read_common(path: Path) -> dict[str, list[tuple[str, int, float]]]:
    out = {}
    for line in path.read_text(encoding="ascii").splitlines():
        parts = line.split(",")
        assert len(parts) == 3, line[:80]
        feats = parse_features(parts[2])
        assert int(parts[1]) == len(feats)
        assert parts[0] not in out
        out[parts[0]] = feats
    return out


def read_truth(path: Path) -> np.ndarray:
    lines = path.read_text(encoding="ascii").splitlines()
    assert lines[0] == "sample_id,p_click,p_conversion"
    return np.array([[float(x) for x in line.split(",")] for line in lines[1:]])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("synthetic")
    summary = generate(out, impressions=20_000, seed=3)
    splits = {
        s: {
            "skeleton": read_skeleton(out / f"sample_skeleton_{s}.csv"),
            "common": read_common(out / f"common_features_{s}.csv"),
            "truth": read_truth(out / f"truth_{s}.csv"),
        }
        for s in SPLITS
    }
    return {"dir": out, "summary": summary, **splits}


def test_files_exist_without_header(data: dict) -> None:
    for split in SPLITS:
        for name in RAW_FILES:
            first = (data["dir"] / f"{name}_{split}.csv").open(encoding="ascii").readline()
            assert first and not first.startswith(("sample_id", "common_feature_index"))
    assert (data["dir"] / "generator.json").is_file()


def test_fields_sit_in_the_right_file(data: dict) -> None:
    for split in SPLITS:
        for row in data[split]["skeleton"]:
            assert {f for f, _, _ in row["feats"]} <= SKELETON_FIELDS
        for feats in data[split]["common"].values():
            assert {f for f, _, _ in feats} <= set(USER_FIELDS)


def test_every_field_is_present_and_126_sometimes_missing(data: dict) -> None:
    commons = list(data["train"]["common"].values())
    has = [{f for f, _, _ in feats} for feats in commons]
    assert set().union(*has) == set(USER_FIELDS)
    missing_126 = np.mean(["126" not in h for h in has])
    assert 0.05 < missing_126 < 0.6
    skeleton_fields = set().union(
        *({f for f, _, _ in r["feats"]} for r in data["train"]["skeleton"])
    )
    assert skeleton_fields == SKELETON_FIELDS


def test_ids_are_disjoint_per_field(data: dict) -> None:
    owner: dict[int, str] = {}
    for row in data["train"]["skeleton"]:
        for field, fid, _ in row["feats"]:
            assert owner.setdefault(fid, field) == field
    for feats in data["train"]["common"].values():
        for field, fid, _ in feats:
            assert owner.setdefault(fid, field) == field


def test_sessions_join_and_are_contiguous(data: dict) -> None:
    all_indexes = []
    for split in SPLITS:
        skeleton, common = data[split]["skeleton"], data[split]["common"]
        all_indexes += list(common)
        cfis = [r["cfi"] for r in skeleton]
        assert all(len(c) == 16 and int(c, 16) >= 0 for c in common)
        assert set(cfis) <= set(common)
        runs = [c for k, c in enumerate(cfis) if k == 0 or c != cfis[k - 1]]
        assert len(runs) == len(set(runs)), "a session is split over several runs"
        assert len(cfis) / len(runs) >= 8
    assert len(all_indexes) == len(set(all_indexes)), "a session appears in both splits"


def test_behaviour_lists_are_long(data: dict) -> None:
    for field in BEHAVIOUR_FIELDS:
        lengths = [
            sum(f == field for f, _, _ in feats) for feats in data["train"]["common"].values()
        ]
        assert 20 <= np.mean(lengths) <= 400, field
    values = [v for feats in data["train"]["common"].values() for f, _, v in feats if f == "109_14"]
    assert min(values) >= 1 and max(values) <= 20 and np.median(values) <= 3


def test_combination_ids_identify_the_item_attribute(data: dict) -> None:
    """508 = user's categories x the item's category: one 508 id per category and back."""
    to_combo: dict[int, set[int]] = defaultdict(set)
    for row in data["train"]["skeleton"]:
        feats = {f: fid for f, fid, _ in row["feats"] if f in ("206", "508")}
        if "508" in feats:
            to_combo[feats["206"]].add(feats["508"])
    assert len(to_combo) > 20
    assert all(len(ids) == 1 for ids in to_combo.values())
    assert len({next(iter(ids)) for ids in to_combo.values()}) == len(to_combo)


def test_labels_follow_the_truth(data: dict) -> None:
    sample_ids = []
    for split in SPLITS:
        skeleton, truth = data[split]["skeleton"], data[split]["truth"]
        click = np.array([r["click"] for r in skeleton])
        conv = np.array([r["conv"] for r in skeleton])
        ids = np.array([r["sample_id"] for r in skeleton])
        sample_ids += ids.tolist()
        assert np.array_equal(truth[:, 0], ids)
        p_click, p_conv = truth[:, 1], truth[:, 2]
        assert ((p_click > 0) & (p_click < 1) & (p_conv > 0) & (p_conv < 1)).all()
        assert not (conv & (1 - click)).any(), "conversion without click"
        # Binomial sd of the mean is ~0.003 at 5k rows: 0.02 is more than 6 sd.
        assert abs(click.mean() - p_click.mean()) < 0.02
        assert abs(conv.mean() - (p_click * p_conv).mean()) < 0.01
        assert rank_auc(click, p_click) > 0.65
    assert len(sample_ids) == len(set(sample_ids)) == 20_000


def test_rates_and_summary(data: dict) -> None:
    summary = data["summary"]
    train = summary["train"]
    assert summary["train"]["impressions"] + summary["test"]["impressions"] == 20_000
    assert 0.03 < train["ctr"] < 0.08 and 0.08 < train["cvr"] < 0.25
    assert train["oracle_auc"]["ctr"] > 0.65 and train["oracle_auc"]["cvr"] > 0.6
    click = np.array([r["click"] for r in data["train"]["skeleton"]])
    assert train["oracle_auc"]["ctr"] == pytest.approx(
        rank_auc(click, data["train"]["truth"][:, 1]), abs=1e-4
    )


def _file_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", impressions=3_000, seed=11)
    generate(tmp_path / "b", impressions=3_000, seed=11)
    generate(tmp_path / "c", impressions=3_000, seed=12)
    a, b, c = (_file_bytes(tmp_path / d) for d in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def _digest(out: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(out.glob("*.csv")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_files_are_those_the_generator_has_always_written(tmp_path: Path) -> None:
    """Digests of the data files (the .csv: Ali-CCP, truth, action), the same bytes since before
    the generator was split into training/synthetic/ (generator.json has gained parameters since,
    and items.parquet came later, drawn from its own stream): a change here changes every data
    set generated with the same seed and parameters (and a numpy release that changes a
    distribution's stream would too)."""
    generate(tmp_path / "a", impressions=3_000, seed=11, action_label=True)
    generate(tmp_path / "b", impressions=3_000, seed=2, overrides=PRESETS["shared"])
    assert _digest(tmp_path / "a") == (
        "66807cbdeb4014ee98d9c57571430795a318782cadb9c7b9c53bf3fc92ecf0d0"
    )
    assert _digest(tmp_path / "b") == (
        "7d02628aacb39d79cb0c0cc482f13d088f7693ffdef5c085be3ce79d6673936f"
    )


def test_item_table_is_the_skeletons_items_with_prices(data: dict, tmp_path: Path) -> None:
    """items.parquet holds every item the skeleton shows, with the same 206/207/216/210 ids:
    the table built from it (`ranker items build --table`) agrees row for row with the one
    built from the Ali-CCP files; every price is positive."""
    from features.item_source import from_parquet
    from ranker.items import build_from_aliccp

    table = from_parquet(data["dir"] / "items.parquet")
    seen = build_from_aliccp(data["dir"], list(SPLITS))
    assert np.all(table.price > 0) and np.isnan(seen.price).all()
    pos, found = table.index(seen.item_id)
    assert found.all() and len(table) >= len(seen)
    assert np.array_equal(table.ids[pos], seen.ids)
    assert np.array_equal(table.vals[pos], seen.vals)


def test_main_takes_argv_presets_and_overrides(tmp_path: Path, capsys) -> None:
    argv = ["--out", str(tmp_path / "cli"), "--impressions", "1000", "--seed", "4"]
    main([*argv, "--preset", "shared", "--set", "target_cvr=0.1", "--action-label"])
    summary = json.loads(capsys.readouterr().out.split("\nwrote ")[0])
    assert summary["train"]["impressions"] + summary["test"]["impressions"] == 1000
    meta = json.loads((tmp_path / "cli" / "generator.json").read_text())
    assert meta["params"]["target_cvr"] == 0.1 and meta["params"]["w_conv_relevance"] == 1.0
    assert (tmp_path / "cli" / "action_test.csv").is_file()
    with pytest.raises(SystemExit):
        main([*argv, "--set", "no_such_param=1"])
    assert "unknown generator parameters" in capsys.readouterr().err


def _truth(out: Path) -> tuple[np.ndarray, np.ndarray]:
    t = np.loadtxt(out / "truth_train.csv", delimiter=",", skiprows=1)
    return t[:, 1], t[:, 2]


def test_shared_relevance_plants_a_selection_bias_and_leaves_clicks_alone(tmp_path: Path) -> None:
    """w_conv_relevance makes conversion depend on the click's relevance: clicked impressions
    then convert more than impressions at large (ESMM's sample selection bias). Clicks, users
    and items do not change."""
    generate(tmp_path / "indep", impressions=30_000, seed=5)
    generate(tmp_path / "shared", impressions=30_000, seed=5, overrides={"w_conv_relevance": 1.5})
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    (c0, v0), (c1, v1) = _truth(tmp_path / "indep"), _truth(tmp_path / "shared")
    assert np.array_equal(c0, c1)
    for name in ("common_features_train.csv", "common_features_test.csv"):
        assert (tmp_path / "indep" / name).read_bytes() == (tmp_path / "shared" / name).read_bytes()
    assert abs(np.corrcoef(logit(c0), logit(v0))[0, 1]) < 0.15
    assert np.corrcoef(logit(c1), logit(v1))[0, 1] > 0.2
    # both hit the target among clicks; only the shared one is lower across all impressions
    for v in (v0, v1):
        assert np.average(v, weights=c0) == pytest.approx(0.15, rel=0.05)
    assert v0.mean() > 0.9 * 0.15 > v1.mean()

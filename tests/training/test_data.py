from pathlib import Path

import numpy as np
import pytest

from features.contract import FeatureContract
from training.aliccp import read_aliccp, read_paddlerec
from training.batches import make_batch
from training.fitting import fit_contract
from training.splits import load_split

# real Ali-CCP rows shipped with the tests (tests/data/README.md: origin and licence)
PADDLEREC = Path(__file__).resolve().parents[1] / "data" / "paddlerec"


def feats(*triples) -> str:
    return "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in triples)


USER_A = feats(("101", 11, 1.0), ("124", 2, 1.0), *[("109_14", 100 + k, k) for k in range(1, 6)])
USER_B = feats(("101", 12, 1.0), ("129", 7, 1.0))
ITEM = feats(("205", 500, 1.0), ("206", 60, 1.0), ("210", 1, 1.0), ("210", 2, 1.0))


def write_split(folder: Path, split: str, common: list[bytes], skeleton: list[bytes]) -> None:
    (folder / f"common_features_{split}.csv").write_bytes(b"\n".join(common) + b"\n")
    (folder / f"sample_skeleton_{split}.csv").write_bytes(b"\n".join(skeleton) + b"\n")


def line(*cols) -> bytes:
    return ",".join(str(c) for c in cols).encode()


@pytest.fixture
def messy(tmp_path) -> Path:
    common = [
        line("aa", 7, USER_A),
        line("bb", 2, USER_B),
        line("cc", 3, USER_B),  # feature_num disagrees with the list
        b"dd,1",
    ]  # too few columns
    skeleton = [
        line(1, 0, 0, "aa", 4, ITEM),
        line(2, 1, 1, "aa", 4, ITEM),
        line(3, 1, 0, "bb", 4, ITEM),
        line(4, 0, 1, "bb", 4, ITEM),  # conversion without click
        line(5, 0, 0, "zz", 4, ITEM),  # unknown common_feature_index (line 5)
        line(6, 2, 0, "aa", 4, ITEM),  # bad label (line 6)
        line(7, 0, 0, "aa", 1, "205\x02x\x031.0"),  # non-numeric id (line 7)
        b"8,0,0,aa,1,205\x02\xff\xfe\x031.0",  # not UTF-8 (line 8)
        line(9, 0, 0, "aa", 1, "205\x0277"),  # no value separator (line 9)
        line(10, 0, 0, "bb", 0, ""),  # an impression with no item features is legal
    ]
    write_split(tmp_path, "train", common, skeleton)
    return tmp_path


def test_malformed_lines_are_counted_with_line_numbers_and_skipped(messy):
    s = read_aliccp(messy, "train", FeatureContract.default())
    r = s.report
    assert r.malformed == 2 + 5
    joined = "\n".join(r.examples)
    for where in (
        "common_features_train.csv:3",
        "common_features_train.csv:4",
        "sample_skeleton_train.csv:5",
        "sample_skeleton_train.csv:6",
        "sample_skeleton_train.csv:7",
        "sample_skeleton_train.csv:8",
        "sample_skeleton_train.csv:9",
    ):
        assert where in joined
    assert "feature_num is 3" in joined and "not UTF-8" in joined
    assert s.sample_id.tolist() == [1, 2, 3, 10]  # the orphan conversion is dropped
    assert r.orphan_conversions == 1 and r.dropped_orphans == 1
    assert s.click.tolist() == [0, 1, 1, 0] and s.conv.tolist() == [0, 1, 0, 0]


@pytest.mark.parametrize("policy, click, conv", [("click", 1, 1), ("ignore", 0, 0)])
def test_orphan_conversion_policies(messy, policy, click, conv):
    s = read_aliccp(messy, "train", FeatureContract.default(), orphans=policy)
    i = s.sample_id.tolist().index(4)
    assert (s.click[i], s.conv[i]) == (click, conv)


def test_join_multi_hot_and_values(messy):
    c = FeatureContract.default()
    s = read_aliccp(messy, "train", c)
    cols = {f.name: sl for f, sl in c.columns("user")}
    a = s.user_ids[s.row_user[0]]
    assert a[cols["101"]].tolist() == [11]
    assert a[cols["109_14"]][:5].tolist() == [101, 102, 103, 104, 105]
    assert s.user_vals[s.row_user[0]][cols["109_14"]][:5].tolist() == [1, 2, 3, 4, 5]
    assert s.row_user[2] != s.row_user[0]  # sample 3 belongs to user "bb"
    icols = {f.name: sl for f, sl in c.columns("item")}
    assert s.item_ids[0][icols["210"]][:3].tolist() == [1, 2, -1]


def test_long_multi_hot_keeps_the_heaviest_ids(tmp_path):
    user = feats(("101", 1, 1.0), *[("110_14", k, float(k % 7)) for k in range(50)])
    write_split(tmp_path, "train", [line("u", 51, user)], [line(1, 0, 0, "u", 0, "")])
    c = FeatureContract.default(max_len={"110_14": 8})
    s = read_aliccp(tmp_path, "train", c)
    kept = s.user_ids[0][dict((f.name, sl) for f, sl in c.columns("user"))["110_14"]]
    # the seven ids of value 6 and the first of value 5, in their original order
    assert kept.tolist() == [5, 6, 13, 20, 27, 34, 41, 48]


def test_load_split_streams_to_disk_and_reuses_the_cache(messy, tmp_path):
    c = FeatureContract.default()
    cache = tmp_path / "cache"
    first = load_split(messy, "train", c, cache)
    assert isinstance(first.item_ids.base, np.memmap) or isinstance(first.item_ids, np.memmap)
    assert len(list(cache.iterdir())) == 1
    again = load_split(messy, "train", c, cache)
    assert np.array_equal(first.item_ids, again.item_ids)
    assert again.report.malformed == 7
    load_split(messy, "train", FeatureContract.default(max_len={"210": 3}), cache)
    assert len(list(cache.iterdir())) == 2  # a different contract is a different cache


def test_missing_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="common_features_test.csv"):
        read_aliccp(tmp_path, "test", FeatureContract.default())


def test_paddlerec_rows_shipped_with_the_tests():
    c = FeatureContract.default()
    lens = {f.name: f.max_len for f in c.fields}
    assert lens["110_14"] >= 342  # the real rows' longest list fits untruncated
    for name, clicks, convs in (("train_small.txt", 2, 1), ("test_small.txt", 1, 0)):
        s = read_paddlerec(PADDLEREC / name, c)
        assert len(s) == 10 and s.report.malformed == 0
        assert int(s.click.sum()) == clicks and int(s.conv.sum()) == convs
        cols = {f.name: sl for f, sl in c.columns("user")}
        present = {k: int((s.user_ids[0][v] >= 0).sum()) for k, v in cols.items()}
        assert present["109_14"] == 117 and present["110_14"] == 342
        assert present["127_14"] == 209 and present["150_14"] == 191
        assert present["126"] == 0 and present["101"] == 1
        icols = {f.name: sl for f, sl in c.columns("item")}
        n210 = (s.item_ids[:, icols["210"]] >= 0).sum(1)
        assert n210.min() >= 3 and n210.max() <= 14
        # the first feature token (a 210 id) is not skipped, unlike PaddleRec's own reader
        first = next(t for t in (PADDLEREC / name).read_text().splitlines()[0].split(",")[3:])
        assert first.startswith("210:") and int(first[4:]) in s.item_ids[0, icols["210"]]


def test_paddlerec_rows_encode_and_batch():
    c = FeatureContract.default()
    s = read_paddlerec(PADDLEREC / "train_small.txt", c)
    c = fit_contract(c, s)
    b = make_batch(s, c, np.arange(len(s)))
    assert b.user_ids.shape == (10, c.width("user")) and b.item_ids.shape == (10, c.width("item"))
    assert (b.user_ids < c.num_rows).all() and (b.user_w[b.user_ids == 0] == 0).all()


def test_paddlerec_lines_beyond_int64_are_malformed_not_fatal(tmp_path):
    """An id or sample index past int64 is a malformed line, counted and skipped, as in the
    Ali-CCP readers; the lines around it are read."""
    good = (PADDLEREC / "train_small.txt").read_text().splitlines()[:2]
    path = tmp_path / "mixed.txt"
    lines = [good[0], f"7,0,0,205:{2**63}", f"{2**64},0,0,205:5", good[1]]
    path.write_text("\n".join(lines) + "\n")
    s = read_paddlerec(path, FeatureContract.default())
    assert len(s) == 2 and s.report.malformed == 2
    assert "feature id" in s.report.examples[0] and "sample_idx" in s.report.examples[1]

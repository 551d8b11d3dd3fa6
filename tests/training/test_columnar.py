"""The columnar reader against the reference: the same arrays and the same ReadReport, on a
generated set, on files written to break parsers, and across chunk boundaries."""

from __future__ import annotations

import dataclasses
import logging
import mmap
from pathlib import Path

import numpy as np
import pytest

from features.contract import FeatureContract
from training.aliccp import FLOAT32_LIMIT, read_aliccp
from training.columnar import read_columnar
from training.encoded import MAX_LOGGED_MALFORMED, EncodedSplit, read_progress
from training.generate import generate
from training.splits import load_split

ARRAYS = ("user_ids", "user_vals", "item_ids", "item_vals", "row_user", "click", "conv")


def feats(*triples) -> str:
    return "\x01".join(f"{f}\x02{i}\x03{v}" for f, i, v in triples)


def line(*cols) -> bytes:
    return ",".join(str(c) for c in cols).encode()


def assert_same(a: EncodedSplit, b: EncodedSplit) -> None:
    for name in (*ARRAYS, "sample_id"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        # Bit for bit: -0.0 and 0.0 differ here, as they do in the files.
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), name
    assert dataclasses.asdict(a.report) == dataclasses.asdict(b.report)


def both(folder: Path, contract: FeatureContract, chunks=(1, 64, 1 << 20), **kw) -> EncodedSplit:
    """The reference's split, after checking the columnar reader gives the same at several chunk
    sizes (1 byte puts every line in a chunk of its own)."""
    split = kw.pop("split", "train")
    ref = read_aliccp(folder, split, contract, **kw)
    for chunk_bytes in chunks:
        assert_same(ref, read_columnar(folder, split, contract, chunk_bytes=chunk_bytes, **kw))
    return ref


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    generate(out, impressions=2000, seed=3)
    return out


def test_generated_set_reads_the_same(small_set):
    c = FeatureContract.default()
    ref = read_aliccp(small_set, "train", c)
    assert len(ref) > 500 and ref.report.malformed == 0
    assert_same(ref, read_columnar(small_set, "train", c, chunk_bytes=1 << 20, workers=1))
    # Chunks of a few lines, three parsed at once, written in order.
    assert_same(ref, read_columnar(small_set, "train", c, chunk_bytes=8192, workers=3))


def test_generated_set_with_short_lists_and_fields_left_out(small_set):
    """Every behaviour list truncated (highest values kept), the combination fields unknown."""
    c = FeatureContract.default(
        max_len={"109_14": 3, "110_14": 2, "127_14": 5, "150_14": 1, "210": 2, "853": 1},
        without=("508", "509", "702", "853"),
    )
    ref = read_aliccp(small_set, "train", c)
    assert ref.report.unknown_fields > 0
    assert_same(ref, read_columnar(small_set, "train", c, chunk_bytes=16384))


@pytest.fixture
def adversarial(tmp_path) -> Path:
    user = feats(("101", 11, 1.0), ("124", 2, 1.0), *[("109_14", 100 + k, k % 3) for k in range(9)])
    item = feats(("205", 500, 1.0), ("206", 60, 1.0), ("210", 1, 1.0), ("210", 2, 1.0))
    common = [
        line("aa", 11, user),
        line("bb", 2, feats(("101", 12, 1.0), ("129", 7, 1.0))),
        line("cc", 3, feats(("101", 13, 1.0))),  # feature_num disagrees with the list
        b"dd,1",  # too few columns
        line("aa", 1, feats(("101", 99, 1.0))),  # common_feature_index twice
        line("cc", 1, feats(("101", 14, 1.0))),  # cc's first line was malformed: not twice
        line("ee", 0, ""),  # a user without features
        b"ff,1,101\x02\xff\x031.0",  # not UTF-8
        line("gg", 3, feats(("101", 15, 1.0), ("205", 5, 1.0), ("zz", 1, 1.0))),  # other side
        "h\u00e9,2,".encode() + feats(("101", 16, 1.0), ("\u00e9", 1, 1.0)).encode(),  # UTF-8
        line("ii", 1, feats(("101", 17, 1.0))).replace(b"17", b"+17"),  # int() takes '+17'
        line("unused", 1, feats(("101", 18, 1.0))),  # no impression refers to it
        b"",  # an empty line
        line("kk", 4, feats(*[("110_14", k, 1.0) for k in range(4)])) + b"\r",  # CRLF
        line("x\x01y", 1, feats(("101", 19, 1.0))),  # a separator inside the key
        line("ll", 2, feats(("101", 20, 1.0), ("101", 21, 1.0))),  # single-valued, twice
    ]
    items = {
        "neg": feats(("205", 1, -2.5), ("206", 2, -0.0)),
        "exp": feats(("205", 1, "3.4e38"), ("206", 2, "2.5E-3"), ("207", 3, "1e-50")),
        "f32inf": feats(("205", 1, "1e39")),  # finite in float64, inf as the float32 stored
        "i64": feats(("205", 2**63, 1.0)),  # an id one past int64
        "i64max": feats(("205", 2**63 - 1, 1.0)),  # the largest id int64 holds: kept
        "odd": "205\x02 7\x031.0\x01206\x02007\x03.5\x01207\x028\x035.\x01216\x029\x031_0",
        "inf": feats(("205", 1, "1e400")),  # finite for no one
        "nan": feats(("205", 1, "nan")),
        "order": "205\x031\x022",  # separators swapped: the reference reads it its own way
        "comma": feats(("205", 1, 1.0), ("a,b", 2, 1.0)),  # a comma in a field name
        "long": feats(*[("210", k, (k * 7) % 5) for k in range(40)], ("210", 99, "4.00000001")),
        "mixed": feats(("210", 1, 1.0), ("205", 3, 1.0), ("210", 2, 1.0), ("206", 4, 1.0)),
        "unknown": feats(("205", 1, 1.0), ("999", 1, 1.0), ("999", 2, 1.0), ("101", 3, 1.0)),
        "big": feats(("205", 9223372036854775807, 1.0)),  # 19 digits, still an int64
        "empty_field": feats(("", 1, 1.0)),
        "nul": feats(("2\x0005", 1, 1.0), ("205", 2, 1.0)),  # a NUL in a field name
    }
    skeleton = [
        line(1, 0, 0, "aa", 4, item),
        line(2, 1, 1, "aa", 4, item),
        line(3, 0, 1, "bb", 4, item),  # conversion without click
        line(4, 0, 1, "zz", 4, item),  # ... with an unknown user: counted, then malformed
        line("x", 0, 1, "bb", 4, item),  # ... whose sample_id no one reads when dropped
        line(6, 2, 0, "aa", 4, item),  # bad label
        line(7, 0, 0, "aa", 1, "205\x02x\x031.0"),  # non-numeric id
        b"8,0,0,aa,1,205\x02\xff\xfe\x031.0",  # not UTF-8
        line(9, 0, 0, "aa", 1, "205\x0277"),  # no value separator
        line(10, 0, 0, "bb", 0, ""),  # no item features: legal
        line(11, 0, 0, "bb", "00", ""),  # feature_num 00 is 0
        line(12, 0, 0, "bb", 2, ""),  # feature_num 2, no features
        line(13, 1, 0, "missing", 4, item),  # an impression whose user is missing
        line(14, 0, 0, "cc", 4, item),  # its user line was malformed
        line(15, 0, 0, "ee", 2, items["neg"]),
        line(16, 0, 0, "ee", 3, items["exp"]),
        line(17, 0, 0, "ee", 4, items["odd"]),
        line(18, 0, 0, "ee", 1, items["inf"]),
        line(181, 0, 0, "ee", 1, items["f32inf"]),
        line(182, 0, 0, "ee", 1, items["i64"]),
        line(183, 0, 0, "ee", 1, items["i64max"]),
        line(2**63, 0, 0, "ee", 1, feats(("205", 1, 1.0))),  # a sample_id one past int64
        line(19, 0, 0, "ee", 1, items["nan"]),
        line(20, 0, 0, "ee", 1, items["order"]),
        line(21, 0, 0, "ee", 2, items["comma"]),
        line(22, 0, 0, "gg", 41, items["long"]),
        line(23, 0, 0, "gg", 4, items["mixed"]),
        line(24, 0, 0, "gg", 4, items["unknown"]),
        line(25, 0, 0, "gg", 1, items["big"]),
        line(26, 0, 0, "gg", 1, items["empty_field"]),
        line(27, 0, 0, "h\u00e9", 1, feats(("205", 1, 1.0))),  # a UTF-8 key
        line(271, 0, 0, "gg", 2, items["nul"]),
        line(28, 0, 0, "x\x01y", 1, feats(("205", 1, 1.0))),
        line(29, 0, 0, "ll", 1, feats(("205", 1, 1.0))) + b"\r\r",  # rstrip takes both
        line(30, 0, 0, "kk", 1, feats(("205", 1, 1.0))) + b"\r",
        line(" 31", 0, 0, "ii", 1, feats(("205", 1, 1.0))),  # int() takes ' 31'
        line(32, 0, 0, "aa", 1, feats(("205", 1, 1.0)) + "\r"),
        b"",
        line(33, 1, 0, "aa", 1, feats(("205", 1, 1.0)), "extra"),  # a comma in the last column
        line(34, 0, 1, "bb", 4, item),  # the last line, without a line end
    ]
    (tmp_path / "common_features_train.csv").write_bytes(b"\n".join(common) + b"\n")
    (tmp_path / "sample_skeleton_train.csv").write_bytes(b"\n".join(skeleton))
    return tmp_path


@pytest.mark.parametrize("policy", ["drop", "click", "ignore"])
def test_adversarial_files_read_the_same(adversarial, policy):
    c = FeatureContract.default(max_len={"210": 4, "110_14": 3, "109_14": 5})
    s = both(adversarial, c, orphans=policy)
    r = s.report
    # The files are what the test says they are: each kind of line was met.
    assert r.orphan_conversions == 4 and r.dropped_orphans == (4 if policy == "drop" else 0)
    joined = "\n".join(r.examples)
    for what in ("appears twice", "not UTF-8", "feature_num is", "is not in", "non-finite"):
        assert what in joined
    for what in ("non-finite value as a float32", "feature id beyond int64"):
        assert what in joined
    assert f"sample_id {2**63} is beyond int64" in joined
    assert (np.asarray(s.item_ids) == 2**63 - 1).any()
    assert "common_features_train.csv:6" not in joined  # cc again, after a malformed cc
    assert r.unknown_fields >= 6
    # Line 5's sample_id 'x' is read only when the orphan is kept.
    assert ("sample_skeleton_train.csv:5:" in joined) == (policy != "drop")


def test_values_parse_as_pythons_float_does(tmp_path):
    """Decimal values of every length and exponent land on the float32 that float() gives."""
    rng = np.random.default_rng(0)
    values = []
    for _ in range(3000):
        digits = "".join(rng.choice(list("0123456789"), rng.integers(1, 25)))
        point = rng.integers(0, len(digits) + 1)
        text = digits[:point] + ("." + digits[point:] if point < len(digits) else "")
        text = text if not text.startswith(".") else "0" + text
        exp = f"e{rng.integers(-60, 60)}" if rng.random() < 0.3 else ""
        values.append(("-" if rng.random() < 0.3 else "") + text + exp)
    common = [line("u", 1, feats(("101", 1, 1.0)))]
    skeleton = [line(k, 0, 0, "u", 1, feats(("205", k, v))) for k, v in enumerate(values)]
    (tmp_path / "common_features_train.csv").write_bytes(b"\n".join(common) + b"\n")
    (tmp_path / "sample_skeleton_train.csv").write_bytes(b"\n".join(skeleton) + b"\n")
    s = both(tmp_path, FeatureContract.default(), chunks=(1 << 20,))
    # a value beyond float32's range would be stored as inf: its line is malformed, in both
    held = [float(v) for v in values if abs(float(v)) <= FLOAT32_LIMIT]
    assert len(s) == len(held) and s.report.malformed == len(values) - len(held) > 100
    assert np.array(held, np.float32).tobytes() == np.asarray(s.item_vals[:, 0]).tobytes()
    assert np.isfinite(np.asarray(s.item_vals)).all()


def test_many_malformed_lines_keep_the_first_examples(tmp_path):
    common = [line("u", 1, feats(("101", 1, 1.0)))]
    skeleton = []
    for k in range(60):
        skeleton.append(line(k, 0, 0, "u", 1, feats(("205", k, 1.0))))
        skeleton.append(line(k, 3, 0, "u", 1, feats(("205", k, 1.0))) if k % 2 else b"\xff")
    (tmp_path / "common_features_train.csv").write_bytes(b"\n".join(common) + b"\n")
    (tmp_path / "sample_skeleton_train.csv").write_bytes(b"\n".join(skeleton) + b"\n")
    s = both(tmp_path, FeatureContract.default())
    assert s.report.malformed == 60 and len(s.report.examples) == MAX_LOGGED_MALFORMED + 1


def test_an_id_beyond_int64_is_a_malformed_line_in_both_readers(tmp_path):
    """It stopped both readers (OverflowError) before: a stored record can no longer end a
    read. The line is skipped, counted and named; the next one is read."""
    common = [line("u", 1, feats(("101", 1, 1.0)))]
    skeleton = [
        line(1, 0, 0, "u", 1, feats(("205", 12345678901234567890, 1.0))),
        line(2, 0, 0, "u", 1, feats(("205", 7, 1.0))),
    ]
    (tmp_path / "common_features_train.csv").write_bytes(b"\n".join(common) + b"\n")
    (tmp_path / "sample_skeleton_train.csv").write_bytes(b"\n".join(skeleton) + b"\n")
    s = both(tmp_path, FeatureContract.default(), chunks=(1 << 20,))
    assert len(s) == 1 and s.report.malformed == 1
    assert "feature id beyond int64" in s.report.examples[0]


def test_crlf_files_read_the_same(small_set, tmp_path):
    for name in ("common_features_test.csv", "sample_skeleton_test.csv"):
        text = (small_set / name).read_bytes()
        (tmp_path / name).write_bytes(text.replace(b"\n", b"\r\n").rstrip(b"\n"))
    s = both(tmp_path, FeatureContract.default(), chunks=(8192,), split="test")
    assert len(s) > 100 and s.report.malformed == 0


def test_load_split_writes_the_same_files_with_either_reader(adversarial, tmp_path):
    c = FeatureContract.default()
    a = load_split(adversarial, "train", c, tmp_path / "a", reader="python")
    b = load_split(adversarial, "train", c, tmp_path / "b")
    assert_same(a, b)
    (da,), (db,) = (tmp_path / "a").iterdir(), (tmp_path / "b").iterdir()
    assert da.name == db.name  # the cache key does not name the reader
    for f in sorted(da.iterdir()):
        assert f.read_bytes() == (db / f.name).read_bytes(), f.name


def test_written_rows_stay_out_of_the_process(small_set, tmp_path):
    """Rows reach the files beneath their mapping: RSS does not grow with the output."""
    c = FeatureContract.default()
    s = read_columnar(small_set, "train", c, tmp_path, chunk_bytes=1 << 20)
    mm = s.user_ids
    while not isinstance(mm, mmap.mmap):
        mm = mm.base
    resident = _resident_bytes(mm)  # before anything reads the arrays back
    assert resident < s.user_ids.nbytes / 4, (resident, s.user_ids.nbytes)
    assert_same(read_aliccp(small_set, "train", c), s)


def _resident_bytes(mm) -> int:
    """Pages of a mapping that are in this process's page tables (mincore would tell the page
    cache instead): read from /proc/self/smaps."""
    import ctypes

    addr = ctypes.addressof(ctypes.c_char.from_buffer(mm))
    lines = Path("/proc/self/smaps").read_text().splitlines()
    for i, text in enumerate(lines):
        if "-" in text.split(" ")[0]:
            lo, hi = (int(x, 16) for x in text.split(" ")[0].split("-"))
            if lo <= addr < hi:
                rss = next(x for x in lines[i + 1 :] if x.startswith("Rss:"))
                return int(rss.split()[1]) * 1024
    raise AssertionError("mapping not found")


def test_progress_lines_name_the_file_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="training")
    p = read_progress("sample_skeleton_train.csv", 4_000_000, every_s=0)
    p.update(1_200_000)
    p.finish()
    first, last = (r.getMessage() for r in caplog.records)
    assert first.startswith("read sample_skeleton_train.csv: 1,200,000 / 4,000,000 lines (30%), ")
    assert " lines/s, ETA " in first and first.endswith(" s")
    assert last.startswith("read sample_skeleton_train.csv: 4,000,000 lines in ")


def test_short_reads_log_their_totals_at_debug_only(small_set, caplog):
    caplog.set_level(logging.DEBUG, logger="training")
    read_columnar(small_set, "test", FeatureContract.default())
    read_aliccp(small_set, "test", FeatureContract.default())
    reads = [r for r in caplog.records if r.getMessage().startswith("read ")]
    assert all(r.levelno == logging.DEBUG for r in reads)
    # one total per file and reader: what training/read_bench.py times each file by
    assert [r.getMessage().split(":")[0] for r in reads] == 2 * [
        "read common_features_test.csv",
        "read sample_skeleton_test.csv",
    ]

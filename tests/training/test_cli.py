"""training/cli.py: the command line of `python -m training.train` is TrainConfig's fields, and
the config (training/config.py) checks what it is given."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from training import cli
from training.config import TrainConfig
from training.train import parse_args

# What the Makefile, README and scripts type: every option, spelled as it always was.
OPTIONS = [
    "--out",
    "--spec",
    "--data",
    "--model",
    "--epochs",
    "--patience",
    "--batch-size",
    "--lr",
    "--embed-lr",
    "--embed-dim",
    "--hidden",
    "--ips-weight",
    "--ips-clip",
    "--cvr-weight",
    "--experts",
    "--interactions",
    "--attn-k",
    "--wide",
    "--calibration",
    "--val-fraction",
    "--pooling",
    "--orphans",
    "--max-len",
    "--without",
    "--max-buckets",
    "--min-count",
    "--items",
    "--numeric",
    "--numeric-buckets",
    "--seed",
    "--threads",
    "--cache",
    "--no-reference",
]
REQUIRED = ["--data", "d", "--out", "o"]


def test_every_option_in_field_order_and_no_other(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    flags = [w.strip("[],") for w in text.split() if w.strip("[],").startswith("--")]
    usage = flags[: flags.index("--no-reference") + 1]
    assert usage == OPTIONS


def test_defaults_are_the_configs():
    assert parse_args(REQUIRED) == TrainConfig(data=Path("d"), out=Path("o"))


def test_every_option_reaches_its_field():
    argv = REQUIRED + [
        *("--model", "esmm-ns", "--epochs", "5", "--patience", "2", "--batch-size", "64"),
        *("--lr", "0.01", "--embed-lr", "0.1", "--embed-dim", "8", "--hidden", "64,32"),
        *("--ips-weight", "0.5", "--ips-clip", "0.1", "--cvr-weight", "0.5", "--experts", "3"),
        *("--interactions", "dot", "--attn-k", "4", "--wide", "all"),
        *("--calibration", "platt", "--val-fraction", "0.2", "--pooling", "sum"),
        *("--orphans", "click", "--max-len", "110_14=64", "210=3", "--without", "508,853"),
        *("--max-buckets", "4096", "--min-count", "3"),
        *("--items", "i.parquet", "--numeric", "price,rating", "--numeric-buckets", "8"),
        *("--seed", "7", "--threads", "2", "--cache", "c", "--no-reference"),
    ]
    want = TrainConfig(
        data=Path("d"),
        out=Path("o"),
        model="esmm-ns",
        epochs=5,
        patience=2,
        batch_size=64,
        lr=0.01,
        embed_lr=0.1,
        embed_dim=8,
        hidden=(64, 32),
        ips_weight=0.5,
        ips_clip=0.1,
        cvr_weight=0.5,
        experts=3,
        interactions="dot",
        attn_k=4,
        wide="all",
        calibration="platt",
        val_fraction=0.2,
        pooling="sum",
        orphans="click",
        max_len={"110_14": 64, "210": 3},
        without=("508", "853"),
        max_buckets=4096,
        min_count=3,
        items=Path("i.parquet"),
        numeric=("price", "rating"),
        numeric_buckets=8,
        seed=7,
        threads=2,
        cache=Path("c"),
        reference=False,
    )
    assert parse_args(argv) == want
    # every field but progress (no option: only on a terminal) was given a non-default value
    default = TrainConfig(data=Path("."), out=Path("."))
    changed = {
        f.name
        for f in dataclasses.fields(want)
        if getattr(want, f.name) != getattr(default, f.name)
    }
    # spec is the other way to give the data: its own test below
    assert changed == {f.name for f in dataclasses.fields(TrainConfig)} - {"progress", "spec"}


def test_the_data_is_a_spec_or_an_aliccp_folder(capsys):
    assert parse_args(["--spec", "s.yaml", "--out", "o"]).spec == Path("s.yaml")
    for argv, message in (
        (["--out", "o"], "give the data as --spec SPEC"),
        (["--out", "o", "--spec", "s", "--data", "d"], "give the data as --spec SPEC"),
        (["--out", "o", "--spec", "s", "--without", "508"], "--without is for --data"),
        (["--out", "o", "--spec", "s", "--items", "i.parquet"], "--items is for --data"),
    ):
        with pytest.raises(SystemExit) as e:
            parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--val-fraction", "1.5"], "val_fraction must be between 0 and 1"),
        (["--max-len", "foo=3"], "unknown Ali-CCP field 'foo'"),
        (["--max-len", "110_14=0"], "max_len of field 110_14 must be >= 1"),
        (["--max-len", "110_14=x"], "expected NAME=int"),
        (["--hidden", "64,x"], "expected comma-separated ints"),
        (["--model", "base", "--ips-weight", "0.5"], "ESCM2-IPS applies to"),
        (["--pooling", "max"], "invalid choice: 'max'"),
        (["--orphans", "keep"], "invalid choice: 'keep'"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_it(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        parse_args(REQUIRED + argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_config_checks_its_values_without_the_command_line():
    for bad, message in (
        ({"pooling": "max"}, "unknown pooling 'max'"),
        ({"orphans": "keep"}, "unknown orphans 'keep'"),
        ({"calibration": "sigmoid"}, "unknown calibration 'sigmoid'"),
        ({"model": "dnn"}, "unknown model kind"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(data=Path("d"), out=Path("o"), **bad)


@dataclasses.dataclass
class Toy:
    path: Path
    name: str = cli.option("x", help="a name")
    flag: bool = False
    optional: Path | None = None
    widths: tuple[float, ...] = (1.0,)
    hidden: int = cli.option(3, cli=False)


def test_the_derivation_on_any_dataclass():
    p = argparse.ArgumentParser()
    cli.add_options(p, Toy)
    got = cli.parse(p, Toy, ["--path", "p", "--flag", "--optional", "q", "--widths", "0.5,2"])
    assert got == Toy(Path("p"), "x", True, Path("q"), (0.5, 2.0), 3)
    assert cli.parse(p, Toy, ["--path", "p"]) == Toy(Path("p"))
    assert "a name" in p.format_help() and "--hidden" not in p.format_help()


def test_a_field_without_a_command_line_form_is_refused():
    @dataclasses.dataclass
    class Bad:
        items: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="no command-line form for items"):
        cli.add_options(argparse.ArgumentParser(), Bad)

"""ranker/cli.py: `ranker <verb> [options]` is `python -m <module> [options]`, and its help loads
nothing it does not need. Run as the installed console script, the way people type it."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ranker import cli
from service.config import Settings

RANKER = Path(sys.executable).with_name("ranker")
TIMEOUT_S = 60


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert Path(cmd[0]).exists(), f"{cmd[0]} is missing: run `make install`"
    return subprocess.run(
        cmd,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "100", **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def test_help_lists_every_verb_and_what_it_replaces(tmp_path):
    r = run([str(RANKER), "--help"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for verb in cli.VERBS:
        described = [ln for ln in lines if ln.startswith(f"  {verb} ")]
        # once with its summary, once with the spelling it replaces
        assert len(described) == 2, (verb, r.stdout)
        assert any(ln.rstrip().endswith(cli.old_spelling(verb)) for ln in described)
    assert "python -m training.train" in r.stdout
    assert "python -m service" in r.stdout


def test_help_imports_no_verb():
    code = (
        "import sys\n"
        "from ranker.cli import main\n"
        "assert main(['--help']) == 0\n"
        "heavy = {'torch', 'fastapi', 'onnxruntime', 'training.train', 'service.main'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


def test_serve_help_lists_the_settings_and_starts_nothing(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    # No model to serve, and a setting that would stop a start: --help reads neither.
    r = run(
        [str(RANKER), "serve", "--help"], tmp_path, RANKER_MODEL_DIR=str(empty), RANKER_PORT="x"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: ranker serve [-h]")
    for name in Settings.model_fields:
        assert f"\n  RANKER_{name.upper()}=" in r.stdout, name
    assert "RANKER_MODEL_DIR=models\n" in r.stdout  # the default, documented
    assert "a model version folder" in r.stdout  # its description
    assert "one of: auto, cpu, cuda" in r.stdout  # RANKER_PROVIDERS' choices
    assert r.stderr == ""  # no logging: nothing was started


def test_serve_takes_no_options(tmp_path):
    r = run([str(RANKER), "serve", "--port", "9000"], tmp_path)
    assert r.returncode == 2
    assert "unrecognized arguments: --port 9000" in r.stderr


def normalized(text: str, *progs: str) -> str:
    """Help text with the program's name blanked and whitespace collapsed: argparse wraps the
    usage lines by the length of the name."""
    for prog in progs:
        text = text.replace(prog, "PROG")
    return " ".join(text.split())


def test_train_help_is_the_trainers(tmp_path):
    new = run([str(RANKER), "train", "--help"], tmp_path)
    old = run([sys.executable, "-m", "training.train", "--help"], tmp_path)
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    assert "--data" in new.stdout and "--model" in new.stdout
    # each names the program as it was typed
    assert new.stdout.startswith("usage: ranker train ")
    assert old.stdout.startswith("usage: python -m training.train ")
    progs = ("python -m training.train", "ranker train")
    assert normalized(new.stdout, *progs) == normalized(old.stdout, *progs)


@pytest.mark.parametrize("argv", [["trian"], ["--data", "x"]])
def test_unknown_verb_exits_2_naming_the_verbs(tmp_path, argv):
    r = run([str(RANKER), *argv], tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert f"unknown verb {argv[0]!r}" in r.stderr
    for verb in cli.VERBS:
        assert verb in r.stderr


def test_no_verb_exits_2_with_the_overview(tmp_path):
    r = run([str(RANKER)], tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("usage: ranker <verb> [options]")


def test_generate_passes_arguments_through(tmp_path):
    args = ["--impressions", "2000", "--seed", "3", "--test-fraction", "0.5"]
    new = run([str(RANKER), "generate", "--out", str(tmp_path / "new"), *args], tmp_path)
    old = run(
        [sys.executable, "-m", "training.generate", "--out", str(tmp_path / "old"), *args],
        tmp_path,
    )
    assert new.returncode == old.returncode == 0, new.stderr + old.stderr
    files = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert "sample_skeleton_train.csv" in files
    assert files == sorted(p.name for p in (tmp_path / "old").iterdir())
    for name in files:
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()


def test_a_verbs_usage_error_names_it(tmp_path):
    r = run([str(RANKER), "generate"], tmp_path)  # --out is required
    assert r.returncode == 2
    assert r.stderr.startswith("usage: ranker generate")


def test_dispatch_passes_argv_and_returns_the_exit_status(monkeypatch):
    seen = {}

    def main(argv: list[str] | None = None) -> int:
        seen["argv"], seen["prog"] = argv, sys.argv[0]
        return 3

    monkeypatch.setitem(sys.modules, "fake_verb", types.SimpleNamespace(main=main))
    monkeypatch.setitem(cli.VERBS, "fake", "fake_verb")
    before = list(sys.argv)
    assert cli.main(["fake", "--x", "1", "--", "-y"]) == 3
    assert seen == {"argv": ["--x", "1", "--", "-y"], "prog": "ranker fake"}
    assert sys.argv == before

"""One version: pyproject.toml's, as the installed package reports it, is CHANGELOG.md's newest
release, what `ranker --version` prints and what the service's OpenAPI document says."""

import re
import tomllib
from pathlib import Path

import ranker
from ranker.cli import main
from service.config import Settings
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_package_is_this_tree():
    assert ranker.__version__ == project_version()


def test_the_changelog_names_this_version_as_the_newest_release():
    releases = re.findall(
        r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", (REPO / "CHANGELOG.md").read_text(), re.M
    )
    assert releases and releases[0] == project_version()
    # newest first, no version twice
    as_tuples = [tuple(map(int, r.split("."))) for r in releases]
    assert as_tuples == sorted(set(as_tuples), reverse=True)


def test_the_command_line_and_the_service_report_it(capsys, tmp_path):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ranker {project_version()}\n"
    app = create_app(Settings(model_dir=tmp_path))
    assert app.openapi()["info"]["version"] == project_version()

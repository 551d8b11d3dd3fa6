"""The compose files, checked without a container engine: they validate against the compose
specification schema of docker-compose 1.29 (tests/data/compose_spec.json, so both 1.29 and v2
accept them), every RANKER_* variable they set is a setting the service knows, and the
Dockerfile's stages are the ones compose builds."""

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.config import Settings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "tests/data/compose_spec.json").read_text())
FILES = ["docker-compose.yml", "docker-compose.gpu.yml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("name", FILES)
def test_compose_file_validates_against_the_specification(name):
    doc = load(name)
    jsonschema.validate(doc, SCHEMA)
    assert "name" not in doc  # docker-compose 1.29 rejects a top-level name


def test_the_schema_would_catch_a_mistake():
    doc = load("docker-compose.yml")
    doc["services"]["ranker"]["depends_on"]["redis"]["condition"] = "when_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


@pytest.mark.parametrize("name", FILES)
def test_every_ranker_variable_is_a_setting(name):
    known = {f"RANKER_{f.upper()}" for f in Settings.model_fields}
    for service in load(name)["services"].values():
        env = service.get("environment", {})
        names = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for var in names:
            if var.startswith("RANKER_"):
                assert var in known, f"{name}: {var} is not a setting of service/config.py"


def test_compose_stack_shape():
    doc = load("docker-compose.yml")
    s = doc["services"]
    assert s["ranker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/readyz" in " ".join(s["ranker"]["healthcheck"]["test"])
    assert s["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert s["loadtest"]["profiles"] == ["loadtest"]
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "Dockerfile").read_text(), re.M))
    assert {s["ranker"]["build"]["target"], s["loadtest"]["build"]["target"]} <= stages
    dockerfile = (REPO / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1].split("AS loadtest", 1)[0]
    assert "USER ranker" in runtime and "[train]" not in runtime  # non-root, torch-free

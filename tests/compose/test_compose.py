"""The compose files, checked without a container engine: they validate against the compose
specification schema of docker-compose 1.29 (tests/data/compose_spec.json, so both 1.29 and v2
accept them), every RANKER_* variable they set is a setting the service knows, the
Dockerfile's stages are the ones compose builds, only the balancer publishes a port beyond this
host (the rankers none, so they scale), HAProxy's check timings take a draining replica out
before it closes its socket, and Redis runs as the compose file starts it: with a password that
has no default, which the ranker's URL and the healthcheck carry (checked on a real
redis-server). make compose-test runs the stack itself (tests/compose/stack.sh)."""

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import redis
import yaml

from service.config import Settings

REPO = Path(__file__).resolve().parents[2]
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
    assert s["prometheus"]["profiles"] == ["metrics"]
    assert "/readyz" in " ".join(s["ranker"]["healthcheck"]["test"])
    assert s["loadtest"]["profiles"] == ["loadtest"]
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", (REPO / "Dockerfile").read_text(), re.M))
    assert {s["ranker"]["build"]["target"], s["loadtest"]["build"]["target"]} <= stages
    dockerfile = (REPO / "Dockerfile").read_text()
    runtime = dockerfile.split("AS runtime", 1)[1].split("AS loadtest", 1)[0]
    assert "USER ranker" in runtime and "[train]" not in runtime  # non-root, torch-free


_VAR = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")
PASSWORD = "RANKER_REDIS_PASSWORD"
LOOPBACK = {"127.0.0.1", "::1", "[::1]", "localhost"}


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution in every value, the forms compose files use: $$, $V,
    ${V}, ${V:-default}, ${V-default}, ${V:?error}, ${V?error} (a missing one raises)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        dollar, name, op, arg, bare = m.groups()
        if dollar:
            return "$"
        name = name or bare
        val = env.get(name)
        missing = val is None or (op or "").startswith(":") and val == ""
        if op and op.endswith("?") and missing:
            raise ValueError(f"{name} is required: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return val or ""

    return _VAR.sub(sub, value)


def host_ip(port) -> str | None:
    """The address a `ports:` entry publishes on; None: every interface."""
    if isinstance(port, dict):
        return port.get("host_ip")
    parts = str(port).split("/")[0].rsplit(":", 2)
    return parts[0] if len(parts) == 3 else None


@pytest.mark.parametrize("name", FILES)
def test_only_the_balancer_publishes_a_port_beyond_this_host(name):
    services = interpolate(load(name), {PASSWORD: "x"})["services"]
    for service, spec in services.items():
        assert spec.get("network_mode") != "host", f"{name}: {service} on the host's network"
        for port in spec.get("ports", []):
            if service == "lb" and str(port).endswith(":8000"):
                continue  # the API; RANKER_PUBLISHED_PORT=127.0.0.1:8000 keeps it on this host
            assert host_ip(port) in LOOPBACK, f"{name}: {service} publishes {port} everywhere"
    assert "ports" not in services.get("redis", {})
    # replicas publish nothing: --scale ranker=3 would have three claim one host port
    assert "ports" not in services["ranker"]


def test_the_api_port_can_be_kept_on_this_host():
    env = {PASSWORD: "x", "RANKER_PUBLISHED_PORT": "127.0.0.1:8000"}
    api, stats = interpolate(load("docker-compose.yml"), env)["services"]["lb"]["ports"]
    assert host_ip(api) == "127.0.0.1" and host_ip(stats) == "127.0.0.1"
    assert host_ip("8000:8000") is None and host_ip({"published": 1, "target": 2}) is None


HAPROXY = REPO / "deploy/haproxy/haproxy.cfg"


def haproxy_seconds(value: str) -> float:
    """An HAProxy time ("500ms", "2s", "1m"; bare numbers are milliseconds)."""
    m = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert m, f"not an HAProxy time: {value}"
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}[m[2] or "ms"]
    return int(m[1]) * unit


def test_the_balancer_takes_a_draining_replica_out_before_it_stops_accepting():
    """A replica answers /readyz 503 from SIGTERM on and closes its socket
    RANKER_SHUTDOWN_DELAY_S later (service/server.py). HAProxy marks it down after `fall` failed
    checks, each started up to `inter` after the previous one ended and allowed `timeout check`:
    that must come first, with room."""
    text = HAPROXY.read_text()
    words = " ".join(re.findall(r"^\s*default-server (.+)$", text, re.M)).split()
    pairs = zip(words[:-1], words[1:], strict=True)
    opts = {k: v for k, v in pairs if k in {"inter", "fall", "fastinter"}}
    assert "check" in words and "fastinter" not in opts
    (check_timeout,) = re.findall(r"^\s*timeout check (\S+)$", text, re.M)
    worst = int(opts["fall"]) * (haproxy_seconds(opts["inter"]) + haproxy_seconds(check_timeout))
    ranker = load("docker-compose.yml")["services"]["ranker"]
    delay = float(ranker["environment"]["RANKER_SHUTDOWN_DELAY_S"])
    grace = float(ranker["environment"]["RANKER_SHUTDOWN_GRACE_S"])
    assert worst + 0.5 <= delay, f"HAProxy may take {worst} s; the replica closes after {delay} s"
    assert haproxy_seconds(ranker["stop_grace_period"]) > delay + grace
    assert re.search(r"http-check send meth GET uri /readyz\n", text)
    assert re.search(r"http-check expect status 200\n", text)


def test_the_balancer_finds_the_replicas_and_retries_what_is_safe_to_retry():
    text = HAPROXY.read_text()
    (template,) = re.findall(r"^\s*server-template \S+ (\d+) (\S+):(\d+)$", text, re.M)
    count, host, port = template
    ranker = load("docker-compose.yml")["services"]["ranker"]
    assert host == "ranker" and port == ranker["environment"]["RANKER_PORT"]
    assert int(count) >= 3
    assert re.search(r"^\s*parse-resolv-conf$", text, re.M)  # the engine's DNS, Docker or Podman
    (retry_on,) = re.findall(r"^\s*retry-on (.+)$", text, re.M)
    # never a status: a 503 is admission control (Retry-After), a 5xx a real answer
    assert set(retry_on.split()) <= {"conn-failure", "empty-response", "junk-response"}
    assert re.search(r"^\s*option redispatch 1$", text, re.M)
    lb = load("docker-compose.yml")["services"]["lb"]
    assert any(v.startswith("./deploy/haproxy/haproxy.cfg:") for v in lb["volumes"])


def test_redis_requires_a_password_that_has_no_default():
    doc = load("docker-compose.yml")
    text = (REPO / "docker-compose.yml").read_text()
    uses = re.findall(r"\$\{" + PASSWORD + r"([^}]*)\}", text)
    assert len(uses) >= 2 and all(u.startswith(":?") for u in uses)  # required, never a default
    for service in ("redis", "ranker"):
        with pytest.raises(ValueError, match=PASSWORD):
            interpolate(doc["services"][service], {})
        with pytest.raises(ValueError, match=PASSWORD):
            interpolate(doc["services"][service], {PASSWORD: ""})
    s = interpolate(doc, {PASSWORD: "pw"})["services"]
    command = s["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "pw"
    url = urlsplit(s["ranker"]["environment"]["RANKER_REDIS_URL"])
    assert (url.scheme, url.password, url.hostname, url.port) == ("redis", "pw", "redis", 6379)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_as_composed_refuses_clients_without_the_password(tmp_path):
    """The compose file's command on a real redis-server: a client without the password gets
    NOAUTH, the healthcheck passes only with the right password (redis-cli exits 0 even on an
    error reply), and the ranker's URL authenticates."""
    pw = "compose-test-" + os.urandom(8).hex()
    s = interpolate(load("docker-compose.yml"), {PASSWORD: pw})["services"]
    command, port = s["redis"]["command"], _free_port()
    assert command[0] == "redis-server"
    server = shutil.which("redis-server")
    assert server, "redis-server is missing (`make redis-server` installs it)"
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    proc = subprocess.Popen([server, *command[1:], *local], stdout=subprocess.DEVNULL)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = ["redis-cli", "-p", str(port), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env)

    try:
        deadline = time.monotonic() + 10
        while "Could not connect" in cli("ping").stderr:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        assert "NOAUTH" in cli("ping").stdout
        kind, check = s["redis"]["healthcheck"]["test"]
        assert kind == "CMD-SHELL"
        check = check.replace("redis-cli", f"redis-cli -p {port}")
        container_env = s["redis"].get("environment", {})

        def healthy(variables: dict) -> bool:
            run = subprocess.run(["sh", "-c", check], env={**env, **variables}, capture_output=True)
            return run.returncode == 0

        assert healthy(container_env)
        assert not healthy({k: "wrong" for k in container_env})
        url = urlsplit(s["ranker"]["environment"]["RANKER_REDIS_URL"])
        assert redis.Redis.from_url(url._replace(netloc=f":{pw}@127.0.0.1:{port}").geturl()).ping()
        with pytest.raises(redis.RedisError, match="(?i)auth"):
            redis.Redis(port=port, socket_timeout=2).ping()
    finally:
        proc.terminate()
        proc.wait(10)


def test_replicas_asks_prometheus_for_a_selector_it_parses():
    """replicas.py's query to Prometheus's API: the sample's labels and the job's, as PromQL."""
    import sys

    sys.path.insert(0, str(REPO / "tests/compose"))
    try:
        import replicas
    finally:
        sys.path.remove(str(REPO / "tests/compose"))
    assert replicas.promql(replicas.RANK_200, job="ranker") == (
        'ranker_request_seconds_count{job="ranker",path="/rank",status="200"}'
    )
    assert (
        replicas.promql(replicas.REDIS_HIT) == 'ranker_user_cache_total{outcome="hit",tier="redis"}'
    )

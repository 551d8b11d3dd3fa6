"""deploy/prometheus/prometheus.yml and deploy/grafana/ranker-dashboard.json, checked against
the service itself (docs/observability.md).

The scrape config finds the compose service's replicas on the service's default port, scrapes
the compose balancer's exporter on the port HAProxy serves it, and its commented
Kubernetes job selects deploy/k8s/base's pods on their port. Every PromQL expression of the
dashboard reads only series the real app exposes: the app is built on the session's exported
model, sent a /rank (and a refused reload, and a Redis tier that refuses connections, so those
labelled series exist too), and its GET /metrics is parsed. A metric name must be a sample name
of that exposition (`_bucket`, `_sum`, `_count`, `_total` as the client library writes them) and
every label an expression matches or groups on must be on that metric. A broken copy of the
dashboard (a misspelt metric, a label the metric lacks) is shown to fail the same check.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families
from support import AUTH, TOKEN, request_for

from loadtest.parts import free_port
from service.config import Settings
from service.main import create_app

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy/prometheus/prometheus.yml"
RULES = REPO / "deploy/prometheus/rules.yml"
DASHBOARD = REPO / "deploy/grafana/ranker-dashboard.json"
# labels Prometheus itself puts on every scraped series (the target's), not the exposition's
TARGET_LABELS = {"job", "instance"}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}

TOKEN_RE = re.compile(
    r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<range>\[[^\]]*\])"""
    r"|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<num>\d+(?:\.\d+)?)"
    r"|(?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){},=<>]))"
)
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr.rstrip()):
        m = TOKEN_RE.match(expr, pos)
        assert m and m.end() > pos, f"cannot read {expr[pos:]!r} in {expr!r}"
        out.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    return out


def matching(toks: list[tuple[str, str]], i: int, step: int) -> int:
    """The index of the parenthesis matching the one at i (step 1: forwards, -1: backwards)."""
    depth = 0
    for j in range(i, len(toks) if step > 0 else -1, step):
        depth += {"(": 1, ")": -1}.get(toks[j][1], 0) * step
        if depth == 0:
            return j
    raise AssertionError("unbalanced parentheses")


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels the expression matches or groups it on) for every metric read.

    A grouping `by`/`without (...)` applies to the metrics of the parenthesised expression it
    aggregates (`sum by (x) (...)` or `sum(...) by (x)`); `on`/`ignoring (...)` to both sides,
    taken here as the whole expression. A bare identifier not followed by `(` is a metric."""
    toks = tokens(expr)
    metrics: dict[int, tuple[str, set[str]]] = {}
    scoped: list[tuple[range, list[str]]] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        assert text not in ("group_left", "group_right"), f"{expr!r}: not supported here"
        if kind == "id" and text in ("by", "without", "on", "ignoring"):
            assert nxt == "(", f"{expr!r}: `{text}` without a label list"
            end = matching(toks, i + 1, 1)
            labels = [t for k, t in toks[i + 2 : end] if k == "id"]
            if text in ("on", "ignoring"):
                span = range(len(toks))
            elif end + 1 < len(toks) and toks[end + 1][1] == "(":  # sum by (x) (expr)
                span = range(end + 1, matching(toks, end + 1, 1))
            else:  # sum(expr) by (x)
                assert toks[i - 1][1] == ")", f"{expr!r}: what does `{text}` group?"
                span = range(matching(toks, i - 1, -1), i)
            scoped.append((span, labels))
            i = end + 1
        elif kind == "id" and nxt not in ("(", "by", "without") and text not in KEYWORDS:
            labels = set()
            i += 1
            if nxt == "{":
                end = next(j for j in range(i, len(toks)) if toks[j][1] == "}")
                labels = {t for k, t in toks[i + 1 : end] if k == "id"}
                i = end + 1
            metrics[i - 1] = (text, labels)
        else:
            assert text != "{", f"{expr!r}: a selector without a metric name"
            i += 1
    for j, (_, labels) in metrics.items():
        for span, grouped in scoped:
            if j in span:
                labels.update(grouped)
    return list(metrics.values())


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    out = []
    for p in dashboard["panels"]:
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]))
    for v in dashboard["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q)
            assert m, f"variable {v['name']}: {q!r} is not label_values(selector, label)"
            # the label asked for must be on the selector's metric: check it as a grouping
            out.append((f"variable {v['name']}", f"sum by ({m[2]}) ({m[1]})"))
    return out


def problems(dashboard: dict, exposed: dict[str, set[str]]) -> list[str]:
    """What in the dashboard the exposition does not back: unknown metrics and labels, panels
    without a unique id or a datasource."""
    found = []
    ids = [p.get("id") for p in dashboard["panels"]]
    if len(ids) != len(set(ids)) or None in ids:
        found.append(f"panel ids are not unique: {ids}")
    for p in dashboard["panels"]:
        if p["type"] != "row" and not p.get("datasource"):
            found.append(f"panel {p['id']} {p['title']!r} has no datasource")
    for where, expr in queries(dashboard):
        for name, labels in selectors(expr):
            if name not in exposed:
                found.append(f"{where}: {name} is not exposed")
            elif missing := labels - exposed[name] - TARGET_LABELS:
                found.append(f"{where}: {name} has no label {sorted(missing)}")
    return found


@pytest.fixture(scope="module")
def exposed(exported, samples) -> dict[str, set[str]]:
    """Every sample name the real app's GET /metrics exposes, with the label names it carries."""
    settings = Settings(
        model_dir=exported.parent.parent,  # NAME/VERSION inside: `esmm` holds no model itself
        admin_token=TOKEN,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: errors, breaker opens
    )
    app = create_app(settings)
    with TestClient(app) as c:
        contract, s = samples
        body, _ = request_for(contract, s, int(s["row_user"][0]))
        assert c.post("/rank", json=body).status_code == 200
        r = c.post("/admin/reload", headers=AUTH, json={"path": "esmm"})
        assert r.status_code == 409  # ranker_reloads_total{outcome="refused"}
        text = c.get("/metrics").text
    # Labelled metrics that this run never touched (admission refusals, the user store) expose
    # their name but no sample: their label names come from the collector's declaration.
    declared = {
        m._name: set(m._labelnames)
        for m in vars(app.state.metrics).values()
        if isinstance(m, MetricWrapperBase)
    }
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in SUFFIXES.get(family.type, ("",)):
            out[family.name + suffix] = set(declared.get(family.name, ()))
        out.get(family.name + "_bucket", set()).add("le")
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    for name in ("ranker_user_cache_total", "ranker_redis_calls_total", "ranker_reloads_total"):
        assert out[name], f"{name}: the run above meant to produce a labelled sample"
    return out


def test_prometheus_scrapes_every_compose_replica_on_the_service_port():
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ranker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert "static_configs" not in job  # a static name would reach one replica of several
    (sd,) = job["dns_sd_configs"]
    (host,) = sd["names"]
    assert sd["type"] == "A" and sd["port"] == Settings.model_fields["port"].default
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"][host]["environment"]["RANKER_PORT"] == str(sd["port"])
    prometheus = compose["services"]["prometheus"]
    assert any(v.startswith("./deploy/prometheus/prometheus.yml:") for v in prometheus["volumes"])


def test_prometheus_scrapes_the_balancers_exporter():
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "haproxy"]
    (target,) = [t for sc in job["static_configs"] for t in sc["targets"]]
    host, port = target.rsplit(":", 1)
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"][host]["image"].startswith("haproxy:")
    haproxy = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    stats = haproxy.split("frontend stats", 1)[1]
    assert f"bind :{port}\n" in stats
    assert f"use-service prometheus-exporter if {{ path {job['metrics_path']} }}" in stats


def test_the_commented_kubernetes_job_selects_the_ranker_pods_on_their_port():
    text = PROMETHEUS.read_text()
    block = text.split("# k8s-example-start\n")[1].split("# k8s-example-end")[0]
    (job,) = yaml.safe_load("\n".join(line.strip()[2:] for line in block.splitlines()))
    deployment = yaml.safe_load((REPO / "deploy/k8s/base/deployment.yaml").read_text())
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    (port,) = container["ports"]
    keep = {
        r["source_labels"][0]: r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep"
    }
    for label, value in pod["metadata"]["labels"].items():
        meta = "__meta_kubernetes_pod_label_" + re.sub(r"[^A-Za-z0-9_]", "_", label)
        assert re.fullmatch(keep[meta], value)
    assert re.fullmatch(keep["__meta_kubernetes_pod_container_port_name"], port["name"])
    assert port["containerPort"] == Settings.model_fields["port"].default
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]


def test_every_dashboard_query_reads_exposed_metrics_and_labels(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    assert len(queries(dashboard)) > 20
    assert problems(dashboard, exposed) == []


def test_every_rule_reads_exposed_metrics_and_labels(exposed):
    """The calibration rules read only what the app exposes (their own records aside), and the
    Prometheus config loads them."""
    assert "rules.yml" in yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    found = []
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            where = rule.get("record") or rule["alert"]
            for name, labels in selectors(rule["expr"]):
                if name.startswith("ranker:"):  # a record of this file
                    continue
                if name not in exposed:
                    found.append(f"{where}: {name} is not exposed")
                elif missing := labels - exposed[name] - TARGET_LABELS:
                    found.append(f"{where}: {name} has no label {sorted(missing)}")
    assert not found, found


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("ranker_batch_rows_bucket", "ranker_batch_row_bucket", "ranker_batch_row_bucket is not"),
        ("ranker_scorer_runs_total", "ranker_scorer_runs", "ranker_scorer_runs is not"),
        ("sum by (tier, outcome)", "sum by (tier, result)", "has no label ['result']"),
        ('outcome="hit"', 'result="hit"', "has no label ['result']"),
        (
            "sum(rate(ranker_batch_rows_sum",
            "sum by (le) (rate(ranker_batch_rows_sum",
            "no label ['le']",
        ),
    ],
)
def test_a_broken_dashboard_fails_the_check(exposed, old, new, expected):
    dashboard = json.loads(DASHBOARD.read_text())
    target = next(t for p in dashboard["panels"] for t in p.get("targets", []) if old in t["expr"])
    target["expr"] = target["expr"].replace(old, new, 1)
    assert any(expected in f for f in problems(dashboard, exposed))


def test_a_panel_without_a_datasource_or_with_a_repeated_id_fails(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    broken = copy.deepcopy(dashboard)
    del broken["panels"][1]["datasource"]
    broken["panels"][2]["id"] = broken["panels"][3]["id"]
    found = problems(broken, exposed)
    assert any("no datasource" in f for f in found)
    assert any("not unique" in f for f in found)

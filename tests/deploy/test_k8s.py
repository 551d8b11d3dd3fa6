"""The Kubernetes manifests (deploy/k8s/), checked without a cluster.

Each kustomization is rendered here the way `kubectl apply -k` would (its `resources`, files and
folders, nothing else: a kustomization using any other field fails the test rather than being
rendered wrong), and every object is validated against the Kubernetes schemas that
kubernetes-validate ships (strict: an unknown field is an error; offline). Then the rules that
hold the objects together, each checked by `problems()` and each shown to fire on a broken copy:
the probes are the service's own endpoints on its port, the grace period outlasts preStop plus
the service's drain, every selector selects the pods it is meant to, the HPA and the PDB target
the ranker, and secrets are referenced, never written down. The service's side comes from
service/config.py and service/routes.py, not from numbers repeated here.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import PydanticBaseSettingsSource

from service.config import Settings
from service.routes import router

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy/k8s"
# what `kubectl apply -k` is pointed at (docs/kubernetes.md)
TARGETS = ["base", "with-redis"]
# The oldest Kubernetes these manifests claim, and the newest whose schemas kubernetes-validate
# 1.37 ships: every field used must exist in both.
KUBERNETES = ["1.30", "1.37"]
# Settings that must come from a Secret: the SecretStr ones, and the URLs that carry a password.
SECRET_SETTINGS = {
    f"RANKER_{name.upper()}"
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *getattr(field.annotation, "__args__", ()))
} | {"RANKER_REDIS_URL", "RANKER_USER_STORE"}


def render(folder: Path) -> list[dict]:
    """The objects `kubectl apply -k folder` applies, for kustomizations that list resources."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    extra = set(kustomization) - {"apiVersion", "kind", "resources"}
    assert not extra, f"{folder}: {sorted(extra)} would need a real kustomize to render"
    docs = []
    for entry in kustomization["resources"]:
        path = folder / entry
        if path.is_dir():
            docs += render(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    ids = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(ids) == len(set(ids)), f"{folder}: an object is declared twice: {sorted(ids)}"
    return docs


class ConfigMapSettings(Settings):
    """The service's settings from the given values alone, not from this process's environment."""

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings: PydanticBaseSettingsSource, *args, **kwargs
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def one(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


def pod_labels(deployment: dict) -> dict:
    return deployment["spec"]["template"]["metadata"]["labels"]


def prestop_seconds(container: dict) -> float:
    """The preStop hook's sleep: `exec: sleep N`, or the built-in `sleep: {seconds: N}`."""
    hook = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook.get("exec", {}).get("command", [])
    return float(command[1]) if len(command) == 2 and command[0] == "sleep" else 0.0


def problems(docs: list[dict]) -> list[str]:
    """Every rule that ties the objects to each other and to the service, broken ones named."""
    out = []
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    ranker = one(docs, "Deployment", "ranker")
    pod = ranker["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]

    # the ConfigMap is the service's environment: known settings, valid together
    config = one(docs, "ConfigMap", "ranker")["data"]
    known = {f"RANKER_{name.upper()}" for name in Settings.model_fields}
    env_names = [e["name"] for e in container.get("env", [])]
    for var in [*config, *env_names]:
        if var.startswith("RANKER_") and var not in known:
            out.append(f"{var} is not a setting of service/config.py")
    settings = ConfigMapSettings(
        **{k.removeprefix("RANKER_").lower(): v for k, v in config.items() if k in known}
    )
    if not any(r.get("configMapRef", {}).get("name") == "ranker" for r in container["envFrom"]):
        out.append("the ranker container does not take its environment from the ConfigMap")

    # the port and the probes are the service's
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("http") != settings.port:
        out.append(f"container port http={ports.get('http')}, service port {settings.port}")
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        out.append(f"RANKER_HOST={settings.host}: probes and the Service cannot reach loopback")
    expected = {
        "readinessProbe": router.url_path_for("readyz"),
        "livenessProbe": router.url_path_for("healthz"),
        "startupProbe": router.url_path_for("healthz"),
    }
    for probe, path in expected.items():
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("http", settings.port):
            out.append(f"{probe} is {get or 'missing'}, expected GET {path} on the service port")

    # SIGTERM comes after preStop; then the drain: readiness off, admission stops, grace
    grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
    prestop = prestop_seconds(container)
    drain = settings.shutdown_delay_s + settings.shutdown_grace_s
    if prestop <= 0:
        out.append("no preStop sleep: SIGTERM would race the endpoint's removal")
    if grace <= prestop + drain:
        out.append(
            f"terminationGracePeriodSeconds={grace} does not exceed preStop {prestop:g} s + "
            f"drain {drain:g} s (RANKER_SHUTDOWN_DELAY_S + RANKER_SHUTDOWN_GRACE_S)"
        )

    # selectors: the Deployment's own, each Service's, the PDB's, the NetworkPolicy's
    for d in deployments:
        match = d["spec"]["selector"]["matchLabels"]
        if not selects(match, pod_labels(d)):
            out.append(f"Deployment {d['metadata']['name']}: its selector misses its own pods")
    for svc in (d for d in docs if d["kind"] == "Service"):
        name, selector = svc["metadata"]["name"], svc["spec"]["selector"]
        chosen = [d for d in deployments if selects(selector, pod_labels(d))]
        if len(chosen) != 1:
            out.append(f"Service {name} selects {len(chosen)} Deployments' pods, not one")
            continue
        named = {
            p.get("name"): p["containerPort"]
            for c in chosen[0]["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for port in svc["spec"]["ports"]:
            target = port["targetPort"]
            if target not in named and target not in named.values():
                out.append(f"Service {name}: targetPort {target} is no port of its pods")
    if not selects(one(docs, "Service", "ranker")["spec"]["selector"], labels):
        out.append("Service ranker does not select the ranker pods")
    pdb = one(docs, "PodDisruptionBudget", "ranker")
    if pdb["spec"]["selector"]["matchLabels"] != ranker["spec"]["selector"]["matchLabels"]:
        out.append("the PodDisruptionBudget selects other pods than the Deployment")
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                let_in = [
                    d["metadata"]["name"]
                    for d in deployments
                    if selects(peer["podSelector"]["matchLabels"], pod_labels(d))
                ]
                if let_in != ["ranker"]:
                    out.append(f"NetworkPolicy {policy['metadata']['name']} lets other pods in")

    # the HPA scales the ranker by CPU, and owns the replica count
    hpa = one(docs, "HorizontalPodAutoscaler", "ranker")
    target = hpa["spec"]["scaleTargetRef"]
    if [target[k] for k in ("apiVersion", "kind", "name")] != ["apps/v1", "Deployment", "ranker"]:
        out.append(f"the HPA scales {target}, not the ranker Deployment")
    if [m["resource"]["name"] for m in hpa["spec"]["metrics"]] != ["cpu"]:
        out.append("the HPA does not scale on CPU")
    if "cpu" not in container["resources"].get("requests", {}):
        out.append("no CPU request: the HPA's utilisation has nothing to be a share of")
    if "replicas" in ranker["spec"]:
        out.append("Deployment ranker sets replicas: every apply would reset the HPA's count")

    # secrets referenced, never written down; no Service links in any pod's environment
    out += [
        f"{d['kind']} {d['metadata']['name']}: a Secret in the manifests"
        for d in docs
        if d["kind"] == "Secret"
    ]
    for var in SECRET_SETTINGS & set(config):
        out.append(f"{var} is in the ConfigMap, in plain sight: it belongs in the Secret")
    for d in deployments:
        spec = d["spec"]["template"]["spec"]
        if spec.get("enableServiceLinks", True):
            out.append(
                f"Deployment {d['metadata']['name']}: Service links on (RANKER_PORT=tcp://..)"
            )
        for c in spec["containers"]:
            for e in c.get("env", []):
                secret = e["name"] in SECRET_SETTINGS or any(
                    word in e["name"] for word in ("PASSWORD", "TOKEN")
                )
                if secret and "secretKeyRef" not in e.get("valueFrom", {}):
                    out.append(f"{c['name']}: {e['name']} is not read from a Secret")
    return out


def secret_keys(docs: list[dict]) -> set[tuple[str, str]]:
    return {
        (ref["name"], ref["key"])
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if (ref := e.get("valueFrom", {}).get("secretKeyRef"))
    }


@pytest.mark.parametrize("version", KUBERNETES)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_strictly(target, version):
    for doc in render(K8S / target):
        assert kubernetes_validate.validate(doc, version, strict=True) == version


@pytest.mark.parametrize("target", TARGETS)
def test_the_objects_hold_together(target):
    assert problems(render(K8S / target)) == []


def test_the_schema_check_can_fail():
    deployment = one(render(K8S / "base"), "Deployment", "ranker")
    misspelt = copy.deepcopy(deployment)
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    for broken in (misspelt, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES[0], strict=True)
    unknown = {**deployment, "apiVersion": "apps/v1beta1"}  # removed in 1.16
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(unknown, KUBERNETES[0], strict=True)


def _path(doc: dict, *keys):
    for key in keys:
        doc = doc[key]
    return doc


def _container(docs):
    return _path(one(docs, "Deployment", "ranker"), "spec", "template", "spec", "containers")[0]


BREAKAGES = {
    "grace period": (
        lambda d: _path(one(d, "Deployment", "ranker"), "spec", "template", "spec").update(
            terminationGracePeriodSeconds=15
        ),
        "terminationGracePeriodSeconds=15 does not exceed",
    ),
    "drain longer than the grace period": (
        lambda d: one(d, "ConfigMap", "ranker")["data"].update(RANKER_SHUTDOWN_GRACE_S="25"),
        "does not exceed preStop 5 s + drain 27 s",
    ),
    "readiness on /healthz": (
        lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/healthz"),
        "readinessProbe",
    ),
    "another port": (
        lambda d: one(d, "ConfigMap", "ranker")["data"].update(RANKER_PORT="9000"),
        "container port http=8000, service port 9000",
    ),
    "loopback": (
        lambda d: one(d, "ConfigMap", "ranker")["data"].pop("RANKER_HOST"),
        "RANKER_HOST=127.0.0.1",
    ),
    "an unknown setting": (
        lambda d: one(d, "ConfigMap", "ranker")["data"].update(RANKER_SHUTDOWN_GRACE="10"),
        "RANKER_SHUTDOWN_GRACE is not a setting",
    ),
    "Service selector": (
        lambda d: one(d, "Service", "ranker")["spec"]["selector"].update(app="rankr"),
        "Service ranker selects 0 Deployments",
    ),
    "HPA target": (
        lambda d: one(d, "HorizontalPodAutoscaler", "ranker")["spec"]["scaleTargetRef"].update(
            name="redis"
        ),
        "the HPA scales",
    ),
    "PDB selector": (
        lambda d: one(d, "PodDisruptionBudget", "ranker")["spec"]["selector"].update(
            matchLabels={"app.kubernetes.io/name": "redis"}
        ),
        "the PodDisruptionBudget selects other pods",
    ),
    "token inlined": (
        lambda d: _container(d)["env"][0].update(value="x" * 32, valueFrom={}),
        "RANKER_ADMIN_TOKEN is not read from a Secret",
    ),
    "Redis URL in the ConfigMap": (
        lambda d: one(d, "ConfigMap", "ranker")["data"].update(
            RANKER_REDIS_URL="redis://:hunter2@redis:6379/0"
        ),
        "RANKER_REDIS_URL is in the ConfigMap",
    ),
    "a Secret": (
        lambda d: d.append({"kind": "Secret", "metadata": {"name": "ranker"}}),
        "Secret ranker: a Secret in the manifests",
    ),
    "no preStop": (
        lambda d: _container(d).pop("lifecycle"),
        "no preStop sleep",
    ),
    "Service targetPort": (
        lambda d: one(d, "Service", "redis")["spec"]["ports"][0].update(targetPort=6380),
        "Service redis: targetPort 6380 is no port of its pods",
    ),
    "replicas": (
        lambda d: one(d, "Deployment", "ranker")["spec"].update(replicas=3),
        "Deployment ranker sets replicas",
    ),
    "HPA on memory": (
        lambda d: one(d, "HorizontalPodAutoscaler", "ranker")["spec"]["metrics"][0][
            "resource"
        ].update(name="memory"),
        "the HPA does not scale on CPU",
    ),
    "NetworkPolicy": (
        lambda d: one(d, "NetworkPolicy", "redis")["spec"]["ingress"][0]["from"][0].update(
            podSelector={"matchLabels": {}}
        ),
        "NetworkPolicy redis lets other pods in",
    ),
    "no CPU request": (
        lambda d: _container(d)["resources"]["requests"].pop("cpu"),
        "no CPU request",
    ),
    "no ConfigMap": (
        lambda d: _container(d).update(envFrom=[]),
        "does not take its environment from the ConfigMap",
    ),
    "Deployment selector": (
        lambda d: one(d, "Deployment", "redis")["spec"]["selector"]["matchLabels"].update(
            tier="cache"
        ),
        "Deployment redis: its selector misses its own pods",
    ),
    "Service links": (
        lambda d: _path(one(d, "Deployment", "redis"), "spec", "template", "spec").pop(
            "enableServiceLinks"
        ),
        "Deployment redis: Service links on",
    ),
}


@pytest.mark.parametrize("name", BREAKAGES)
def test_each_rule_can_fail(name):
    docs = render(K8S / "with-redis")
    breakage, message = BREAKAGES[name]
    breakage(docs)
    found = problems(docs)
    assert any(message in p for p in found), found


def test_the_renderer_refuses_what_it_would_not_apply(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nnamespace: prod\n")
    with pytest.raises(AssertionError, match="namespace"):
        render(tmp_path)


@pytest.mark.parametrize("target", TARGETS)
def test_the_docs_create_every_secret_key(target):
    docs = (REPO / "docs/kubernetes.md").read_text()
    for name, key in secret_keys(render(K8S / target)):
        assert f"--from-literal={key}=" in docs and f"secret generic {name}" in docs, key


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("target", TARGETS)
def test_render_matches_kubectl_kustomize(target):
    """kubectl's built-in kustomize (offline) renders the same objects as render()."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    def key(d):
        return (d["kind"], d["metadata"]["name"])

    assert sorted(yaml.safe_load_all(out), key=key) == sorted(render(K8S / target), key=key)

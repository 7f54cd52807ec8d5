"""The deployment files, checked offline: the Kubernetes manifests against the API schemas
(``kubernetes-validate``, strict), and what they must say for this group to be run safely
(the rules in deploy/kubernetes/statefulset.yaml's header); the compose file and the image."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from derecho_actors.node.app_host import hosted_layout, load_apps
from runtime.config import load_config
from runtime.drivers.dial import client_credentials
from runtime.security.tls import TlsCredentials, load_credentials

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = kubernetes_validate.latest_version()


def documents() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def flags(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in args:
        key, _, value = a.partition("=")
        out.setdefault(key, []).append(value)
    return out


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_manifests_validate_against_the_kubernetes_schemas(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda s: s["spec"].__setitem__("replicas", "three"),
        lambda s: s["spec"]["template"]["spec"]["containers"][0].__setitem__("readinessProbe", {"httpGet": {}}),
        lambda s: s["spec"].__setitem__("serviceNmae", "derecho"),  # a typo: strict mode refuses it
    ],
)
def test_the_validator_refuses_a_broken_statefulset(breakage: Any) -> None:
    broken = copy.deepcopy(one("StatefulSet"))
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_the_statefulset_runs_the_group_as_its_rules_say() -> None:
    sts = one("StatefulSet")
    svc = one("Service", sts["spec"]["serviceName"])
    pdb = one("PodDisruptionBudget")
    pod = sts["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    args = flags(node["args"])
    replicas = sts["spec"]["replicas"]
    name, service = sts["metadata"]["name"], svc["metadata"]["name"]
    # Peers find each other by stable names, published before pods are ready.
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert args["--contact"] == [
        f"{name}-{i}.{service}.$(POD_NAMESPACE).svc.cluster.local:7001" for i in range(replicas)
    ]
    assert args["--advertise"] == [f"$(POD_NAME).{service}.$(POD_NAMESPACE).svc.cluster.local:7001"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in node["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # The id from the ordinal, one founder, no departure on SIGTERM.
    assert "--id-from-ordinal" in args and "--no-leave" in args
    assert args["--bootstrap-expect"] == [str(replicas)]
    # One disruption at a time.
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    # Probes on the health endpoint the configuration opens.
    assert node["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert node["livenessProbe"]["httpGet"]["path"] == "/health/live"
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    assert node["readinessProbe"]["httpGet"]["port"] == "metrics" and ports["metrics"] == 9100
    # Data on the claim, TLS from the Secret, config from the ConfigMap.
    mounts = {m["name"]: m["mountPath"] for m in node["volumeMounts"]}
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "derecho-tls"
    assert args["--certs-dir"] == [mounts["tls"]]
    assert args["--config"] == [mounts["config"]]


def test_one_configuration_for_compose_and_kubernetes_and_it_loads(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "node.toml").read_text()
    in_configmap = tomllib.loads(one("ConfigMap")["data"]["node.toml"])
    assert in_configmap == tomllib.loads(text), "deploy/kubernetes/configmap.yaml differs from deploy/node.toml"
    config = load_config(ROOT / "deploy" / "node.toml", {}, {})
    sts = one("StatefulSet")
    mounts = {m["name"]: m["mountPath"] for m in sts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert config.node.data_dir == mounts["data"]
    assert config.node.metrics.endswith(":9100")
    classes = load_apps(config.node.app)
    layout = hosted_layout(classes, config.layout, scan_modules=True)
    assert "PersistentKV" in layout.policy.describe()


def test_compose_starts_three_alike_nodes_with_their_own_volumes() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    nodes = {k: v for k, v in compose["services"].items() if k.startswith("node")}
    assert sorted(nodes) == ["node1", "node2", "node3"]
    commands = {tuple(v["command"]) for v in nodes.values()}
    assert len(commands) == 1, "every node runs the same command"
    args = flags(next(iter(commands))[1:])
    assert args["--contact"] == [f"{n}:7001" for n in sorted(nodes)] and args["--bootstrap-expect"] == ["3"]
    ids = {v["environment"]["DERECHO_NODE_ID"] for v in nodes.values()}
    assert ids == {"1", "2", "3"}
    data = [next(m for m in v["volumes"] if m.endswith(":/var/lib/derecho")) for v in nodes.values()]
    assert len(set(data)) == 3 and all(d.split(":")[0] in compose["volumes"] for d in data)
    for name, v in nodes.items():
        assert v["environment"]["DERECHO_NODE_ADVERTISE"] == f"{name}:7001"


def test_the_image_holds_the_packages_and_the_examples_and_runs_unprivileged() -> None:
    text = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (\S+)", text, re.M)
    for needed in ("derecho_actors", "runtime", "examples", "pyproject.toml"):
        assert needed in copied
    assert re.search(r"^USER 10001$", text, re.M) and 'ENTRYPOINT ["derecho-actors"]' in text
    sts = one("StatefulSet")
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


def test_the_compose_certs_service_makes_what_the_nodes_and_a_client_need(tmp_path: Path) -> None:
    """The one-shot ``certs`` service's script, run here with its volume at a temporary folder
    (and without the chown to the image's user): a CA, nodes 1-3, the client "operator"; run
    again, it changes nothing."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    script = compose["services"]["certs"]["command"][0]
    script = script.replace("$$", "$").replace("/certs", str(tmp_path / "certs"))
    script = script.replace(f"&& chown -R 10001 {tmp_path / 'certs'}", "")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")])}
    subprocess.run(["sh", "-c", script], check=True, env=env, cwd=tmp_path, timeout=120, capture_output=True)
    made = sorted(p.name for p in (tmp_path / "certs").iterdir())
    for name in ("ca.crt", "ca.key", "client-operator.crt", "client-operator.key"):
        assert name in made
    assert {f"node-{i}.{ext}" for i in (1, 2, 3) for ext in ("crt", "key")} <= set(made)
    before = {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()}
    subprocess.run(["sh", "-c", script], check=True, env=env, cwd=tmp_path, timeout=120, capture_output=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()} == before
    for i in (1, 2, 3):
        assert load_credentials(TlsCredentials.for_node(tmp_path / "certs", i), "node", i).identity.node_id == i
    assert client_credentials(tmp_path / "certs", "operator").identity.name == "operator"


def test_the_metrics_port_is_open_only_to_probes_and_labelled_scrapers() -> None:
    """/metrics maps the group and its load and is plain HTTP in the shipped config (the kubelet's
    probes need that): a NetworkPolicy must limit who reaches it, and compose must publish it on
    the host's loopback only, unless the config turns metrics_tls on."""
    config = load_config(str(ROOT / "deploy" / "node.toml"), {}, {})
    if config.security.metrics_tls:
        return
    policy = one("NetworkPolicy")
    sts = one("StatefulSet")
    assert policy["spec"]["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    metrics_rules = [r for r in rules if any(p["port"] in ("metrics", 9100) for p in r.get("ports", []))]
    assert metrics_rules and all(r.get("from") for r in metrics_rules), "the metrics port is open to every pod"
    for rule in metrics_rules:
        for peer in rule["from"]:
            assert peer.get("podSelector", {}).get("matchLabels"), f"a rule lets unlabelled pods scrape: {peer}"
    assert not any(not r.get("ports") for r in rules), "a rule opens every port"
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            if mapping.endswith(":9100"):
                assert mapping.startswith("127.0.0.1:"), f"{name} publishes metrics on every interface: {mapping}"
    assert config.limits.metrics_max_connections <= 64 and config.limits.metrics_timeout_ms <= 10_000

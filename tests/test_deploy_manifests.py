"""The deploy kit parses and hangs together: Dockerfile, .dockerignore, deploy/docker-compose.yaml, deploy/k8s/.

Every manifest is parsed; the routing policies embedded in them pass the gateway's own checks; names that must
agree across files (ports, served model names, LoRA adapters, labels, mounts, the image's user) are compared.
``docker compose config``, ``kubectl kustomize`` and ``promtool check config`` validate further where installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.fleet.url import StateUrl
from gateway.policy import load_policy

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yaml"
K8S = DEPLOY / "k8s"
IMAGE_UID = 10001

_DEFAULT = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation for ``${VAR}``, ``${VAR:-default}`` and ``$$``, with ``env`` (else the defaults)."""
    values = env or {}

    def one(match: re.Match[str]) -> str:
        return values.get(match["name"]) or match["default"] or ""

    return _DEFAULT.sub(one, text.replace("$$", "\0")).replace("\0", "$")


# --- Dockerfile --------------------------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction.upper(), rest.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for instruction, rest in stage if instruction == name]


def test_dockerfile_is_multi_stage_and_the_final_stage_has_no_build_tools() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any("--from=build" in copy for copy in instructions(final, "COPY"))
    runs = " ".join(instructions(final, "RUN"))
    for tool in ("apt-get install", "gcc", "build-essential", "pip install"):
        assert tool not in runs, f"final stage runs {tool!r}"
    assert "pip uninstall -y pip" in " ".join(instructions(stages[0], "RUN"))


def test_dockerfile_runs_llm_gateway_serve_as_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    (user,) = instructions(final, "USER")
    assert user.split(":")[0] == str(IMAGE_UID)
    assert f"--uid {IMAGE_UID}" in " ".join(instructions(final, "RUN"))
    (entrypoint,) = instructions(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["llm-gateway", "serve"]
    (cmd,) = instructions(final, "CMD")
    args = json.loads(cmd)
    assert args[args.index("--policy") + 1] == "/etc/llm-gateway/policy.yaml"
    port = args[args.index("--port") + 1]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    assert instructions(final, "EXPOSE") == [port]
    (healthcheck,) = instructions(final, "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck


def test_dockerignore_sends_only_what_the_image_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    assert patterns[0] == "*"  # everything is ignored unless re-included
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for stage in dockerfile_stages():
        for copy in instructions(stage, "COPY"):
            if "--from=" not in copy:
                copied |= set(copy.split()[:-1])
    assert {c.rstrip("/").removeprefix("./") for c in copied} == included
    for path in included:
        assert (ROOT / path).exists(), path
    assert not included & {".venv", ".venv-vllm", ".cache", ".git", "tests"}


# --- docker compose ----------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def service_flags(service: dict[str, Any]) -> tuple[str, dict[str, list[str]]]:
    """(positional model, {--flag: [values]}) of a vLLM service's command, defaults interpolated."""
    args = [interpolate(str(arg)) for arg in service["command"]]
    flags: dict[str, list[str]] = {}
    current = None
    for arg in args[1:]:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            current = name
            flags.setdefault(name, [])
            if value:
                flags[name].append(value)
        else:
            assert current is not None, arg
            flags[current].append(arg)
    return args[0], flags


def compose_policy(tmp_path: Path) -> Any:
    path = tmp_path / "policy.yaml"
    path.write_text(interpolate(compose()["configs"]["gateway-policy"]["content"]))
    return load_policy(path).spec


def test_compose_has_the_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"vllm-sources", "vllm-merged", "gateway", "redis", "prometheus", "grafana", "jaeger"}
    for name in ("vllm-sources", "vllm-merged"):
        service = services[name]
        assert interpolate(service["image"]).startswith("vllm/vllm-openai:v")
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    for service in services.values():
        image = interpolate(service.get("image", ""))
        assert image.rpartition(":")[2] not in {"", "latest"}, f"unpinned image {image!r}"


def test_compose_vllm_servers_serve_what_the_policy_routes_to(tmp_path: Path) -> None:
    services = compose()["services"]
    policy = compose_policy(tmp_path)
    _, sources = service_flags(services["vllm-sources"])
    merged_model, merged = service_flags(services["vllm-merged"])
    assert "--enable-lora" in sources
    adapters = dict(module.split("=", 1) for module in sources["--lora-modules"])
    assert set(adapters) == {"billing-specialist", "policy-specialist"}
    served = {
        "http://vllm-sources:8000": {*sources["--served-model-name"], *adapters},
        "http://vllm-merged:8000": set(merged["--served-model-name"]),
    }
    for name, model in policy.models.items():
        for backend in model.backends:
            assert (model.served_name or name) in served[backend], (name, backend)
    assert policy.models["merged-v1"].sources == ["billing-specialist", "policy-specialist"]
    assert merged_model == "/models/merged-v1"
    mounts = [interpolate(v) for v in services["vllm-merged"]["volumes"]]
    assert "./models:/models:ro" in mounts
    assert all(path.startswith("/models/adapters/") for path in adapters.values())
    assert sources["--port"] == merged["--port"] == ["8000"]
    assert policy.health.scrape_load is True


def test_compose_gateway_gets_its_policy_config_and_traces_go_to_jaeger() -> None:
    spec = compose()
    gateway = spec["services"]["gateway"]
    assert (COMPOSE.parent / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve() == DOCKERFILE
    command = gateway["command"]
    targets = {config["target"]: config["source"] for config in gateway["configs"]}
    assert targets[command[command.index("--policy") + 1]] == "gateway-policy"
    for service in spec["services"].values():
        for config in service.get("configs", []):
            assert config["source"] in spec["configs"], config
    endpoint = gateway["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
    assert endpoint == "http://jaeger:4318"
    assert "--set=receivers.otlp.protocols.http.endpoint=0.0.0.0:4318" in spec["services"]["jaeger"]["command"]
    assert f"{command[command.index('--admin-port') + 1]}" in " ".join(gateway["ports"][1:])
    assert gateway["ports"][1].startswith("127.0.0.1:")  # the admin API stays on the host


REDIS_FLAGS = {"--maxmemory": "256mb", "--maxmemory-policy": "volatile-ttl", "--save": "", "--appendonly": "no"}


def redis_flags(args: list[str]) -> dict[str, str]:
    assert args[0] == "redis-server" and len(args) % 2 == 1, args
    return dict(zip(args[1::2], args[2::2], strict=True))


def test_compose_gateway_keeps_its_fleet_state_in_the_redis_service() -> None:
    services = compose()["services"]
    gateway, redis = services["gateway"], services["redis"]
    url = StateUrl.parse(interpolate(gateway["environment"]["GATEWAY_STATE_URL"]))
    assert url.backend == "redis" and url.redis_url == "redis://redis:6379/0"
    assert gateway["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert "ports" not in redis  # reachable on the compose network only
    assert interpolate(redis["image"]).startswith("redis:7")
    assert redis_flags([interpolate(arg) for arg in redis["command"]]) == REDIS_FLAGS
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert redis["restart"] == gateway["restart"]


def test_compose_bind_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":")[0]
            if source.startswith("./") and not source.startswith("./models"):
                assert (COMPOSE.parent / source).exists(), (name, source)


def test_compose_prometheus_scrapes_gateway_and_vllm_with_the_alert_rules(tmp_path: Path) -> None:
    spec = compose()
    config = yaml.safe_load(spec["configs"]["prometheus-config"]["content"])
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    gateway_port = spec["services"]["gateway"]["command"][spec["services"]["gateway"]["command"].index("--port") + 1]
    assert targets == {"llm-gateway": [f"gateway:{gateway_port}"], "vllm": ["vllm-sources:8000", "vllm-merged:8000"]}
    mounts = dict(volume.split(":")[:2] for volume in spec["services"]["prometheus"]["volumes"])
    (rules,) = config["rule_files"]
    assert mounts["./prometheus/alerts.yaml"] == f"/etc/prometheus/{rules}"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (make prometheus-tools)")
    (tmp_path / "prometheus.yaml").write_text(spec["configs"]["prometheus-config"]["content"])
    shutil.copy(DEPLOY / "prometheus" / "alerts.yaml", tmp_path / rules)
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_prometheus_and_the_dashboard() -> None:
    spec = compose()
    grafana = spec["services"]["grafana"]
    datasources = yaml.safe_load(spec["configs"]["grafana-datasource"]["content"])["datasources"]
    assert [(d["type"], d["url"]) for d in datasources] == [("prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load(spec["configs"]["grafana-dashboards"]["content"])["providers"]
    dashboards_dir = providers[0]["options"]["path"]
    (mount,) = grafana["volumes"][:1]
    source, target = mount.split(":")[:2]
    assert (COMPOSE.parent / source).resolve() == DEPLOY / "grafana" / "llm-gateway-dashboard.json"
    assert Path(target).parent == Path(dashboards_dir)


def test_docker_compose_config_validates_the_file() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` (v2) is not installed")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# --- Kubernetes --------------------------------------------------------------------------------------------------


def k8s_objects() -> dict[str, dict[str, Any]]:
    """``Kind/name`` -> object, for every document of every manifest listed in the kustomization."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects: dict[str, dict[str, Any]] = {}
    for resource in kustomization["resources"]:
        for document in yaml.safe_load_all((K8S / resource).read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(document), resource
            key = f"{document['kind']}/{document['metadata']['name']}"
            assert key not in objects, key
            objects[key] = document
    return objects


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {"redis.yaml", "state-secret.yaml"} <= files
    kinds = {key.split("/")[0] for key in k8s_objects()}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "ServiceMonitor"} <= kinds


def gateway_container() -> dict[str, Any]:
    deployment = k8s_objects()["Deployment/llm-gateway"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_deployment_probes_and_non_root() -> None:
    deployment = k8s_objects()["Deployment/llm-gateway"]
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    args = container["args"]
    assert ports["http"] == int(args[args.index("--port") + 1])
    assert ports["admin"] == int(args[args.index("--admin-port") + 1])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilization needs a request
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_policy_configmap_is_mounted_as_a_directory_and_is_valid(tmp_path: Path) -> None:
    objects = k8s_objects()
    pod = objects["Deployment/llm-gateway"]["spec"]["template"]["spec"]
    container = gateway_container()
    args = container["args"]
    policy_path = Path(args[args.index("--policy") + 1])
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount  # a subPath mount never sees ConfigMap updates: no hot reload
    assert Path(mount["mountPath"]) == policy_path.parent
    configmap = objects[f"ConfigMap/{volume['configMap']['name']}"]
    (tmp_path / policy_path.name).write_text(configmap["data"][policy_path.name])
    spec = load_policy(tmp_path / policy_path.name).spec
    assert spec.models["merged-v1"].sources == ["billing-specialist", "policy-specialist"]


def test_service_hpa_and_servicemonitor_point_at_the_deployment() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment/llm-gateway"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects["Service/llm-gateway"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    container_ports = {port["name"] for port in gateway_container()["ports"]}
    service_ports = {port["name"]: port["targetPort"] for port in service["spec"]["ports"]}
    assert set(service_ports.values()) <= container_ports
    assert "admin" not in service_ports.values()  # the admin API is not exposed
    hpa = objects["HorizontalPodAutoscaler/llm-gateway"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llm-gateway"}
    assert hpa["spec"]["minReplicas"] >= 2
    monitor = objects["ServiceMonitor/llm-gateway"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    budget = objects["PodDisruptionBudget/llm-gateway"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def env_var(container: dict[str, Any], name: str) -> dict[str, Any]:
    (var,) = [var for var in container["env"] if var["name"] == name]
    return dict(var)


def mebibytes(quantity: str) -> float:
    """A Kubernetes (``384Mi``) or Redis (``256mb``) memory size in MiB: the units this kit uses."""
    match = re.fullmatch(r"(\d+)(Mi|Gi|mb|gb)", quantity)
    assert match is not None, quantity
    return int(match[1]) * {"Mi": 1, "mb": 1, "Gi": 1024, "gb": 1024}[match[2]]


def test_gateway_pods_share_state_through_the_secret_and_name_themselves() -> None:
    objects = k8s_objects()
    ref = env_var(gateway_container(), "GATEWAY_STATE_URL")["valueFrom"]["secretKeyRef"]
    assert ref.get("optional", False) is False  # replicas without the shared state would each gate on their own
    url = StateUrl.parse(objects[f"Secret/{ref['name']}"]["stringData"][ref["key"]])
    service = objects["Service/llm-gateway-redis"]
    (port,) = service["spec"]["ports"]
    assert url.redis_url == f"redis://{service['metadata']['name']}:{port['port']}/0"
    instance = env_var(gateway_container(), "GATEWAY_INSTANCE_ID")["valueFrom"]
    assert instance == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_redis_deployment_serves_the_service_like_compose_does() -> None:
    objects = k8s_objects()
    deployment = objects["Deployment/llm-gateway-redis"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two states behind one Service
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    service = objects["Service/llm-gateway-redis"]
    assert service["spec"]["selector"].items() <= labels.items()
    for name in ("Service/llm-gateway", "PodDisruptionBudget/llm-gateway"):
        selector = objects[name]["spec"]["selector"]
        assert not selector.get("matchLabels", selector).items() <= labels.items(), name  # gateway pods only
    (port,) = service["spec"]["ports"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == port["port"] == 6379
    flags = redis_flags(container["args"])
    assert flags == REDIS_FLAGS
    assert container["image"] == interpolate(compose()["services"]["redis"]["image"])
    assert mebibytes(container["resources"]["limits"]["memory"]) > mebibytes(flags["--maxmemory"])
    assert container["resources"]["requests"]["cpu"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(container[probe]["exec"]["command"]), probe
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    policy = objects["NetworkPolicy/llm-gateway-redis"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    gateway_labels = objects["Deployment/llm-gateway"]["spec"]["template"]["metadata"]["labels"]
    ((source,),) = [rule["from"] for rule in policy["ingress"]]
    assert source["podSelector"]["matchLabels"].items() <= gateway_labels.items()


def test_kubectl_kustomize_renders_the_kit() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rendered = list(yaml.safe_load_all(result.stdout))
    assert {doc["metadata"].get("namespace") for doc in rendered if doc["kind"] != "Namespace"} == {"llm-gateway"}
    deployments = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "Deployment"}
    assert set(deployments) == {"llm-gateway", "llm-gateway-redis"}
    (container,) = deployments["llm-gateway"]["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":0.1.0")


def test_interpolation_follows_compose() -> None:
    assert interpolate("${A:-x}/${B-y}/${C}/$$D", {"A": "a"}) == "a/y//$D"
    assert interpolate("${A:-x}") == "x"

"""The deployment files are valid and keep their promises, checked offline in seconds.

- deploy/compose.yaml validates against the Compose specification and has no default secrets;
- deploy/Dockerfile has a non-root target with a health check per service;
- the Helm chart lints clean and its manifests validate against the Kubernetes schemas (the
  oldest supported version and the newest known), with default values, with a 3-node broker
  cluster and with an external broker; it refuses to render without credentials; every pod runs restricted, with probes on
  the services' health endpoints; every value is documented and typed.

Running the containers is tests/test_deploy_smoke.py's job.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml
from helm_python import Chart

REPOSITORY = Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
CHART = DEPLOY / "helm" / "colmena"
CI_VALUES = {
    "in-chart broker": CHART / "ci" / "in-chart-broker-values.yaml",
    "in-chart broker cluster": CHART / "ci" / "broker-cluster-values.yaml",
    "external broker": CHART / "ci" / "external-broker-values.yaml",
}


def _kubernetes_versions() -> tuple[str, str]:
    """The oldest schemas kubernetes-validate has at or above the chart's minimum (1.25),
    and the newest."""
    known = sorted(
        set(kubernetes_validate.utils.all_versions()),
        key=lambda version: tuple(int(part) for part in version.split(".")),
    )
    supported = [v for v in known if tuple(int(p) for p in v.split(".")[:2]) >= (1, 25)]
    return supported[0], supported[-1]


KUBERNETES_VERSIONS = _kubernetes_versions()
SECRETS = (
    "RABBITMQ_DEFAULT_PASS",
    "REDIS_PASSWORD",
    "COLMENA_GATEWAY_TOKENS",
    "COLMENA_CAMPAIGN_SECRET",
    "COLMENA_THINKER_BROKER_PASSWORD",
    "COLMENA_TASKSERVER_BROKER_PASSWORD",
    "COLMENA_GATEWAY_BROKER_PASSWORD",
    "COLMENA_MONITOR_BROKER_PASSWORD",
)
POD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's manifests for ``values``, NOTES.txt left out."""
    rendered = Chart.load(str(CHART)).render(values, name="campaign", namespace="colmena")
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if path.endswith(".yaml"):
            documents += [doc for doc in yaml.safe_load_all(text) if doc]
    return documents


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] == "Pod":
        spec: dict[str, Any] = manifest["spec"]
        return spec
    template: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return template


# ------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = load_yaml(COMPOSE)
    return loaded


def test_compose_file_validates_against_the_compose_specification() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_the_five_services_in_dependency_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"rabbitmq", "redis", "taskserver", "thinker", "gateway"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    assert set(services["taskserver"]["depends_on"]) == {"rabbitmq", "redis"}
    assert set(services["thinker"]["depends_on"]) == {"rabbitmq", "redis", "taskserver"}
    assert set(services["gateway"]["depends_on"]) == {"rabbitmq"}
    # The thinker's exit at the end of the campaign is final; a crash is not.
    assert services["thinker"]["restart"] == "on-failure"


def test_compose_broker_keeps_its_data_and_is_configured_for_long_tasks(
    compose: dict[str, Any],
) -> None:
    broker = compose["services"]["rabbitmq"]
    assert broker["hostname"] == "rabbitmq"
    volumes = broker["volumes"]
    assert "rabbitmq-data:/var/lib/rabbitmq" in volumes
    assert "rabbitmq-data" in compose["volumes"]
    config_mount = next(v for v in volumes if v.startswith("./rabbitmq/rabbitmq.conf:"))
    assert config_mount.endswith(":/etc/rabbitmq/conf.d/90-colmena.conf:ro")
    config = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    timeout = re.search(r"^consumer_timeout\s*=\s*(\d+)\s*$", config, re.MULTILINE)
    # Well above the task servers' lease_after (10 minutes by default).
    assert timeout and int(timeout.group(1)) >= 3600 * 1000


def test_compose_has_no_default_secrets(compose: dict[str, Any]) -> None:
    text = COMPOSE.read_text()
    for name in (*SECRETS, "RABBITMQ_DEFAULT_USER"):
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", text)
        assert uses, f"{name} is not used"
        # Every use fails with a message when the value is missing: never a fallback value.
        assert all(use.startswith(":?") for use in uses), (name, uses)
    example = dict(
        line.split("=", 1)
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in SECRETS:
        assert example[name] == "", f".env.example must leave {name} empty"
    # Every variable compose reads is explained in .env.example.
    used = set(re.findall(r"\$\{([A-Z_]+)", text))
    assert used <= set(re.findall(r"^#?([A-Z_]+)=", (DEPLOY / ".env.example").read_text(), re.M))


def test_compose_exposes_only_the_gateway_and_hardens_the_colmena_services(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert compose["networks"]["backend"] == {"internal": True}
    for name, service in services.items():
        assert ("ports" in service) == (name == "gateway"), name
        assert "backend" in service["networks"]
    for name in ("taskserver", "thinker", "gateway"):
        service = services[name]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in service["security_opt"]
        assert service["build"]["target"] == name
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"


def test_dockerfile_has_a_non_root_target_with_a_health_check_per_service() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    by_name = {stage.split()[2]: stage for stage in stages if " AS " in stage.splitlines()[0]}
    assert {"builder", "runtime", "taskserver", "thinker", "gateway"} <= set(by_name)
    assert re.search(r"^USER 10001:10001$", by_name["runtime"], re.MULTILINE)
    for name in ("taskserver", "thinker", "gateway"):
        assert by_name[name].startswith("runtime AS"), name
        assert "HEALTHCHECK" in by_name[name], name
    # No "# syntax=" directive: BuildKit would pull a frontend image from a registry.
    assert not re.search(r"^#\s*syntax=", text, re.MULTILINE)


def test_image_requirements_expand_the_services_extra() -> None:
    spec = importlib.util.spec_from_file_location(
        "image_requirements", DEPLOY / "docker" / "requirements.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    needed = module.requirements(REPOSITORY / "pyproject.toml", "services")
    names = {re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower() for spec in needed}
    assert {"pydantic", "parsl", "pika", "redis", "fastapi", "uvicorn"} <= names
    assert "colmena-core" not in names


# ------------------------------------------------------------------ Helm chart


@pytest.fixture(scope="module", params=sorted(CI_VALUES))
def variant(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def manifests(variant: str) -> list[dict[str, Any]]:
    return render(load_yaml(CI_VALUES[variant]))


def test_chart_lints_clean(variant: str) -> None:
    report = helm_python.lint(str(CHART), load_yaml(CI_VALUES[variant]), strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_manifests_validate_against_kubernetes(
    manifests: list[dict[str, Any]], version: str
) -> None:
    assert manifests
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, strict=True)


def test_every_pod_is_restricted_and_never_sees_a_secret_in_clear(
    manifests: list[dict[str, Any]],
) -> None:
    pods = [m for m in manifests if m["kind"] in POD_KINDS]
    assert pods
    for manifest in pods:
        spec = pod_spec(manifest)
        name = manifest["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert context["runAsNonRoot"] is True, name
            for variable in container.get("env", []):
                if re.search(r"URL|PASS|TOKEN", variable["name"]):
                    assert "valueFrom" in variable, (name, variable["name"])


def test_services_are_probed_on_their_health_endpoints(manifests: list[dict[str, Any]]) -> None:
    probed = {}
    for manifest in manifests:
        if manifest["kind"] not in {"Deployment", "StatefulSet", "Job"}:
            continue
        component = manifest["metadata"]["labels"]["app.kubernetes.io/component"]
        container = pod_spec(manifest)["containers"][0]
        probed[component] = container
        assert "livenessProbe" in container and "startupProbe" in container, component
        if component == "broker":
            continue
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", component
        if component != "thinker":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", component
    assert "gateway" in probed and "thinker" in probed
    assert any(component.startswith("taskserver-") for component in probed)


def test_in_chart_broker_is_a_statefulset_with_a_volume_and_a_consumer_timeout() -> None:
    manifests = render(load_yaml(CI_VALUES["in-chart broker"]))
    kinds = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    assert ("StatefulSet", "campaign-colmena-rabbitmq") in kinds
    assert ("NetworkPolicy", "campaign-colmena-rabbitmq") in kinds
    statefulset = next(m for m in manifests if m["kind"] == "StatefulSet")
    assert statefulset["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    assert "consumer_timeout = 86400000" in config["data"]["90-colmena.conf"]
    secret = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "campaign-colmena-rabbitmq" and m["kind"] == "Secret"
    )
    assert {"username", "password", "url"} <= set(secret["data"])


def test_in_chart_broker_has_one_user_per_service_kind_and_services_sign() -> None:
    shipped = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    chart_copy = DEPLOY / "helm" / "colmena" / "files" / "definitions.json"
    assert json.loads(chart_copy.read_text()) == shipped  # one list of users, in two places
    manifests = render(load_yaml(CI_VALUES["in-chart broker"]))
    secret = next(
        m
        for m in manifests
        if m["metadata"]["name"] == "campaign-colmena-rabbitmq" and m["kind"] == "Secret"
    )
    data = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    definitions = json.loads(data["definitions.json"])
    assert "@" not in json.dumps(definitions["permissions"])
    users = {user["name"]: user for user in definitions["users"]}
    for kind in ("thinker", "taskserver", "gateway", "monitor"):
        user = users[f"colmena-{kind}"]
        assert user["tags"] == [] and user["password"] not in ("", data["password"])
        assert data[f"url-{kind}"].split("@")[0].endswith(f"colmena-{kind}:{user['password']}")
    assert users[data["username"]]["tags"] == ["administrator"]  # the operators', unused
    permissions = [p for p in definitions["permissions"] if p["user"].startswith("colmena-")]
    assert permissions == [p for p in shipped["permissions"] if p["user"].startswith("colmena-")]
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    assert (
        "load_definitions = /etc/rabbitmq/definitions/definitions.json"
        in (config["data"]["90-colmena.conf"])
    )
    workloads = {
        m["metadata"]["labels"]["app.kubernetes.io/component"]: m
        for m in manifests
        if m["kind"] in ("Deployment", "Job")
    }
    for component, kind in (("gateway", "gateway"), ("thinker", "thinker")):
        containers = workloads[component]["spec"]["template"]["spec"]["containers"]
        env = {v["name"]: v for v in containers[0]["env"]}
        assert env["COLMENA_BROKER_URL"]["valueFrom"]["secretKeyRef"]["key"] == f"url-{kind}"
        assert env["COLMENA_CAMPAIGN_SECRET"]["valueFrom"]["secretKeyRef"]["key"] == "secret"


def test_broker_and_services_share_one_explicit_message_size_limit() -> None:
    # RabbitMQ 4 defaults to 16 MiB, 3.x to 128 MiB: the chart and compose's rabbitmq.conf set
    # the limit, and the services check the same one before sending.
    shipped = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    limit = re.search(r"^max_message_size\s*=\s*(\d+)\s*$", shipped, re.MULTILINE)
    assert limit is not None and int(limit.group(1)) == 128 * 2**20
    for size in (None, 64 * 2**20):
        values = load_yaml(CI_VALUES["in-chart broker"])
        if size is not None:
            values["maxMessageSize"] = size
        expected = size or int(limit.group(1))
        manifests = render(values)
        config = next(m for m in manifests if m["kind"] == "ConfigMap")
        assert f"max_message_size = {expected}\n" in config["data"]["90-colmena.conf"]
        for manifest in manifests:
            if manifest["kind"] in {"Deployment", "Job"}:
                env = pod_spec(manifest)["containers"][0]["env"]
                assert {"name": "COLMENA_MAX_MESSAGE_SIZE", "value": str(expected)} in env


def test_in_chart_broker_cluster_forms_by_kubernetes_peer_discovery() -> None:
    manifests = render(load_yaml(CI_VALUES["in-chart broker cluster"]))
    by_kind = {(m["kind"], m["metadata"]["name"]): m for m in manifests}
    name = "campaign-colmena-rabbitmq"
    statefulset = by_kind[("StatefulSet", name)]
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
    spec = pod_spec(statefulset)
    env = {v["name"]: v for v in spec["containers"][0]["env"]}
    # Stable node names, from the pods' DNS names under the headless Service
    assert env["RABBITMQ_USE_LONGNAME"]["value"] == "true"
    assert env["RABBITMQ_NODENAME"]["value"] == (
        f"rabbit@$(POD_NAME).{name}-headless.colmena.svc.cluster.local"
    )
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    headless = by_kind[("Service", f"{name}-headless")]
    assert {p["port"] for p in headless["spec"]["ports"]} >= {4369, 25672}
    config = by_kind[("ConfigMap", name)]["data"]
    assert "cluster_formation.peer_discovery_backend = k8s" in config["90-colmena.conf"]
    assert "rabbitmq_peer_discovery_k8s" in config["enabled_plugins"]
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert "/etc/rabbitmq/enabled_plugins" in mounts
    # One Erlang cookie for every node, copied where RabbitMQ reads it, owner-only
    secret = by_kind[("Secret", name)]
    assert "erlang-cookie" in secret["data"]
    (init,) = spec["initContainers"]
    assert "chmod 400 /var/lib/rabbitmq/.erlang.cookie" in init["command"][-1]
    cookie = next(v for v in spec["volumes"] if v["name"] == "erlang-cookie")
    assert cookie["secret"]["secretName"] == name
    # Drains take one node at a time; the nodes may reach each other
    budget = by_kind[("PodDisruptionBudget", name)]
    assert budget["spec"]["maxUnavailable"] == 1
    policy = by_kind[("NetworkPolicy", name)]
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert {4369, 25672} <= ports
    # A single node keeps its name and needs none of this
    single = render(load_yaml(CI_VALUES["in-chart broker"]))
    assert not [m for m in single if m["kind"] == "PodDisruptionBudget"]
    single_set = next(m for m in single if m["kind"] == "StatefulSet")
    assert single_set["spec"]["replicas"] == 1 and "initContainers" not in pod_spec(single_set)


def test_external_cluster_urls_are_passed_on_and_checked() -> None:
    base = {
        "broker": {"enabled": False},
        "gateway": {"auth": {"existingSecret": "tokens"}},
    }
    # The RabbitMQ Cluster Operator's Service, or the nodes' URLs separated by commas
    for url in (
        "amqp://colmena:secret-password@campaign-rabbit.rabbitmq.svc:5672/",
        "amqp://u:p@node-0:5672/,amqp://u:p@node-1:5672/, amqps://u:p@node-2:5671/",
    ):
        manifests = render({**base, "externalBroker": {"url": url}})
        secret = next(
            m for m in manifests if m["metadata"]["name"] == "campaign-colmena-broker-url"
        )
        assert base64.b64decode(secret["data"]["url"]).decode() == url
    for bad in ("amqp://u:p@node-0/,http://node-1/", "node-0:5672"):
        with pytest.raises(helm_python.HelmError, match="url"):
            render({**base, "externalBroker": {"url": bad}})


def test_gateway_replicas_keep_each_client_on_one_replica() -> None:
    values = load_yaml(CI_VALUES["in-chart broker"])

    def gateway_service(extra: dict[str, Any]) -> dict[str, Any]:
        gateway = {**values.get("gateway", {}), **extra}
        manifests = render({**values, "gateway": gateway})
        return next(
            m
            for m in manifests
            if m["kind"] == "Service" and m["metadata"]["name"].endswith("-gateway")
        )

    # Results acknowledged with ack=client are held by the replica that delivered them
    assert gateway_service({"replicas": 3})["spec"]["sessionAffinity"] == "ClientIP"
    service = {"service": {"type": "ClusterIP", "port": 8000, "sessionAffinity": "None"}}
    assert gateway_service(service)["spec"]["sessionAffinity"] == "None"


def test_external_broker_variant_runs_no_broker_and_reads_its_url_from_the_secret() -> None:
    manifests = render(load_yaml(CI_VALUES["external broker"]))
    assert not [m for m in manifests if m["kind"] == "StatefulSet"]
    assert not [m for m in manifests if m["kind"] == "Secret"]
    deployments = [m for m in manifests if m["kind"] == "Deployment"]
    assert len(deployments) == 3  # two task-server groups and the gateway
    for deployment in deployments:
        container = pod_spec(deployment)["containers"][0]
        url = next(v for v in container["env"] if v["name"] == "COLMENA_BROKER_URL")
        assert url["valueFrom"]["secretKeyRef"] == {"name": "campaign-broker", "key": "url"}
        assert {"name": "SSL_CERT_FILE", "value": "/etc/colmena/broker-ca/ca.crt"} in container[
            "env"
        ]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"gateway": {"auth": {"tokens": [{"token": "t" * 20, "clientId": "c"}]}}},
            "broker.auth.password is required",
        ),
        ({"broker": {"auth": {"password": "p" * 20}}}, "gateway.auth.tokens is required"),
        (
            {
                "broker": {"enabled": False},
                "gateway": {"auth": {"existingSecret": "tokens"}},
            },
            "externalBroker.url",
        ),
    ],
    ids=["no broker password", "no gateway token", "no external broker URL"],
)
def test_chart_refuses_to_render_without_credentials(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render(values)


def test_chart_rejects_weak_or_malformed_values() -> None:
    with pytest.raises(helm_python.HelmError, match="password"):
        render(
            {
                "broker": {"auth": {"password": "guest"}},
                "gateway": {"auth": {"existingSecret": "tokens"}},
            }
        )
    with pytest.raises(helm_python.HelmError, match="replica"):
        render({"gateway": {"auth": {"existingSecret": "tokens"}, "replica": 2}})
    cluster = load_yaml(CI_VALUES["in-chart broker cluster"])
    with pytest.raises(helm_python.HelmError, match=re.escape("broker.replicas must be 1 or odd")):
        render({**cluster, "broker": {**cluster["broker"], "replicas": 2}})
    without_cookie = {**cluster["broker"], "auth": {"password": "p" * 20}}
    with pytest.raises(helm_python.HelmError, match="erlangCookie"):
        render({**cluster, "broker": without_cookie})
    with pytest.raises(helm_python.HelmError, match=re.escape("broker.enabled=false")):
        render({**cluster, "externalBroker": {"url": "amqp://u:p@elsewhere:5672/"}})


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(node, list) and node and isinstance(node[0], dict):
        yield from _leaf_paths(node[0], f"{prefix}[]")
    else:
        yield prefix


def test_every_value_is_documented_and_typed() -> None:
    values = load_yaml(CHART / "values.yaml")
    schema = json.loads((CHART / "values.schema.json").read_text())
    opaque = ("podSecurityContext", "containerSecurityContext", "resources", "affinity")
    for path in _leaf_paths(values):
        node = schema
        for part in path.split("."):
            if node.get("type") == "object" and "properties" not in node:
                break  # a free-form Kubernetes object, described as a whole
            key = part.removesuffix("[]")
            node = node["properties"][key]
            assert node.get("description"), f"{path}: no description in the schema"
            if part.endswith("[]"):
                node = node["items"]
            if key in opaque:
                break
    # In values.yaml, each key is preceded by a comment (or is a group of documented keys).
    lines = (CHART / "values.yaml").read_text().splitlines()
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)(- )?([A-Za-z][A-Za-z0-9]*):", line)
        if not match or number == 0:
            continue
        indent = len(match.group(1))
        if indent > 0 and _inside_documented_block(lines, number, indent):
            continue
        previous = lines[number - 1].strip()
        nested = number + 1 < len(lines) and lines[number + 1].startswith(" " * (indent + 2))
        assert previous.startswith("#") or nested, f"values.yaml:{number + 1} undocumented"


def _inside_documented_block(lines: list[str], number: int, indent: int) -> bool:
    """True when an enclosing key is documented as a whole (``# --``, a default object)."""
    for earlier in range(number - 1, -1, -1):
        text = lines[earlier]
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        parent_indent = len(text) - len(text.lstrip())
        if parent_indent < indent:
            comment = earlier - 1
            while comment >= 0 and lines[comment].lstrip().startswith("#"):
                if lines[comment].lstrip().startswith("# --") and text.rstrip().endswith(":"):
                    return True
                comment -= 1
            indent = parent_indent
            if indent == 0:
                return False
    return False

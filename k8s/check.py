#!/usr/bin/env python3
"""Checks the Kubernetes manifests as far as a machine without a cluster can.

For each overlay: render it with kubectl kustomize, validate every object against the
Kubernetes schemas (kubernetes-validate; KEDA's CRDs have none and are skipped), and hold
the rendered objects to the project's rules:

- every workload container has resource requests and limits, liveness and readiness probes,
  runs as non-root without privilege escalation, and names an image with a pinned tag;
- the five services probe /healthz and /readyz, keep a read-only root filesystem, and give
  `terminationGracePeriodSeconds` = their SHUTDOWN_DEADLINE_S (src/lib.rs) + 5;
- their readiness probe sets `timeoutSeconds` explicitly, at least 500 ms above the time
  `/readyz` gives its checks (READINESS_DEADLINE_MS, crates/service-runtime/src/health.rs), so
  a slow dependency reads as "not ready" rather than a probe timing out;
- the gateway's readiness probe is the one the fault suite's balancer judges replicas by
  (GATEWAY_READINESS_PROBE, e2e/src/lib.rs);
- their startup probe allows longer than they wait for a dependency at start
  (DEPENDENCY_PATIENCE, crates/service-runtime/src/startup.rs);
- every environment variable a service gets is a setting it reads, every setting it needs is
  given, and no ConfigMap restates a default (k8s/settings.json, rendered from each program's
  declared settings and checked against them by e2e/tests/configuration.rs), so manifests and
  code cannot drift;
- no secret value is written in a manifest: no Secret objects in the sources, no literal
  env values for secret-looking names, no credentials inside URLs;
- least privilege: every pod's egress is denied unless a NetworkPolicy lets it; a workload
  mounts only its own keys of the Secret (a service none of another service's), and only the
  setup Jobs and the databases themselves hold administrators' credentials (KEDA neither);
  each service's connection URL logs in as that service's own account;
- the setup Job gets exactly the settings tunewire-setup reads (setup/src/main.rs), and
  grants the MongoDB databases the services use (the same MONGODB_DATABASE_PREFIX);
- MongoDB runs with authentication (its replica set with a key file), and the mongo,
  postgres and rabbitmq images are not older than the patch fixing the CVEs in
  MINIMUM_IMAGES;
- minikube.md's commands name objects, ports and images the minikube overlay really has;
- production's alerts (k8s/components/observability) pass `promtool check rules` and the cases
  of alerts.test.yaml (`promtool test rules`), and they and the dashboard read only metrics a
  service registers (or RabbitMQ's plugin exports).

Run by scripts/test; exits non-zero with one line per broken rule.
"""

import base64
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".stack" / "tools" / "venv" / "bin"
SERVICES = ["gateway", "auth", "converter", "notifier", "catalog-indexer"]
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
GRACE_MARGIN_S = 5
# Read by every service through crates/service-runtime's telemetry.
COMMON_SETTINGS = {"RUST_LOG", "LOG_FORMAT"}
# OpenTelemetry's standard variables that its SDK reads for the services' spans (the
# specification's names; the endpoint is also a declared setting).
OTEL_SETTINGS = {
    "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_TRACES_EXPORTER",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
}
# Keys of the Secret only these workloads may hold: the administrators' credentials, and the
# passwords the setup Job gives each service's account (a service logs in with its URL).
ADMIN_SECRETS = [
    (r"database-admin-url|amqp-admin-url|mongodb-admin-uri|(database|amqp|mongo)-password-[\w-]+", {"Job/setup"}),
    # mongo-init initiates the replica set as root.
    (r"mongo-root-password", {"StatefulSet/mongo", "Job/mongo-init"}),
    (r"mongo-keyfile", {"StatefulSet/mongo"}),
    (r"postgres-password", {"StatefulSet/postgres"}),
    (r"rabbitmq-password|rabbitmq-erlang-cookie", {"StatefulSet/rabbitmq"}),
]
ADMIN_SETTINGS = {"DATABASE_ADMIN_URL", "AMQP_ADMIN_URL", "MONGODB_ADMIN_URI"}
# A key ending in a service's name is that service's alone (database-url-gateway).
SERVICE_KEY = re.compile(rf"-({'|'.join(SERVICES)})$")
# The oldest tag allowed per release line, and why: the CVEs fixed by then. A line that is
# not listed has no known minimum yet (or no fixes at all, as RabbitMQ 3.13 and 4.1, out of
# community support): add it, with its reason, before using it.
MINIMUM_IMAGES = {
    "mongo": {
        "7.0": ("7.0.43", "CVE-2025-14847 'MongoBleed' (fixed in 7.0.28), CVE-2026-6914 (7.0.32), "
                          "CVE-2026-11933 (7.0.37), CVE-2026-89099 (7.0.43)"),
        "8.0": ("8.0.32", "CVE-2025-14847 'MongoBleed' (fixed in 8.0.17), CVE-2026-6914 (8.0.21), "
                          "CVE-2026-11933 (8.0.26), CVE-2026-89099 (8.0.32)"),
    },
    "postgres": {
        major: (version, "CVE-2026-6473, CVE-2026-6477 and nine more (the May 2026 releases)")
        for major, version in {"15": "15.18", "16": "16.14", "17": "17.10", "18": "18.4"}.items()
    },
    "rabbitmq": {
        "4.2": ("4.2.9", "CVE-2026-57211 to CVE-2026-57221"),
    },
}
# How many leading version numbers name a release line.
LINE_PARTS = {"postgres": 1}

problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def render(overlay: str) -> list[dict]:
    made = subprocess.run([str(ROOT / "scripts" / "k8s-secrets"), overlay], capture_output=True, text=True)
    if made.returncode != 0:
        sys.exit(f"k8s: scripts/k8s-secrets {overlay} failed:\n{made.stderr}")
    out = subprocess.run(
        [str(VENV_BIN / "kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(overlay: str, docs: list[dict]) -> None:
    # The operators' CRDs (KEDA, the Prometheus Operator) have no schemas here.
    core = [d for d in docs if not d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))]
    path = ROOT / "target" / f"k8s-{overlay}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump_all(core))
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", "--no-warn", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        problem(overlay, "schema validation failed:\n" + result.stdout + result.stderr)


def settings_of(program: str) -> dict[str, dict]:
    """What a program reads: k8s/settings.json, rendered from each program's declared settings
    by e2e/tests/configuration.rs (which fails when it differs from the code)."""
    declared = json.loads((ROOT / "k8s" / "settings.json").read_text())
    return declared[program] | declared["all"]


def config_keys(service: str) -> tuple[set[str], set[str]]:
    """(settings, secret settings) a service reads."""
    settings = settings_of(service)
    return set(settings), {name for name, s in settings.items() if s["secret"]}


def rust_const(path: str, name: str) -> int | None:
    found = re.search(rf"const {name}: \w+ = (\d+);", (ROOT / path).read_text())
    return int(found.group(1)) if found else None


def mebibytes(quantity: str) -> float | None:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    found = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", str(quantity))
    return int(found.group(1)) * units[found.group(2)] if found else None


def check_auth_memory(at: str, container: dict, config_maps: dict[str, dict]) -> None:
    """Auth's memory limit holds its hashing slots (auth/src/hashing.rs)."""
    data: dict = {}
    for source in container.get("envFrom", []):
        data.update(config_maps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {}))
    base, per_slot = rust_const("auth/src/hashing.rs", "BASE_MIB"), rust_const("auth/src/hashing.rs", "MIB_PER_SLOT")
    limit = mebibytes(container.get("resources", {}).get("limits", {}).get("memory", ""))
    if "AUTH_HASH_SLOTS" not in data:
        problem(at, "AUTH_HASH_SLOTS is not set, so the memory each pod needs is not fixed")
    elif base is None or per_slot is None or limit is None:
        problem(at, "cannot read auth's memory limit or BASE_MIB/MIB_PER_SLOT in auth/src/hashing.rs")
    elif limit < base + int(data["AUTH_HASH_SLOTS"]) * per_slot:
        problem(at, f"a {limit:.0f} MiB limit cannot hold {data['AUTH_HASH_SLOTS']} hashing slots ({base} + {per_slot} MiB each)")


def shutdown_deadline(service: str) -> int | None:
    source = (ROOT / service / "src" / "lib.rs").read_text()
    found = re.search(r"pub const SHUTDOWN_DEADLINE_S: u64 = (\d+);", source)
    return int(found.group(1)) if found else None


def dependency_patience() -> int | None:
    source = (ROOT / "crates" / "service-runtime" / "src" / "startup.rs").read_text()
    found = re.search(r"pub const DEPENDENCY_PATIENCE: Duration = Duration::from_secs\((\d+)\);", source)
    return int(found.group(1)) if found else None


def readiness_deadline_ms() -> int | None:
    source = (ROOT / "crates" / "service-runtime" / "src" / "health.rs").read_text()
    found = re.search(r"pub const READINESS_DEADLINE_MS: u64 = (\d+);", source)
    return int(found.group(1)) if found else None


def suite_gateway_probe() -> tuple[int, int, int] | None:
    source = (ROOT / "e2e" / "src" / "lib.rs").read_text()
    found = re.search(
        r"GATEWAY_READINESS_PROBE: Probe\s*=\s*Probe\s*\{\s*period: Duration::from_secs\((\d+)\),\s*"
        r"timeout: Duration::from_secs\((\d+)\),\s*failure_threshold: (\d+)",
        source,
    )
    return tuple(int(g) for g in found.groups()) if found else None


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]


def all_containers(spec: dict) -> list[dict]:
    return spec.get("initContainers", []) + spec.get("containers", [])


def check_workload(overlay: str, doc: dict, config_maps: dict[str, dict], secret: dict[str, str]) -> None:
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{overlay} {kind}/{name}"
    spec = pod_spec(doc)
    pod_security = spec.get("securityContext", {})
    service = doc["metadata"].get("labels", {}).get("tunewire.io/service")
    for container in spec.get("containers", []):
        at = f"{where} container {container['name']}"
        image = container.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            problem(at, f"image {image!r} has no pinned tag")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(part, {}):
                    problem(at, f"no {part}.{resource}")
        if kind != "Job":
            for probe in ("livenessProbe", "readinessProbe"):
                if probe not in container:
                    problem(at, f"no {probe}")
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problem(at, "may run as root (runAsNonRoot is not set)")
        if security.get("allowPrivilegeEscalation") is not False:
            problem(at, "allowPrivilegeEscalation is not false")
        for env in container.get("env", []):
            if "value" in env and re.search(r"PASSWORD|SECRET|TOKEN|_KEY$|COOKIE", env["name"]) and not env["name"].endswith("_FILE"):
                problem(at, f"env {env['name']} has a literal value; use a Secret")
            if "value" in env and re.search(r"://[^/@\s]+:[^/@\s]+@", str(env["value"])):
                problem(at, f"env {env['name']} holds credentials in a URL")
        if service:
            check_service(at, service, spec, container, config_maps)
    check_secret_keys(where, f"{kind}/{name}", service, spec, secret)
    for container in all_containers(spec):
        at = f"{where} container {container['name']}"
        check_image_minimum(at, container.get("image", ""))
        check_mongo_auth(at, container)
    if (kind, name) == ("Job", "setup"):
        check_setup_job(where, spec["containers"][0])


def check_service(at: str, service: str, spec: dict, container: dict, config_maps: dict[str, dict]) -> None:
    probes = {p: container.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
    if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
        problem(at, f"probes should be /healthz and /readyz, not {probes}")
    readiness = container.get("readinessProbe", {})
    deadline_ms = readiness_deadline_ms()
    if deadline_ms is None:
        problem(at, "crates/service-runtime/src/health.rs has no READINESS_DEADLINE_MS")
    elif "timeoutSeconds" not in readiness:
        problem(at, "the readinessProbe leaves timeoutSeconds at the 1 s default; set it explicitly")
    elif readiness["timeoutSeconds"] * 1000 < deadline_ms + 500:
        problem(at, f"the readinessProbe times out after {readiness['timeoutSeconds']} s, too close to the {deadline_ms} ms /readyz gives its checks")
    if service == "gateway":
        stated = (readiness.get("periodSeconds", 10), readiness.get("timeoutSeconds", 1), readiness.get("failureThreshold", 3))
        suite = suite_gateway_probe()
        if suite is None:
            problem(at, "e2e/src/lib.rs has no GATEWAY_READINESS_PROBE")
        elif suite != stated:
            problem(at, f"the fault suite's balancer probes the gateway as {suite}, the manifest as {stated} (period, timeout, threshold)")
    # The service serves /healthz only once it has its dependencies, which it waits for.
    startup = container.get("startupProbe", {})
    patience = dependency_patience()
    allowed_s = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    if startup.get("httpGet", {}).get("path") != "/healthz":
        problem(at, "no startupProbe on /healthz")
    elif patience is None:
        problem(at, "crates/service-runtime/src/startup.rs has no DEPENDENCY_PATIENCE")
    elif allowed_s <= patience:
        problem(at, f"the startupProbe allows {allowed_s} s, not more than the {patience} s a service waits for its dependencies")
    if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
        problem(at, "the root filesystem is writable")
    deadline = shutdown_deadline(service)
    if deadline is None:
        problem(at, f"{service}/src/lib.rs has no SHUTDOWN_DEADLINE_S")
    elif spec.get("terminationGracePeriodSeconds") != deadline + GRACE_MARGIN_S:
        problem(at, f"terminationGracePeriodSeconds should be {deadline} + {GRACE_MARGIN_S}")
    if service == "auth":
        check_auth_memory(at, container, config_maps)
    settings, secrets = config_keys(service)
    allowed = settings | {f"{s}_FILE" for s in secrets} | COMMON_SETTINGS
    names = [e["name"] for e in container.get("env", [])]
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef", {}).get("name")
        if ref not in config_maps:
            problem(at, f"envFrom names a ConfigMap {ref!r} that is not rendered")
            continue
        names += list(config_maps[ref].get("data", {}))
    for name in names:
        if name in OTEL_SETTINGS:
            continue
        if name not in allowed:
            problem(at, f"env {name} is not a setting {service} reads (see {service}/src/config.rs)")
        if name in secrets and name not in {"DATABASE_URL", "AMQP_URL", "MONGODB_URI"} | COMMON_SETTINGS:
            problem(at, f"secret setting {name} is given in the clear; use {name}_FILE")
    declared = settings_of(service)
    given = {name.removesuffix("_FILE") for name in names}
    for name in sorted(n for n, s in declared.items() if s["required"] and n not in given):
        problem(at, f"does not set {name}, which {service} needs")
    check_restated(at, declared, container, config_maps)


def check_restated(at: str, declared: dict[str, dict], container: dict, config_maps: dict[str, dict]) -> None:
    """No value a container is given (env or its ConfigMaps) restates the code's default:
    defaults live in the code alone."""
    values = [(e["name"], e["value"], "env") for e in container.get("env", []) if "value" in e]
    for source in container.get("envFrom", []):
        data = config_maps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {})
        values += [(name, value, "ConfigMap") for name, value in data.items()]
    for name, value, where in values:
        if name in declared and str(value) == declared[name]["default"]:
            problem(at, f"{where} restates {name}={value}, the code's default; leave it out (one source of truth)")


def secret_keys(spec: dict) -> tuple[set[str], list[str]]:
    """The Secret keys a pod is given, and what gives it a whole Secret."""
    keys: set[str] = set()
    whole: list[str] = []
    for volume in spec.get("volumes", []):
        sources = [volume["secret"]] if "secret" in volume else [
            s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s
        ]
        for source in sources:
            if "items" not in source:
                whole.append(f"volume {volume['name']}")
            keys |= {item["key"] for item in source.get("items", [])}
    for container in all_containers(spec):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                keys.add(ref["key"])
        whole += [f"container {container['name']}'s envFrom" for s in container.get("envFrom", []) if "secretRef" in s]
    return keys, whole


def admin_holders(key: str) -> set[str] | None:
    """The workloads that may hold `key`, when it is an administrator's credential."""
    for pattern, holders in ADMIN_SECRETS:
        if re.fullmatch(pattern, key):
            return holders
    return None


def check_secret_keys(where: str, workload: str, service: str | None, spec: dict, secret: dict[str, str]) -> None:
    """A workload holds its own keys only: none of another service's, no administrator's."""
    keys, whole = secret_keys(spec)
    for what in whole:
        problem(where, f"{what} gives it the whole Secret; list the keys it needs (items)")
    for key in sorted(keys):
        holders = admin_holders(key)
        owner = SERVICE_KEY.search(key)
        if key not in secret:
            problem(where, f"mounts {key}, which the Secret does not have")
        if holders is not None:
            if workload not in holders:
                problem(where, f"holds {key}, an administrator's credential (only {', '.join(sorted(holders))})")
        elif owner and owner.group(1) != service:
            problem(where, f"holds {key}, which is {owner.group(1)}'s")
    for container in all_containers(spec):
        for env in container.get("env", []):
            if env["name"].removesuffix("_FILE") in ADMIN_SETTINGS and workload != "Job/setup":
                problem(where, f"env {env['name']}: only the setup Job gets an administrator's URL")


def check_trigger_authentication(overlay: str, doc: dict) -> None:
    where = f"{overlay} TriggerAuthentication/{doc['metadata']['name']}"
    for ref in doc["spec"].get("secretTargetRef", []):
        if admin_holders(ref["key"]) is not None or SERVICE_KEY.search(ref["key"]):
            problem(where, f"logs KEDA in with {ref['key']}; give it the read-only monitoring user's")


def selects_all(policy: dict) -> bool:
    return not any(policy["spec"].get("podSelector", {}).values())


def check_egress_policies(overlay: str, docs: list[dict]) -> None:
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    if not any(selects_all(p) and "Egress" in p["spec"].get("policyTypes", []) and not p["spec"].get("egress")
               for p in policies):
        problem(overlay, "no default-deny egress NetworkPolicy (podSelector {}, policyTypes [Egress], no rule)")
    for policy in policies:
        if selects_all(policy) and any(not rule.get("to") for rule in policy["spec"].get("egress", [])):
            problem(f"{overlay} NetworkPolicy/{policy['metadata']['name']}", "lets every pod reach anywhere")


def selected_names(policy: dict) -> list[str]:
    """The `app.kubernetes.io/name`s a NetworkPolicy's pod selector picks."""
    selector = policy["spec"].get("podSelector", {})
    for expression in selector.get("matchExpressions", []):
        if expression["key"] == "app.kubernetes.io/name" and expression["operator"] == "In":
            return expression["values"]
    name = selector.get("matchLabels", {}).get("app.kubernetes.io/name")
    return [name] if name else []


def check_trace_export(overlay: str, docs: list[dict]) -> None:
    """A service told to send spans somewhere (OTEL_EXPORTER_OTLP_ENDPOINT) has a NetworkPolicy
    letting it reach that port: the namespace denies egress by default, and spans refused at
    the socket are lost without a word."""
    egress = [d for d in docs if d["kind"] == "NetworkPolicy" and "Egress" in d["spec"].get("policyTypes", [])]
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        endpoint = config.get("data", {}).get("OTEL_EXPORTER_OTLP_ENDPOINT")
        service = re.sub(r"-config(-[a-z0-9]+)?$", "", config["metadata"]["name"])
        if not endpoint or service not in SERVICES:
            continue
        explicit = re.match(r"https?://[^/:]+:(\d+)", endpoint)
        port = int(explicit.group(1)) if explicit else (443 if endpoint.startswith("https") else 80)
        allowed = any(
            service in selected_names(policy)
            and any(port in [p.get("port") for p in rule.get("ports", [])] for rule in policy["spec"].get("egress", []))
            for policy in egress
        )
        if not allowed:
            problem(f"{overlay} ConfigMap/{config['metadata']['name']}",
                    f"sends spans to {endpoint}, and no NetworkPolicy lets {service} reach port {port}")


def image_version(tag: str) -> tuple[int, ...] | None:
    found = re.match(r"(\d+(?:\.\d+)*)", tag)
    return tuple(int(n) for n in found.group(1).split(".")) if found else None


def image_repo(image: str) -> str:
    name = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    return name.rsplit("/", 1)[-1]


def check_image_minimum(at: str, image: str) -> None:
    repo = image_repo(image)
    lines = MINIMUM_IMAGES.get(repo)
    if lines is None:
        return
    tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
    version = image_version(tag)
    if version is None:
        problem(at, f"{image}: the tag names no version, so its CVE fixes cannot be checked")
        return
    line = ".".join(str(n) for n in version[: LINE_PARTS.get(repo, 2)])
    if line not in lines:
        problem(at, f"{image}: no minimum known for {repo} {line}; add the line to MINIMUM_IMAGES (if it still gets fixes)")
        return
    minimum, reason = lines[line]
    if version < image_version(minimum):
        problem(at, f"{image} is older than {minimum}, which fixes {reason}")


def check_mongo_auth(at: str, container: dict) -> None:
    if image_repo(container.get("image", "")) != "mongo" or container.get("command", ["mongod"])[0] != "mongod":
        return
    args = container.get("args", [])
    if "--auth" not in args and "--keyFile" not in args:
        problem(at, "mongod runs without authentication (--auth, --keyFile)")
    if "--replSet" in args and "--keyFile" not in args:
        problem(at, "the replica set's members do not authenticate each other (--keyFile)")


def schema_owners() -> dict[str, str]:
    """Each service's PostgreSQL role, from setup/src/database.rs."""
    source = (ROOT / "setup" / "src" / "database.rs").read_text()
    return dict(re.findall(r'SchemaOwner \{ service: "([\w-]+)", schema: "\w+", role: "(\w+)" \}', source))


def bus_users() -> dict[str, str]:
    """Each service's RabbitMQ user, from crates/events/src/topology.rs."""
    source = (ROOT / "crates" / "events" / "src" / "topology.rs").read_text()
    return {user.removeprefix("tunewire-"): user for user in re.findall(r'\buser: "(tunewire-[\w-]+)"', source)}


def mongo_accounts() -> list[str]:
    """The services with a MongoDB user, from crates/media-store/src/access.rs."""
    source = (ROOT / "crates" / "media-store" / "src" / "access.rs").read_text()
    return re.findall(r'\bAccount::\w+ => "([\w-]+)"', source)


def mongo_user(prefix: str, service: str) -> str:
    """A service's MongoDB user (and role) in `admin`: Account::user."""
    return f"{prefix}-{service}"


def setting_prefix(service: str) -> str:
    return service.upper().replace("-", "_")


def setup_settings() -> tuple[set[str], set[str], set[str]]:
    """(settings, secret settings, required settings) tunewire-setup reads."""
    settings = settings_of("setup")
    secrets = {name for name, s in settings.items() if s["secret"]}
    # The monitoring user is optional to the binary, not here: KEDA and the UI log in as it.
    required = {name for name, s in settings.items() if s["required"]} | {"MONITOR_AMQP_PASSWORD"}
    return set(settings), secrets, required


def check_setup_job(where: str, container: dict) -> None:
    settings, secrets, required = setup_settings()
    names = {env["name"] for env in container.get("env", [])}
    for name in sorted(names):
        base = name.removesuffix("_FILE") if name.removesuffix("_FILE") in secrets else name
        if base not in settings and name not in COMMON_SETTINGS:
            problem(where, f"env {name} is not a setting tunewire-setup reads (setup/src/settings.rs)")
        elif name in secrets:
            problem(where, f"secret setting {name} is given in the clear; use {name}_FILE")
    for name in sorted(required - {n.removesuffix("_FILE") for n in names}):
        problem(where, f"does not set {name}, which tunewire-setup needs")
    check_restated(where, settings_of("setup"), container, {})


def url_login(url: str) -> tuple[str, str, str]:
    """(user, password, query) of a connection URL."""
    parts = urllib.parse.urlsplit(url)
    unquote = urllib.parse.unquote
    return unquote(parts.username or ""), unquote(parts.password or ""), parts.query


def url_server(url: str) -> tuple[str, list[str] | None]:
    """(hosts, replica set) of a MongoDB URI."""
    parts = urllib.parse.urlsplit(url)
    return parts.netloc.rsplit("@", 1)[-1], urllib.parse.parse_qs(parts.query).get("replicaSet")


def container_env(docs: list[dict], kind: str, name: str, key: str) -> str | None:
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) == (kind, name):
            for env in pod_spec(doc)["containers"][0].get("env", []):
                if env["name"] == key:
                    return env.get("value")
    return None


def workload_setting(docs: list[dict], config_maps: dict[str, dict], kind: str, name: str, key: str) -> str | None:
    """A setting of a workload's first container: its env value, else its ConfigMaps'."""
    for doc in docs:
        if (doc["kind"], doc["metadata"]["name"]) == (kind, name):
            container = pod_spec(doc)["containers"][0]
            for env in container.get("env", []):
                if env["name"] == key:
                    return env.get("value")
            for source in container.get("envFrom", []):
                data = config_maps.get(source.get("configMapRef", {}).get("name"), {}).get("data", {})
                if key in data:
                    return data[key]
    return None


def mongo_prefix(overlay: str, docs: list[dict], config_maps: dict[str, dict]) -> str:
    """The setup Job's MONGODB_DATABASE_PREFIX, which every service touching MongoDB must share:
    the setup Job's roles grant only that prefix's databases."""
    default = settings_of("setup")["MONGODB_DATABASE_PREFIX"]["default"]
    setup = workload_setting(docs, config_maps, "Job", "setup", "MONGODB_DATABASE_PREFIX") or default
    for doc in docs:
        service = doc["metadata"].get("labels", {}).get("tunewire.io/service")
        if doc["kind"] in WORKLOADS and service in mongo_accounts():
            used = workload_setting(docs, config_maps, doc["kind"], doc["metadata"]["name"], "MONGODB_DATABASE_PREFIX")
            if (used or default) != setup:
                problem(f"{overlay} {doc['kind']}/{doc['metadata']['name']}",
                        f"MONGODB_DATABASE_PREFIX {used!r} is not the setup Job's ({setup!r}), whose roles grant its databases")
    return setup


def check_credentials(overlay: str, docs: list[dict], secret: dict[str, str], prefix: str) -> None:
    """Each connection URL logs in as its own account, with the password made for it."""
    rabbitmq_conf = next((d["data"]["rabbitmq.conf"] for d in docs if d["kind"] == "ConfigMap"
                          and d["metadata"]["name"].startswith("rabbitmq-config")), "")
    default_user = re.search(r"^default_user = (\S+)", rabbitmq_conf, re.M)
    logins = [
        ("database-admin-url", container_env(docs, "StatefulSet", "postgres", "POSTGRES_USER"), "postgres-password"),
        ("amqp-admin-url", default_user and default_user.group(1), "rabbitmq-password"),
        ("rabbitmq-monitor-url", container_env(docs, "Job", "setup", "MONITOR_AMQP_USER") or settings_of("setup")["MONITOR_AMQP_USER"]["default"],
         "amqp-password-monitor"),
    ]
    logins += [(f"database-url-{s}", role, f"database-password-{s}") for s, role in schema_owners().items()]
    logins += [(f"amqp-url-{s}", user, f"amqp-password-{s}") for s, user in bus_users().items()]
    logins.append(("mongodb-admin-uri", container_env(docs, "StatefulSet", "mongo", "MONGO_INITDB_ROOT_USERNAME"),
                   "mongo-root-password"))
    logins += [(f"mongodb-uri-{s}", mongo_user(prefix, s), f"mongo-password-{s}") for s in mongo_accounts()]
    for key, user, password_key in logins:
        if key not in secret:
            continue
        where = f"{overlay} Secret key {key}"
        login, password, query = url_login(secret[key])
        if login != user:
            problem(where, f"logs in as {login!r}, not as {user!r}")
        if secret.get(password_key) != password:
            problem(where, f"does not hold the password in {password_key}")
        if key.startswith("mongodb-") and "authSource=admin" not in query.split("&"):
            problem(where, "does not name the database its user is in (authSource=admin)")
    # tunewire-setup must make the users on the servers the services log in to.
    admin = secret.get("mongodb-admin-uri")
    for key, uri in sorted(secret.items()):
        if admin is not None and key.startswith("mongodb-uri-") and url_server(uri) != url_server(admin):
            problem(f"{overlay} Secret key {key}", f"names hosts or a replica set other than mongodb-admin-uri's: {url_server(uri)}")


def generated_secret(overlay: str, docs: list[dict]) -> dict[str, str]:
    found = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].startswith("tunewire-secrets")]
    if len(found) != 1:
        problem(overlay, f"expected one tunewire-secrets Secret, found {len(found)}")
        return {}
    return {k: base64.b64decode(v).decode() for k, v in found[0].get("data", {}).items()}


def check_sources_have_no_secrets() -> None:
    for path in (ROOT / "k8s").rglob("*.yaml"):
        if "secrets" in path.parts:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                problem(str(path.relative_to(ROOT)), "a Secret written in a manifest; use the secretGenerator")


def check_minikube_guide(docs: list[dict]) -> None:
    guide = (ROOT / "minikube.md").read_text()
    objects = {(d["kind"], d["metadata"]["name"]) for d in docs}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    images = {c["image"] for d in docs if d["kind"] in WORKLOADS for c in pod_spec(d)["containers"]}
    for namespace in set(re.findall(r"(?:-n|--namespace)[ =](\S+)", guide)):
        if namespace not in ("tunewire", "ingress-nginx"):
            problem("minikube.md", f"namespace {namespace!r} is not the manifests' (tunewire)")
    for svc, local, remote in re.findall(r"port-forward (?:-n tunewire )?svc/([\w-]+) (\d+):(\d+)", guide):
        ports = {p["port"] for p in services.get(svc, {}).get("spec", {}).get("ports", [])}
        if svc not in services:
            problem("minikube.md", f"port-forward to svc/{svc}, which the overlay does not have")
        elif int(remote) not in ports:
            problem("minikube.md", f"svc/{svc} has no port {remote} (it has {sorted(ports)})")
    for kind, name in re.findall(r"\b(deployment|statefulset|job)/([\w-]+)", guide):
        if (kind.capitalize().replace("set", "Set"), name) not in objects:
            problem("minikube.md", f"{kind}/{name} is not in the minikube overlay")
    for target, image in re.findall(r"--target ([\w-]+) -t (\S+)", guide):
        if image not in images:
            problem("minikube.md", f"builds {image}, which no manifest uses")
        if image != f"tunewire/{target}:0.1.0":
            problem("minikube.md", f"--target {target} should be tagged tunewire/{target}:0.1.0")
    built = set(re.findall(r"--target ([\w-]+) -t", guide))
    for target in SERVICES + ["setup"]:
        if target not in built:
            problem("minikube.md", f"no docker build for {target}")


OBSERVABILITY = ROOT / "k8s" / "components" / "observability"


def check_alerts(docs: list[dict]) -> None:
    """The PrometheusRule's groups pass `promtool check rules`, and every case of
    alerts.test.yaml passes `promtool test rules`; every metric the rules read is one a
    service or RabbitMQ's plugin exports; the dashboard is JSON with panels."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    if not rules:
        problem("production", "no PrometheusRule (k8s/components/observability)")
        return
    promtool = shutil.which("promtool")
    if not promtool:
        problem("observability", "promtool is not installed (scripts/stack tools installs prometheus)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "rules.yaml").write_text(yaml.safe_dump(rules[0]["spec"]))
        shutil.copy(OBSERVABILITY / "alerts.test.yaml", folder / "alerts.test.yaml")
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts.test.yaml"]):
            ran = subprocess.run([promtool, *args], cwd=folder, capture_output=True, text=True)
            if ran.returncode != 0:
                problem("observability", f"promtool {' '.join(args)} failed:\n{ran.stdout}{ran.stderr}")
    sources = "".join(p.read_text() for p in ROOT.glob("*/src/**/*.rs")) + "".join(
        p.read_text() for p in ROOT.glob("crates/*/src/**/*.rs")
    )
    for group in rules[0]["spec"]["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                base = re.sub(r"(_seconds|_bytes)?(_total|_count|_sum|_bucket)?$", "", name)
                if not name.startswith("rabbitmq_") and f'"{base}"' not in sources:
                    problem("observability", f"alert {rule['alert']} reads {name}, which no service registers")
    dashboard = json.loads((OBSERVABILITY / "dashboard.json").read_text())
    if not dashboard.get("panels"):
        problem("observability", "the dashboard has no panels")
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            for name in metric_names(target["expr"]):
                base = re.sub(r"(_seconds|_bytes)?(_total|_count|_sum|_bucket)?$", "", name)
                if not name.startswith("rabbitmq_") and f'"{base}"' not in sources:
                    problem("observability", f"dashboard panel {panel['title']!r} reads {name}, which no service registers")


# PromQL's functions, operators and the label names the rules group by.
PROMQL_WORDS = {
    "sum", "by", "max", "min", "avg", "count", "and", "or", "unless", "on", "ignoring", "without",
    "rate", "increase", "delta", "histogram_quantile", "le", "queue", "pod", "dependency", "status", "outcome",
    "protocol", "action",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers and strings left out)."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expr)
    return {w for w in re.findall(r"\b[a-z][a-z0-9_]*\b", bare) if w not in PROMQL_WORDS}


def main() -> int:
    check_sources_have_no_secrets()
    if not schema_owners():
        problem("setup/src/database.rs", "no SchemaOwner found: cannot tell each service's PostgreSQL role")
    if not bus_users():
        problem("crates/events/src/topology.rs", "no user found: cannot tell each service's RabbitMQ user")
    if not mongo_accounts():
        problem("crates/media-store/src/access.rs", "no Account found: cannot tell each service's MongoDB user")
    for overlay in ("minikube", "production"):
        docs = render(overlay)
        validate(overlay, docs)
        # Rendered envFrom references already carry the generated (hash-suffixed) names.
        config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        secret = generated_secret(overlay, docs)
        for doc in docs:
            if doc["kind"] in WORKLOADS:
                check_workload(overlay, doc, config_maps, secret)
            if doc["kind"] == "TriggerAuthentication":
                check_trigger_authentication(overlay, doc)
        check_egress_policies(overlay, docs)
        check_trace_export(overlay, docs)
        check_credentials(overlay, docs, secret, mongo_prefix(overlay, docs, config_maps))
        objects = {(d["kind"], d["metadata"]["name"]) for d in docs}
        for job, missing in (("setup", "the services' accounts"), ("mongo-init", "MongoDB's replica set")):
            if ("Job", job) not in objects:
                problem(overlay, f"no Job {job}: {missing} would not exist")
        kinds = {d["kind"] for d in docs}
        for needed in ("Ingress", "NetworkPolicy", "PodDisruptionBudget"):
            if needed not in kinds:
                problem(overlay, f"no {needed}")
        if overlay == "production" and not any(d["kind"] == "ScaledObject" for d in docs):
            problem(overlay, "no KEDA ScaledObject for the converter")
        if overlay == "production":
            check_alerts(docs)
        if overlay == "minikube":
            if not any(d["kind"] == "HorizontalPodAutoscaler" for d in docs):
                problem(overlay, "no HorizontalPodAutoscaler for the converter")
            check_minikube_guide(docs)
        print(f"k8s: {overlay}: {len(docs)} objects rendered and checked", file=sys.stderr)
    for p in problems:
        print(f"k8s: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

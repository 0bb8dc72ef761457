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
- every environment variable a service gets is a setting it reads (parsed from its
  src/config.rs and the shared telemetry), so manifests and code cannot drift;
- no secret value is written in a manifest: no Secret objects in the sources, no literal
  env values for secret-looking names, no credentials inside URLs;
- minikube.md's commands name objects, ports and images the minikube overlay really has.

Run by scripts/test; exits non-zero with one line per broken rule.
"""

import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".stack" / "tools" / "venv" / "bin"
SERVICES = ["gateway", "auth", "converter", "notifier", "catalog-indexer"]
WORKLOADS = {"Deployment", "StatefulSet", "Job"}
GRACE_MARGIN_S = 5
# Read by every service through crates/service-runtime's telemetry.
COMMON_SETTINGS = {"RUST_LOG", "LOG_FORMAT"}

problems: list[str] = []


def problem(where: str, what: str) -> None:
    problems.append(f"{where}: {what}")


def render(overlay: str) -> list[dict]:
    subprocess.run([str(ROOT / "scripts" / "k8s-secrets"), overlay], check=True, capture_output=True)
    out = subprocess.run(
        [str(VENV_BIN / "kubectl"), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
        check=True, capture_output=True, text=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(overlay: str, docs: list[dict]) -> None:
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    path = ROOT / "target" / f"k8s-{overlay}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump_all(core))
    result = subprocess.run(
        [str(VENV_BIN / "kubernetes-validate"), "--strict", "--quiet", "--no-warn", str(path)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        problem(overlay, "schema validation failed:\n" + result.stdout + result.stderr)


def config_keys(service: str) -> tuple[set[str], set[str]]:
    """(settings, secret settings) a service reads, from its src/config.rs."""
    source = (ROOT / service / "src" / "config.rs").read_text()
    plain = set(re.findall(r'\bvar(?:_opt)?(?:::<[^>]+>)?\(\s*"([A-Z0-9_]+)"', source))
    secret = set(re.findall(r'\b(?:required_)?secret(?:_key)?\(\s*"([A-Z0-9_]+)"', source))
    return plain | secret, secret


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


def check_workload(overlay: str, doc: dict, config_maps: dict[str, dict]) -> None:
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
        if name not in allowed:
            problem(at, f"env {name} is not a setting {service} reads (see {service}/src/config.rs)")
        if name in secrets and name not in {"DATABASE_URL", "AMQP_URL", "MONGODB_URI"} | COMMON_SETTINGS:
            problem(at, f"secret setting {name} is given in the clear; use {name}_FILE")


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
    for service in SERVICES:
        if service not in built:
            problem("minikube.md", f"no docker build for {service}")


def main() -> int:
    check_sources_have_no_secrets()
    for overlay in ("minikube", "production"):
        docs = render(overlay)
        validate(overlay, docs)
        # Rendered envFrom references already carry the generated (hash-suffixed) names.
        config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
        for doc in docs:
            if doc["kind"] in WORKLOADS:
                check_workload(overlay, doc, config_maps)
        kinds = {d["kind"] for d in docs}
        for needed in ("Ingress", "NetworkPolicy", "PodDisruptionBudget"):
            if needed not in kinds:
                problem(overlay, f"no {needed}")
        if overlay == "production" and not any(d["kind"] == "ScaledObject" for d in docs):
            problem(overlay, "no KEDA ScaledObject for the converter")
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

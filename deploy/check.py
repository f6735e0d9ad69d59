"""Static checks of the deployment files, run by deploy/check.sh (which sets up a virtualenv
with kubernetes-validate and the Prometheus Operator models). Offline; stdlib plus those.

    python deploy/check.py kubernetes|grafana|docs   (from the repository root)

Each check prints what it verified and exits non-zero with one line per problem.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config/xks-proxy.example.toml"
README = ROOT / "README.md"
METRICS_RS = ROOT / "src/metrics.rs"
K8S_DIR = ROOT / "deploy/kubernetes"
DASHBOARD = ROOT / "deploy/grafana/xks-proxy.json"

# Built-in kinds are validated strictly (unknown fields are errors) against the oldest
# Kubernetes we support and the newest schema kubernetes-validate ships.
K8S_MIN_VERSION = "1.30.0"


class Problems:
    def __init__(self, check: str) -> None:
        self.check = check
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def finish(self, summary: str) -> int:
        if self.items:
            for item in self.items:
                print(f"deploy/check.sh: {self.check}: {item}", file=sys.stderr)
            print(f"deploy/check.sh: {self.check}: FAILED ({len(self.items)} problem(s))",
                  file=sys.stderr)
            return 1
        print(f"    ok: {summary}")
        return 0


# --- configuration keys -------------------------------------------------------------------

TABLE_HEADER = re.compile(r"^#?\s*(\[\[?)([a-z0-9_.]+)(\]\]?)\s*$")
ACTIVE_KEY = re.compile(r"^([a-z][a-z0-9_]*)\s*=")
# `# user_pin = "..."`: a commented-out alternative (a value follows, not prose).
COMMENTED_KEY = re.compile(r"^#\s*([a-z][a-z0-9_]*)\s*=\s*[\"'\[\-0-9tf]")
# `... Inline as `secret = "..."`, ...`: a key named in a comment.
QUOTED_KEY = re.compile(r"`([a-z][a-z0-9_]*)\s*=\s*[^`]*`")


def config_keys(text: str) -> dict[str, int]:
    """Every key in a TOML example, active or commented out, as `section.key` paths with
    `[]` after arrays of tables; mapped to the line it first appears on."""
    keys: dict[str, int] = {}
    arrays: set[str] = set()
    section = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = TABLE_HEADER.match(stripped)
        if header:
            name = header.group(2)
            if header.group(1) == "[[":
                arrays.add(name)
            parts = name.split(".")
            rendered = []
            for i, part in enumerate(parts):
                rendered.append(part + ("[]" if ".".join(parts[: i + 1]) in arrays else ""))
            section = ".".join(rendered)
            continue
        found = []
        if stripped.startswith("#"):
            commented = COMMENTED_KEY.match(stripped)
            if commented:
                found.append(commented.group(1))
            found += QUOTED_KEY.findall(stripped)
        else:
            active = ACTIVE_KEY.match(stripped)
            if active:
                found.append(active.group(1))
        for key in found:
            path = f"{section}.{key}" if section else key
            keys.setdefault(path, number)
    return keys


def readme_section(text: str, title: str) -> str:
    """The body of the README section `### {title}` (up to the next heading)."""
    match = re.search(rf"^###\s+{re.escape(title)}\s*$(.*?)(?=^#{{1,3}}\s)", text + "\n## end",
                      re.M | re.S)
    return match.group(1) if match else ""


def table_first_cells(section: str) -> list[str]:
    return re.findall(r"^\|\s*`([^`]+)`\s*\|", section, re.M)


def check_docs() -> int:
    problems = Problems("docs")
    readme = README.read_text()
    example = config_keys(EXAMPLE.read_text())
    section = readme_section(readme, "Configuration reference")
    if not section:
        problems.add("README.md has no '### Configuration reference' section")
    documented = table_first_cells(section)
    for key, line in example.items():
        if key not in documented:
            problems.add(f"config key `{key}` ({EXAMPLE.relative_to(ROOT)}:{line}) is missing "
                         "from the README configuration reference table")
    for key in documented:
        if key not in example:
            problems.add(f"README configuration reference documents `{key}`, which "
                         f"{EXAMPLE.relative_to(ROOT)} does not have (not even commented out)")
    seen = set()
    for key in documented:
        if key in seen:
            problems.add(f"README configuration reference lists `{key}` twice")
        seen.add(key)

    metrics = metric_families(problems)
    listed = table_first_cells(readme_section(readme, "Metrics"))
    for name in sorted(set(metrics) - set(listed)):
        problems.add(f"metric `{name}` (src/metrics.rs) is missing from the README Metrics table")
    for name in sorted(set(listed) - set(metrics)):
        problems.add(f"README Metrics table lists `{name}`, which src/metrics.rs does not export")
    return problems.finish(f"{len(example)} config keys documented both ways; "
                           f"{len(metrics)} metrics listed in README")


# --- metrics ------------------------------------------------------------------------------

REGISTER = re.compile(
    r"registry\.register(?:_with_unit)?\(\s*\"(?P<name>[a-z0-9_]+)\"\s*,\s*"
    r"\"(?:[^\"\\]|\\.)*\"\s*,\s*(?:Unit::(?P<unit>\w+)\s*,\s*)?(?P<var>[a-z_][a-z0-9_]*)",
    re.S,
)


# Metrics produced by a custom `Collector` at scrape time (e.g. the TLS expiry gauge).
COLLECTED = re.compile(
    r"encode_descriptor\(\s*\"(?P<name>[a-z0-9_]+)\"\s*,\s*\"(?:[^\"\\]|\\.)*\"\s*,\s*"
    r"(?:Some\(&Unit::(?P<unit>\w+)\)|None)\s*,\s*(?P<kind>\w+)",
    re.S,
)


def metric_families(problems: Problems) -> dict[str, set[str]]:
    """Metric family name -> every sample name it exposes, derived from the registrations
    in src/metrics.rs the way prometheus-client names them (prefix, unit suffix, `_total`
    for counters, `_bucket`/`_sum`/`_count` for histograms)."""
    source = METRICS_RS.read_text()
    prefix_match = re.search(r"Registry::with_prefix\(\s*\"([a-z0-9_]+)\"\s*\)", source)
    prefix = prefix_match.group(1) + "_" if prefix_match else ""
    families: dict[str, set[str]] = {}
    for reg in REGISTER.finditer(source):
        base = prefix + reg.group("name")
        if reg.group("unit"):
            base += "_" + reg.group("unit").lower()
        decl = re.search(rf"let\s+{reg.group('var')}\b(.*?);", source, re.S)
        kind = decl.group(1) if decl else ""
        if "Histogram" in kind:
            families[base] = {base + s for s in ("_bucket", "_sum", "_count")}
        elif "Counter" in kind:
            families[base + "_total"] = {base + "_total"}
        elif "Gauge" in kind:
            families[base] = {base}
        else:
            problems.add(f"src/metrics.rs: cannot tell the type of metric {base!r} "
                         f"(variable {reg.group('var')!r})")
    for col in COLLECTED.finditer(source):
        base = prefix + col.group("name")
        if col.group("unit"):
            base += "_" + col.group("unit").lower()
        if "Gauge" in col.group("kind"):
            families[base] = {base}
        elif "Counter" in col.group("kind"):
            families[base + "_total"] = {base + "_total"}
        else:
            problems.add(f"src/metrics.rs: cannot tell the type of collected metric {base!r}")
    if len(families) < 5:
        problems.add(f"src/metrics.rs: found only {len(families)} metric registrations; the "
                     "parser in deploy/check.py needs updating")
    return families


def expressions(node: object) -> list[str]:
    """Every PromQL expression in a dashboard: panel targets and variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key in ("query", "definition") and isinstance(value, str) and "xks_" in value:
                found.append(value)
            else:
                found += expressions(value)
    elif isinstance(node, list):
        for item in node:
            found += expressions(item)
    return found


def balanced(expr: str) -> bool:
    pairs = {")": "(", "}": "{", "]": "["}
    stack: list[str] = []
    in_string = False
    for ch in expr:
        if ch == '"':
            in_string = not in_string
        elif in_string:
            continue
        elif ch in "({[":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack and not in_string


def check_grafana() -> int:
    problems = Problems("grafana")
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        problems.add(f"{DASHBOARD.relative_to(ROOT)}: {e}")
        return problems.finish("")
    families = metric_families(problems)
    exposed = set().union(*families.values()) if families else set()
    exprs = expressions(dashboard)
    if not exprs:
        problems.add("the dashboard has no PromQL expressions")
    used: set[str] = set()
    for expr in exprs:
        if not balanced(expr):
            problems.add(f"unbalanced brackets or quotes in: {expr}")
        for name in re.findall(r"\bxks_[a-z0-9_]+", expr):
            if name not in exposed:
                problems.add(f"the dashboard queries `{name}`, which src/metrics.rs does not "
                             f"export (exported: {', '.join(sorted(exposed))})")
            used.add(name)
    for panel in walk_panels(dashboard.get("panels", [])):
        ds = panel.get("datasource")
        if panel.get("type") != "row" and ds and ds.get("uid") != "${datasource}":
            problems.add(f"panel {panel.get('title')!r} does not use the $datasource variable")
    unused = [f for f, samples in families.items() if not samples & used]
    note = f"; not shown: {', '.join(unused)}" if unused else ""
    return problems.finish(f"dashboard parses, {len(exprs)} queries use only exported metrics"
                           f"{note}")


def walk_panels(panels: list) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out += walk_panels(panel.get("panels", []))
    return out


# --- Kubernetes ---------------------------------------------------------------------------


def validate_crd(doc: dict) -> list[str]:
    """Custom resources: validated against models generated from the CRD's OpenAPI schema
    (cloudcoil-models-prometheus-operator), and strictly: a field the model drops on a
    round trip is unknown to the CRD."""
    from pydantic import ValidationError

    kinds = {}
    try:
        from cloudcoil.models.prometheus_operator import v1 as monitoring_v1

        kinds[("monitoring.coreos.com/v1", "ServiceMonitor")] = monitoring_v1.ServiceMonitor
    except ImportError as e:
        return [f"cannot import the Prometheus Operator models: {e}"]
    model = kinds.get((doc.get("apiVersion"), doc.get("kind")))
    if model is None:
        return [f"no schema for {doc.get('apiVersion')} {doc.get('kind')}: add its models to "
                "deploy/check.py (custom resources are never skipped)"]
    try:
        parsed = model.model_validate(doc)
    except ValidationError as e:
        return [f"{err['loc']}: {err['msg']}" for err in e.errors()]
    dumped = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return [f"unknown field {path}" for path in unknown_fields(doc, dumped, "")]


def unknown_fields(given: object, kept: object, path: str) -> list[str]:
    if isinstance(given, dict) and isinstance(kept, dict):
        out = []
        for key, value in given.items():
            sub = f"{path}.{key}" if path else key
            if key not in kept:
                out.append(sub)
            else:
                out += unknown_fields(value, kept[key], sub)
        return out
    if isinstance(given, list) and isinstance(kept, list):
        out = []
        for i, (a, b) in enumerate(zip(given, kept)):
            out += unknown_fields(a, b, f"{path}[{i}]")
        return out
    return []


def is_builtin(api_version: str) -> bool:
    group = api_version.split("/")[0] if "/" in api_version else ""
    return "." not in group or group.endswith(".k8s.io")


def check_kubernetes() -> int:
    import kubernetes_validate
    import yaml
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, latest_version

    problems = Problems("kubernetes")
    versions = sorted({K8S_MIN_VERSION, latest_version()})
    docs: list[tuple[str, dict]] = []
    files = sorted(K8S_DIR.glob("*.yaml"))
    if not files:
        problems.add(f"no manifests in {K8S_DIR.relative_to(ROOT)}")
    for path in files:
        name = path.relative_to(ROOT)
        try:
            loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except yaml.YAMLError as e:
            problems.add(f"{name}: YAML: {e}")
            continue
        for doc in loaded:
            if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
                problems.add(f"{name}: a document without apiVersion/kind/metadata")
                continue
            label = f"{name}: {doc['kind']}/{doc['metadata'].get('name')}"
            docs.append((str(name), doc))
            if is_builtin(doc["apiVersion"]):
                for version in versions:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except ValidationError as e:
                        where = ".".join(str(p) for p in e.path)
                        problems.add(f"{label} (Kubernetes {version}): {where}: {e.message}")
                    except SchemaNotFoundError as e:
                        problems.add(f"{label}: {e.message}")
            else:
                for message in validate_crd(doc):
                    problems.add(f"{label} (CRD schema): {message}")
    cross_check(docs, problems)
    kinds = ", ".join(sorted({d["kind"] for _, d in docs}))
    return problems.finish(f"{len(docs)} resources ({kinds}) valid against Kubernetes "
                           f"{' and '.join(versions)} (strict) and the ServiceMonitor CRD; "
                           "references consistent")


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cross_check(docs: list[tuple[str, dict]], problems: Problems) -> None:
    """What schemas cannot see: selectors, names and ports that must agree across files."""
    by_kind: dict[str, list[dict]] = {}
    for _, doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = by_kind.get("Deployment", [])
    if len(deployments) != 1:
        problems.add(f"expected one Deployment, found {len(deployments)}")
        return
    deploy = deployments[0]
    pod = deploy["spec"]["template"]
    pod_labels = pod["metadata"].get("labels", {})
    if not matches(deploy["spec"]["selector"].get("matchLabels", {}), pod_labels):
        problems.add("the Deployment's selector does not match its pod labels")
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    names = {(d["kind"], d["metadata"]["name"]) for _, d in docs}

    admin = env.get("XKS__ADMIN__LISTEN", "")
    if admin != f"0.0.0.0:{ports.get('admin')}":
        problems.add("XKS__ADMIN__LISTEN must open the admin listener on the pod IP at the "
                     f"`admin` container port, found {admin!r}")
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"),
                        ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", ports.get("admin")):
            problems.add(f"{probe} must be GET {path} on the admin port")
    sc = container.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.add("the container must have a read-only root file system")
    if not container.get("resources", {}).get("limits"):
        problems.add("the container must have resource limits")

    for volume in pod["spec"].get("volumes", []):
        if "configMap" in volume and ("ConfigMap", volume["configMap"]["name"]) not in names:
            problems.add(f"volume {volume['name']}: no ConfigMap {volume['configMap']['name']}")
        if "secret" in volume and ("Secret", volume["secret"]["secretName"]) not in names:
            problems.add(f"volume {volume['name']}: no Secret {volume['secret']['secretName']}")
    sa = pod["spec"].get("serviceAccountName")
    if sa and ("ServiceAccount", sa) not in names:
        problems.add(f"no ServiceAccount {sa}")

    services = by_kind.get("Service", [])
    for svc in services:
        if not matches(svc["spec"].get("selector", {}), pod_labels):
            problems.add(f"Service {svc['metadata']['name']} does not select the pods")
        for port in svc["spec"].get("ports", []):
            target = port.get("targetPort")
            if isinstance(target, str) and target not in ports:
                problems.add(f"Service {svc['metadata']['name']}: targetPort {target} is not a "
                             "container port")
        if svc["spec"].get("type") == "LoadBalancer":
            if any(p.get("targetPort") in ("admin", ports.get("admin"))
                   for p in svc["spec"]["ports"]):
                problems.add("the admin port must not be on the load balancer Service")
            if not any(p.get("port") == 443 for p in svc["spec"]["ports"]):
                problems.add("the load balancer Service must listen on 443 (KMS requires it)")
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        for doc in by_kind.get(kind, []):
            selector = (doc["spec"]["podSelector"] if kind == "NetworkPolicy"
                        else doc["spec"]["selector"]).get("matchLabels", {})
            if not matches(selector, pod_labels):
                problems.add(f"{kind} {doc['metadata']['name']} does not select the pods")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = hpa["spec"]["scaleTargetRef"]
        if (ref["kind"], ref["name"]) != ("Deployment", deploy["metadata"]["name"]):
            problems.add(f"HPA {hpa['metadata']['name']} does not target the Deployment")
    if "replicas" in deploy["spec"] and by_kind.get("HorizontalPodAutoscaler"):
        problems.add("the Deployment sets replicas although an HPA owns the count")
    for sm in by_kind.get("ServiceMonitor", []):
        selected = [s for s in services
                    if matches(sm["spec"]["selector"].get("matchLabels", {}),
                               s["metadata"].get("labels", {}))]
        if len(selected) != 1:
            problems.add(f"ServiceMonitor {sm['metadata']['name']} selects {len(selected)} "
                         "Services, expected exactly the admin one")
            continue
        svc_ports = {p.get("name") for p in selected[0]["spec"]["ports"]}
        for endpoint in sm["spec"]["endpoints"]:
            if endpoint.get("port") not in svc_ports:
                problems.add(f"ServiceMonitor port {endpoint.get('port')} is not a port of "
                             f"Service {selected[0]['metadata']['name']}")
    check_configmap(by_kind, container, ports, problems)


def check_configmap(by_kind: dict, container: dict, ports: dict, problems: Problems) -> None:
    """The config in the ConfigMap parses, uses only known keys and fits the Deployment."""
    known = set(config_keys(EXAMPLE.read_text()))
    for cm in by_kind.get("ConfigMap", []):
        for key, text in cm.get("data", {}).items():
            if not key.endswith(".toml"):
                continue
            try:
                parsed = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                problems.add(f"ConfigMap {cm['metadata']['name']} {key}: TOML: {e}")
                continue
            for path in toml_paths(parsed, ""):
                if path not in known:
                    problems.add(f"ConfigMap {cm['metadata']['name']} {key}: unknown config key "
                                 f"`{path}`")
            port = str(parsed.get("server", {}).get("listen", "")).rsplit(":", 1)[-1]
            if port != str(ports.get("https")):
                problems.add(f"ConfigMap {key}: server.listen port {port} is not the container "
                             f"port `https` ({ports.get('https')})")
            args = container.get("args", [])
            if "--config" in args:
                path = args[args.index("--config") + 1]
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                if path.rsplit("/", 1)[0] not in mounts or not path.endswith("/" + key):
                    problems.add(f"--config {path} is not ConfigMap key {key} in a mounted "
                                 "directory (subPath mounts would not see updates)")


def toml_paths(table: dict, prefix: str) -> list[str]:
    out = []
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out += toml_paths(value, path)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                out += toml_paths(item, path + "[]")
        else:
            out.append(path)
    return sorted(set(out))


CHECKS = {"kubernetes": check_kubernetes, "grafana": check_grafana, "docs": check_docs}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in CHECKS:
        sys.exit(f"usage: {sys.argv[0]} {'|'.join(CHECKS)}")
    sys.exit(CHECKS[sys.argv[1]]())

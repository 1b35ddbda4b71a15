"""Offline checks of the Istio manifests in deploy/istio (run by ../validate.sh).

1. Kubernetes kinds against the Kubernetes JSON schemas (kubernetes-validate, strict:
   unknown fields are errors).
2. Istio kinds against istio-crd-subset.schema.json (written from Istio's CRD reference).
3. References inside the set: selectors that select something, Services and ports that
   exist, the cluster names in the plugin config, ConfigMaps/Secrets/PVCs that exist.
4. Generated parts are current: the plans ConfigMap is config/plans.toml, the
   RequestAuthentication JWKS is config/demo/jwks.json, the WasmPlugin's pluginConfig is
   envoy/filter-config.json rendered with tools/plugin-config.istio.json.
5. The workload the WasmPlugin meters normalises paths as envoy/envoy.yaml.tmpl does:
   an EnvoyFilter merges the template's three path settings into its inbound HCM.

  validate.py             check; exit 1 listing every problem
  validate.py --write     first rewrite the generated parts, then check
  validate.py --print-plugin-config   print the WasmPlugin's pluginConfig as JSON
"""

import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
ISTIO_KINDS = {"WasmPlugin", "RequestAuthentication", "AuthorizationPolicy", "EnvoyFilter"}
HERE = Path(__file__).resolve().parent
ISTIO_DIR = HERE.parent
ROOT = ISTIO_DIR.parent.parent
PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")
CLUSTER = re.compile(r"^outbound\|(\d+)\|([^|]*)\|([a-z0-9.-]+)$")
HCM = "envoy.filters.network.http_connection_manager"
PATH_SETTINGS = ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action")


def manifest_files():
    return sorted(ISTIO_DIR.glob("*.yaml"))


def load_documents():
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def name_of(doc):
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


# --- generated parts ----------------------------------------------------------------


def merge_patch(target, patch):
    """RFC 7396, as turnpike-dev render-envoy --patch-filter applies it."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def expected_plugin_config():
    spec = json.loads((HERE / "plugin-config.istio.json").read_text())
    text = (ROOT / "envoy" / "filter-config.json").read_text()
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in spec["values"]})
    if missing:
        raise SystemExit(
            "envoy/filter-config.json has placeholders without an Istio value: "
            + ", ".join(missing)
            + " (add them to deploy/istio/tools/plugin-config.istio.json `values`)"
        )
    filled = PLACEHOLDER.sub(lambda m: spec["values"][m.group(1)], text)
    return merge_patch(json.loads(filled), spec["patch"])


def expected_plans():
    return (ROOT / "config" / "plans.toml").read_text()


def expected_jwks():
    path = ROOT / "config" / "demo" / "jwks.json"
    if not path.exists():
        raise SystemExit(f"{path.relative_to(ROOT)} is missing (turnpike-dev jwks makes it)")
    return json.loads(path.read_text())


def replace_block(text, key_line, body, what):
    """Replaces the lines indented under `key_line` (the first line that ends with it)."""
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.rstrip().endswith(key_line):
            indent = len(line) - len(line.lstrip()) + 2
            end = i + 1
            while end < len(lines) and (
                not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) >= indent
            ):
                end += 1
            # Keep blank lines that separate this block from what follows.
            while end > i + 1 and not lines[end - 1].strip():
                end -= 1
            pad = " " * indent
            new = [pad + l if l else "" for l in body.rstrip("\n").split("\n")]
            return "\n".join(lines[: i + 1] + new + lines[end:])
    raise SystemExit(f"cannot find `{key_line}` for {what}")


def write_generated():
    plugin = yaml.safe_dump(expected_plugin_config(), sort_keys=False, width=100)
    jwks = json.dumps(expected_jwks(), indent=2)
    for name, key, body in [
        ("wasmplugin.yaml", "pluginConfig:", plugin),
        ("counter.yaml", "plans.toml: |", expected_plans()),
        ("security.yaml", "jwks: |", jwks),
    ]:
        path = ISTIO_DIR / name
        text = replace_block(path.read_text(), key, body, name)
        if text != path.read_text():
            path.write_text(text)
            print(f"validate: rewrote the generated part of {name}")


def check_generated(docs, errors):
    by_kind = {}
    for _, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    hint = "(run deploy/istio/validate.sh --write)"
    plugins = by_kind.get("WasmPlugin", [])
    if len(plugins) != 1:
        errors.append(f"expected one WasmPlugin, found {len(plugins)}")
    elif plugins[0]["spec"].get("pluginConfig") != expected_plugin_config():
        errors.append(f"WasmPlugin pluginConfig differs from envoy/filter-config.json {hint}")
    plans = [d for d in by_kind.get("ConfigMap", []) if "plans.toml" in (d.get("data") or {})]
    if len(plans) != 1:
        errors.append(f"expected one ConfigMap with plans.toml, found {len(plans)}")
    elif plans[0]["data"]["plans.toml"] != expected_plans():
        errors.append(f"ConfigMap plans.toml differs from config/plans.toml {hint}")
    for doc in by_kind.get("RequestAuthentication", []):
        for rule in doc["spec"].get("jwtRules", []):
            if "jwks" in rule and json.loads(rule["jwks"]) != expected_jwks():
                errors.append(f"{name_of(doc)}: jwks differs from config/demo/jwks.json {hint}")


# --- schemas ------------------------------------------------------------------------


def check_schemas(docs, errors):
    istio_schema = json.loads((HERE / "istio-crd-subset.schema.json").read_text())
    for file, doc in docs:
        where = f"{file}: {name_of(doc)}"
        kind = doc.get("kind")
        if kind in ISTIO_KINDS:
            schema = {"$ref": f"#/$defs/{kind}", "$defs": istio_schema["$defs"]}
            validator = jsonschema.Draft202012Validator(schema)
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                path = ".".join(str(p) for p in err.path) or "(document)"
                errors.append(f"{where}: {path}: {err.message}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path) or "(document)"
            errors.append(f"{where}: {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{where}: no Kubernetes schema: {err}")


# --- references ---------------------------------------------------------------------


def check_references(docs, errors):
    objs = [doc for _, doc in docs]
    namespaces = {d["metadata"]["name"] for d in objs if d.get("kind") == "Namespace"}
    pods = {}  # (namespace, deployment) -> pod labels
    services = {}  # fqdn -> service
    named = {(d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name")): d for d in objs}
    for d in objs:
        meta = d.get("metadata", {})
        ns = meta.get("namespace")
        if d.get("kind") != "Namespace" and ns not in namespaces:
            errors.append(f"{name_of(d)}: namespace {ns} is not defined in deploy/istio")
        if d.get("kind") == "Deployment":
            spec = d["spec"]
            labels = spec["template"]["metadata"].get("labels", {})
            if not _selects(spec["selector"]["matchLabels"], labels):
                errors.append(f"{name_of(d)}: selector does not match its pod template labels")
            pods[(ns, meta["name"])] = labels
            for vol in spec["template"]["spec"].get("volumes", []):
                for kind, key, ref in [
                    ("ConfigMap", "configMap", "name"),
                    ("Secret", "secret", "secretName"),
                    ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName"),
                ]:
                    if key in vol and (kind, ns, vol[key][ref]) not in named:
                        errors.append(f"{name_of(d)}: volume {vol['name']}: no {kind} {vol[key][ref]}")
            for container in spec["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                    if ref:
                        secret = named.get(("Secret", ns, ref["name"]))
                        data = (secret or {}).get("stringData", {}) | (secret or {}).get("data", {})
                        if ref["key"] not in data:
                            errors.append(f"{name_of(d)}: env {env['name']}: no Secret key {ref['name']}/{ref['key']}")
        if d.get("kind") == "Service":
            services[f"{meta['name']}.{ns}.svc.cluster.local"] = d

    def selects_workload(doc):
        ns = doc["metadata"]["namespace"]
        want = _selector_labels(doc)
        return any(_selects(want, labels) for (pns, _), labels in pods.items() if pns == ns)

    for svc in services.values():
        if not selects_workload(svc):
            errors.append(f"{name_of(svc)}: selector matches no Deployment")
    for d in objs:
        if d.get("kind") in ISTIO_KINDS and _selector_labels(d):
            if not selects_workload(d):
                errors.append(f"{name_of(d)}: selector matches no Deployment in deploy/istio")

    for d in objs:
        if d.get("kind") != "WasmPlugin":
            continue
        config = d["spec"].get("pluginConfig") or {}
        for section in ("counter", "collector"):
            cluster = (config.get(section) or {}).get("cluster")
            if cluster is None:
                continue
            m = CLUSTER.match(cluster)
            if not m:
                errors.append(f"{name_of(d)}: {section}.cluster `{cluster}` is not outbound|PORT||FQDN")
                continue
            port, fqdn = int(m.group(1)), m.group(3)
            svc = services.get(fqdn)
            if svc is None:
                errors.append(f"{name_of(d)}: {section}.cluster names {fqdn}, which is no Service here")
                continue
            ports = {p["port"]: p for p in svc["spec"]["ports"]}
            if port not in ports:
                errors.append(f"{name_of(d)}: {section}.cluster port {port} is not a port of {fqdn}")
            elif ports[port].get("appProtocol") not in ("http2", "grpc", "kubernetes.io/h2c"):
                # Without it Istio's outbound cluster speaks HTTP/1.1 to the callout
                # target: one connection per callout (DESIGN.md, measured).
                errors.append(f"{name_of(d)}: {fqdn}:{port} must declare appProtocol http2")

        # The filter sends event batches with the secret the collector checks.
        secret = (config.get("collector") or {}).get("secret")
        if secret is not None:
            for owner, value in ingest_secrets(objs, named):
                if value != secret:
                    errors.append(f"{name_of(d)}: collector.secret differs from {owner}'s TURNPIKE_INGEST_SECRET")


def ingest_secrets(objs, named):
    """(deployment, value) for every TURNPIKE_INGEST_SECRET, literal or from a Secret."""
    for d in objs:
        if d.get("kind") != "Deployment":
            continue
        ns = d["metadata"]["namespace"]
        for container in d["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env.get("name") != "TURNPIKE_INGEST_SECRET":
                    continue
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = named.get(("Secret", ns, ref["name"])) or {}
                    yield name_of(d), (secret.get("stringData") or {}).get(ref["key"])
                else:
                    yield name_of(d), env.get("value")


def _selects(want, labels):
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def _selector_labels(doc):
    """The labels a resource selects workloads by ({} if it has no selector)."""
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Service":
        return spec.get("selector") or {}
    if doc.get("kind") == "EnvoyFilter":
        return (spec.get("workloadSelector") or {}).get("labels") or {}
    return (spec.get("selector") or {}).get("matchLabels") or {}


# --- path normalisation -------------------------------------------------------------


def template_path_settings():
    """The HCM path settings envoy/envoy.yaml.tmpl renders with by default: literal, or
    a ${NAME} filled from turnpike-dev's defaults (crates/devtools/src/render.rs)."""
    template = (ROOT / "envoy" / "envoy.yaml.tmpl").read_text()
    defaults = (ROOT / "crates" / "devtools" / "src" / "render.rs").read_text()
    settings = {}
    for key in PATH_SETTINGS:
        found = re.findall(rf"^[ \t]*{key}:[ \t]*(\S+)[ \t]*$", template, re.M)
        if len(found) != 1:
            raise SystemExit(f"envoy/envoy.yaml.tmpl: expected one `{key}:`, found {len(found)}")
        value = found[0]
        placeholder = PLACEHOLDER.fullmatch(value)
        if placeholder:
            name = placeholder.group(1)
            default = re.findall(rf'\("{name}",\s*"([^"]*)"\)', defaults)
            if len(default) != 1:
                raise SystemExit(f"no default for ${{{name}}} in crates/devtools/src/render.rs")
            value = default[0]
        settings[key] = {"true": True, "false": False}.get(value, value)
    return settings


def check_path_normalization(docs, errors):
    objs = [doc for _, doc in docs]
    want = template_path_settings()
    for plugin in (d for d in objs if d.get("kind") == "WasmPlugin"):
        ns, labels = plugin["metadata"]["namespace"], _selector_labels(plugin)
        patched = {}
        for f in objs:
            if f.get("kind") != "EnvoyFilter" or f["metadata"]["namespace"] != ns:
                continue
            if not _selects(_selector_labels(f), labels):
                continue
            for p in f["spec"]["configPatches"]:
                match = p["match"]
                if match.get("context") not in ("SIDECAR_INBOUND", "ANY"):
                    continue
                if match["listener"]["filterChain"]["filter"]["name"] != HCM:
                    continue
                if "portNumber" in match["listener"]:
                    errors.append(f"{name_of(f)}: normalise every inbound port, not only {match['listener']['portNumber']}")
                config = p["patch"]["value"].get("typed_config") or {}
                patched.update({k: config[k] for k in PATH_SETTINGS if k in config})
        if patched != want:
            errors.append(
                f"{name_of(plugin)}: its workload's inbound HCM path settings {patched} differ "
                f"from envoy/envoy.yaml.tmpl's {want} (see path-normalization.yaml)"
            )


def main(argv):
    if "--print-plugin-config" in argv:
        plugins = [d for _, d in load_documents() if d.get("kind") == "WasmPlugin"]
        print(json.dumps(plugins[0]["spec"]["pluginConfig"], separators=(",", ":")))
        return 0
    if "--write" in argv:
        write_generated()
    docs = load_documents()
    errors = []
    for file, doc in docs:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in doc:
                errors.append(f"{file}: a document without {key}")
    if not errors:
        check_schemas(docs, errors)
        check_references(docs, errors)
        check_generated(docs, errors)
        check_path_normalization(docs, errors)
    for err in errors:
        print(f"validate: {err}", file=sys.stderr)
    kinds = sorted({d.get("kind", "?") for _, d in docs})
    if errors:
        print(f"validate: {len(errors)} problem(s) in {len(docs)} resources", file=sys.stderr)
        return 1
    print(f"validate: ok, {len(docs)} resources ({', '.join(kinds)}) in {len(manifest_files())} files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

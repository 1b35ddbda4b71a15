"""Offline checks of the Istio manifests in deploy/istio (run by ../validate.sh).

1. Kubernetes kinds against the Kubernetes JSON schemas (kubernetes-validate, strict:
   unknown fields are errors).
2. Istio kinds against istio-crd-subset.schema.json (written from Istio's CRD reference).
3. References inside the set: selectors that select something, Services and ports that
   exist, the cluster names in the plugin config, ConfigMaps/Secrets/PVCs that exist,
   each workload's own ServiceAccount.
4. Generated parts are current: the plans ConfigMap is config/plans.toml, the Redis
   ConfigMap is deploy/redis/redis.conf, the RequestAuthentication JWKS is
   config/demo/jwks.json, the WasmPlugin's pluginConfig is envoy/filter-config.json
   rendered with tools/plugin-config.istio.json, its url and sha256 are
   tools/filter-pin.json (whose tag must be the workspace version).
5. The workload the WasmPlugin meters normalises paths as envoy/envoy.yaml.tmpl does:
   an EnvoyFilter merges the template's three path settings into its inbound HCM.
6. Credentials (check_credentials): no secret inline in the plugin config or in a
   literal env value; the WasmPlugin hands the VM exactly the variables the plugin
   config names, from the host (valueFrom: HOST), and the metered workload's
   `istio-proxy` container sets them from Secrets; what the proxy presents is what the
   counter and the collector accept, the counter's ledger token is a collector read
   token, the services' Redis users exist in Redis's ACL with matching password hashes;
   Redis runs with AOF, noeviction, a maxmemory, its data on a PVC and `default` off.
7. Authorization (check_authorization): deny-by-default and STRICT mTLS in the
   namespace; every principal names a ServiceAccount defined here; the counter's
   consume/refund and the collector's ingest admit exactly the metered workload's
   identity, their read APIs the operators (ServiceAccounts labelled
   turnpike.io/role=operator) and the counter's totals calls, Redis exactly the counter
   and the collector.

  validate.py             check; exit 1 listing every problem
  validate.py --write     first rewrite the generated parts, then check
  validate.py --print-plugin-config   print the WasmPlugin's pluginConfig as JSON
"""

import base64
import copy
import hashlib
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"
ISTIO_KINDS = {
    "WasmPlugin",
    "RequestAuthentication",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "EnvoyFilter",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
HERE = Path(__file__).resolve().parent
ISTIO_DIR = HERE.parent
ROOT = ISTIO_DIR.parent.parent
PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")
CLUSTER = re.compile(r"^outbound\|(\d+)\|([^|]*)\|([a-z0-9.-]+)$")
HCM = "envoy.filters.network.http_connection_manager"
PATH_SETTINGS = ("normalize_path", "merge_slashes", "path_with_escaped_slashes_action")
PLACEHOLDER_REGISTRY = "registry.example.com"
UNPINNED = "0" * 64
OPERATOR_LABEL = ("turnpike.io/role", "operator")
# Environment variables that carry a credential's value (their *_FILE twins name files).
SECRET_VAR = re.compile(r"(TOKEN|SECRET|PASSWORD|_KEY)$")
# Said, but not failed on (e.g. the unpinned template).
NOTES = []


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


def expected_redis_conf():
    return (ROOT / "deploy" / "redis" / "redis.conf").read_text()


def workspace_version():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    version = (cargo.get("workspace", {}).get("package", {}) or {}).get("version")
    version = version or cargo.get("package", {}).get("version")
    if not isinstance(version, str):
        raise SystemExit("Cargo.toml: no [workspace.package] or [package] version")
    return version


def expected_pin():
    path = HERE / "filter-pin.json"
    try:
        pin = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path.relative_to(ROOT)}: {err} (deploy/istio/pin-filter.sh writes it)")
    for key in ("url", "sha256"):
        if not isinstance(pin.get(key), str):
            raise SystemExit(f"{path.relative_to(ROOT)}: `{key}` missing (deploy/istio/pin-filter.sh writes it)")
    return pin


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


def replace_scalar(text, key, value, what):
    """Replaces the value of the one line `  KEY: ...` (two spaces: a spec field)."""
    pattern = re.compile(rf"^(  {re.escape(key)}:)[ \t].*$", re.M)
    if len(pattern.findall(text)) != 1:
        raise SystemExit(f"cannot find exactly one `  {key}:` line for {what}")
    return pattern.sub(lambda m: f"{m.group(1)} {value}", text)


def write_generated():
    plugin = yaml.safe_dump(expected_plugin_config(), sort_keys=False, width=100)
    jwks = json.dumps(expected_jwks(), indent=2)
    pin = expected_pin()
    for name, key, body in [
        ("wasmplugin.yaml", "pluginConfig:", plugin),
        ("counter.yaml", "plans.toml: |", expected_plans()),
        ("redis.yaml", "redis.conf: |", expected_redis_conf()),
        ("security.yaml", "jwks: |", jwks),
    ]:
        path = ISTIO_DIR / name
        text = replace_block(path.read_text(), key, body, name)
        if name == "wasmplugin.yaml":
            text = replace_scalar(text, "url", pin["url"], name)
            text = replace_scalar(text, "sha256", f'"{pin["sha256"]}"', name)
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
    else:
        if plugins[0]["spec"].get("pluginConfig") != expected_plugin_config():
            errors.append(f"WasmPlugin pluginConfig differs from envoy/filter-config.json {hint}")
        check_pin(plugins[0], errors, hint)
    redis_confs = [d for d in by_kind.get("ConfigMap", []) if "redis.conf" in (d.get("data") or {})]
    if len(redis_confs) != 1:
        errors.append(f"expected one ConfigMap with redis.conf, found {len(redis_confs)}")
    elif redis_confs[0]["data"]["redis.conf"] != expected_redis_conf():
        errors.append(f"ConfigMap redis.conf differs from deploy/redis/redis.conf {hint}")
    plans = [d for d in by_kind.get("ConfigMap", []) if "plans.toml" in (d.get("data") or {})]
    if len(plans) != 1:
        errors.append(f"expected one ConfigMap with plans.toml, found {len(plans)}")
    elif plans[0]["data"]["plans.toml"] != expected_plans():
        errors.append(f"ConfigMap plans.toml differs from config/plans.toml {hint}")
    for doc in by_kind.get("RequestAuthentication", []):
        for rule in doc["spec"].get("jwtRules", []):
            if "jwks" in rule and json.loads(rule["jwks"]) != expected_jwks():
                errors.append(f"{name_of(doc)}: jwks differs from config/demo/jwks.json {hint}")


def check_pin(plugin, errors, hint):
    """The module the WasmPlugin runs is pinned (tools/filter-pin.json), to the release
    this tree is: a version bump without a new pin fails here, not in the mesh."""
    where = name_of(plugin)
    spec = plugin["spec"]
    pin = expected_pin()
    if (spec.get("url"), spec.get("sha256")) != (pin["url"], pin["sha256"]):
        errors.append(f"{where}: url/sha256 differ from deploy/istio/tools/filter-pin.json {hint}")
    digest = pin["sha256"]
    if not re.fullmatch(r"[a-f0-9]{64}", digest):
        errors.append(f"tools/filter-pin.json: sha256 `{digest}` is not 64 lowercase hex digits")
    m = re.fullmatch(r"oci://([^/]+)/([^@]+):([^:/@]+)", pin["url"])
    if not m:
        errors.append(
            f"tools/filter-pin.json: url `{pin['url']}` is not oci://REGISTRY/REPOSITORY:TAG "
            "(the sha256 pin is checked against that image's manifest digest)"
        )
        return
    host, tag = m.group(1), m.group(3)
    version = workspace_version()
    if tag != version:
        errors.append(
            f"tools/filter-pin.json: the image tag {tag} is not the workspace version {version} "
            "(Cargo.toml): release the filter and pin it with deploy/istio/pin-filter.sh"
        )
    if digest == UNPINNED:
        if host != PLACEHOLDER_REGISTRY:
            errors.append(
                f"tools/filter-pin.json: {pin['url']} is unpinned (sha256 all zeros): run "
                "deploy/istio/pin-filter.sh with the pushed image"
            )
        else:
            NOTES.append(
                f"the WasmPlugin names the placeholder {PLACEHOLDER_REGISTRY} and is unpinned: "
                "push the filter-oci image and run deploy/istio/pin-filter.sh before applying"
            )
    elif host == PLACEHOLDER_REGISTRY:
        errors.append(f"tools/filter-pin.json: a real sha256 for the placeholder {PLACEHOLDER_REGISTRY}")


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


class Index:
    """The manifests, looked up by kind/namespace/name, with their workloads."""

    def __init__(self, docs):
        self.objs = [doc for _, doc in docs]
        self.named = {
            (d.get("kind"), d["metadata"].get("namespace"), d["metadata"].get("name")): d
            for d in self.objs
        }
        # (namespace, name) -> the Deployment or StatefulSet
        self.workloads = {
            (d["metadata"].get("namespace"), d["metadata"]["name"]): d
            for d in self.objs
            if d.get("kind") in WORKLOAD_KINDS
        }
        self.services = {
            f"{d['metadata']['name']}.{d['metadata'].get('namespace')}.svc.cluster.local": d
            for d in self.objs
            if d.get("kind") == "Service"
        }

    def of_kind(self, kind):
        return [d for d in self.objs if d.get("kind") == kind]

    def selected(self, namespace, labels):
        """Workloads in `namespace` whose pods carry every label of `labels`."""
        return [
            w
            for (ns, _), w in self.workloads.items()
            if ns == namespace and _selects(labels, pod_labels(w))
        ]

    def service_workload(self, fqdn):
        """(Service, the one workload it selects) for a Service FQDN or short name."""
        svc = self.services.get(fqdn) or self.services.get(f"{fqdn}.svc.cluster.local")
        if svc is None:
            svc = next(
                (s for name, s in self.services.items() if name.split(".")[0] == fqdn), None
            )
        if svc is None:
            return None, None
        picked = self.selected(svc["metadata"]["namespace"], svc["spec"].get("selector") or {})
        return svc, (picked[0] if len(picked) == 1 else None)

    def secret_value(self, namespace, name, key):
        """The decoded value of a Secret key, or None when the Secret or key is missing."""
        secret = self.named.get(("Secret", namespace, name))
        if secret is None:
            return None
        if key in (secret.get("stringData") or {}):
            return secret["stringData"][key]
        if key in (secret.get("data") or {}):
            return base64.b64decode(secret["data"][key]).decode()
        return None


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def service_account(workload):
    return pod_spec(workload).get("serviceAccountName") or "default"


def principal(namespace, account, trust_domain="cluster.local"):
    return f"{trust_domain}/ns/{namespace}/sa/{account}"


def check_references(docs, errors):
    idx = Index(docs)
    objs = idx.objs
    namespaces = {d["metadata"]["name"] for d in objs if d.get("kind") == "Namespace"}
    for d in objs:
        meta = d.get("metadata", {})
        ns = meta.get("namespace")
        if d.get("kind") != "Namespace" and ns not in namespaces:
            errors.append(f"{name_of(d)}: namespace {ns} is not defined in deploy/istio")
    accounts_used = {}
    for (ns, _), d in idx.workloads.items():
        spec = d["spec"]
        labels = pod_labels(d)
        if not _selects(spec["selector"]["matchLabels"], labels):
            errors.append(f"{name_of(d)}: selector does not match its pod template labels")
        pod = pod_spec(d)
        claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for vol in pod.get("volumes", []):
            for kind, key, ref in [
                ("ConfigMap", "configMap", "name"),
                ("Secret", "secret", "secretName"),
                ("PersistentVolumeClaim", "persistentVolumeClaim", "claimName"),
            ]:
                if key in vol and (kind, ns, vol[key][ref]) not in idx.named:
                    errors.append(f"{name_of(d)}: volume {vol['name']}: no {kind} {vol[key][ref]}")
            for item in (vol.get("secret") or {}).get("items", []):
                if idx.secret_value(ns, vol["secret"]["secretName"], item["key"]) is None:
                    errors.append(f"{name_of(d)}: volume {vol['name']}: no Secret key {item['key']}")
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes | claims:
                    errors.append(
                        f"{name_of(d)}: container {container['name']} mounts {mount['name']}, "
                        "which is no volume or volumeClaimTemplate"
                    )
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and idx.secret_value(ns, ref["name"], ref["key"]) is None:
                    errors.append(f"{name_of(d)}: env {env['name']}: no Secret key {ref['name']}/{ref['key']}")
        # Each workload its own identity: AuthorizationPolicies name ServiceAccounts.
        account = service_account(d)
        if account == "default" or ("ServiceAccount", ns, account) not in idx.named:
            errors.append(
                f"{name_of(d)}: serviceAccountName {account!r} is not a ServiceAccount defined in "
                "deploy/istio (each workload needs its own: the AuthorizationPolicies name them)"
            )
        if (ns, account) in accounts_used:
            errors.append(f"{name_of(d)}: shares ServiceAccount {account} with {accounts_used[(ns, account)]}")
        accounts_used[(ns, account)] = name_of(d)

    def selects_workload(doc):
        return bool(idx.selected(doc["metadata"]["namespace"], _selector_labels(doc)))

    for svc in idx.services.values():
        if not selects_workload(svc):
            errors.append(f"{name_of(svc)}: selector matches no workload")
    for d in objs:
        if d.get("kind") in ISTIO_KINDS and _selector_labels(d):
            if not selects_workload(d):
                errors.append(f"{name_of(d)}: selector matches no workload in deploy/istio")

    for d in idx.of_kind("WasmPlugin"):
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
            svc = idx.services.get(fqdn)
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


# --- credentials --------------------------------------------------------------------


def env_entries(container):
    return {e["name"]: e for e in container.get("env", [])}


def main_container(workload):
    """The workload's own container (not an `istio-proxy` injection override)."""
    return next(c for c in pod_spec(workload)["containers"] if c["name"] != "istio-proxy")


def command_line(container):
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


def mounted_file(idx, workload, container, path):
    """(source, value) of the file at `path` in `container`: a key of a mounted Secret or
    ConfigMap. source is e.g. `Secret x/key`; value None when it cannot be resolved
    (source then says why)."""
    ns = workload["metadata"]["namespace"]
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/")
        if not path.startswith(root + "/") or mount.get("subPath"):
            continue
        rel = path[len(root) + 1 :]
        vol = volumes.get(mount["name"])
        for key, kind, ref in (("secret", "Secret", "secretName"), ("configMap", "ConfigMap", "name")):
            if vol is None or key not in vol:
                continue
            name = vol[key][ref]
            items = vol[key].get("items")
            data_key = rel
            if items:
                match = [i["key"] for i in items if i["path"] == rel]
                if not match:
                    return f"{kind} {name} (no item with path {rel})", None
                data_key = match[0]
            if kind == "Secret":
                value = idx.secret_value(ns, name, data_key)
            else:
                value = ((idx.named.get(("ConfigMap", ns, name)) or {}).get("data") or {}).get(data_key)
            return f"{kind} {name}/{data_key}", value
        return f"volume {mount['name']} (not a Secret or ConfigMap)", None
    return "no mounted volume", None


def read_credential(idx, workload, container, var, errors):
    """What a service reads for credential `var`: the file named by `var`_FILE (from a
    mounted Secret) or `var` itself (from a secretKeyRef). Returns (value, source, from
    a file); value None when neither is set or it cannot be resolved (errors say why)."""
    ns = workload["metadata"]["namespace"]
    env = env_entries(container)
    where = f"{name_of(workload)}: {var}"
    if var in env:
        ref = (env[var].get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            return idx.secret_value(ns, ref["name"], ref["key"]), f"Secret {ref['name']}/{ref['key']}", False
        return None, where, False  # a literal: reported by check_credentials
    file_var = f"{var}_FILE"
    if file_var in env:
        path = env[file_var].get("value")
        if not path:
            errors.append(f"{where}_FILE: give the path as a literal value")
            return None, where, True
        source, value = mounted_file(idx, workload, container, path)
        if value is None:
            errors.append(f"{where}_FILE {path}: {source}")
        elif not source.startswith("Secret "):
            errors.append(f"{where}_FILE {path} is in {source}: credentials belong in a Secret")
        return value, f"{path} ({source})", True
    return None, where, False


def token_lines(value, from_file):
    """The tokens a service accepts from one credential: one per line in a file
    (comments and blank lines skipped), comma-separated in a variable."""
    if value is None:
        return None
    text = value if from_file else value.replace(",", "\n")
    return [t.strip() for t in text.splitlines() if t.strip() and not t.strip().startswith("#")]


def check_tokens(tokens, what, errors):
    for token in tokens or []:
        if len(token) < 16 or not all(33 <= ord(ch) <= 126 for ch in token):
            errors.append(f"{what}: a token is shorter than 16 characters or has spaces (the service refuses it)")


def literal_env(container, name):
    entry = env_entries(container).get(name) or {}
    return entry.get("value")


def url_service(idx, url, what, errors):
    """(Service, its workload, port) that `url` (http:// or redis://) names."""
    parts = urlsplit(url)
    svc, workload = idx.service_workload(parts.hostname or "")
    if svc is None or workload is None:
        errors.append(f"{what}: {url} names no Service of one workload in deploy/istio")
        return None, None, None
    port = parts.port
    if port not in {p["port"] for p in svc["spec"]["ports"]}:
        errors.append(f"{what}: {url}: port {port} is not a port of Service {svc['metadata']['name']}")
    return svc, workload, port


def parse_acl(text):
    """Redis ACL file -> {user: rules (list of tokens after the user name)}."""
    users = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if parts[0] != "user" or len(parts) < 2:
            raise ValueError(f"not a `user` line: {line}")
        users[parts[1]] = parts[2:]
    return users


def acl_allows_password(rules, password):
    digest = hashlib.sha256(password.encode()).hexdigest()
    enabled = False
    accepted = set()
    nopass = False
    for rule in rules:
        if rule == "on":
            enabled = True
        elif rule == "off":
            enabled = False
        elif rule in ("resetpass", "reset"):
            accepted, nopass = set(), False
        elif rule == "nopass":
            nopass = True
        elif rule.startswith(">"):
            accepted.add(hashlib.sha256(rule[1:].encode()).hexdigest())
        elif rule.startswith("#"):
            accepted.add(rule[1:].lower())
    return enabled and (nopass or digest in accepted)


def normalized_acl(users):
    """ACL rules with password hashes blanked, for comparing two deployments' users."""
    return {
        user: " ".join("#HASH" if r.startswith("#") else r for r in rules)
        for user, rules in users.items()
    }


def compose_acl():
    """The users deploy/compose/redis-entrypoint.sh writes (hashes blanked)."""
    path = ROOT / "deploy" / "compose" / "redis-entrypoint.sh"
    lines = [l for l in path.read_text().splitlines() if l.startswith("user ")]
    text = "\n".join(re.sub(r"#\$\(hash [A-Z_]+\)", "#x", l) for l in lines)
    return normalized_acl(parse_acl(text))


def redis_settings(conf_text, argv):
    """Effective redis.conf directives: the file, then `--name value` arguments."""
    settings = {}
    for line in conf_text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line)
        settings[words[0].lower()] = " ".join(words[1:])
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv):
            settings[argv[i][2:].lower()] = argv[i + 1]
            i += 2
        else:
            i += 1
    return settings


def check_envoy_template_env(wanted, errors):
    """envoy/envoy.yaml.tmpl (compose, the demo, the tests) hands the filter's VM the
    same variables from Envoy's environment."""
    template = (ROOT / "envoy" / "envoy.yaml.tmpl").read_text()
    found = re.findall(r"host_env_keys:\s*\[([^\]]*)\]", template)
    if len(found) != 1:
        errors.append("envoy/envoy.yaml.tmpl: expected one vm_config host_env_keys list")
        return
    keys = {k.strip() for k in found[0].split(",") if k.strip()}
    if keys != wanted:
        errors.append(
            f"envoy/envoy.yaml.tmpl host_env_keys {sorted(keys)} differ from the variables "
            f"envoy/filter-config.json names {sorted(wanted)}"
        )


def check_credentials(docs, errors):
    idx = Index(docs)
    # Secrets only from Secrets: no literal values, nothing on a command line.
    for w in idx.workloads.values():
        for c in pod_spec(w)["containers"]:
            for e in c.get("env", []):
                if SECRET_VAR.search(e["name"]) and "value" in e:
                    errors.append(
                        f"{name_of(w)}: container {c['name']}: env {e['name']} is a literal: "
                        "take it from a Secret (secretKeyRef, or a file with the _FILE variable)"
                    )
            for arg in command_line(c):
                if re.match(r"--(ingest-secret|service-token|read-token|ledger-token|redis-password)(=|$)", arg):
                    errors.append(f"{name_of(w)}: container {c['name']}: {arg} on the command line")
                if arg.startswith("--allow-unauthenticated"):
                    errors.append(f"{name_of(w)}: container {c['name']}: {arg} serves without credentials")

    plugins = idx.of_kind("WasmPlugin")
    if len(plugins) != 1:
        return  # reported by check_generated
    plugin = plugins[0]
    config = plugin["spec"].get("pluginConfig") or {}
    for section, key in (("counter", "token"), ("collector", "secret")):
        if key in (config.get(section) or {}):
            errors.append(
                f"{name_of(plugin)}: pluginConfig {section}.{key} is inline: plugin configuration "
                f"shows in the WasmPlugin and in Envoy's config dump; use {section}.{key}_env"
            )
    token_env = (config.get("counter") or {}).get("token_env")
    secret_env = (config.get("collector") or {}).get("secret_env")
    for what, var in (("counter.token_env", token_env), ("collector.secret_env", secret_env)):
        if not var:
            errors.append(f"{name_of(plugin)}: pluginConfig {what} is not set")
    wanted = {v for v in (token_env, secret_env) if v}
    check_envoy_template_env(wanted, errors)
    vm_env = (plugin["spec"].get("vmConfig") or {}).get("env") or []
    host = {e["name"] for e in vm_env if e.get("valueFrom") == "HOST"}
    for var in sorted(wanted - host):
        errors.append(f"{name_of(plugin)}: vmConfig.env must pass {var} from the proxy (valueFrom: HOST)")
    for e in vm_env:
        if e.get("valueFrom", "INLINE") == "INLINE" and e["name"] in wanted:
            errors.append(f"{name_of(plugin)}: vmConfig.env {e['name']} is inline: the credential would be in the WasmPlugin")
    for var in sorted(host - wanted):
        errors.append(f"{name_of(plugin)}: vmConfig.env hands {var} to the VM, which the plugin config does not use")

    # The metered workloads' sidecars hold the proxy's credentials.
    ns = plugin["metadata"]["namespace"]
    presented = {}
    for w in idx.selected(ns, _selector_labels(plugin)):
        proxy = next((c for c in pod_spec(w)["containers"] if c["name"] == "istio-proxy"), None)
        if proxy is None:
            errors.append(
                f"{name_of(w)}: metered by {name_of(plugin)} but has no `istio-proxy` container "
                f"to set {', '.join(sorted(wanted))} in its sidecar (Istio's injection override)"
            )
            continue
        if proxy.get("image") != "auto":
            errors.append(f"{name_of(w)}: the istio-proxy override needs `image: auto` (the injector picks the proxy)")
        for var in sorted(wanted):
            ref = ((env_entries(proxy).get(var) or {}).get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                errors.append(f"{name_of(w)}: istio-proxy env {var} must come from a Secret (secretKeyRef)")
                continue
            value = idx.secret_value(ns, ref["name"], ref["key"])
            if value is not None:
                check_tokens([value.strip()], f"{name_of(w)}: istio-proxy {var}", errors)
                presented.setdefault(var, []).append(
                    (value.strip(), f"{name_of(w)} istio-proxy {var} (Secret {ref['name']}/{ref['key']})")
                )

    services = {}
    for section in ("counter", "collector"):
        m = CLUSTER.match((config.get(section) or {}).get("cluster") or "")
        svc, workload = idx.service_workload(m.group(3)) if m else (None, None)
        if workload is None:
            errors.append(f"{name_of(plugin)}: {section}.cluster leads to no single workload")
            return
        services[section] = workload
    counter, collector = services["counter"], services["collector"]
    cc, lc = main_container(counter), main_container(collector)

    def accepted(workload, container, var, what):
        value, source, from_file = read_credential(idx, workload, container, var, errors)
        tokens = token_lines(value, from_file)
        if not tokens:
            errors.append(f"{name_of(workload)}: no {what} ({var}_FILE or {var} from a Secret): it refuses to start")
            return [], source
        check_tokens(tokens, f"{name_of(workload)}: {what} in {source}", errors)
        return tokens, source

    service_tokens, service_src = accepted(counter, cc, "TURNPIKE_SERVICE_TOKEN", "service tokens")
    counter_reads, _ = accepted(counter, cc, "TURNPIKE_READ_TOKEN", "read tokens")
    ingest, ingest_src = accepted(collector, lc, "TURNPIKE_INGEST_SECRET", "ingest secrets")
    collector_reads, reads_src = accepted(collector, lc, "TURNPIKE_READ_TOKEN", "read tokens")
    for var, tokens, src, owner in (
        (token_env, service_tokens, service_src, counter),
        (secret_env, ingest, ingest_src, collector),
    ):
        for value, where in presented.get(var, []):
            if value not in tokens:
                errors.append(f"{where} is not one of {name_of(owner)}'s accepted tokens ({src})")

    # The counter re-seeds from the ledger, with a token the collector accepts.
    ledger_url = literal_env(cc, "TURNPIKE_LEDGER_URL")
    if not ledger_url:
        errors.append(
            f"{name_of(counter)}: TURNPIKE_LEDGER_URL is not set: after Redis loses data the "
            "counter could not re-seed windows from the ledger and that usage would be forgiven"
        )
    else:
        _, target, _ = url_service(idx, ledger_url, f"{name_of(counter)}: TURNPIKE_LEDGER_URL", errors)
        if target is not None and target is not collector:
            errors.append(f"{name_of(counter)}: TURNPIKE_LEDGER_URL {ledger_url} is not the collector's Service")
        value, source, _ = read_credential(idx, counter, cc, "TURNPIKE_LEDGER_TOKEN", errors)
        token = value.strip() if value else (counter_reads[0] if counter_reads else None)
        source = source if value else "its first read token"
        if token is not None and token not in collector_reads:
            errors.append(
                f"{name_of(counter)}: its ledger token ({source}) is not one of "
                f"{name_of(collector)}'s read tokens ({reads_src})"
            )

    # Redis: both services use the same one, each as its own ACL user.
    redis_workload = None
    redis_users = {}
    for role, workload, container in (("counter", counter, cc), ("collector", collector, lc)):
        url = literal_env(container, "TURNPIKE_REDIS_URL")
        if not url:
            errors.append(
                f"{name_of(workload)}: TURNPIKE_REDIS_URL is not set"
                + (": admitted usage reaches the ledger from the usage streams" if workload is collector else "")
            )
            continue
        _, target, _ = url_service(idx, url, f"{name_of(workload)}: TURNPIKE_REDIS_URL", errors)
        if target is None:
            continue
        if redis_workload is not None and target is not redis_workload:
            errors.append(f"{name_of(workload)}: TURNPIKE_REDIS_URL names another Redis than the counter's")
        redis_workload = target
        value, source, _ = read_credential(idx, workload, container, "TURNPIKE_REDIS_PASSWORD", errors)
        if value is None:
            errors.append(f"{name_of(workload)}: no Redis credential (TURNPIKE_REDIS_PASSWORD_FILE from a Secret)")
            continue
        user, _, password = value.strip().partition(" ")
        if not password:
            errors.append(f"{name_of(workload)}: its Redis credential ({source}) must be `user password` (its own ACL user)")
            continue
        redis_users[role] = (name_of(workload), user, password, source)
    if redis_workload is None:
        return
    check_redis(idx, redis_workload, redis_users, errors)

    # The collector's consumer name in the usage streams' group: stable per replica.
    consumer = env_entries(lc).get("TURNPIKE_COLLECTOR_CONSUMER")
    replicas = collector["spec"].get("replicas", 1)
    if consumer is None:
        errors.append(f"{name_of(collector)}: TURNPIKE_COLLECTOR_CONSUMER is not set (a stable name per replica)")
    elif ((consumer.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.name":
        if collector["kind"] != "StatefulSet":
            errors.append(f"{name_of(collector)}: consumer = pod name is stable only in a StatefulSet")
    elif "value" in consumer and replicas != 1:
        errors.append(f"{name_of(collector)}: {replicas} replicas would share consumer name {consumer['value']}")


def check_redis(idx, redis, users, errors):
    container = main_container(redis)
    argv = command_line(container)
    where = name_of(redis)
    conf_path = next((a for a in argv if a.endswith(".conf")), None)
    if conf_path is None:
        errors.append(f"{where}: redis-server gets no config file")
        return
    source, conf = mounted_file(idx, redis, container, conf_path)
    if conf is None:
        errors.append(f"{where}: {conf_path}: {source}")
        return
    settings = redis_settings(conf, argv[argv.index(conf_path) + 1 :])
    for key, want, why in (
        ("appendonly", "yes", "the windows, idempotency records and usage streams must survive a restart"),
        ("appendfsync", "everysec", "lose at most a second of consumes on a crash"),
        ("maxmemory-policy", "noeviction", "evicting any Turnpike key forgives quota or loses usage"),
        ("protected-mode", "yes", "refuse remote clients should `default` ever get nopass"),
    ):
        if settings.get(key) != want:
            errors.append(f"{where}: {key} is {settings.get(key)!r}, want {want!r}: {why}")
    if settings.get("maxmemory", "0") in ("0", "0b", ""):
        errors.append(f"{where}: no maxmemory: Redis would grow until the kernel kills it")
    data_dir = settings.get("dir", "").strip('"')
    claims = {c["metadata"]["name"] for c in redis["spec"].get("volumeClaimTemplates", [])}
    pvcs = {v["name"] for v in pod_spec(redis).get("volumes", []) if "persistentVolumeClaim" in v}
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in container.get("volumeMounts", [])}
    if mounts.get(data_dir.rstrip("/")) not in claims | pvcs:
        errors.append(f"{where}: its data dir {data_dir or '(none)'} is not on a PersistentVolumeClaim")
    if "requirepass" in settings:
        errors.append(f"{where}: requirepass gives the `default` user every command on every key; use ACL users")
    if "--aclfile" not in argv and "aclfile" not in settings:
        errors.append(f"{where}: no ACL file: the services need their own users")
        return
    acl_path = argv[argv.index("--aclfile") + 1] if "--aclfile" in argv else settings["aclfile"]
    source, text = mounted_file(idx, redis, container, acl_path)
    if text is None or not source.startswith("Secret "):
        errors.append(f"{where}: ACL file {acl_path}: {source} (it must be a Secret)")
        return
    try:
        acl = parse_acl(text)
    except ValueError as err:
        errors.append(f"{where}: ACL file ({source}): {err}")
        return
    default = acl.get("default", ["on", "nopass", "~*", "&*", "+@all"])
    if "off" not in default and "nopass" in default:
        errors.append(f"{where}: the ACL's `default` user runs commands without a password: switch it off")
    # Redis replays the AOF as `default` and re-checks its permissions at each EXEC:
    # without all of them, scripted writes vanish on restart (redis/redis#14541).
    if not ({"~*", "allkeys"} & set(default) and {"+@all", "allcommands"} & set(default)) or any(
        r.startswith("-") for r in default
    ):
        errors.append(
            f"{where}: the ACL's `default` user must keep every permission (~* +@all) and stay "
            "`off`: Redis replays the AOF as that user, and a restricted one drops every "
            "scripted write on restart (redis/redis#14541)"
        )
    for role, (owner, user, password, cred_source) in users.items():
        rules = acl.get(user)
        if rules is None:
            errors.append(f"{owner}: Redis user {user} ({cred_source}) is not in {where}'s ACL ({source})")
            continue
        if not acl_allows_password(rules, password):
            errors.append(
                f"{owner}: the password in {cred_source} is not one of Redis user {user}'s "
                f"(hashes in {source}), or the user is off"
            )
        keys = [r for r in rules if r.startswith("~") or r.startswith("%") or r == "allkeys"]
        if keys != ["~tp:*"]:
            errors.append(f"{where}: ACL user {user} may reach keys {keys}, want only ~tp:*")
        if "-@dangerous" not in rules:
            errors.append(f"{where}: ACL user {user} keeps the dangerous commands (add -@dangerous)")
        granted = {r for r in rules if r.startswith("+")} | ({"+@all"} if "allcommands" in rules else set())
        if role == "collector" and granted & {"+@all", "+@write", "+@scripting"}:
            errors.append(
                f"{where}: ACL user {user} (the collector) may write or run scripts "
                f"({sorted(granted & {'+@all', '+@write', '+@scripting'})}): it only reads and consumes streams"
            )
    if len({user for _, user, _, _ in users.values()}) != len(users):
        errors.append(f"{where}: the counter and the collector share a Redis user: give each its own")
    mine = normalized_acl(acl)
    theirs = compose_acl()
    if mine != theirs:
        errors.append(
            f"{where}: the ACL rules ({source}) differ from deploy/compose/redis-entrypoint.sh's: "
            f"{sorted(set(mine.items()) ^ set(theirs.items()))}"
        )


# --- authorization ------------------------------------------------------------------

HTTP_SOURCE_FIELDS = {"requestPrincipals", "notRequestPrincipals"}
HTTP_OPERATION_FIELDS = {"hosts", "notHosts", "methods", "notMethods", "paths", "notPaths"}
OUTSIDER = "cluster.local/ns/elsewhere/sa/anyone"
NO_IDENTITY = "(no mTLS identity)"


def istio_match(pattern, value):
    if value is None:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def _field(values, value):
    return any(istio_match(p, value) for p in values)


def rule_matches(rule, req, action, unknown):
    """Whether one AuthorizationPolicy rule matches request `req`. `unknown` stands for
    conditions this check cannot evaluate (`when`, IP blocks)."""
    tcp = req["tcp"]
    froms = rule.get("from") or []
    if froms:
        hit = False
        for entry in froms:
            src, ok = entry["source"], True
            for key, values in src.items():
                if key in HTTP_SOURCE_FIELDS and tcp:
                    if action == "ALLOW":
                        return False  # Istio ignores such an ALLOW rule for TCP
                    continue  # and drops the field from a DENY rule
                if key == "principals":
                    ok &= _field(values, req["principal"])
                elif key == "notPrincipals":
                    ok &= not _field(values, req["principal"])
                elif key == "namespaces":
                    ok &= _field(values, req["namespace"])
                elif key == "notNamespaces":
                    ok &= not _field(values, req["namespace"])
                elif key == "requestPrincipals":
                    ok &= False  # service-to-service calls carry no JWT
                elif key == "notRequestPrincipals":
                    ok &= True
                else:
                    ok &= unknown
            hit |= ok
        if not hit:
            return False
    tos = rule.get("to") or []
    if tos:
        hit = False
        for entry in tos:
            op, ok = entry["operation"], True
            for key, values in op.items():
                if key in HTTP_OPERATION_FIELDS and tcp:
                    if action == "ALLOW":
                        return False
                    continue
                value = {"methods": req["method"], "notMethods": req["method"], "paths": req["path"],
                         "notPaths": req["path"], "ports": req["port"], "notPorts": req["port"],
                         "hosts": None, "notHosts": None}[key]
                if key in ("hosts", "notHosts"):
                    ok &= unknown
                elif key.startswith("not"):
                    ok &= not _field(values, value)
                else:
                    ok &= _field(values, value)
            hit |= ok
        if not hit:
            return False
    if rule.get("when"):
        return unknown
    return True


def policies_for(idx, workload):
    ns = workload["metadata"]["namespace"]
    labels = pod_labels(workload)
    out = []
    for p in idx.of_kind("AuthorizationPolicy"):
        if p["metadata"]["namespace"] != ns:
            continue
        want = _selector_labels(p)
        if want and not _selects(want, labels):
            continue
        out.append(p)
    return out


def allowed(idx, workload, req, certain):
    """Whether Istio admits `req` to `workload`: for sure (certain) or possibly."""
    applicable = policies_for(idx, workload)
    for p in applicable:
        if p["spec"].get("action") == "DENY":
            if any(rule_matches(r, req, "DENY", certain) for r in p["spec"].get("rules") or []):
                return False
    allows = [p for p in applicable if p["spec"].get("action", "ALLOW") == "ALLOW"]
    if not allows:
        return True
    return any(
        rule_matches(r, req, "ALLOW", not certain)
        for p in allows
        for r in p["spec"].get("rules") or []
    )


def wire_paths(module):
    """The path constants of `pub mod MODULE` in crates/wire/src/lib.rs: the API the
    proxies and services speak, so a new endpoint is checked the day it is added."""
    text = (ROOT / "crates" / "wire" / "src" / "lib.rs").read_text()
    m = re.search(rf"pub mod {module} \{{(.*?)\n\}}", text, re.S)
    if not m:
        raise SystemExit(f"crates/wire/src/lib.rs: no `pub mod {module}`")
    return dict(re.findall(r'pub const (\w+): &str = "([^"]+)";', m.group(1)))


def check_authorization(docs, errors):
    idx = Index(docs)
    accounts = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d for d in idx.of_kind("ServiceAccount")
    }
    identities = {principal(ns, name): ns for ns, name in accounts}
    identities[OUTSIDER] = "elsewhere"
    identities[NO_IDENTITY] = None

    for p in idx.of_kind("AuthorizationPolicy"):
        if p["spec"].get("action") in ("CUSTOM",):
            errors.append(f"{name_of(p)}: CUSTOM policies are outside what validate.sh can check")
        for rule in p["spec"].get("rules") or []:
            for entry in rule.get("from") or []:
                for key in ("principals", "notPrincipals"):
                    for value in entry["source"].get(key, []):
                        if "*" in value:
                            continue
                        m = re.fullmatch(r"([^/]+)/ns/([^/]+)/sa/([^/]+)", value)
                        if not m:
                            errors.append(f"{name_of(p)}: principal {value} is not TRUST_DOMAIN/ns/NS/sa/NAME")
                        elif m.group(1) != "cluster.local":
                            errors.append(f"{name_of(p)}: principal {value}: trust domain {m.group(1)}, the others use cluster.local")
                        elif (m.group(2), m.group(3)) not in accounts:
                            errors.append(f"{name_of(p)}: principal {value} names no ServiceAccount in deploy/istio")

    namespaces = {ns for ns, _ in idx.workloads}
    for ns in sorted(namespaces):
        if not any(
            p["metadata"]["namespace"] == ns
            and not _selector_labels(p)
            and p["spec"].get("action", "ALLOW") == "ALLOW"
            and not p["spec"].get("rules")
            for p in idx.of_kind("AuthorizationPolicy")
        ):
            errors.append(f"namespace {ns}: no deny-by-default AuthorizationPolicy (no selector, no rules)")
        strict = [
            p for p in idx.of_kind("PeerAuthentication")
            if p["metadata"]["namespace"] == ns and not _selector_labels(p)
        ]
        if not strict or (strict[0]["spec"].get("mtls") or {}).get("mode") != "STRICT":
            errors.append(f"namespace {ns}: no namespace-wide PeerAuthentication with mtls.mode STRICT")
        for p in idx.of_kind("PeerAuthentication"):
            modes = [(p["spec"].get("mtls") or {}).get("mode")] + [
                (v or {}).get("mode") for v in (p["spec"].get("portLevelMtls") or {}).values()
            ]
            if p["metadata"]["namespace"] == ns and any(m in ("PERMISSIVE", "DISABLE") for m in modes):
                errors.append(f"{name_of(p)}: weakens mTLS ({modes}): the principals checks need it")

    # Every Service's workload is reachable by someone under deny-by-default.
    for svc in idx.services.values():
        for w in idx.selected(svc["metadata"]["namespace"], svc["spec"].get("selector") or {}):
            if not any(p["spec"].get("rules") for p in policies_for(idx, w) if p["spec"].get("action", "ALLOW") == "ALLOW"):
                errors.append(f"{name_of(w)}: no ALLOW rule admits anything to it (deny-by-default)")

    plugins = idx.of_kind("WasmPlugin")
    if len(plugins) != 1:
        return
    plugin = plugins[0]
    config = plugin["spec"].get("pluginConfig") or {}
    ns = plugin["metadata"]["namespace"]
    metered = {principal(ns, service_account(w)) for w in idx.selected(ns, _selector_labels(plugin))}
    operators = {
        principal(ns_, name)
        for (ns_, name), sa in accounts.items()
        if (sa["metadata"].get("labels") or {}).get(OPERATOR_LABEL[0]) == OPERATOR_LABEL[1]
    }
    if not operators:
        errors.append(f"no ServiceAccount labelled {OPERATOR_LABEL[0]}={OPERATOR_LABEL[1]}: nobody could read usage")
    targets = {}
    for section in ("counter", "collector"):
        m = CLUSTER.match((config.get(section) or {}).get("cluster") or "")
        _, workload = idx.service_workload(m.group(3)) if m else (None, None)
        if workload is None:
            return  # reported by check_references/check_credentials
        targets[section] = workload
    counter, collector = targets["counter"], targets["collector"]
    counter_sa = principal(counter["metadata"]["namespace"], service_account(counter))
    collector_sa = principal(collector["metadata"]["namespace"], service_account(collector))

    def callers(workload, method, path, port, tcp, certain):
        out = set()
        for ident, ident_ns in identities.items():
            req = {"principal": None if ident == NO_IDENTITY else ident, "namespace": ident_ns,
                   "method": method, "path": path, "port": port, "tcp": tcp}
            if allowed(idx, workload, req, certain):
                out.add(ident)
        return out

    def expect(workload, what, method, path, port, exactly=None, at_most=None, at_least=frozenset(), tcp=False):
        possible = callers(workload, method, path, port, tcp, certain=False)
        sure = callers(workload, method, path, port, tcp, certain=True)
        limit = exactly if exactly is not None else at_most
        need = exactly if exactly is not None else at_least
        extra = sorted(possible - set(limit))
        missing = sorted(set(need) - sure)
        if extra:
            errors.append(f"{name_of(workload)}: {what} is open to {extra} (only {sorted(limit) or 'nobody'} may)")
        if missing:
            errors.append(f"{name_of(workload)}: {what} is closed to {missing}, who must reach it")

    def port(workload):
        """The port Istio's policies see: the workload's container port."""
        return str(next((p["containerPort"] for p in main_container(workload).get("ports", [])), ""))

    # Every counter endpoint but the usage reads takes the service token: the proxies'.
    counter_paths = wire_paths("counter_paths")
    for name, path in sorted(counter_paths.items()):
        if name != "USAGE_PREFIX":
            expect(counter, f"POST {path}", "POST", path, port(counter), exactly=metered)
    usage = counter_paths.get("USAGE_PREFIX", "/v1/tenants/") + "t/usage"
    expect(counter, "GET usage", "GET", usage, port(counter), at_most=operators, at_least=operators)
    expect(counter, "any other request", "DELETE", "/v1/unknown", port(counter), exactly=set())
    collector_paths = wire_paths("collector_paths")
    events = collector_paths.get("EVENTS", "/v1/events")
    expect(collector, f"POST {events}", "POST", events, port(collector), exactly=metered)
    ledger = literal_env(main_container(counter), "TURNPIKE_LEDGER_URL")
    totals = "/v1/tenants/t" + collector_paths.get("TOTALS_SUFFIX", "/totals")
    expect(collector, "POST totals", "POST", totals, port(collector),
           at_most=operators | {counter_sa}, at_least=operators | ({counter_sa} if ledger else set()))
    for path in ("/v1/tenants/t/usage", "/v1/tenants/t/events", "/v1/ledger/changes", "/v1/quarantine", "/v1/reconcile"):
        expect(collector, f"GET {path}", "GET", path, port(collector), at_most=operators, at_least=operators)
    expect(collector, "any other request", "DELETE", "/v1/unknown", port(collector), exactly=set())
    url = literal_env(main_container(counter), "TURNPIKE_REDIS_URL") or ""
    _, redis = idx.service_workload(urlsplit(url).hostname or "")
    if redis is not None:
        expect(redis, "the Redis port", None, None, port(redis), exactly={counter_sa, collector_sa}, tcp=True)


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
        check_credentials(docs, errors)
        check_authorization(docs, errors)
    for note in NOTES:
        print(f"validate: note: {note}", file=sys.stderr)
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

#!/usr/bin/env bash
# Offline validation of the Istio manifests in this directory (see tools/validate.py):
# Kubernetes kinds against the Kubernetes schemas (PyPI kubernetes-validate, strict),
# Istio kinds against tools/istio-crd-subset.schema.json, references between the
# resources, the generated parts (plugin config, plans, Redis config, JWKS, the module
# pin) against the files they come from, the credentials (what each side presents is
# what the other accepts; none inline) and the AuthorizationPolicies (who can reach
# the counter, the collector and Redis). Installs what it needs into
# .tools/istio-validate. Exit 1 on any error.
#
#   deploy/istio/validate.sh            check
#   deploy/istio/validate.sh --write    regenerate the generated parts, then check
#   deploy/istio/validate.sh --install  only install the validator (scripts/ensure-tools.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.tools/istio-validate"
# Pinned: a schema update must be a reviewed change, not a surprise in CI.
pins=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)

installed() { "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; }
if ! installed; then
  command -v python3 >/dev/null || { echo "validate: python3 not found" >&2; exit 1; }
  mkdir -p "$root/.tools"
  # Tests may run this twice at once: one installs, the other waits for it.
  exec 9>"$root/.tools/istio-validate.lock"
  flock 9
  if ! installed; then
    echo "validate: installing ${pins[*]} into .tools/istio-validate" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" || { echo "validate: python3 -m venv failed" >&2; exit 1; }
    "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" \
      || { echo "validate: pip install failed" >&2; exit 1; }
  fi
  flock -u 9
fi
[ "${1:-}" = --install ] && exit 0
exec "$venv/bin/python" "$here/tools/validate.py" "$@"

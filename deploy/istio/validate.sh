#!/usr/bin/env bash
# Offline validation of the Istio manifests in this directory (see tools/validate.py):
# Kubernetes kinds against the Kubernetes schemas (PyPI kubernetes-validate, strict),
# Istio kinds against tools/istio-crd-subset.schema.json, references between the
# resources, and the generated parts (plugin config, plans, JWKS) against the files
# they come from. Installs what it needs into .tools/istio-validate. Exit 1 on any error.
#
#   deploy/istio/validate.sh            check
#   deploy/istio/validate.sh --write    regenerate the generated parts, then check
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv="$root/.tools/istio-validate"
# Pinned: a schema update must be a reviewed change, not a surprise in CI.
pins=(kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4)

if ! "$venv/bin/python" -c 'import kubernetes_validate, jsonschema, yaml' 2>/dev/null; then
  command -v python3 >/dev/null || { echo "validate: python3 not found" >&2; exit 1; }
  echo "validate: installing ${pins[*]} into .tools/istio-validate" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}" \
    || { echo "validate: pip install failed" >&2; exit 1; }
fi
exec "$venv/bin/python" "$here/tools/validate.py" "$@"

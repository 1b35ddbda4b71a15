#!/usr/bin/env bash
# Release step: build the filter's OCI image (the filter-oci target of
# deploy/docker/Dockerfile), push it, and pin the WasmPlugin to exactly that image.
#
#   deploy/istio/pin-filter.sh REGISTRY/REPOSITORY:TAG
#   e.g. deploy/istio/pin-filter.sh registry.acme.io/turnpike/filter:0.1.0
#
# TAG must be the workspace version in Cargo.toml (validate.sh enforces it, so a version
# bump cannot ship with the previous release's pin), and the filter's sources must be
# committed: the pin records the commit it was built from. Writes
# deploy/istio/tools/filter-pin.json (url, the pushed manifest digest Istio verifies,
# the module's own sha256, the commit), then runs validate.sh --write, which copies url
# and sha256 into wasmplugin.yaml. Commit both.
#
# Needs a docker CLI with BuildKit and push rights to the registry. Pushing another way
# (crane, buildx --push, a CI action)? Put the image's manifest digest (`crane digest
# REF`, or `docker buildx imagetools inspect REF`) and url into tools/filter-pin.json by
# hand and run validate.sh --write: for an oci:// url Istio checks `sha256` against the
# manifest digest, not against the .wasm's bytes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

die() { printf 'pin-filter: %s\n' "$*" >&2; exit 1; }
[ $# = 1 ] || die "usage: deploy/istio/pin-filter.sh REGISTRY/REPOSITORY:TAG"
ref=$1
case "$ref" in oci://*) ref=${ref#oci://} ;; esac
[[ "$ref" =~ ^([^/]+)/([^@]+):([^:/@]+)$ ]] \
  || die "$ref is not REGISTRY/REPOSITORY:TAG (a registry host, then a tag; no @digest)"
repo="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
tag=${BASH_REMATCH[3]}

command -v python3 >/dev/null || die "python3 not found"
# The Dockerfile needs BuildKit (cache mounts): a CLI with buildx, or a 20.10 one (which
# has BuildKit built in, e.g. Debian's docker.io). $DOCKER picks one explicitly.
docker=${DOCKER:-}
if [ -z "$docker" ]; then
  for cli in docker /usr/bin/docker; do
    command -v "$cli" >/dev/null || continue
    if "$cli" buildx version >/dev/null 2>&1; then docker=$cli; break; fi
    major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
    if [ -n "$major" ] && [ "$major" -lt 23 ] 2>/dev/null; then docker=$cli; break; fi
  done
fi
[ -n "$docker" ] || die "no docker CLI with BuildKit (install the buildx plugin, or set DOCKER=/path/to/docker)"
version=$(python3 -c 'import sys, tomllib; c = tomllib.load(open("Cargo.toml", "rb")); print(c["workspace"]["package"]["version"])') \
  || die "cannot read the workspace version from Cargo.toml"
[ "$tag" = "$version" ] || die "tag $tag is not the workspace version $version (Cargo.toml)"

# What goes into the module: uncommitted changes there would make the pin lie.
sources=(src crates Cargo.toml Cargo.lock rustfmt.toml deploy/docker)
if ! git diff --quiet HEAD -- "${sources[@]}" || [ -n "$(git ls-files --others --exclude-standard -- "${sources[@]}")" ]; then
  die "uncommitted changes in ${sources[*]}: commit them first (the pin records the commit)"
fi
commit=$(git rev-parse HEAD)

echo "pin-filter: building $ref (filter-oci) at $commit" >&2
DOCKER_BUILDKIT=1 "$docker" build -f deploy/docker/Dockerfile --target filter-oci -t "$ref" . >&2 \
  || die "docker build --target filter-oci failed"
echo "pin-filter: pushing $ref" >&2
"$docker" push "$ref" >&2 || die "docker push $ref failed"

# The manifest digest the registry stored, as docker recorded it on push.
digest=$("$docker" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" \
  | sed -n "s|^${repo}@sha256:\([a-f0-9]\{64\}\)$|\1|p" | head -n 1)
[ -n "$digest" ] || die "docker recorded no digest for $repo after the push (docker image inspect $ref)"

# The module itself, for the record (and for anyone comparing with a local build).
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cid=$("$docker" create "$ref" /plugin.wasm) || die "docker create $ref failed"
"$docker" cp "$cid:/plugin.wasm" "$work/plugin.wasm" >/dev/null || { "$docker" rm "$cid" >/dev/null; die "no /plugin.wasm in $ref"; }
"$docker" rm "$cid" >/dev/null
module=$(sha256sum "$work/plugin.wasm" | cut -d' ' -f1)

python3 - "$here/tools/filter-pin.json" "oci://$ref" "$digest" "$module" "$commit" <<'PY'
import json, sys
path, url, digest, module, commit = sys.argv[1:]
pin = json.load(open(path))
pin.update({"url": url, "sha256": digest, "module_sha256": module, "commit": commit})
with open(path, "w") as f:
    json.dump(pin, f, indent=2)
    f.write("\n")
PY
echo "pin-filter: pinned oci://$ref to sha256:$digest (module sha256 $module)" >&2
"$here/validate.sh" --write

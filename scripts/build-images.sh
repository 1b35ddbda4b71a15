#!/usr/bin/env bash
# Builds Turnpike's OCI images from deploy/docker/Dockerfile (make images).
#
#   scripts/build-images.sh                    counter, collector, filter
#   scripts/build-images.sh devtools envoy     other targets of the Dockerfile
#   IMAGE_PREFIX=registry.example.com/turnpike scripts/build-images.sh
#
# Tags: $IMAGE_PREFIX/<name>:<version>, the workspace version from Cargo.toml (the names
# deploy/istio/*.yaml use: turnpike/counter:0.1.0, ...). The filter's image is the
# `filter-oci` target, tagged <prefix>/filter:<version>: one layer holding /plugin.wasm,
# what an Istio WasmPlugin pulls. Push them with `docker push`; for the filter, use
# deploy/istio/pin-filter.sh, which pushes and pins its digest in the WasmPlugin.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
die() { printf 'images: %s\n' "$*" >&2; exit 1; }

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(counter collector filter)
prefix=${IMAGE_PREFIX:-turnpike}
version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["workspace"]["package"]["version"])' "$root/Cargo.toml") \
  || die "cannot read the workspace version from Cargo.toml"

for target in "${targets[@]}"; do
  case "$target" in counter | collector | filter | devtools | envoy) ;; *)
    die "unknown image $target: one of counter, collector, filter, devtools, envoy" ;;
  esac
done

command -v docker >/dev/null \
  || die "Docker is not installed here, so no image was built. Install Docker (23 or newer, or 20.10 with DOCKER_BUILDKIT=1) and run make images again, or build on a machine that has it: docker build -f deploy/docker/Dockerfile --target <counter|collector|filter-oci> ."
docker info >/dev/null 2>&1 \
  || die "Docker is installed but its daemon does not answer (docker info failed), so no image was built. Start it (systemctl start docker, or dockerd &) and run make images again."

for target in "${targets[@]}"; do
  stage=$target
  [ "$target" = filter ] && stage=filter-oci
  tag="$prefix/$target:$version"
  echo "images: building $tag (target $stage)" >&2
  # BuildKit for the Dockerfile's cache mounts; host network so cargo reaches its
  # registry through the host's proxy settings.
  DOCKER_BUILDKIT=1 docker build --network host -f "$root/deploy/docker/Dockerfile" \
    --target "$stage" -t "$tag" "$root" \
    || die "docker build --target $stage failed (above)"
done
echo "images: built ${targets[*]} as $prefix/<name>:$version" >&2
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep "^$prefix/" >&2 || true

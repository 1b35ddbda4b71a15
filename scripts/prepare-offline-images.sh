#!/usr/bin/env bash
# Makes sure the third-party images docker-compose.yml builds FROM exist in the local
# Docker engine. Online they are pulled as usual. Where no container registry is
# reachable (CI, air-gapped hosts) stand-ins are built from local parts and tagged with
# the very names the compose file uses, so the compose file stays what users run:
#
#   debian:bookworm-slim      debootstrap (minbase) from the Debian mirror apt uses
#   redis:7-bookworm          that base + Debian's redis-server package
#   postgres:15-bookworm      that base + Debian's postgresql-15 (only with --postgres)
#   envoyproxy/envoy:v1.40.0  that base + the pinned PyPI Envoy the tests use
#   rust:1.95-bookworm        that base + a C toolchain + this host's rustup toolchain
#
#   scripts/prepare-offline-images.sh [--offline|--online] [--postgres] [--force]
#
# Idempotent: an image that is already there is kept (--force rebuilds the stand-ins).
# Needs root (debootstrap) and a running Docker engine.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
offline=auto
want_postgres=0
force=0
for arg in "$@"; do
  case "$arg" in
    --offline) offline=1 ;;
    --online) offline=0 ;;
    --postgres) want_postgres=1 ;;
    --force) force=1 ;;
    *) echo "prepare-offline-images: unknown argument $arg" >&2; exit 2 ;;
  esac
done

BASE_IMAGE=debian:bookworm-slim
RUST_IMAGE=rust:1.95-bookworm
REDIS_IMAGE=redis:7-bookworm
POSTGRES_IMAGE=postgres:15-bookworm
ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
ENVOY_VERSION=1.40.0
RUST_VERSION=1.95

say() { printf '[prepare-images] %s\n' "$*" >&2; }
die() { printf '[prepare-images] ERROR: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || die "docker CLI not found (Debian: apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine answers on $(docker context inspect -f '{{.Endpoints.docker.Host}}' 2>/dev/null || echo the default socket); start dockerd"

work=$(mktemp -d /tmp/turnpike-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

have_image() { [ "$force" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

# Docker Hub is the registry the compose file names; when its name does not even
# resolve there is no point in waiting for pull timeouts.
if [ "$offline" = auto ]; then
  if getent hosts registry-1.docker.io >/dev/null 2>&1; then offline=0; else offline=1; fi
  say "registry $([ "$offline" = 1 ] && echo 'out of reach: building stand-ins' || echo 'reachable: pulling')"
fi

pull() { # image; true when pulled
  [ "$offline" = 0 ] || return 1
  say "pulling $1"
  timeout 600 docker pull -q "$1" >/dev/null
}

# `docker build` of a generated Dockerfile with the classic builder: the stand-ins need
# no BuildKit features, and host networking reaches the apt mirror like the host does.
build_image() { # tag, context dir (holding Dockerfile)
  say "building stand-in $1"
  DOCKER_BUILDKIT=0 docker build -q --network host -t "$1" "$2" >/dev/null \
    || die "building stand-in $1 failed (rerun: DOCKER_BUILDKIT=0 docker build --network host -t $1 $2)"
}

# The apt mirror the host uses (deb822 sources first, then the one-line format).
debian_mirror() {
  local m=""
  if [ -r /etc/apt/sources.list.d/debian.sources ]; then
    m=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$m" ] && [ -r /etc/apt/sources.list ]; then
    m=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${m:-http://deb.debian.org/debian}"
}

ensure_base() {
  have_image "$BASE_IMAGE" && return 0
  pull "$BASE_IMAGE" && return 0
  command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root"
  local mirror rootfs=$work/rootfs
  mirror=$(debian_mirror)
  say "debootstrap bookworm (minbase) from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # Slim like the official image: no apt lists, docs or caches in the base layer.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
  # The host may reach the outside through a TLS-inspecting proxy: trust what it trusts.
  mkdir -p "$rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  say "importing the rootfs as $BASE_IMAGE"
  tar -C "$rootfs" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

# Installs Debian packages in a stand-in and keeps the host's CA bundle afterwards
# (installing ca-certificates would regenerate the bundle without the host's CAs).
apt_run() { # packages...
  cat <<EOF
RUN cp /etc/ssl/certs/ca-certificates.crt /tmp/host-ca.crt \\
 && apt-get update -qq \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $* >/dev/null \\
 && cp /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt \\
 && rm -rf /var/lib/apt/lists/* /tmp/host-ca.crt
EOF
}

ensure_redis() {
  have_image "$REDIS_IMAGE" && return 0
  pull "$REDIS_IMAGE" && return 0
  local ctx=$work/redis; mkdir -p "$ctx"
  {
    echo "FROM $BASE_IMAGE"
    apt_run redis-server
    # Same contract as the official image: redis-server on PATH, data in /data, 6379.
    echo 'RUN mkdir -p /data && chown redis:redis /data'
    echo 'WORKDIR /data'
    echo 'USER redis'
    echo 'EXPOSE 6379'
    echo 'CMD ["redis-server", "--protected-mode", "no"]'
  } >"$ctx/Dockerfile"
  build_image "$REDIS_IMAGE" "$ctx"
}

ensure_postgres() {
  have_image "$POSTGRES_IMAGE" && return 0
  pull "$POSTGRES_IMAGE" && return 0
  local ctx=$work/postgres; mkdir -p "$ctx"
  cp "$root/deploy/offline/postgres-entrypoint.sh" "$ctx/docker-entrypoint.sh"
  # shellcheck disable=SC2016 # $PATH and $PGDATA are for the Dockerfile, not this shell
  {
    echo "FROM $BASE_IMAGE"
    apt_run postgresql-15
    echo 'ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data'
    echo 'RUN mkdir -p "$PGDATA" /var/run/postgresql && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql'
    echo 'COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh'
    echo 'RUN chmod 755 /usr/local/bin/docker-entrypoint.sh'
    echo 'USER postgres'
    echo 'EXPOSE 5432'
    echo 'ENTRYPOINT ["docker-entrypoint.sh"]'
    echo 'CMD ["postgres"]'
  } >"$ctx/Dockerfile"
  build_image "$POSTGRES_IMAGE" "$ctx"
}

ensure_envoy() {
  have_image "$ENVOY_IMAGE" && return 0
  pull "$ENVOY_IMAGE" && return 0
  local envoy="$root/.tools/bin/envoy"
  [ -x "$envoy" ] || "$root/scripts/ensure-tools.sh" --no-postgres
  [[ "$("$envoy" --version 2>/dev/null)" == *"/$ENVOY_VERSION/"* ]] \
    || die "$envoy is not Envoy $ENVOY_VERSION (run scripts/ensure-tools.sh)"
  local ctx=$work/envoy; mkdir -p "$ctx"
  cp "$(readlink -f "$envoy")" "$ctx/envoy"
  {
    echo "FROM $BASE_IMAGE"
    # Like the official image: envoy on PATH, an `envoy` user (uid 101), /etc/envoy.
    echo 'RUN groupadd --system --gid 101 envoy && useradd --system --uid 101 --gid 101 --home-dir /nonexistent --shell /usr/sbin/nologin envoy && mkdir -p /etc/envoy'
    echo 'COPY envoy /usr/local/bin/envoy'
    echo 'EXPOSE 10000'
    echo 'ENTRYPOINT ["/usr/local/bin/envoy"]'
    echo 'CMD ["-c", "/etc/envoy/envoy.yaml"]'
  } >"$ctx/Dockerfile"
  build_image "$ENVOY_IMAGE" "$ctx"
}

ensure_rust() {
  have_image "$RUST_IMAGE" && return 0
  pull "$RUST_IMAGE" && return 0
  local rustup_home=${RUSTUP_HOME:-$HOME/.rustup} cargo_home=${CARGO_HOME:-$HOME/.cargo}
  local toolchain
  toolchain=$(rustup show active-toolchain 2>/dev/null | awk '{print $1; exit}')
  [ -n "$toolchain" ] || die "no active rustup toolchain on this host"
  local version
  version=$(rustc --version | awk '{print $2}')
  [[ "$version" == "$RUST_VERSION".* ]] || die "host rustc is $version, the compose build wants $RUST_VERSION"
  local src=$rustup_home/toolchains/$toolchain
  [ -d "$src/lib/rustlib/wasm32-wasip1" ] || die "toolchain $toolchain lacks wasm32-wasip1 (rustup target add wasm32-wasip1)"
  local ctx=$work/rust; mkdir -p "$ctx/rustup/toolchains/$toolchain" "$ctx/cargo/bin"
  say "copying toolchain $toolchain (rustc $version) without its docs"
  # Hard links when possible: same file system, no copy of ~700 MB.
  cp -al "$src/bin" "$src/lib" "$ctx/rustup/toolchains/$toolchain/" 2>/dev/null \
    || cp -a "$src/bin" "$src/lib" "$ctx/rustup/toolchains/$toolchain/"
  [ -d "$src/libexec" ] && cp -a "$src/libexec" "$ctx/rustup/toolchains/$toolchain/"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" >"$ctx/rustup/settings.toml"
  cp "$cargo_home/bin/rustup" "$ctx/cargo/bin/rustup"
  for proxy in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
    ln -s rustup "$ctx/cargo/bin/$proxy"
  done
  {
    echo "FROM $BASE_IMAGE"
    # What the official image (buildpack-deps) offers the crates we build: a C
    # toolchain for bundled SQLite, pkg-config, git and the CA bundle.
    apt_run gcc libc6-dev make pkg-config git
    echo 'ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUST_VERSION='"$version"
    echo 'COPY rustup /usr/local/rustup'
    echo 'COPY cargo /usr/local/cargo'
    echo 'RUN rustc --version && cargo --version'
  } >"$ctx/Dockerfile"
  build_image "$RUST_IMAGE" "$ctx"
}

ensure_base
ensure_redis
ensure_envoy
ensure_rust
[ "$want_postgres" = 1 ] && ensure_postgres
say "ok: $BASE_IMAGE $REDIS_IMAGE $ENVOY_IMAGE $RUST_IMAGE$([ "$want_postgres" = 1 ] && echo " $POSTGRES_IMAGE")"

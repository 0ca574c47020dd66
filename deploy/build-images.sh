#!/usr/bin/env bash
# Builds the binaries on this host and the images of deploy/compose.yaml:
#
#   $FERRY_IMAGE        (ferry/ferry:local)        ferry, static
#   $FERRY_NATS_IMAGE   (ferry/nats-server:local)  nats-server at the version go.mod pins
#   $FERRY_ORIGIN_IMAGE (ferry/demo-origin:local)  the demo origin (ferry-deploy-tool)
#
# Every image is FROM scratch: nothing is pulled from a registry. Go modules
# come from the module cache (or the Go module proxy when one is missing).
#
#   deploy/build-images.sh              binaries and images
#   deploy/build-images.sh --no-docker  binaries only (deploy/.build/bin), e.g. for systemd hosts
#
# FERRY_IMAGE_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt puts that CA bundle
# into the ferry image, for agents that download from public HTTPS origins.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
# shellcheck source=lib/tool.sh
source "$DEPLOY_DIR/lib/tool.sh"

docker_too=1
case "${1:-}" in
  --no-docker) docker_too=0 ;;
  "") ;;
  *) die "usage: $0 [--no-docker]" ;;
esac

GO=$(go_bin)
bin=$BUILD_DIR/bin
mkdir -p "$bin"
cd "$REPO_DIR"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

nats_version=$("$GO" list -m -f '{{.Version}}' github.com/nats-io/nats-server/v2)
ferry_version=$(git -C "$REPO_DIR" describe --always --dirty 2>/dev/null || echo dev)

log "building ferry ($ferry_version)"
"$GO" build -trimpath -o "$bin/ferry" ./cmd/ferry
# The nats-server main package of the module version go.mod pins, from the
# module cache: the same server code the tests embed.
log "building nats-server $nats_version (pinned in go.mod)"
"$GO" build -trimpath -o "$bin/nats-server" github.com/nats-io/nats-server/v2
log "building ferry-deploy-tool"
build_tool "$bin/ferry-deploy-tool"
"$bin/nats-server" --version >/dev/null

if [ "$docker_too" = 0 ]; then
  log "binaries in $bin"
  exit 0
fi
command -v docker >/dev/null 2>&1 || die "docker is not installed (use --no-docker for binaries only)"

# The legacy builder unless BuildKit's buildx is installed; both do
# COPY --chown.
if ! docker buildx version >/dev/null 2>&1; then export DOCKER_BUILDKIT=0; fi

ctx=$BUILD_DIR/ctx
rm -rf "$ctx"
mkdir -p "$ctx/ferry/certs" "$ctx/ferry/data/coordinator" "$ctx/ferry/data/certvault" "$ctx/ferry/data/agent" \
  "$ctx/ferry/srv" "$ctx/nats-server/data" "$ctx/origin"
cp "$bin/ferry" "$ctx/ferry/"
if [ -n "${FERRY_IMAGE_CA_BUNDLE:-}" ]; then
  cp "$FERRY_IMAGE_CA_BUNDLE" "$ctx/ferry/certs/ca-certificates.crt"
fi
cp "$bin/nats-server" "$ctx/nats-server/"
cp "$bin/ferry-deploy-tool" "$ctx/origin/"

build() { # image dockerfile context version
  log "docker build $1"
  local out
  out=$(docker build --quiet --build-arg "VERSION=$4" -t "$1" -f "$DEPLOY_DIR/docker/$2" "$ctx/$3" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "docker build $1 failed"; }
}
build "$FERRY_IMAGE" ferry.Dockerfile ferry "$ferry_version"
build "$FERRY_NATS_IMAGE" nats-server.Dockerfile nats-server "$nats_version"
build "$FERRY_ORIGIN_IMAGE" origin.Dockerfile origin "$ferry_version"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep -E "^(${FERRY_IMAGE}|${FERRY_NATS_IMAGE}|${FERRY_ORIGIN_IMAGE})\b" >&2 || true
log "images built"

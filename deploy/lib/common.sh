# shellcheck shell=bash disable=SC2034
# Shared by deploy/*.sh (sourced, not run). Paths, logging, the compose
# command and the host ports of deploy/compose.yaml.

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPO_DIR=$(cd "$DEPLOY_DIR/.." && pwd)
BUILD_DIR=${FERRY_DEPLOY_BUILD_DIR:-$DEPLOY_DIR/.build}
RUN_DIR=${FERRY_DEPLOY_RUN_DIR:-$DEPLOY_DIR/.run}

# The uid the containers run as; setup.sh gives it the files they read.
CONTAINER_UID=65532

# The agents of compose.yaml (their --id, NATS user and certificate name)
# and the NATS nodes; k8s/make-secrets.sh sets other names.
read -ra AGENTS <<<"${FERRY_AGENTS:-agent1 agent2 agent3}"
read -ra NATS_NODES <<<"${FERRY_NATS_NODES:-nats1 nats2 nats3}"

# Host ports (all bound to 127.0.0.1), overridable from the environment;
# compose.yaml reads the same variables with the same defaults.
: "${FERRY_PORT_COORDINATOR:=17070}" "${FERRY_PORT_CERTVAULT:=17071}"
: "${FERRY_PORT_ORIGIN:=17443}" "${FERRY_PORT_ORIGIN_TLS:=17444}"
: "${FERRY_PORT_NATS1:=14222}" "${FERRY_PORT_NATS2:=14223}" "${FERRY_PORT_NATS3:=14224}"
: "${FERRY_PORT_NATS1_MON:=18222}" "${FERRY_PORT_NATS2_MON:=18223}" "${FERRY_PORT_NATS3_MON:=18224}"
: "${FERRY_PORT_COORDINATOR_HEALTH:=19070}" "${FERRY_PORT_CERTVAULT_HEALTH:=19071}"
: "${FERRY_PORT_AGENT1_HEALTH:=19081}" "${FERRY_PORT_AGENT2_HEALTH:=19082}" "${FERRY_PORT_AGENT3_HEALTH:=19083}"
export FERRY_PORT_COORDINATOR FERRY_PORT_CERTVAULT FERRY_PORT_ORIGIN FERRY_PORT_ORIGIN_TLS \
  FERRY_PORT_NATS1 FERRY_PORT_NATS2 FERRY_PORT_NATS3 \
  FERRY_PORT_NATS1_MON FERRY_PORT_NATS2_MON FERRY_PORT_NATS3_MON \
  FERRY_PORT_COORDINATOR_HEALTH FERRY_PORT_CERTVAULT_HEALTH \
  FERRY_PORT_AGENT1_HEALTH FERRY_PORT_AGENT2_HEALTH FERRY_PORT_AGENT3_HEALTH

# Image names (compose.yaml reads the same variables).
: "${FERRY_IMAGE:=ferry/ferry:local}" "${FERRY_NATS_IMAGE:=ferry/nats-server:local}" "${FERRY_ORIGIN_IMAGE:=ferry/demo-origin:local}"
export FERRY_IMAGE FERRY_NATS_IMAGE FERRY_ORIGIN_IMAGE
export FERRY_DEPLOY_RUN_DIR=$RUN_DIR

log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# go finds the toolchain where the machine docs put it.
go_bin() {
  if command -v go >/dev/null 2>&1; then command -v go
  elif [ -x /usr/local/go/bin/go ]; then echo /usr/local/go/bin/go
  else die "go is not installed (needed to build ferry and nats-server)"; fi
}

# compose runs Docker Compose v2 (docker compose) or v1 (docker-compose) on
# deploy/compose.yaml with a fixed project name.
COMPOSE_PROJECT=${COMPOSE_PROJECT_NAME:-ferrydeploy}
compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -p "$COMPOSE_PROJECT" -f "$DEPLOY_DIR/compose.yaml" "$@"
  elif command -v docker-compose >/dev/null 2>&1; then
    docker-compose -p "$COMPOSE_PROJECT" -f "$DEPLOY_DIR/compose.yaml" "$@"
  else
    die "neither 'docker compose' nor 'docker-compose' is installed"
  fi
}

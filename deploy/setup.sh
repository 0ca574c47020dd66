#!/usr/bin/env bash
# Makes everything deploy/compose.yaml needs besides the images, under
# deploy/.run (or $FERRY_DEPLOY_RUN_DIR), with `ferry ca init/issue`:
#
#   pki/            the deployment's CA and every identity: coordinator,
#                   certvault (server names: their host names, localhost,
#                   127.0.0.1), agent1..3, nats1..3 (server and route
#                   certificates), operator (admin, for the CLI), event-reader
#                   (the NATS consumer user's client certificate)
#   origin-pki/     the demo origin's own CA, its server certificate and
#                   download-client, the client certificate jobs present to
#                   it (imported into certvault by cluster-test.sh)
#   secrets/        NATS passwords (and their bcrypt hashes), the
#                   notification signing key, certvault's keyring
#   svc/<service>/  what each container mounts at /etc/ferry or /etc/nats,
#                   and nothing else: its config, CA, certificate, key,
#                   password
#   client.env      FERRY_* variables for the CLI on this host
#
# Idempotent: existing CAs, keys and passwords are kept; an identity is
# issued again only when it is missing or expires within a day; configs are
# rendered again. Run it again after changing a template.
#
# Environment: FERRY_TRUST_DOMAIN (ferry.internal), FERRY_DEPLOY_VALIDITY
# (720h: workload certificates of the demo; renew by running setup again);
# for other layouts (k8s/make-secrets.sh): FERRY_AGENTS, FERRY_NATS_NODES,
# FERRY_DEPLOY_NATS_URL, FERRY_DEPLOY_CERTVAULT_URL, FERRY_DEPLOY_EXTRA_HOSTS
# (more server names for coordinator and certvault), FERRY_DEPLOY_RUN_DIR,
# FERRY_DEPLOY_NO_CHOWN=1 (files for elsewhere, not for local containers).
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

TRUST_DOMAIN=${FERRY_TRUST_DOMAIN:-ferry.internal}
VALIDITY=${FERRY_DEPLOY_VALIDITY:-720h}
POOL=default
NATS_URL=${FERRY_DEPLOY_NATS_URL:-}
if [ -z "$NATS_URL" ]; then
  for n in "${NATS_NODES[@]}"; do NATS_URL+="${NATS_URL:+,}tls://$n:4222"; done
fi
CERTVAULT_URL=${FERRY_DEPLOY_CERTVAULT_URL:-https://certvault:7071}
read -ra EXTRA_HOSTS <<<"${FERRY_DEPLOY_EXTRA_HOSTS:-}"

FERRY=$BUILD_DIR/bin/ferry
TOOL=$BUILD_DIR/bin/ferry-deploy-tool
if [ ! -x "$FERRY" ] || [ ! -x "$TOOL" ]; then
  log "no binaries in $BUILD_DIR/bin yet: building them"
  "$DEPLOY_DIR/build-images.sh" --no-docker
fi

umask 077
mkdir -p "$RUN_DIR"/{pki,origin-pki,secrets/nats,svc}
pki=$RUN_DIR/pki opki=$RUN_DIR/origin-pki sec=$RUN_DIR/secrets

# --- identities ---------------------------------------------------------------

[ -f "$pki/ca.pem" ] || "$FERRY" ca init --dir "$pki" --trust-domain "$TRUST_DOMAIN" >/dev/null
[ -f "$opki/ca.pem" ] || "$FERRY" ca init --dir "$opki" --trust-domain origin.example >/dev/null

# issue DIR ROLE NAME [HOST...]: a certificate unless a valid one exists.
issue() {
  local dir=$1 role=$2 name=$3; shift 3
  if [ -f "$dir/$name.pem" ] && [ -f "$dir/$name-key.pem" ] &&
     openssl x509 -in "$dir/$name.pem" -noout -checkend 86400 >/dev/null 2>&1; then
    return
  fi
  local hosts=()
  for h in "$@"; do hosts+=(--host "$h"); done
  "$FERRY" ca issue --dir "$dir" --role "$role" --name "$name" --validity "$VALIDITY" "${hosts[@]}" >/dev/null
  log "issued $role/$name"
}
issue "$pki" service coordinator coordinator localhost 127.0.0.1 "${EXTRA_HOSTS[@]}"
issue "$pki" service certvault certvault localhost 127.0.0.1 "${EXTRA_HOSTS[@]}"
for n in "${NATS_NODES[@]}"; do issue "$pki" service "$n" "$n" localhost 127.0.0.1; done
for a in "${AGENTS[@]}"; do issue "$pki" agent "$a"; done
issue "$pki" admin operator
issue "$pki" service event-reader
issue "$pki" service nats-ops
issue "$opki" service origin origin localhost 127.0.0.1
issue "$opki" user download-client
cat "$opki/download-client.pem" "$opki/download-client-key.pem" >"$opki/download-client-bundle.pem"

# --- secrets --------------------------------------------------------------------

# secret FILE CMD...: runs CMD to make FILE's content once.
secret() {
  local f=$1; shift
  [ -s "$f" ] || "$@" >"$f"
}
rand() { head -c "$1" /dev/urandom | base64 | tr -d '\n/+='; }
users=(coordinator certvault consumer ops sys "${AGENTS[@]}")
for u in "${users[@]}"; do
  secret "$sec/nats/$u.pass" rand 32
  if [ ! -s "$sec/nats/$u.bcrypt" ] || [ "$sec/nats/$u.pass" -nt "$sec/nats/$u.bcrypt" ]; then
    "$TOOL" bcrypt <"$sec/nats/$u.pass" >"$sec/nats/$u.bcrypt"
  fi
done
secret "$sec/notify.secret" rand 48
secret "$sec/vault.keyring" sh -c "printf '1:%s\n' \"\$(head -c 32 /dev/urandom | base64)\""

# --- rendering ------------------------------------------------------------------

# render TEMPLATE KEY=VALUE...: replaces every @KEY@.
render() {
  local tmpl=$1; shift
  local expr=() kv k v
  for kv in "$@"; do
    k=${kv%%=*} v=${kv#*=}
    v=${v//\\/\\\\} v=${v//|/\\|} v=${v//&/\\&} v=${v//$'\n'/\\n}
    expr+=(-e "s|@${k}@|${v}|g")
  done
  sed "${expr[@]}" "$tmpl"
}

# NATS: accounts.conf (shared) and one nats-server.conf per node.
agent_users=$(mktemp)
trap 'rm -f "$agent_users"' EXIT
for a in "${AGENTS[@]}"; do
  render "$DEPLOY_DIR/nats/agent-user.conf.tmpl" AGENT="$a" POOL="$POOL" HASH="$(cat "$sec/nats/$a.bcrypt")" >>"$agent_users"
done
accounts=$(render "$DEPLOY_DIR/nats/accounts.conf.tmpl" \
  COORDINATOR_HASH="$(cat "$sec/nats/coordinator.bcrypt")" CERTVAULT_HASH="$(cat "$sec/nats/certvault.bcrypt")" \
  CONSUMER_HASH="$(cat "$sec/nats/consumer.bcrypt")" OPS_HASH="$(cat "$sec/nats/ops.bcrypt")" \
  SYS_HASH="$(cat "$sec/nats/sys.bcrypt")" |
  awk -v f="$agent_users" '/@AGENT_USERS@/ { while ((getline l < f) > 0) print l; next } { print }')
routes=""
for n in "${NATS_NODES[@]}"; do routes+="    nats-route://$n:6222"$'\n'; done
routes=${routes%$'\n'}

# svc DIR: an emptied directory for one container's files (the same
# directory, so that running containers, which mount it, see the new files:
# SIGHUP makes nats-server reload its configuration).
svc() {
  mkdir -p "$RUN_DIR/svc/$1"
  find "$RUN_DIR/svc/$1" -mindepth 1 -delete
  echo "$RUN_DIR/svc/$1"
}

for n in "${NATS_NODES[@]}"; do
  d=$(svc "$n")
  cp "$pki/ca.pem" "$d/ca.pem"
  cp "$pki/$n.pem" "$d/server.pem"
  cp "$pki/$n-key.pem" "$d/server-key.pem"
  printf '%s\n' "$accounts" >"$d/accounts.conf"
  render "$DEPLOY_DIR/nats/nats-server.conf.tmpl" NAME="$n" TLS_DIR=/etc/nats STORE_DIR=/var/lib/nats \
    MAX_FILE_STORE=10GB ROUTES="$routes" >"$d/nats-server.conf"
done

# ferry roles: the same paths in the containers and on systemd hosts —
# /etc/ferry/<role> (this directory), /var/lib/ferry/<role>, and the agents'
# root /srv/ferry.
common=(HEALTH_ADDR=0.0.0.0:9090 NATS_URL="$NATS_URL" ROOT=/srv/ferry
  CERTVAULT_URL="$CERTVAULT_URL" TRUST_DOMAIN="$TRUST_DOMAIN" POOL="$POOL")
identity() { # DIR NAME NATSUSER
  cp "$pki/ca.pem" "$1/ca.pem"
  cp "$pki/$2.pem" "$1/cert.pem"
  cp "$pki/$2-key.pem" "$1/key.pem"
  cp "$sec/nats/$3.pass" "$1/nats.pass"
}
d=$(svc coordinator)
identity "$d" coordinator coordinator
cp "$sec/notify.secret" "$d/notify.secret"
render "$DEPLOY_DIR/config/coordinator.json.tmpl" "${common[@]}" ID=coordinator \
  ETC=/etc/ferry/coordinator DATA=/var/lib/ferry/coordinator >"$d/config.json"

d=$(svc certvault)
identity "$d" certvault certvault
cp "$sec/vault.keyring" "$d/vault.keyring"
render "$DEPLOY_DIR/config/certvault.json.tmpl" "${common[@]}" ID=certvault \
  ETC=/etc/ferry/certvault DATA=/var/lib/ferry/certvault >"$d/config.json"

for a in "${AGENTS[@]}"; do
  d=$(svc "$a")
  identity "$d" "$a" "$a"
  cp "$opki/ca.pem" "$d/origin-ca.pem"
  render "$DEPLOY_DIR/config/agent.json.tmpl" "${common[@]}" ID="$a" \
    ETC=/etc/ferry/agent DATA=/var/lib/ferry/agent >"$d/config.json"
done

d=$(svc origin)
cp "$opki/origin.pem" "$d/server.pem"
cp "$opki/origin-key.pem" "$d/server-key.pem"
cp "$opki/ca.pem" "$d/client-ca.pem"

# Every container runs as uid $CONTAINER_UID and must read its own files
# (certvault's keyring must be mode 0600 and its own).
for d in "$RUN_DIR"/svc/*; do
  chmod 0700 "$d"
  chmod 0600 "$d"/*
  if [ "${FERRY_DEPLOY_NO_CHOWN:-0}" = 1 ]; then
    :
  elif [ "$(id -u)" = 0 ]; then
    chown -R "$CONTAINER_UID:$CONTAINER_UID" "$d"
  elif sudo -n true 2>/dev/null; then
    sudo chown -R "$CONTAINER_UID:$CONTAINER_UID" "$d"
  else
    die "the containers run as uid $CONTAINER_UID and need to own $d: run setup.sh as root (or with passwordless sudo)"
  fi
done
chmod 0711 "$RUN_DIR" "$RUN_DIR/svc"

# The CLI on this host, as the operator (admin), through the published ports.
cat >"$RUN_DIR/client.env" <<EOF
# source deploy/.run/client.env, then: ferry job list, ferry transfer …
export FERRY_ADDR=https://127.0.0.1:$FERRY_PORT_COORDINATOR
export FERRY_VAULT_ADDR=https://127.0.0.1:$FERRY_PORT_CERTVAULT
export FERRY_CA_CERT=$pki/ca.pem
export FERRY_CERT=$pki/operator.pem
export FERRY_KEY=$pki/operator-key.pem
EOF
log "setup done in $RUN_DIR (trust domain $TRUST_DOMAIN)"

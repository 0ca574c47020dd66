#!/usr/bin/env bash
# Writes deploy/k8s/secrets.yaml: the Secrets the manifests mount, made like
# deploy/setup.sh makes them for compose (same CA tooling, same NATS users
# and permissions), with Kubernetes names:
#
#   nats-tls        one server certificate for nats-0..2.nats (routes and clients)
#   nats-accounts   accounts.conf (bcrypt hashes, permissions; agents ferry-agent-N)
#   coordinator     config.json, ca.pem, cert.pem, key.pem, nats.pass, notify.secret
#   certvault       config.json, ca.pem, cert.pem, key.pem, nats.pass
#   certvault-kek   kek: the key-encryption keyring (FERRY_VAULT_KEK)
#   ferry-agents    config.json, ca.pem, origin-ca.pem, <id>.pem, <id>-key.pem, <id>.pass
#
# The CA, keys and passwords stay in deploy/.run-k8s (keep it safe, or move
# the CA key offline); secrets.yaml holds private keys: never commit it.
#
# Environment: FERRY_K8S_AGENTS (3: ferry-agent-0..2), FERRY_K8S_NAMESPACE
# (ferry), FERRY_K8S_HOSTS (extra names for the coordinator's and
# certvault's certificates, e.g. the ingress name clients use).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(cd "$here/.." && pwd)
ns=${FERRY_K8S_NAMESPACE:-ferry}
n_agents=${FERRY_K8S_AGENTS:-3}
agents=""
for ((i = 0; i < n_agents; i++)); do agents+="ferry-agent-$i "; done

export FERRY_DEPLOY_RUN_DIR=$deploy/.run-k8s
export FERRY_AGENTS=${agents% }
export FERRY_NATS_NODES="nats-0 nats-1 nats-2"
export FERRY_DEPLOY_NATS_URL="tls://nats-0.nats:4222,tls://nats-1.nats:4222,tls://nats-2.nats:4222"
export FERRY_DEPLOY_CERTVAULT_URL="https://certvault:7071"
export FERRY_DEPLOY_EXTRA_HOSTS="coordinator.$ns.svc certvault.$ns.svc ${FERRY_K8S_HOSTS:-}"
export FERRY_DEPLOY_NO_CHOWN=1
"$deploy/setup.sh"

run=$FERRY_DEPLOY_RUN_DIR
ferry=$deploy/.build/bin/ferry
# One certificate for the three nodes (a Secret is shared by the pods).
if [ ! -f "$run/pki/nats-k8s.pem" ]; then
  hosts=(nats "nats.$ns.svc" "nats.$ns.svc.cluster.local")
  for n in nats-0 nats-1 nats-2; do hosts+=("$n.nats" "$n.nats.$ns.svc" "$n.nats.$ns.svc.cluster.local"); done
  args=()
  for h in "${hosts[@]}"; do args+=(--host "$h"); done
  "$ferry" ca issue --dir "$run/pki" --role service --name nats-k8s --validity "${FERRY_DEPLOY_VALIDITY:-720h}" "${args[@]}" >/dev/null
fi

b64() { base64 -w0 <"$1"; }
secret() { # NAME KEY=FILE...
  local name=$1 kv; shift
  printf -- '---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app.kubernetes.io/part-of: ferry}\ntype: Opaque\ndata:\n' "$name" "$ns"
  for kv in "$@"; do printf '  %s: %s\n' "${kv%%=*}" "$(b64 "${kv#*=}")"; done
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
jq 'del(.keyring_file)' "$run/svc/certvault/config.json" >"$tmp/certvault.json"
tr -d '\n' <"$run/secrets/vault.keyring" >"$tmp/kek"
first=${FERRY_AGENTS%% *}
agent_files=(config.json="$run/svc/$first/config.json" ca.pem="$run/pki/ca.pem" origin-ca.pem="$run/origin-pki/ca.pem")
for a in $FERRY_AGENTS; do
  agent_files+=("$a.pem=$run/pki/$a.pem" "$a-key.pem=$run/pki/$a-key.pem" "$a.pass=$run/secrets/nats/$a.pass")
done
out=$here/secrets.yaml
umask 077
{
  echo "# Made by deploy/k8s/make-secrets.sh on $(date -u +%FT%TZ). Holds private keys: do not commit."
  secret nats-tls ca.pem="$run/pki/ca.pem" server.pem="$run/pki/nats-k8s.pem" server-key.pem="$run/pki/nats-k8s-key.pem"
  secret nats-accounts accounts.conf="$run/svc/nats-0/accounts.conf"
  secret coordinator config.json="$run/svc/coordinator/config.json" ca.pem="$run/pki/ca.pem" \
    cert.pem="$run/pki/coordinator.pem" key.pem="$run/pki/coordinator-key.pem" \
    nats.pass="$run/secrets/nats/coordinator.pass" notify.secret="$run/secrets/notify.secret"
  secret certvault config.json="$tmp/certvault.json" ca.pem="$run/pki/ca.pem" \
    cert.pem="$run/pki/certvault.pem" key.pem="$run/pki/certvault-key.pem" nats.pass="$run/secrets/nats/certvault.pass"
  secret certvault-kek kek="$tmp/kek"
  secret ferry-agents "${agent_files[@]}"
} >"$out"
echo "wrote $out (agents: $FERRY_AGENTS); the operator's CLI identity: $run/pki/operator.pem"

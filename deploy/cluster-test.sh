#!/usr/bin/env bash
# End-to-end test of deploy/compose.yaml on this Docker host: a 3-node NATS
# JetStream cluster (TLS, per-role users), coordinator, certvault, three
# agents and the mTLS demo origin, each its own container.
#
#   1. builds the images (FROM scratch) and runs setup.sh; compose up
#   2. waits for every /healthz (deadline, no fixed sleeps); checks the
#      streams are R3 with every replica current
#   3. NATS permissions: an agent cannot publish a command (nor read another
#      agent's, delete the log, write the read model); nothing it tried
#      reached FERRY_CMDS; the consumer user reads the log and writes nothing
#   4. transfers through the coordinator (`ferry transfer` from this host as
#      the operator), half of them from the origin's mutual-TLS port with a
#      client certificate released by certvault to the agent
#   5. chaos while 64 MiB jobs run: stops the FERRY_EVENTS stream leader's
#      NATS node, kills (SIGKILL) the agent running the most jobs, then cuts
#      the agent now running the most jobs off the network; measures the
#      time from each loss to the job running on another agent
#   6. more transfers on the degraded cluster; then restores everything
#   7. invariants: every job ACKNOWLEDGED; every file's SHA-256 right, in the
#      job and on the agent's disk; exactly one JobTransferred per job; no
#      agent event accepted from an agent that did not hold the lease;
#      streams R3 and current again; no NATS permissions violation by a role
#   8. tears everything down (also on failure, keeping the logs); a cluster
#      left behind by an earlier run is removed first
#
# Throughout, the test fails at once when the coordinator answers
# BG_E_NOT_FOUND for a job it has just created, when a job ends in ERROR or
# CANCELLED, or when a job is left with nobody working on it: an agent logs
# that it let go of the job ("nothing to do for this dispatch", "stopped: the
# agent no longer holds the job") while the job stays QUEUED with no agent,
# or still leased to that agent, unchanged for FERRY_DEPLOY_STALL_SECS (20 s).
# Every wait has a deadline whose failure lists the jobs not yet done.
#
# Without a working Docker (`docker info` fails) it prints "skipped: …" and
# exits 0. Needs curl, jq, openssl, sha256sum, tar and Go. Environment:
# FERRY_DEPLOY_SKIP_BUILD=1 uses the images as they are; FERRY_DEPLOY_KEEP=1
# leaves the cluster running at the end.
set -euo pipefail
# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"

if ! command -v docker >/dev/null 2>&1; then
  echo "skipped: docker is not installed; the compose cluster test needs a Docker engine"
  exit 0
fi
if ! docker info >/dev/null 2>&1; then
  echo "skipped: 'docker info' fails (no Docker daemon reachable); the compose cluster test needs one"
  exit 0
fi
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
  echo "skipped: neither 'docker compose' nor 'docker-compose' is installed"
  exit 0
fi
for t in curl jq openssl sha256sum tar; do
  command -v "$t" >/dev/null 2>&1 || die "$t is needed (apt-get install $t)"
done

T_START=$(date +%s.%N)
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
step() { log "== $*"; }
# The test's own stderr, also from inside wait_until's conditions (whose
# output is discarded): a failure always says why.
exec 3>&2
say() { log "$@" 2>&3; }
die() { say "error: $*"; exit 1; }

# --- leftovers of earlier runs -------------------------------------------------

IMAGES=("$FERRY_IMAGE" "$FERRY_NATS_IMAGE" "$FERRY_ORIGIN_IMAGE")
SUBNET=${FERRY_DEPLOY_SUBNET:-172.29.213.0/24}
# purge_project NAME: removes every container, network and volume of that
# compose project (compose down first; then by label, for what compose
# missed: a container of a service no longer in compose.yaml, a volume of an
# older layout).
purge_project() {
  local p=$1 f="label=com.docker.compose.project=$1"
  if [ "$p" = "$COMPOSE_PROJECT" ]; then
    compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  fi
  docker ps -aq --filter "$f" | xargs -r docker rm -fv >/dev/null 2>&1 || true
  docker network ls -q --filter "$f" | xargs -r docker network rm >/dev/null 2>&1 || true
  docker volume ls -q --filter "$f" | xargs -r docker volume rm -f >/dev/null 2>&1 || true
}
# leftover_count NAME: containers, networks and volumes the project still has.
leftover_count() {
  local f="label=com.docker.compose.project=$1"
  { docker ps -aq --filter "$f"; docker network ls -q --filter "$f"; docker volume ls -q --filter "$f"; } | wc -l
}
# ours PROJECT: the compose project is a ferry cluster of this script (under
# another project name: `docker compose -f deploy/compose.yaml up` names it
# "deploy"): every container of it was made from one of our images (by
# name: the images may have been built again since).
ours() {
  local img n=0
  [ -n "$1" ] && [ "$1" != - ] || return 1
  while read -r img; do
    n=$((n + 1))
    printf '%s\n' "${IMAGES[@]}" | grep -qxF "$img" || return 1
  done < <(docker ps -aq --filter "label=com.docker.compose.project=$1" | xargs -r docker inspect -f '{{.Config.Image}}')
  [ $n -gt 0 ] || docker network inspect "$1_default" >/dev/null 2>&1
}
# clear_leftovers: our compose project is removed whatever state an earlier
# (aborted, killed, FERRY_DEPLOY_KEEP) run left it in. Another project that
# holds one of our host ports or our subnet is removed when it is a ferry
# cluster too; anything else there fails the test with its name.
clear_leftovers() {
  local name img proj ports p port_vars=() subnets purged=" $COMPOSE_PROJECT "
  purge_project "$COMPOSE_PROJECT"
  mapfile -t port_vars < <(compgen -v FERRY_PORT_)
  while IFS='|' read -r name img proj ports; do
    for p in "${port_vars[@]}"; do
      case "$ports" in *":${!p}->"*) ;; *) continue ;; esac
      case "$purged" in *" $proj "*) break ;; esac
      if ours "$proj"; then
        log "removing compose project $proj (a ferry cluster of an earlier run: $name holds port ${!p})"
        purge_project "$proj"
        purged+="$proj "
      else
        die "container $name ($img) holds host port ${!p} ($p): remove it or choose another port with $p"
      fi
      break
    done
  done < <(docker ps --format '{{.Names}}|{{.Image}}|{{with .Label "com.docker.compose.project"}}{{.}}{{else}}-{{end}}|{{.Ports}}')
  while read -r name proj subnets; do
    case " $subnets " in *" $SUBNET "*) ;; *) continue ;; esac
    case "$purged" in *" $proj "*) continue ;; esac
    if ours "$proj"; then
      log "removing compose project $proj (a ferry cluster of an earlier run: its network $name has subnet $SUBNET)"
      purge_project "$proj"
    else
      die "docker network $name uses the subnet $SUBNET: remove it or choose another with FERRY_DEPLOY_SUBNET"
    fi
  done < <(docker network ls -q | xargs -r docker network inspect -f '{{.Name}} {{with index .Labels "com.docker.compose.project"}}{{.}}{{else}}-{{end}} {{range .IPAM.Config}}{{.Subnet}} {{end}}')
  [ "$(leftover_count "$COMPOSE_PROJECT")" = 0 ] || die "compose project $COMPOSE_PROJECT could not be removed: $(docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT" --format '{{.Names}}')"
}

# --- build, setup, start --------------------------------------------------------

if [ "${FERRY_DEPLOY_SKIP_BUILD:-0}" != 1 ]; then
  step "building binaries and images"
  "$DEPLOY_DIR/build-images.sh"
fi
step "setup (CA, identities, passwords, configs)"
"$DEPLOY_DIR/setup.sh"
source "$RUN_DIR/client.env"
F=$BUILD_DIR/bin/ferry
TOOL=$BUILD_DIR/bin/ferry-deploy-tool
WORK=$(mktemp -d)
LOGS=$RUN_DIR/cluster-test-logs
PASSED=0

# cleanup runs on every exit (a failure, Ctrl-C, SIGTERM from a CI timeout):
# saves the logs of a failed run, then removes the cluster with its
# networks and volumes, and checks that nothing is left.
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ "$PASSED" != 1 ]; then
    rm -rf "$LOGS" && mkdir -p "$LOGS"
    for s in $(compose config --services 2>/dev/null); do
      compose logs --no-color "$s" >"$LOGS/$s.log" 2>&1
    done
    cp "$WORK"/*.tsv "$WORK"/*.json "$LOGS/" 2>/dev/null
    say "FAILED: service logs and job lists saved in $LOGS"
    [ "$rc" != 0 ] || rc=1
  fi
  if [ "${FERRY_DEPLOY_KEEP:-0}" = 1 ]; then
    say "FERRY_DEPLOY_KEEP=1: the cluster keeps running (deploy: compose down -v)"
  else
    purge_project "$COMPOSE_PROJECT"
    local left
    left=$(leftover_count "$COMPOSE_PROJECT")
    if [ "$left" != 0 ]; then
      say "error: $left container(s), network(s) or volume(s) of compose project $COMPOSE_PROJECT are left"
      rc=1
    fi
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Agents log at debug level here: the test reads their log lines (see
# check_stalls); 8 slots, so that no job waits for a slot on the last agent.
export FERRY_AGENT_LOG_LEVEL=${FERRY_AGENT_LOG_LEVEL:-debug} FERRY_AGENT_SLOTS=${FERRY_AGENT_SLOTS:-8}
step "compose up"
clear_leftovers
T_UP=$(now)
# The coordinator first: it creates the streams and buckets, which agents
# may use but not create (their NATS users cannot).
up() { compose up -d "$@" >/dev/null 2>&1 || { compose up -d "$@"; die "compose up $* failed"; }; }
up nats1 nats2 nats3 certvault coordinator origin

# wait_until SECONDS DESCRIPTION CMD...: runs CMD every 0.25 s until it
# succeeds; fails the test when the deadline passes.
wait_until() {
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if declare -F check_stalls >/dev/null; then check_stalls; fi
    [ $SECONDS -lt $end ] || die "not within ${limit}s: $what$(waiting_for "$@")"
    sleep 0.25
  done
}
# waiting_for CMD...: for a deadline's message, the state of the jobs CMD
# waits for (from the last job list).
waiting_for() {
  case $1 in
    moved) shift 3; echo "; jobs: $(states "$@")" ;;
    all_b_running) echo "; jobs: $(states "${B_IDS[@]}")" ;;
  esac
}
# states IDS...: "name id state agent=A vN" of each job of IDS that is not
# ACKNOWLEDGED, from the last job list.
states() {
  local ids
  ids=$(printf '"%s",' "$@"); ids="[${ids%,}]"
  jq -r --argjson ids "$ids" '[.jobs[] | select(.id as $i | $ids | index($i)) | select(.state != "ACKNOWLEDGED")
    | "\(.display_name) \(.id) \(.state) agent=\(.agent // "-") v\(.version)"] | join("; ")' "$WORK/list.json" 2>/dev/null || true
}
healthy() { curl -sf -m 2 "http://127.0.0.1:$1/healthz" >/dev/null; }
all_healthy() {
  local p
  for p in "$FERRY_PORT_NATS1_MON" "$FERRY_PORT_NATS2_MON" "$FERRY_PORT_NATS3_MON" \
    "$FERRY_PORT_COORDINATOR_HEALTH" "$FERRY_PORT_CERTVAULT_HEALTH" \
    "$FERRY_PORT_AGENT1_HEALTH" "$FERRY_PORT_AGENT2_HEALTH" "$FERRY_PORT_AGENT3_HEALTH"; do
    healthy "$p" || return 1
  done
  curl -sf -m 2 --cacert "$RUN_DIR/origin-pki/ca.pem" "https://127.0.0.1:$FERRY_PORT_ORIGIN_TLS/" >/dev/null
}
# cid SERVICE: its container (remembered once all are up: compose ps is slow).
declare -A CID
cid() { if [ -n "${CID[$1]:-}" ]; then echo "${CID[$1]}"; else compose ps -q "$1"; fi; }
health_port() { local v="FERRY_PORT_${1^^}_HEALTH"; echo "${!v}"; }
nats_mon_port() { local v="FERRY_PORT_${1^^}_MON"; echo "${!v}"; }

wait_until 180 "coordinator healthy" healthy "$FERRY_PORT_COORDINATOR_HEALTH"
up agent1 agent2 agent3
wait_until 180 "every service healthy" all_healthy
for s in $(compose config --services); do CID[$s]=$(compose ps -q "$s"); done
T_HEALTHY=$(now)
log "all healthy $(secs "$T_UP" "$T_HEALTHY") s after compose up"

ops=(--url "tls://127.0.0.1:$FERRY_PORT_NATS1,tls://127.0.0.1:$FERRY_PORT_NATS2,tls://127.0.0.1:$FERRY_PORT_NATS3"
  --ca "$RUN_DIR/pki/ca.pem" --cert "$RUN_DIR/pki/nats-ops.pem" --key "$RUN_DIR/pki/nats-ops-key.pem"
  --user ops --password-file "$RUN_DIR/secrets/nats/ops.pass")
reader=(--url "tls://127.0.0.1:$FERRY_PORT_NATS3,tls://127.0.0.1:$FERRY_PORT_NATS2,tls://127.0.0.1:$FERRY_PORT_NATS1"
  --ca "$RUN_DIR/pki/ca.pem" --cert "$RUN_DIR/pki/event-reader.pem" --key "$RUN_DIR/pki/event-reader-key.pem"
  --user consumer --password-file "$RUN_DIR/secrets/nats/consumer.pass")
agent1=(--url "tls://127.0.0.1:$FERRY_PORT_NATS2" --ca "$RUN_DIR/pki/ca.pem"
  --cert "$RUN_DIR/pki/agent1.pem" --key "$RUN_DIR/pki/agent1-key.pem"
  --user agent1 --password-file "$RUN_DIR/secrets/nats/agent1.pass")
STREAMS=(FERRY_EVENTS FERRY_CMDS FERRY_CMDS_DEAD KV_ferry_jobs KV_ferry_settings KV_ferry_certs KV_ferry_agents)
r3() {
  local s args=()
  for s in "${STREAMS[@]}"; do args+=(--check "replicas:$s:3"); done
  "$TOOL" natscheck "${ops[@]}" "${args[@]}"
}
wait_until 60 "streams R3 with every replica current" r3
r3 | sed 's/^/  /'

# --- NATS permissions -----------------------------------------------------------

step "NATS permissions"
probe=natscheck-$(date +%s)
"$TOOL" natscheck "${agent1[@]}" \
  --check "deny-pub:ferry.cmd.pool.default.$probe" \
  --check "deny-pub:ferry.cmd.agent.agent2.$probe" \
  --check 'deny-req:$JS.API.CONSUMER.MSG.NEXT.FERRY_CMDS.agent-agent2' \
  --check 'deny-req:$JS.API.STREAM.DELETE.FERRY_EVENTS' \
  --check 'deny-req:$JS.API.STREAM.PURGE.FERRY_CMDS' \
  --check 'deny-pub:$KV.ferry_jobs.x' \
  --check "deny-pub:ferry.evt.vault.$probe" \
  --check 'allow-req:$JS.API.STREAM.INFO.FERRY_EVENTS' | sed 's/^/  /'
"$TOOL" natscheck "${ops[@]}" \
  --check "absent:FERRY_CMDS:ferry.cmd.pool.default.$probe" \
  --check "absent:FERRY_CMDS:ferry.cmd.agent.agent2.$probe" | sed 's/^/  /'
"$TOOL" natscheck "${reader[@]}" \
  --check "deny-pub:ferry.evt.job.$probe" \
  --check "deny-pub:ferry.cmd.pool.default.$probe" \
  --check 'deny-pub:$KV.ferry_jobs.x' \
  --check 'deny-req:$JS.API.STREAM.PURGE.FERRY_EVENTS' \
  --check 'deny-req:$JS.API.CONSUMER.DELETE.FERRY_EVENTS.ferry_notify' \
  --check 'deny-sub:ferry.cmd.>' \
  --check 'allow-req:$JS.API.STREAM.INFO.FERRY_EVENTS' | sed 's/^/  /'

# --- jobs -------------------------------------------------------------------------

step "certificates and reference checksums"
TP=$("$F" cert import -o json --pem "$RUN_DIR/origin-pki/download-client-bundle.pem" | jq -r .sha1)
[ -n "$TP" ] && [ "$TP" != null ] || die "cert import returned no thumbprint"
log "download-client imported into certvault (CURRENT_USER/MY of the operator), SHA-1 $TP"
declare -A WANT
for f in hello.txt 1MiB.bin 64MiB.bin; do
  WANT[$f]=$(curl -sf --cacert "$RUN_DIR/origin-pki/ca.pem" "https://127.0.0.1:$FERRY_PORT_ORIGIN_TLS/files/$f" | sha256sum | cut -d' ' -f1)
done

ORIGIN_MTLS=https://origin:8443/files
ORIGIN_TLS=https://origin:8444/files
: >"$WORK/jobs.tsv"
# cli ARGS...: runs ferry ARGS and prints its output; fails the test with
# the output when it fails (BG_E_NOT_FOUND for a job just created, say).
cli() {
  local out
  out=$("$F" "$@" 2>&1) || die "ferry $*: $out"
  printf '%s\n' "$out"
}
# submit NAME FILE MTLS: creates and resumes a job (through the coordinator);
# the destination is on whichever agent runs it. A job with a client
# certificate takes three calls (create, cert set, resume): the second and
# third act on the job the first has just created.
submit() {
  local name=$1 file=$2 mtls=$3 url id
  if [ "$mtls" = 1 ]; then url=$ORIGIN_MTLS/$file; else url=$ORIGIN_TLS/$file; fi
  if [ "$mtls" = 0 ]; then
    id=$(cli job create -o json --resume --name "$name" "$url" "/srv/ferry/$name-$file" | jq -r .id)
  else
    id=$(cli job create -o json --name "$name" "$url" "/srv/ferry/$name-$file" | jq -r .id)
  fi
  [ -n "$id" ] && [ "$id" != null ] || die "job create $name returned no job ID"
  printf '%s\t%s\t%s\n' "$id" "$name" "$file" >>"$WORK/jobs.tsv"
  if [ "$mtls" = 1 ]; then
    cli job cert set "$id" --thumbprint "$TP" >/dev/null
    cli job resume "$id" >/dev/null
  fi
  echo "$id"
}
list() { "$F" job list --all -o json >"$WORK/list.json" && cat "$WORK/list.json"; }
job_name() { grep "^$1" "$WORK/jobs.tsv" 2>/dev/null | cut -f2; }
# job_state ID: "STATE AGENT VERSION" of the job (AGENT "-" when no agent
# holds its lease).
job_state() { "$F" job show -o json "$1" 2>/dev/null | jq -r '"\(.state) \(.agent // "-") \(.version)"'; }

# Stalls. No job may wait with nobody working on it. An agent says when it
# lets go of a job: "nothing to do for this dispatch" (it acks the dispatch)
# and "stopped: the agent no longer holds the job". Either is right when the
# job has moved on (another lease, a newer dispatch, a final state). It is a
# stall when, after it, the job stays QUEUED with no agent (the dispatch was
# acked unserved), or CONNECTING/TRANSFERRING still leased to the very agent
# that stopped, with the same version (no event at all) for STALL_SECS:
# redelivery and takeover take well under that. check_stalls reads the
# agents' log lines (debug level) every 2 s and fails the test on a stall,
# with the job and the line; the settle deadlines catch what no line shows.
STALL_SECS=${FERRY_DEPLOY_STALL_SECS:-20}
: >"$WORK/suspects.tsv" # id, kind, agent, since ($SECONDS), state at the line, the line
: >"$WORK/seen-lines"
STALL_AT=0
SUSPECTS_CLEARED=0
left_behind() { # KIND AGENT STATE HOLDER
  case "$1/$3/$4" in
    dispatch/QUEUED/-) return 0 ;;
    release/CONNECTING/"$2" | release/TRANSFERRING/"$2") return 0 ;;
  esac
  return 1
}
check_stalls() {
  [ $SECONDS -ge $STALL_AT ] || return 0
  STALL_AT=$((SECONDS + 2))
  local a id kind line st holder v since t0 was cur
  since=$(($(date +%s) - 60))
  for a in "${AGENTS[@]}"; do
    { docker logs --since "$since" "$(cid "$a")" 2>&1 |
      grep -F -e 'stopped: the agent no longer holds the job' -e 'nothing to do for this dispatch' |
      jq -r --arg a "$a" 'select(.job != null)
        | if .message == "nothing to do for this dispatch" then [.job, "dispatch", $a, tojson]
          elif .lease == $a then [.job, "release", $a, tojson]
          else empty end | @tsv' 2>/dev/null; } || true
  done >"$WORK/lines.tsv"
  while IFS=$'\t' read -r id kind a line; do
    grep -qxF "$a $line" "$WORK/seen-lines" && continue
    grep -q "^$id"$'\t' "$WORK/suspects.tsv" && continue
    read -r st holder v < <(job_state "$id") || continue # asked again in 2 s
    echo "$a $line" >>"$WORK/seen-lines"
    left_behind "$kind" "$a" "$st" "$holder" || continue
    say "  watching job $(job_name "$id") ($id): $st, agent $holder, v$v after $a logged: $line"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$kind" "$a" "$SECONDS" "$st $holder $v" "$line" >>"$WORK/suspects.tsv"
  done <"$WORK/lines.tsv"
  : >"$WORK/suspects.new"
  while IFS=$'\t' read -r id kind a t0 was line; do
    cur=$(job_state "$id") || cur=
    if [ -z "$cur" ] || [ "$cur" = "$was" ]; then
      if [ $((SECONDS - t0)) -ge "$STALL_SECS" ]; then
        read -r st holder v <<<"$was"
        case $kind in
          dispatch) die "job $(job_name "$id") ($id) stalled: $a acked its dispatch, and the job has stayed $st with no agent, v$v, for $((SECONDS - t0)) s; $a logged: $line" ;;
          *) die "job $(job_name "$id") ($id) stalled: $a stopped working on it, and the job has stayed $st leased to $a, v$v, for $((SECONDS - t0)) s; $a logged: $line" ;;
        esac
      fi
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$kind" "$a" "$t0" "$was" "$line" >>"$WORK/suspects.new"
    else
      say "  job $(job_name "$id") ($id) moved on: $was -> $cur"
      SUSPECTS_CLEARED=$((SUSPECTS_CLEARED + 1))
    fi
  done <"$WORK/suspects.tsv"
  mv "$WORK/suspects.new" "$WORK/suspects.tsv"
}
# settle IDS...: completes the given jobs once TRANSFERRED (as `ferry
# transfer` does) and succeeds when all are ACKNOWLEDGED; fails the test at
# once if one ends in ERROR or CANCELLED.
settle() {
  local ids l bad
  ids=$(printf '"%s",' "$@"); ids="[${ids%,}]"
  l=$(list) || return 1
  bad=$(jq -r --argjson ids "$ids" '.jobs[] | select(.id as $i | $ids | index($i)) | select(.state == "ERROR" or .state == "CANCELLED")
    | "\(.display_name) (\(.id)) \(.state) on \(.agent // .files_agent // "-"), v\(.version): \(.error | tojson)"' <<<"$l")
  [ -z "$bad" ] || die "job failed: $bad"
  for id in $(jq -r --argjson ids "$ids" '.jobs[] | select(.id as $i | $ids | index($i)) | select(.state == "TRANSFERRED" and (.pending_complete | not)) | .id' <<<"$l"); do
    "$F" job complete "$id" >/dev/null 2>&1 || true
  done
  jq -e --argjson ids "$ids" '[.jobs[] | select(.id as $i | $ids | index($i)) | select(.state == "ACKNOWLEDGED")] | length == ($ids | length)' <<<"$l" >/dev/null
}
wait_settled() { # SECONDS WHAT IDS...
  local limit=$1 what=$2 end; shift 2
  end=$((SECONDS + limit))
  until settle "$@"; do
    check_stalls
    [ $SECONDS -lt $end ] || die "not within ${limit}s: $what; not done: $(states "$@")"
    sleep 0.25
  done
}

step "phase A: 3 transfers with ferry transfer, 3 jobs over mutual TLS (client certificate from certvault)"
T_A=$(now)
pids=()
for i in 1 2 3; do
  f=hello.txt; [ $((i % 2)) = 0 ] && f=1MiB.bin
  "$F" transfer -o json --timeout 120s --name "a$i" "$ORIGIN_TLS/$f" "/srv/ferry/a$i-$f" >"$WORK/a$i.ndjson" 2>&1 &
  pids+=($!)
done
A_IDS=()
for i in 4 5 6; do
  f=hello.txt; [ $((i % 2)) = 0 ] && f=1MiB.bin
  A_IDS+=("$(submit "a$i" "$f" 1)")
done
running() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
while running "${pids[@]}"; do check_stalls; sleep 0.25; done
for i in 1 2 3; do
  rc=0; wait "${pids[$i - 1]}" || rc=$?
  id=$(head -1 "$WORK/a$i.ndjson" | jq -r '.event.aggregate_id // empty' 2>/dev/null || true)
  [ -n "$id" ] || { cat "$WORK/a$i.ndjson" >&2; die "ferry transfer a$i did not create a job"; }
  f=hello.txt; [ $((i % 2)) = 0 ] && f=1MiB.bin
  printf '%s\t%s\t%s\n' "$id" "a$i" "$f" >>"$WORK/jobs.tsv"
  A_IDS+=("$id")
  [ $rc = 0 ] || { cat "$WORK/a$i.ndjson" >&2; die "ferry transfer a$i failed (exit $rc)"; }
done
wait_settled 180 "phase A jobs ACKNOWLEDGED" "${A_IDS[@]}"
log "phase A: 6 transfers done in $(secs "$T_A" "$(now)") s"

# The consumer user reads the log (an ordered consumer of its own).
"$TOOL" events "${reader[@]}" "$(cut -f1 "$WORK/jobs.tsv" | head -1)" >"$WORK/probe-events.ndjson"
[ -s "$WORK/probe-events.ndjson" ] || die "the consumer user could not read the event log"
log "consumer user read $(wc -l <"$WORK/probe-events.ndjson") events of a job from FERRY_EVENTS"

# 4 MB/s per agent: the jobs run long enough (16 s or more) to be running
# when their agent is lost.
step "phase B: 64 MiB jobs (4 MB/s per agent), then chaos"
"$F" bandwidth set --total 4M >/dev/null
B_IDS=()
for i in 1 2 3 4 5 6; do B_IDS+=("$(submit "b$i" 64MiB.bin $((i % 2)))"); done
running_on() { # AGENT: ids of phase B jobs running on AGENT
  jq -r --arg a "$1" '.jobs[] | select(.display_name | startswith("b")) | select(.state == "TRANSFERRING" and .agent == $a) | .id' "$WORK/list.json"
}
all_b_running() {
  list >/dev/null && [ "$(jq '[.jobs[] | select(.display_name | startswith("b")) | select(.state == "TRANSFERRING")] | length' "$WORK/list.json")" = 6 ]
}
wait_until 60 "all 6 phase B jobs TRANSFERRING" all_b_running
busiest() { # agent (not in "$@") running the most phase B jobs
  jq -r --argjson not "$(printf '%s\n' "$@" | jq -R . | jq -s .)" '[.jobs[] | select(.display_name | startswith("b")) | select(.state == "TRANSFERRING") | .agent | select(. as $a | $not | index($a) | not)] | group_by(.) | max_by(length) | .[0] // empty' "$WORK/list.json"
}
log "running: $(jq -c '[.jobs[] | select(.display_name | startswith("b")) | {(.display_name): .agent}] | add' "$WORK/list.json")"

# 1. Stop the NATS node that leads FERRY_EVENTS.
leader=$("$TOOL" natscheck "${ops[@]}" --check replicas:FERRY_EVENTS:3 | sed -n 's/.*R3: \([a-z0-9]*\)(leader).*/\1/p')
[ -n "$leader" ] || die "no FERRY_EVENTS leader found"
log "stopping $leader (the FERRY_EVENTS stream leader)"
T_NATS=$(now)
compose stop -t 10 "$leader" >/dev/null 2>&1
log "$leader stopped in $(secs "$T_NATS" "$(now)") s"

# moved AGENT T0 IDS...: succeeds when every job of IDS runs (TRANSFERRING)
# on an agent other than AGENT; records when each was first seen so. It
# also completes the phase B jobs that are done.
moved() {
  local from=$1 t0=$2 id a s all=0; shift 2
  check_stalls
  settle "${B_IDS[@]}" || true
  for id in "$@"; do
    [ -f "$WORK/moved-$from-$id" ] && continue
    read -r s a < <(jq -r --arg id "$id" '.jobs[] | select(.id == $id) | "\(.state) \(.agent // "-")"' "$WORK/list.json")
    if [ "$s" = TRANSFERRING ] && [ "$a" != "$from" ] && [ "$a" != - ]; then
      echo "$(secs "$t0" "$(now)") $a" >"$WORK/moved-$from-$id"
    elif [ "$s" = TRANSFERRED ] || [ "$s" = ACKNOWLEDGED ]; then
      echo "done-elsewhere $a" >"$WORK/moved-$from-$id"
    else
      all=1
    fi
  done
  return $all
}
# event_failover AGENT T0 ID: seconds from T0 to the first JobTransferring
# written by another agent after T0, from the job's own events.
event_failover() {
  local from=$1 t0=$2 id=$3
  "$TOOL" events "${reader[@]}" "$id" | jq -r --arg from "$from" --argjson t0 "$t0" '
    select(.event.type == "JobTransferring" and .event.data.agent != $from)
    | .event.time | sub("\\.[0-9]+Z$"; "Z") as $s | (.| capture("\\.(?<f>[0-9]+)Z$").f // "0") as $f
    | ($s | fromdateiso8601) + ("0." + $f | tonumber) - $t0 | select(. > 0) | . * 10 | round / 10' | head -1
}

# 2. Kill the agent running the most jobs.
victim=$(busiest)
mapfile -t V_IDS < <(running_on "$victim")
docker update --restart=no "$(cid "$victim")" >/dev/null
T_KILL=$(now)
docker kill "$(cid "$victim")" >/dev/null
log "killed $victim (SIGKILL) while it ran ${#V_IDS[@]} job(s)"
wait_until 120 "the jobs of $victim running on another agent" moved "$victim" "$T_KILL" "${V_IDS[@]}"
report_moves() { # EVENT AGENT T0 IDS...: how long each job took to run elsewhere
  local what=$1 from=$2 t0=$3 id t a e; shift 3
  for id in "$@"; do
    read -r t a <"$WORK/moved-$from-$id"
    if [ "$t" = done-elsewhere ]; then
      log "  job $(grep "^$id" "$WORK/jobs.tsv" | cut -f2) had finished before the $what took effect"
      continue
    fi
    e=$(event_failover "$from" "$t0" "$id")
    log "  job $(grep "^$id" "$WORK/jobs.tsv" | cut -f2) runs on $a: its JobTransferring by $a came ${e:-?} s after the $what (seen through the API after $t s)"
    echo "$what $from $id ${e:-$t} $t" >>"$WORK/failover.tsv"
  done
}
report_moves kill "$victim" "$T_KILL" "${V_IDS[@]}"

# 3. Cut the agent now running the most jobs off the network.
list >/dev/null
cut_agent=$(busiest "$victim")
mapfile -t C_IDS < <(running_on "$cut_agent")
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$(cid "$cut_agent")" | awk '{print $1}')
ip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$net\").IPAddress}}" "$(cid "$cut_agent")")
T_CUT=$(now)
docker network disconnect "$net" "$(cid "$cut_agent")"
log "disconnected $cut_agent ($ip) from $net while it ran ${#C_IDS[@]} job(s)"
if [ ${#C_IDS[@]} -gt 0 ]; then
  wait_until 120 "the jobs of $cut_agent running on another agent" moved "$cut_agent" "$T_CUT" "${C_IDS[@]}"
  report_moves cut "$cut_agent" "$T_CUT" "${C_IDS[@]}"
fi
survivor=$(printf '%s\n' "${AGENTS[@]}" | grep -vx -e "$victim" -e "$cut_agent")
"$F" bandwidth set --total 0 >/dev/null

step "phase C: transfers on the degraded cluster ($leader stopped, $victim dead, $cut_agent cut off: only $survivor works)"
T_C=$(now)
C_NEW=()
for i in 1 2 3 4; do
  f=hello.txt; [ $((i % 2)) = 0 ] && f=1MiB.bin
  C_NEW+=("$(submit "c$i" "$f" $((i % 2)))")
done
wait_settled 120 "phase C jobs ACKNOWLEDGED on the degraded cluster" "${C_NEW[@]}"
log "phase C: 4 jobs ACKNOWLEDGED in $(secs "$T_C" "$(now)") s"

step "restore: start $leader and $victim, reconnect $cut_agent"
T_R=$(now)
# The same address again, first (before a restarted container can take
# it): a healed partition, not a new host. (With a new address the agent's
# NATS connection stays dead until the client's own ping gives up, 4 to 6
# minutes; see deploy/README.md.)
docker network connect --ip "$ip" --alias "$cut_agent" "$net" "$(cid "$cut_agent")"
compose start "$leader" >/dev/null 2>&1
docker update --restart=unless-stopped "$(cid "$victim")" >/dev/null
docker start "$(cid "$victim")" >/dev/null
agent_connected() { # AGENT: its NATS connection shows on one of the nodes
  local n
  for n in "${NATS_NODES[@]}"; do
    curl -sf -m 2 "http://127.0.0.1:$(nats_mon_port "$n")/connz?limit=1024" | jq -e --arg n "agent/$1" '.connections[] | select(.name == $n)' >/dev/null 2>&1 && return 0
  done
  return 1
}
wait_until 120 "$leader healthy" healthy "$(nats_mon_port "$leader")"
wait_until 120 "$victim healthy" healthy "$(health_port "$victim")"
wait_until 120 "$cut_agent reconnected to NATS" agent_connected "$cut_agent"
wait_until 120 "streams R3 with every replica current again" r3
log "restored in $(secs "$T_R" "$(now)") s"

step "waiting for every job to be ACKNOWLEDGED"
mapfile -t ALL < <(cut -f1 "$WORK/jobs.tsv")
wait_settled 240 "every job ACKNOWLEDGED" "${ALL[@]}"

# --- invariants ---------------------------------------------------------------------

step "invariants"
list >/dev/null
fail=0
bad() { log "  INVARIANT BROKEN: $*"; fail=1; }
"$TOOL" events "${reader[@]}" "${ALL[@]}" >"$WORK/events.ndjson"
checked_disk=0
while IFS=$'\t' read -r id name file; do
  j=$(jq -c --arg id "$id" '.jobs[] | select(.id == $id)' "$WORK/list.json")
  [ -n "$j" ] || { bad "job $name ($id) is not listed"; continue; }
  state=$(jq -r .state <<<"$j")
  [ "$state" = ACKNOWLEDGED ] || bad "job $name is $state"
  sum=$(jq -r '.files[0].sha256' <<<"$j")
  [ "$sum" = "${WANT[$file]}" ] || bad "job $name: SHA-256 $sum, want ${WANT[$file]}"
  holder=$(jq -r '.files_agent' <<<"$j")
  dest=$(jq -r '.files[0].local_name' <<<"$j")
  disk=$(docker cp "$(cid "$holder"):$dest" - 2>/dev/null | tar -xO 2>/dev/null | sha256sum | cut -d' ' -f1)
  if [ "$disk" = "${WANT[$file]}" ]; then checked_disk=$((checked_disk + 1)); else bad "job $name: $dest on $holder has SHA-256 $disk, want ${WANT[$file]}"; fi
  n=$(jq -r --arg id "$id" 'select(.job == $id and .event.type == "JobTransferred") | .seq' "$WORK/events.ndjson" | wc -l)
  [ "$n" = 1 ] || bad "job $name has $n JobTransferred events"
  # Fencing: every event an agent wrote, but the lease itself, comes from
  # the agent holding the job's latest lease.
  fenced=$(jq -rs --arg id "$id" '
    [.[] | select(.job == $id)] | reduce .[] as $e ({holder: null, bad: []};
      ($e.event.actor | capture("/agent/(?<a>[^/]+)$").a // null) as $author
      | if $e.event.type == "JobLeased" then .holder = $e.event.data.agent
        elif $author != null and $author != .holder then .bad += ["\($e.event.type) by \($author) while \(.holder) held the lease"]
        else . end) | .bad[]' "$WORK/events.ndjson")
  [ -z "$fenced" ] || bad "job $name: $fenced"
done <"$WORK/jobs.tsv"
# The read model equals a fresh replay of the log, and a rebuild of it
# switches the coordinator to a new generation without a mismatch.
for what in "verify" "rebuild" "verify"; do
  if out=$("$F" replay $what 2>&1); then
    log "  replay $what: $(tail -n 1 <<<"$out")"
  else
    bad "ferry replay $what: $out"
  fi
done
# The read model now lives in the rebuilt generation's bucket (named by the
# pointer in ferry_projections); both must be R3 like everything else.
gen=$(grep -o 'bucket ferry_jobs_[0-9]*' <<<"$out" | tail -n 1 | cut -d' ' -f2)
[ -n "$gen" ] || bad "ferry replay verify after the rebuild names no new bucket: $out"
STREAMS=("${STREAMS[@]/#KV_ferry_jobs/KV_$gen}" KV_ferry_projections)
r3 >/dev/null || bad "streams are not R3 with every replica current"
# No ferry role was refused anything by NATS: the permissions of
# deploy/nats fit what ferry does (a new subject or bucket in ferry shows
# here first).
for n in "${NATS_NODES[@]}"; do docker logs "$(cid "$n")" 2>&1; done |
  grep -E 'Violation' | grep -E '"[^"]*:go:(coordinator|certvault|agent)/' |
  sed -E 's/.*:go:([^"]*)" - "[^"]*" - (.*)/\1: \2/' | sort | uniq -c >"$WORK/violations.txt" || true
[ ! -s "$WORK/violations.txt" ] || bad "NATS refused ferry's roles: $(cat "$WORK/violations.txt")"
[ "$fail" = 0 ] || die "invariants broken"

total=$(wc -l <"$WORK/jobs.tsv")
moves=$(awk '{ a[$1] = a[$1] " " $4; if (!($1 in mn) || $4 < mn[$1]) mn[$1] = $4; if ($4 > mx[$1]) mx[$1] = $4 }
  END { for (k in a) printf "%-5s %s s (min %s, max %s)\n", (k == "kill" ? "kill:" : "cut:"), a[k], mn[k], mx[k] }' "$WORK/failover.tsv" 2>/dev/null)
PASSED=1
T_END=$(now)
cat <<EOF

cluster test passed in $(secs "$T_START" "$T_END") s (cluster healthy $(secs "$T_UP" "$T_HEALTHY") s after compose up)
  jobs:        $total ACKNOWLEDGED (6 before the chaos, 6 × 64 MiB during it, 4 on the degraded cluster),
               3 of them by ferry transfer,
               half from the origin's mutual-TLS port with a certvault-released client certificate
  checks:      every SHA-256 right in the job and on the agent's disk ($checked_disk files), exactly one
               JobTransferred per job, no event from an agent without the lease, streams R3 and current,
               read model == replay (ferry replay verify, rebuild, verify),
               no NATS permissions violation by any ferry role; no BG_E_NOT_FOUND for a job just
               created, no job in ERROR or CANCELLED
  permissions: agent1 cannot publish ferry.cmd.* (nothing reached FERRY_CMDS), nor read agent2's
               commands, delete the log or write the read model; the consumer user only reads
  chaos:       stopped $leader (FERRY_EVENTS leader), killed $victim, cut $cut_agent off the network
  failover:    seconds from the loss of its agent to the job's JobTransferring on another agent
               (agent ack wait ${FERRY_AGENT_ACK_WAIT:-10s}, heartbeats reset it while a transfer runs)
$(sed 's/^/               /' <<<"$moves")
  stalls:      none (a job left QUEUED or leased to an agent that stopped fails the test within
               ${STALL_SECS} s); $SUSPECTS_CLEARED job(s) an agent let go of moved on by themselves
EOF

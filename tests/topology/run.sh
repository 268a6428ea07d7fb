#!/usr/bin/env bash
# The multi-process topology: registry, ingestion, scoring and the gateway, each its own OS
# process, on one PostgreSQL schema, the gateway in front. Runs the README's grpcurl examples and
# the Python grpcio suite through the gateway, then stops everything.
#
# Needs DATABASE_URL (PostgreSQL), SERVER_BIN (default target/debug/citycredit), GRPCURL.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DATABASE_URL:?the topology runs on PostgreSQL: set DATABASE_URL}"
bin="${SERVER_BIN:-target/debug/citycredit}"
work="$(mktemp -d)"
schema="cc_topology_$$"
export CITYCREDIT_DATABASE_URL="$DATABASE_URL" CITYCREDIT_DATABASE_SCHEMA="$schema"
export CITYCREDIT_INTERNAL_IDENTITY_SECRET="topology-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export CITYCREDIT_BOOTSTRAP_ADMIN_KEY="cc_topology_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  python3 - "$DATABASE_URL" "$schema" <<'PY' || true
import subprocess, sys
subprocess.run(["psql", "-q", sys.argv[1], "-c", f'DROP SCHEMA IF EXISTS "{sys.argv[2]}" CASCADE'], check=False,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
PY
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME [ENV=VALUE...]: runs `serve --service NAME` on a free port, waits for its address.
start() {
  local name="$1"; shift
  env "$@" RUST_LOG=info "$bin" serve --service "$name" --listen 127.0.0.1:0 --data-dir "$work/$name" \
    2>"$work/$name.log" &
  pids+=($!)
  local addr=""
  for _ in $(seq 1 300); do
    addr="$(sed -n 's/.*serving gRPC.*addr=\([0-9.:]*\).*/\1/p' "$work/$name.log" | head -n1)"
    [ -n "$addr" ] && break
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$work/$name.log"; echo "$name exited"; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$work/$name.log"; echo "$name did not start"; exit 1; }
  eval "${name}_addr=$addr"
}

start registry
start ingestion
start scoring CITYCREDIT_UPSTREAMS__INGESTION="http://$ingestion_addr"
start gateway CITYCREDIT_UPSTREAMS__REGISTRY="http://$registry_addr" \
  CITYCREDIT_UPSTREAMS__INGESTION="http://$ingestion_addr" CITYCREDIT_UPSTREAMS__SCORING="http://$scoring_addr"
echo "topology: registry $registry_addr, ingestion $ingestion_addr, scoring $scoring_addr, gateway $gateway_addr (schema $schema)"

CITYCREDIT_ADDR="$gateway_addr" CC_API_KEY="$CITYCREDIT_BOOTSTRAP_ADMIN_KEY" \
  tests/grpcurl/readme_examples.sh README.md
CITYCREDIT_ADDR="$gateway_addr" CITYCREDIT_ADMIN_KEY="$CITYCREDIT_BOOTSTRAP_ADMIN_KEY" \
  tests/python/run.sh

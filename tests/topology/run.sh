#!/usr/bin/env bash
# The multi-process topology: registry, ingestion, scoring and the gateway, each its own OS
# process, on one PostgreSQL schema, the gateway in front. Each runs its shipped configuration
# (deploy/config/<part>.toml: mTLS between the parts, the internal identity's keys) with only
# the key paths and the upstream addresses rewritten to this run's, and the keys and
# certificates made by `citycredit keys generate`. Runs the README's grpcurl examples and the
# Python grpcio suite through the gateway, then stops everything.
#
# Needs DATABASE_URL (PostgreSQL), SERVER_BIN (default target/debug/citycredit), GRPCURL.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DATABASE_URL:?the topology runs on PostgreSQL: set DATABASE_URL}"
bin="${SERVER_BIN:-target/debug/citycredit}"
work="$(mktemp -d)"
schema="cc_topology_$$"
export CITYCREDIT_DATABASE_URL="$DATABASE_URL" CITYCREDIT_DATABASE_SCHEMA="$schema"
export CITYCREDIT_BOOTSTRAP_ADMIN_KEY="cc_topology_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
# Text logs (the address is read from them), and metrics on a free loopback port each.
export CITYCREDIT_LOG_FORMAT=text CITYCREDIT_METRICS_LISTEN=127.0.0.1:0
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

"$bin" keys generate --out "$work/keys" --san 127.0.0.1 >/dev/null

# start NAME: runs NAME's shipped configuration on a free port, waits for its address.
start() {
  local name="$1"
  sed -e "s|/etc/citycredit/keys/|$work/keys/$name/|g" \
      -e "s|https://citycredit-registry:50051|https://${registry_addr:-unset}|" \
      -e "s|https://citycredit-ingestion:50051|https://${ingestion_addr:-unset}|" \
      -e "s|https://citycredit-scoring:50051|https://${scoring_addr:-unset}|" \
      "deploy/config/$name.toml" >"$work/$name.toml"
  RUST_LOG=info "$bin" serve --config "$work/$name.toml" --listen 127.0.0.1:0 --data-dir "$work/$name" \
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
start scoring
start gateway
echo "topology: registry $registry_addr, ingestion $ingestion_addr, scoring $scoring_addr, gateway $gateway_addr (schema $schema, mTLS inside)"

CITYCREDIT_ADDR="$gateway_addr" CC_API_KEY="$CITYCREDIT_BOOTSTRAP_ADMIN_KEY" \
  tests/grpcurl/readme_examples.sh README.md
CITYCREDIT_ADDR="$gateway_addr" CITYCREDIT_ADMIN_KEY="$CITYCREDIT_BOOTSTRAP_ADMIN_KEY" \
  tests/python/run.sh

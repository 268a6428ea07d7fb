#!/usr/bin/env bash
# Makes the Kubernetes Secrets citycredit reads, so that no secret ever sits in this repository:
#
#   citycredit-<part>-keys  (gateway, registry, ingestion, scoring): only that part's keys and
#                           certificates, from `citycredit keys generate` (a private CA, a server
#                           certificate per service, client certificates for the gateway and
#                           scoring, the Ed25519 identity keys);
#   citycredit              database-url (given) and bootstrap-admin-key (random, printed once).
#
# Usage: deploy/k8s/create-secrets.sh NAMESPACE DATABASE_URL
# Needs kubectl for the cluster, openssl, and the citycredit binary (CITYCREDIT_BIN, default
# `citycredit` on PATH). KUBECTL overrides the kubectl command (e.g. to add --dry-run=client).
# The keys are made in a temporary directory and deleted when the Secrets exist; to rotate
# them, delete the four key Secrets, run this again with the same database URL, and restart
# every Deployment.
set -euo pipefail
ns="${1:?usage: $0 NAMESPACE DATABASE_URL}"
db="${2:?usage: $0 NAMESPACE DATABASE_URL}"
bin="${CITYCREDIT_BIN:-citycredit}"
read -r -a kubectl <<<"${KUBECTL:-kubectl}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$bin" keys generate --out "$work/keys" --namespace "$ns" >/dev/null
for part in gateway registry ingestion scoring; do
  "${kubectl[@]}" -n "$ns" create secret generic "citycredit-$part-keys" --from-file="$work/keys/$part/"
done
admin_key="$(openssl rand -hex 32)"
"${kubectl[@]}" -n "$ns" create secret generic citycredit \
  --from-literal=database-url="$db" --from-literal=bootstrap-admin-key="$admin_key"
echo "bootstrap administrator key (store it now; it is not shown again): $admin_key" >&2

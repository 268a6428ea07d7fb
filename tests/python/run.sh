#!/usr/bin/env bash
# Runs the Python (grpcio) end-to-end suite: creates or reuses a virtual environment under
# target/ci-tools/pyvenv, installs tests/python/requirements.txt, generates the stubs from proto/
# into tests/python/gen/, and runs pytest. Exits non-zero on any failure.
#
# Against a server it starts itself (the all-in-one binary, SQLite in a temporary directory):
#   SERVER_BIN=target/debug/citycredit tests/python/run.sh        (that is the default binary)
# Against a running server or gateway:
#   CITYCREDIT_ADDR=127.0.0.1:50051 CITYCREDIT_ADMIN_KEY=... tests/python/run.sh
# Extra arguments go to pytest (e.g. `-k golden`).
set -euo pipefail
cd "$(dirname "$0")/../.."

venv="$PWD/target/ci-tools/pyvenv"
req="tests/python/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# Reinstall only when the requirements changed since the last install.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

"$venv/bin/python" tests/python/gen_stubs.py

export SERVER_BIN="${SERVER_BIN:-$PWD/target/debug/citycredit}"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python "$@"

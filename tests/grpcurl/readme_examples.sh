#!/usr/bin/env bash
# Runs every grpcurl example of a Markdown file against a freshly started all-in-one server
# (SQLite in a temporary directory) and fails if any example fails. Examples are the lines that
# start with `grpcurl` inside ```sh blocks; a trailing backslash continues a line. The address
# 127.0.0.1:50051 in the examples is replaced by the server's real address.
#
# Usage: GRPCURL=path/to/grpcurl SERVER_BIN=target/debug/citycredit readme_examples.sh README.md
set -euo pipefail
doc="${1:?markdown file}"
grpcurl="${GRPCURL:-grpcurl}"
bin="${SERVER_BIN:-target/debug/citycredit}"

work="$(mktemp -d)"
log="$work/server.log"
cleanup() {
  if [ -n "${pid:-}" ]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${CITYCREDIT_ADDR:-}" ]; then
  # A server (or topology) that is already running; CC_API_KEY must be its administrator's key.
  addr="$CITYCREDIT_ADDR"
  : "${CC_API_KEY:?CC_API_KEY must hold the administrator key of the running server}"
else
  # The examples authenticate with $CC_API_KEY: the bootstrap administrator's key here.
  CC_API_KEY="cc_readme_$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
  export CC_API_KEY
  env -u DATABASE_URL RUST_LOG=info CITYCREDIT_BOOTSTRAP_ADMIN_KEY="$CC_API_KEY" \
    "$bin" serve --listen 127.0.0.1:0 --data-dir "$work/data" 2>"$log" &
  pid=$!
  addr=""
  for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*serving gRPC.*addr=\([0-9.:]*\).*/\1/p' "$log" | head -n1)"
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "server exited"; exit 1; }
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$log"; echo "server did not start"; exit 1; }
fi
export CC_API_KEY

# Collect the examples.
python3 - "$doc" > "$work/examples" <<'PY'
import sys
lines, in_sh, cur = open(sys.argv[1], encoding="utf-8").read().splitlines(), False, None
for line in lines:
    s = line.strip()
    if s.startswith("```"):
        in_sh = s in ("```sh", "```bash", "```shell")
        continue
    if not in_sh:
        continue
    if cur is not None:
        cur += " " + s.rstrip("\\").strip()
        if not s.endswith("\\"):
            print(cur); cur = None
    elif s.startswith("grpcurl "):
        if s.endswith("\\"):
            cur = s.rstrip("\\").strip()
        else:
            print(s)
PY

passed=0; failed=0
while IFS= read -r example; do
  cmd="${example//127.0.0.1:50051/$addr}"
  cmd="\"$grpcurl\"${cmd#grpcurl}"
  if out="$(bash -c "$cmd" 2>&1)"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'FAILED: %s\n%s\n' "$example" "$out"
  fi
done < "$work/examples"
[ "$passed" -gt 0 ] || { echo "no grpcurl examples found in $doc"; exit 1; }
echo "readme examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

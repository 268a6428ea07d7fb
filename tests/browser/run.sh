#!/usr/bin/env bash
# The browser test (issue 14): drives a real headless Chromium (Debian's `chromium` and
# `chromium-driver`) with Selenium through sign-in, the scorecard (and its live update), an
# indicator explanation, the county table and a worklist, against the real binary, and keeps
# screenshots under target/browser-artifacts/. Fails loudly on any missing element.
#
#   tests/browser/run.sh                    (SERVER_BIN defaults to target/debug/citycredit)
#
# It installs what it needs: the Debian packages with apt-get when they are missing and it
# runs as root, and selenium + grpcio in a virtual environment under target/ci-tools. When
# Chromium cannot be installed it says "skipped" and exits 0, unless CI=true: there it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."

skip() {
  if [ "${CI:-}" = "true" ]; then
    echo "browser test: $* (CI must run it)" >&2
    exit 1
  fi
  echo "browser test skipped: $*"
  exit 0
}

# Chromium, its driver, and a Chinese font (without one the screenshots show empty boxes where
# the pages' Chinese text is; the pages themselves load no fonts).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
  || ! fc-list :lang=zh 2>/dev/null | grep -q .; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq chromium chromium-driver fonts-wqy-microhei >/dev/null \
      || skip "apt-get could not install chromium, chromium-driver and fonts-wqy-microhei"
  else
    skip "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver fonts-wqy-microhei)"
  fi
fi
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  || skip "chromium or chromedriver is still missing after the installation"


venv="$PWD/target/ci-tools/browser-venv"
req="tests/browser/requirements.txt"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi
"$venv/bin/python" tests/python/gen_stubs.py

export SERVER_BIN="${SERVER_BIN:-$PWD/target/debug/citycredit}"
# Selenium must use the system driver and never fetch one.
export SE_OFFLINE=true
exec "$venv/bin/python" tests/browser/test_pages.py "$@"

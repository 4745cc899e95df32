#!/usr/bin/env bash
# Install what the tests need (PostgreSQL server binaries, a virtualenv with the project and
# its test dependencies), then run lint, types and the whole test suite.
# Usage: tests/run-all.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

have_postgres() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! have_postgres; then
    echo "== installing PostgreSQL (apt-get)"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "== installing Chromium (apt-get), for the web page tests"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$PY" -m venv .venv
fi
echo "== installing panda-daemon and its test dependencies"
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true

echo "== ruff"
.venv/bin/ruff check pandaserver tests benchmarks
echo "== mypy"
.venv/bin/mypy pandaserver
echo "== pytest"
exec .venv/bin/python -m pytest "$@"

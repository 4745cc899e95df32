#!/usr/bin/env bash
# Install what the tests need (system packages below, a virtualenv with the project and
# its test dependencies), then run lint, types and the whole test suite.
# Usage: tests/run-all.sh [pytest arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use: PostgreSQL and MariaDB server binaries (the tests start
# their own servers), Chromium (the web page tests), logrotate (the shipped logrotate
# config's test), faketime (libfaketime: masters whose wall clocks really disagree), prometheus
# (promtool: the shipped alert rules' check and unit tests).
missing=""
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    || missing="$missing postgresql"
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing="$missing mariadb-server"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v logrotate >/dev/null 2>&1 || [ -x /usr/sbin/logrotate ] || missing="$missing logrotate"
command -v faketime >/dev/null 2>&1 || missing="$missing faketime"
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
if [ -n "$missing" ]; then
    echo "== installing with apt-get:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
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
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
exec .venv/bin/python -m pytest "$@"

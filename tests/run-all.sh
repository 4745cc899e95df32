#!/usr/bin/env bash
# Install what the tests need (system packages below, a virtualenv with the project and
# its test dependencies), then run lint, types and the whole test suite in three passes:
# the tests side by side in parallel processes, then the tests marked `serial` two at a
# time (timing bounds a crowd of neighbours could break), then the tests marked `alone`
# one at a time (they load the machine themselves; see tests/README.md).
# Usage: tests/run-all.sh [pytest arguments...]   (given to every pass)
# PANDA_TEST_WORKERS: the parallel pass's processes (default 6; 0 runs it in one process).
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

# The suite starts many interpreters (masters, workers, commands, probes); where
# PYTHONDONTWRITEBYTECODE is set, each would compile the project's modules again.
.venv/bin/python -m compileall -q pandaserver tests >/dev/null

echo "== ruff"
.venv/bin/ruff check pandaserver tests benchmarks
echo "== mypy"
.venv/bin/mypy pandaserver
echo "== import layers"
.venv/bin/lint-imports
# pytest's exit status 5 is "no test selected": a selection may leave one pass empty
pass_status() {
    local code=0
    "$@" || code=$?
    if [ "$code" -eq 5 ]; then empty=$((empty + 1)); code=0; fi
    [ "$code" -eq 0 ] || failed="$failed $code"
}
failed=""
empty=0
WORKERS=${PANDA_TEST_WORKERS:-6}
echo "== pytest, parallel pass: $WORKERS processes, every test not marked serial or alone"
# two tests at a time per process, slowest first (tests/conftest.py, tests/durations.json)
pass_status .venv/bin/python -m pytest -n "$WORKERS" --dist load --maxschedchunk 2 \
    -m "not serial and not alone" --durations=25 "$@"
echo "== pytest, serial pass: the tests marked serial, two at a time (one per core)"
pass_status .venv/bin/python -m pytest -n 2 --dist load -m serial --durations=25 "$@"
echo "== pytest, alone pass: the tests marked alone, one at a time"
pass_status .venv/bin/python -m pytest -p no:xdist -m alone --durations=25 "$@"
if [ -n "$failed" ]; then
    echo "== FAILED: pytest exit status$failed" >&2
    exit 1
fi
if [ "$empty" -eq 3 ]; then
    echo "== no test was selected" >&2
    exit 5
fi

#!/usr/bin/env bash
# Run the whole test suite: unit, API (real server, openstack CLI and SDK, SQLite and PostgreSQL) and
# integration (real kernel in throwaway hosts; needs root). Installs what it needs first.
# Arguments go to pytest (e.g. ./test.sh tests/unit -k ipam); without them ruff and mypy --strict run first.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh --test
export PYTHONDONTWRITEBYTECODE=1
# Every test must run: a skip (no root, no PostgreSQL, no Keystone venv) fails the run (tests/conftest.py).
export NEUTRINO_TEST_REQUIRE_ALL=1
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(tests)
  # The whole run also holds the code to its standards: ruff, and mypy --strict over src, tests and bench.
  .venv/bin/ruff check src tests bench
  .venv/bin/mypy
fi
exec .venv/bin/python -m pytest -n "${NEUTRINO_TEST_WORKERS:-4}" --dist loadgroup -q -p no:cacheprovider "${args[@]}"

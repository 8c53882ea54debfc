#!/usr/bin/env bash
# Run the whole test suite: unit, API (real server, openstack CLI and SDK, SQLite and PostgreSQL) and
# integration (real kernel in throwaway hosts; needs root). Installs what it needs first.
# Arguments go to pytest (e.g. ./test.sh tests/unit -k ipam).
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh --test
export PYTHONDONTWRITEBYTECODE=1
# Every test must run: a skip (no root, no PostgreSQL, no Keystone venv) fails the run (tests/conftest.py).
export NEUTRINO_TEST_REQUIRE_ALL=1
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(tests)
exec .venv/bin/python -m pytest -n "${NEUTRINO_TEST_WORKERS:-4}" --dist loadgroup -q -p no:cacheprovider "${args[@]}"

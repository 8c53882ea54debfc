#!/usr/bin/env bash
# Set up neutrino on this machine and run the all-in-one service (API on 127.0.0.1:9696, SQLite under
# ./state, a 'neutrino' entry in ~/.config/openstack/clouds.yaml). Arguments go to `neutrino up`.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install.sh
exec .venv/bin/neutrino up "$@"

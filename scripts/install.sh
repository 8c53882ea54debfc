#!/usr/bin/env bash
# Install what neutrino needs on a Debian machine: system packages, then a Python venv in .venv.
#   scripts/install.sh          runtime only (what `neutrino up` needs)
#   scripts/install.sh --test   also the test tools: openstack CLI + SDK, pytest, PostgreSQL, Keystone
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runtime: the data path (issue 3 onwards) drives these in namespaces.
pkgs=(iproute2 dnsmasq-base nftables conntrack isc-dhcp-client busybox iputils-ping python3-venv)
[ $want_test = 1 ] && pkgs+=(postgresql)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ $want_test = 1 ] && command -v systemctl >/dev/null && systemctl is-active -q postgresql 2>/dev/null; then
  : # the suite starts its own throwaway cluster; a running system one is left alone
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  $PY -m venv .venv
  .venv/bin/pip install -q -U pip
fi
stamp=.venv/.neutrino-installed
extras=""
[ $want_test = 1 ] && extras="[test]"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! grep -qx "$extras" "$stamp" 2>/dev/null; then
  say "installing neutrino$extras into .venv"
  .venv/bin/pip install -q -e ".$extras"
  echo "$extras" > "$stamp"
fi

if [ $want_test = 1 ]; then
  # A real Keystone for the external-identity tests, in a venv of its own (its pins are not ours).
  # The stamp is a copy of the requirements it was built from: a changed list reinstalls.
  if [ ! -x .venv-keystone/bin/keystone-manage ] || ! cmp -s tests/keystone-requirements.txt .venv-keystone/.installed; then
    say "installing Keystone into .venv-keystone (for tests of the external identity mode)"
    $PY -m venv .venv-keystone
    .venv-keystone/bin/pip install -q -U pip
    .venv-keystone/bin/pip install -q -r tests/keystone-requirements.txt
    cp tests/keystone-requirements.txt .venv-keystone/.installed
  fi
fi
say "ready: .venv/bin/neutrino"

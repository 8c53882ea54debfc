#!/usr/bin/env bash
# Install what neutrino needs on a Debian machine: system packages, then a Python venv in .venv.
#   scripts/install.sh          runtime: what `neutrino up` needs, and the openstack CLI to talk to it
#   scripts/install.sh --test   also the test tools: SDK, pytest, mypy, ruff, PostgreSQL, Keystone
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Runtime: the data path (issue 3 onwards) drives these in namespaces.
pkgs=(iproute2 dnsmasq-base nftables conntrack isc-dhcp-client busybox iputils-ping python3-venv)
[ $want_test = 1 ] && pkgs+=(postgresql iperf3)  # iperf3: bench/secgroups.py
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
# The stamp lists the extras installed ("client", "client,test"); a wanted extra missing from it, or a
# pyproject.toml newer than it, reinstalls (keeping the extras there were: a runtime install after a test one
# must not flip-flop). "client" is the openstack CLI, what the README's first example runs.
stamp=.venv/.neutrino-installed
wanted=(client)
[ $want_test = 1 ] && wanted+=(test)
have=$(cat "$stamp" 2>/dev/null || true)
install=0
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then install=1; fi
for e in "${wanted[@]}"; do
  grep -qw -- "$e" <<<"$have" || install=1
done
if [ $install = 1 ]; then
  all=$(printf '%s\n' "${wanted[@]}" $(tr ',[]' '   ' <<<"$have") | grep -x 'client\|test' | sort -u | paste -sd, -)
  say "installing neutrino[$all] into .venv"
  .venv/bin/pip install -q -e ".[$all]"
  echo "$all" > "$stamp"
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
say "openstack CLI: .venv/bin/openstack (or \`source .venv/bin/activate\` to have both on your PATH)"

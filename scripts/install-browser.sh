#!/usr/bin/env bash
# What the browser tests need: headless Chromium from Debian (never a browser download of Playwright's own) and
# axe-core from npm for the accessibility check, kept inside the venv (VENV/node, ignored by git).
# Idempotent and fast when both are there. Usage: scripts/install-browser.sh [VENV_DIR]
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
AXE_DIR="$VENV/node"

# shellcheck source=as-root.sh
source "$ROOT/scripts/as-root.sh"

if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get install -y -q chromium >/dev/null 2>&1 \
    || { as_root apt-get update -q >/dev/null && as_root apt-get install -y -q chromium >/dev/null; }
fi

if [ ! -f "$AXE_DIR/node_modules/axe-core/axe.min.js" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q npm >/dev/null
  fi
  mkdir -p "$AXE_DIR"
  npm install --prefix "$AXE_DIR" --no-save --no-audit --no-fund --silent axe-core@4 >/dev/null
fi

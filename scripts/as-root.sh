# shellcheck shell=bash
# Sourced by the install scripts: run a command as root directly, else through password-less sudo (CI runners).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo "$@"
  else
    echo "$(basename "$0"): '$*' needs root (run as root or with password-less sudo)" >&2
    exit 1
  fi
}

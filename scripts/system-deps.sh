#!/usr/bin/env bash
# Install the system programs the test suite drives for real, when they are missing:
# nginx (two replicas behind a proxy), docker-compose (parses docker-compose.yml) and
# chromium (the quick-look page). Debian/Ubuntu packages; needs root or sudo.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

need=""
[ -x /usr/sbin/nginx ] || command -v nginx >/dev/null || need="$need nginx"
command -v docker-compose >/dev/null || need="$need docker-compose"
command -v chromium >/dev/null || need="$need chromium"
[ -z "$need" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=""
elif command -v sudo >/dev/null; then
  sudo="sudo"
else
  echo "The tests need these system packages:$need" >&2
  echo "Install them as root (apt-get install$need) and run make test again." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "The tests need$need; this machine has no apt-get: install them with its package manager." >&2
  exit 1
fi
echo "Installing system packages for the tests:$need"
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $need >/dev/null

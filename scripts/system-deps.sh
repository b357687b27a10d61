#!/usr/bin/env bash
# Debian packages the integration tests use, installed when missing:
#   chromium        the Streams page test loads the page in headless Chromium
#   docker-compose  validates docker-compose.yaml offline (`docker-compose config`)
#   postgresql      Airflow on a real PostgreSQL, as in the compose deployment
# Runs apt-get as root (or through passwordless sudo). Anywhere else it says what is missing;
# the tests that need a missing program are then skipped with the reason.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "system-deps: missing ${missing[*]}; install them with:" >&2
  echo "    sudo apt-get install --no-install-recommends ${missing[*]}" >&2
  echo "system-deps: until then the tests that need them are skipped." >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: missing ${missing[*]} and there is no apt-get; install them with your" \
    "package manager, or the tests that need them are skipped." >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]} with apt-get (about 1 min)"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "system-deps: installed ${missing[*]}"

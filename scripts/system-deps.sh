#!/usr/bin/env bash
# Debian packages the integration tests use, installed when missing:
#   chromium        the Streams page test loads the page in headless Chromium
#   docker-compose  validates docker-compose.yaml offline (`docker-compose config`)
#   postgresql      Airflow on a real PostgreSQL, as in the compose deployment
#   prometheus      promtool checks the metrics and tests the alert rules; a real Prometheus
#   prometheus-alertmanager  the Alertmanager channel posts to a real Alertmanager
# The tests start their own Prometheus and Alertmanager (free ports, data in tmp). Debian's
# packages would also start them as system services on :9090 and :9093, the ports the compose
# file's Prometheus and a local Alertmanager want: the install below keeps those two from
# starting, and leaves every other service's start to the machine's own policy.
# Runs apt-get as root (or through passwordless sudo). Anywhere else it says what is missing;
# the tests that need a missing program are then skipped with the reason.
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
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

# invoke-rc.d and deb-systemd-invoke ask /usr/sbin/policy-rc.d before starting a service (exit
# 101: not allowed). For the install, a policy that refuses the two Prometheus services and asks
# the machine's own policy (if any) about the rest; the machine's is put back afterwards.
policy=/usr/sbin/policy-rc.d
kept=""
if [ -e "$policy" ]; then
  kept=$("${sudo[@]}" mktemp /usr/sbin/policy-rc.d.system-deps.XXXXXX)
  "${sudo[@]}" cp -p "$policy" "$kept"
fi
restore_policy() {
  if [ -n "$kept" ]; then "${sudo[@]}" mv -f "$kept" "$policy"; else "${sudo[@]}" rm -f "$policy"; fi
}
trap restore_policy EXIT
chain=""
if [ -n "$kept" ]; then chain="exec '$kept' \"\$@\""; fi
"${sudo[@]}" tee "$policy" >/dev/null <<POLICY
#!/bin/sh
# Written by streamops' scripts/system-deps.sh for one apt-get install; removed after it.
case "\$1" in prometheus|prometheus-alertmanager) exit 101 ;; esac
$chain
exit 0
POLICY
"${sudo[@]}" chmod 755 "$policy"

"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Where systemd runs, the packages also enabled the services for the next boot: only those two
# services, and only when this script installed them, are disabled again.
if [ -d /run/systemd/system ]; then
  for service in prometheus prometheus-alertmanager; do
    if [[ " ${missing[*]} " == *" $service "* ]]; then
      "${sudo[@]}" systemctl disable --now "$service.service" >/dev/null 2>&1 || true
    fi
  done
fi
echo "system-deps: installed ${missing[*]}"

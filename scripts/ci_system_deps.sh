#!/usr/bin/env bash
# System packages the test suite needs (Debian/Ubuntu; run as root; idempotent):
#   mosquitto        the real MQTT broker the service tests start on a free loopback port (also mosquitto_passwd)
#   systemd          systemd-analyze, for `systemd-analyze verify` / `security --offline` of the unit
#   openssl          certificates for the MQTT-over-TLS test
# The mosquitto package enables its own service; nothing here starts it (the tests start their own broker).
set -euo pipefail

if [[ "$(id -u)" -ne 0 ]]; then
    echo "ci_system_deps.sh: run as root" >&2
    exit 1
fi
packages=(mosquitto systemd openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "ci_system_deps.sh: already installed: ${packages[*]}"
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
command -v systemd-analyze >/dev/null
command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto
echo "ci_system_deps.sh: installed ${missing[*]}"

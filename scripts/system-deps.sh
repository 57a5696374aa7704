#!/usr/bin/env bash
# Installs the Debian packages the test suite's peers need, when any is missing:
#   python3-venv     the venv for the Python peers (s2-python, pymodbus, bthome-ble)
#   mosquitto        the MQTT broker each MQTT test starts on a free loopback port
#   dbus             dbus-daemon, for the private system bus BlueZ's mock runs on
#   python3-dbusmock BlueZ's D-Bus mock (needs the system's python3-gi, hence apt, not pip)
#   socat            the pty that carries serial Modbus RTU in its test
#   systemd          systemd-analyze, with which .ci/run scores and verifies the shipped unit
#   chromium         the web UI test's browser (driven headless by playwright-core)
#   prometheus       promtool, which checks the /metrics exposition
#   nodejs, npm      run playwright-core (scripts/browser-deps.sh installs it); npm only
#                    when there is none (a NodeSource nodejs ships its own)
# (No libdbus-1-dev: the BLE adapter builds libdbus from its vendored source.)
set -euo pipefail

packages=(python3-venv mosquitto dbus python3-dbusmock socat systemd chromium prometheus nodejs)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "the test suite needs these Debian packages: ${missing[*]}" >&2
  echo "install them (apt-get install ${missing[*]}) and run again" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

#!/usr/bin/env bash
# The Debian package as an installer meets it (CI runs this as root): install it with
# dpkg -i, check the installed config and unit, score the unit's sandboxing, remove it
# and see the conffile stay (Debian policy: `dpkg -r` keeps conffiles, `--purge` does not).
#
#   scripts/test-deb.sh target/deb/s2gw_<version>_<arch>.deb
set -euo pipefail
deb="$1"
here="$(cd "$(dirname "$0")" && pwd)"
unit=/lib/systemd/system/s2gw.service
fail() { echo "test-deb: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' s2gw 2>/dev/null | grep -q 'ok installed'; then
  fail "s2gw is already installed here; remove it first (dpkg -r s2gw)"
fi
dpkg -i "$deb" >/dev/null
[ -x /usr/bin/s2gw ] || fail "no /usr/bin/s2gw after dpkg -i"
/usr/bin/s2gw check -c /etc/s2gw/s2gw.toml
# The installed unit: exposure at most 2.0 and `systemd-analyze verify` clean (the same
# check .ci/run makes of systemd/s2gw.service).
"$here/check-systemd-unit.sh" "$unit"
[ -f /usr/share/man/man1/s2gw.1.gz ] || fail "no man page"
[ -f /usr/share/bash-completion/completions/s2gw ] || fail "no bash completions"
[ -f /usr/share/s2gw/profiles/sim-meter.toml ] || fail "no profiles"

dpkg -r s2gw >/dev/null
[ ! -e /usr/bin/s2gw ] || fail "/usr/bin/s2gw left after dpkg -r"
[ ! -e "$unit" ] || fail "$unit left after dpkg -r"
[ -f /etc/s2gw/s2gw.toml ] || fail "dpkg -r removed the conffile /etc/s2gw/s2gw.toml"
dpkg --purge s2gw >/dev/null
[ ! -e /etc/s2gw/s2gw.toml ] || fail "dpkg --purge left /etc/s2gw/s2gw.toml"
echo "test-deb: the package installs, checks, verifies and removes cleanly"

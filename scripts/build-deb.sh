#!/usr/bin/env bash
# Builds the Debian package of s2gw with dpkg-deb: target/deb/s2gw_<version>_<arch>.deb.
#
#   scripts/build-deb.sh            release build (what an installer gets)
#   scripts/build-deb.sh --debug    the dev-profile binary, for CI's install test: it
#                                   reuses the test suite's build instead of a release one
#
# Contents: /usr/bin/s2gw; the systemd unit (systemd/s2gw.service, with ExecStart pointed
# at /usr/bin, its only change); /etc/s2gw/s2gw.toml as a conffile (a minimal config that
# loads: packaging/deb/s2gw.toml); the profiles under /usr/share/s2gw/profiles; the man
# page and bash/zsh/fish completions, generated from the CLI (`s2gw generate-docs`); the
# annotated reference config under /usr/share/doc/s2gw.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
[ "${1:-}" = "--debug" ] && profile=debug
target="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$profile" = release ]; then
  cargo build --release --locked -p s2gw
else
  cargo build --locked -p s2gw
fi
bin="$target/$profile/s2gw"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
out="$PWD/target/deb"
root="$out/root"
rm -rf "$root"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/s2gw" \
  "$root/usr/share/s2gw/profiles" "$root/usr/share/doc/s2gw" "$root/usr/share/man/man1" \
  "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"

install -m 0755 "$bin" "$root/usr/bin/s2gw"
[ "$profile" = release ] && strip "$root/usr/bin/s2gw"
sed 's|/usr/local/bin/s2gw|/usr/bin/s2gw|g' systemd/s2gw.service >"$root/lib/systemd/system/s2gw.service"
chmod 0644 "$root/lib/systemd/system/s2gw.service"
install -m 0644 packaging/deb/s2gw.toml "$root/etc/s2gw/s2gw.toml"
install -m 0644 config/profiles/*.toml "$root/usr/share/s2gw/profiles/"
install -m 0644 config/s2gw.toml "$root/usr/share/doc/s2gw/s2gw.toml.example"
install -m 0644 packaging/deb/copyright "$root/usr/share/doc/s2gw/copyright"

docs=$(mktemp -d)
trap 'rm -rf "$docs"' EXIT
"$bin" generate-docs "$docs"
gzip -9n <"$docs/s2gw.1" >"$root/usr/share/man/man1/s2gw.1.gz"
install -m 0644 "$docs/s2gw.bash" "$root/usr/share/bash-completion/completions/s2gw"
install -m 0644 "$docs/_s2gw" "$root/usr/share/zsh/vendor-completions/_s2gw"
install -m 0644 "$docs/s2gw.fish" "$root/usr/share/fish/vendor_completions.d/s2gw.fish"

size=$(du -sk "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: s2gw
Version: $version
Architecture: $arch
Maintainer: s2gw developers <s2gw@example.invalid>
Installed-Size: $size
Depends: libc6, systemd
Section: net
Priority: optional
Homepage: https://example.invalid/s2gw
Description: S2 energy-flexibility gateway
 Makes Modbus, MQTT, BLE and simulated devices appear to a Customer Energy
 Manager as native S2 (EN 50491-12-2) Resource Managers, with a status page,
 Prometheus metrics and a health endpoint.
CONTROL
echo /etc/s2gw/s2gw.toml >"$root/DEBIAN/conffiles"
# Maintainer scripts: tell systemd about the unit; enable nothing on its own (the
# installer edits the config first), stop it on removal.
cat >"$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
SCRIPT
cat >"$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
  systemctl stop s2gw.service >/dev/null 2>&1 || true
fi
SCRIPT
cat >"$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

deb="$out/s2gw_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
rm -rf "$root"
echo "$deb"

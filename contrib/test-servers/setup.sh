#!/bin/sh
# Prepare the test servers that are not installed Debian packages, once: npm modules, and
# (as root) Exim, OpenSMTPD and Cyrus IMAP downloaded and unpacked into the interop tests' cache
# (tests/integration/debpkg.py; the tests would do it themselves, but then a first run's
# download would count against one test's time limit). `make check` runs this file.
set -e
cd "$(dirname "$0")"
# npm ships inside some nodejs builds (NodeSource) and as its own package in Debian's.
if ! command -v npm >/dev/null 2>&1; then
	SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends npm </dev/null
fi
for dir in */; do
	if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
		echo "installing npm modules for contrib/test-servers/$dir"
		(cd "$dir" && if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi) </dev/null
	fi
done
if [ "$(id -u)" -eq 0 ] && command -v python3 >/dev/null 2>&1; then
	python3 ../../tests/integration/debpkg.py </dev/null
fi

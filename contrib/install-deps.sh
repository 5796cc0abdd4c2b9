#!/bin/sh
# Install the Debian packages named as arguments that are not installed yet. No prompt (CI has
# no standard input); sudo only when not root. Quiet when everything is present.
set -e
missing=""
for p in "$@"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "installing Debian packages:$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Postfix asks how to configure itself; we only need its binaries (smtp-source, the test MTA).
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections 2>/dev/null || true
$SUDO apt-get update -q </dev/null >/dev/null || $SUDO apt-get update -q </dev/null
$SUDO apt-get install -y -q --no-install-recommends $missing </dev/null

#!/usr/bin/env bash
# Installs the real peers and tools the test suite drives, from Debian's
# archive, quietly; starts dockerd when no Docker engine answers.
set -euo pipefail

# swaks needs the two Perl TLS modules for --tls (they are only recommended).
packages=(iptables docker.io swaks libnet-ssleay-perl libio-socket-ssl-perl python3 fetchmail postfix dovecot-imapd dovecot-pop3d isync)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	# postfix asks how to configure itself: the tests run private instances.
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
	nohup dockerd >/tmp/dockerd.log 2>&1 &
	for _ in $(seq 60); do
		docker info >/dev/null 2>&1 && break
		sleep 1
	done
	docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/dockerd.log" >&2; exit 1; }
fi

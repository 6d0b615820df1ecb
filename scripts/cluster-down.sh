#!/usr/bin/env bash
# Removes what scripts/cluster-up.sh made: the containers flotilla-1..3, their
# data volumes and the network flotilla-net. The cluster TLS, gossip key and
# API token in flotilla-run/docker stay for the next cluster-up, unless
# --purge. The image flotilla:dev stays. Nothing there is fine: exits 0.
#
# Usage: scripts/cluster-down.sh [--purge]
#   --purge  also delete flotilla-run/docker (CA, keys, token, host binary)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=$root/flotilla-run/docker
network=flotilla-net
purge=false

die() {
	echo "cluster-down.sh: $*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--purge) purge=true ;;
	-h | --help)
		sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done

if ! command -v docker >/dev/null 2>&1; then
	echo "cluster-down.sh: docker is not installed: no containers to remove"
elif ! docker info >/dev/null 2>&1; then
	# Containers and volumes of a stopped daemon are still on disk.
	if ! command -v dockerd >/dev/null 2>&1 || [[ $(id -u) != 0 ]]; then
		die "no Docker daemon answers: start dockerd, then run this again"
	fi
	if ! pgrep -x dockerd >/dev/null 2>&1; then
		echo "cluster-down.sh: starting dockerd (log: /tmp/dockerd.log)" >&2
		setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
	fi
	for ((i = 0; i < 60; i++)); do
		docker info >/dev/null 2>&1 && break
		sleep 1
	done
	docker info >/dev/null 2>&1 || die "dockerd did not answer within 60 s; see /tmp/dockerd.log"
fi

if command -v docker >/dev/null 2>&1; then
	failed=()
	for name in flotilla-1 flotilla-2 flotilla-3; do
		if docker container inspect "$name" >/dev/null 2>&1; then
			docker rm -f -v "$name" >/dev/null || failed+=("container $name")
		fi
	done
	for name in flotilla-1 flotilla-2 flotilla-3; do
		if docker volume inspect "$name-data" >/dev/null 2>&1; then
			docker volume rm "$name-data" >/dev/null || failed+=("volume $name-data")
		fi
	done
	if docker network inspect "$network" >/dev/null 2>&1; then
		docker network rm "$network" >/dev/null || failed+=("network $network (other containers attached?)")
	fi
	if ((${#failed[@]})); then
		die "could not remove: $(
			IFS=,
			echo "${failed[*]}"
		)"
	fi
	echo "cluster-down.sh: no containers flotilla-1..3, volumes or network $network left"
fi

if $purge && [[ -d $run_dir ]]; then
	chmod -R u+w "$run_dir"
	rm -rf "$run_dir"
	echo "cluster-down.sh: removed $run_dir"
fi

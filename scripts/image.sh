#!/usr/bin/env bash
# Builds the container image flotilla:dev: FROM scratch, holding only the
# static flotilla binary (scripts/docker/Dockerfile). Installs Docker from
# Debian's archive and starts dockerd when they are missing.
#
# Usage: scripts/image.sh [--tag NAME] [--binary PATH]
#   --tag NAME     image name (default: $FLOTILLA_IMAGE or flotilla:dev)
#   --binary PATH  put this already built static binary in the image instead
#                  of building one (it must be built with CGO_ENABLED=0)
# Environment: VERSION (default: git describe) is linked into the binary as
# its build version when this script builds it.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${FLOTILLA_IMAGE:-flotilla:dev}
binary=""

die() {
	echo "image.sh: $*" >&2
	exit 1
}

while (($#)); do
	case $1 in
	--tag)
		(($# >= 2)) || die "--tag needs a value"
		tag=$2
		shift 2
		;;
	--binary)
		(($# >= 2)) || die "--binary needs a value"
		binary=$2
		shift 2
		;;
	-h | --help)
		sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done

# ensure_docker installs docker.io (and iptables, which dockerd needs for its
# bridge networks) when missing, and starts dockerd when no daemon answers.
ensure_docker() {
	if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1 ||
		! command -v iptables >/dev/null 2>&1; then
		[[ $(id -u) == 0 ]] || die "docker is not installed and this is not root: install docker.io and iptables"
		echo "image.sh: installing docker.io and iptables from Debian's archive" >&2
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq >/dev/null || die "apt-get update failed"
		apt-get install -y -qq --no-install-recommends docker.io iptables >/dev/null ||
			die "apt-get install docker.io iptables failed"
	fi
	docker info >/dev/null 2>&1 && return 0
	if [[ -S /var/run/docker.sock ]] && pgrep -x dockerd >/dev/null 2>&1; then
		: # a daemon is starting or stuck: wait for it below rather than start another
	else
		[[ $(id -u) == 0 ]] || die "no Docker daemon answers and this is not root: start dockerd"
		echo "image.sh: starting dockerd (log: /tmp/dockerd.log)" >&2
		setsid nohup dockerd >/tmp/dockerd.log 2>&1 </dev/null &
	fi
	local i
	for ((i = 0; i < 60; i++)); do
		docker info >/dev/null 2>&1 && return 0
		sleep 1
	done
	echo "image.sh: dockerd did not answer within 60 s; last lines of /tmp/dockerd.log:" >&2
	tail -n 20 /tmp/dockerd.log >&2 2>/dev/null || true
	exit 1
}

ensure_docker

ctx=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-image.XXXXXX")
trap 'rm -rf "$ctx"' EXIT

version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
if [[ -n $binary ]]; then
	[[ -f $binary && -x $binary ]] || die "--binary $binary is not an executable file"
	cp "$binary" "$ctx/flotilla"
else
	command -v go >/dev/null 2>&1 || die "go is not on PATH: needed to build the binary"
	(cd "$root" && CGO_ENABLED=0 go build -trimpath \
		-ldflags "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion=$version" \
		-o "$ctx/flotilla" ./cmd/flotilla) || die "go build ./cmd/flotilla failed"
fi
mkdir "$ctx/data"
cp "$root/scripts/docker/Dockerfile" "$ctx/Dockerfile"

# The classic builder: dockerd 20.10 as Debian ships it has no BuildKit.
if ! DOCKER_BUILDKIT=0 docker build --build-arg "VERSION=$version" -t "$tag" "$ctx" >"$ctx/build.log" 2>&1; then
	cat "$ctx/build.log" >&2
	die "docker build of $tag failed"
fi
# Drop the images earlier builds left untagged.
docker image prune -f --filter label=org.opencontainers.image.title=flotilla >/dev/null 2>&1 || true
echo "image.sh: built $tag ($version)"

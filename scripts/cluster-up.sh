#!/usr/bin/env bash
# Starts a three-node Flotilla cluster in Docker containers flotilla-1..3 on
# the private network flotilla-net (172.28.5.0/24, --internal: no way out),
# at 172.28.5.11-13, and waits until it has a leader and three healthy voters.
# Run again, it recreates the containers (and, unless --keep-data, their data)
# from a freshly built image. scripts/cluster-down.sh removes it all.
#
# Usage: scripts/cluster-up.sh [--keep-data]
#   --keep-data  keep the nodes' data volumes when recreating the containers
# Environment: FLOTILLA_UP_TIMEOUT (seconds to wait for the cluster, default 90)
#
# Kept in flotilla-run/docker (reused by later runs; cluster-down --purge
# removes it): flotilla (the host binary), tls/ (cluster CA and node
# certificates), gossip-key, api-token, and nodes/nN/ (what each container
# sees at /etc/flotilla: its config, the CA certificate, its own cert and key).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
run_dir=$root/flotilla-run/docker
image=flotilla:dev
network=flotilla-net
subnet=172.28.5.0/24
nodes=(n1 n2 n3)
ips=(172.28.5.11 172.28.5.12 172.28.5.13)
uid=65532 # the image's user
timeout=${FLOTILLA_UP_TIMEOUT:-90}
keep_data=false

die() {
	echo "cluster-up.sh: $*" >&2
	exit 1
}
say() { echo "cluster-up.sh: $*"; }

while (($#)); do
	case $1 in
	--keep-data) keep_data=true ;;
	-h | --help)
		sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
	shift
done
[[ $timeout =~ ^[0-9]+$ ]] || die "FLOTILLA_UP_TIMEOUT must be a number of seconds, not $timeout"
command -v go >/dev/null 2>&1 || die "go is not on PATH: needed to build flotilla"

mkdir -p "$run_dir"
chmod 700 "$run_dir"

# 1. The binary, for the host (tls-init, and a client for the admin API) and
#    for the image; then the image (image.sh also makes sure Docker runs).
version=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
say "building flotilla ($version) and the image $image"
(cd "$root" && CGO_ENABLED=0 go build -trimpath \
	-ldflags "-X github.com/flotilla-mail/flotilla/cluster.BuildVersion=$version" \
	-o "$run_dir/flotilla" ./cmd/flotilla) || die "go build ./cmd/flotilla failed"
VERSION=$version "$root/scripts/image.sh" --tag "$image" --binary "$run_dir/flotilla" >/dev/null

# 2. Clear out a previous run: containers, and their data unless kept.
for i in "${!nodes[@]}"; do
	name=flotilla-$((i + 1))
	if docker container inspect "$name" >/dev/null 2>&1; then
		say "removing the existing container $name"
		if $keep_data; then
			# a clean stop: the node hands leadership over and closes its store
			docker stop -t 15 "$name" >/dev/null 2>&1 || true
		fi
		docker rm -f -v "$name" >/dev/null || die "cannot remove the container $name"
	fi
	if ! $keep_data && docker volume inspect "$name-data" >/dev/null 2>&1; then
		docker volume rm "$name-data" >/dev/null || die "cannot remove the volume $name-data"
	fi
done

# 3. The network: internal (no route out, no published ports), fixed subnet.
if docker network inspect "$network" >/dev/null 2>&1; then
	have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}{{.Internal}}' "$network")
	if [[ $have != "$subnet true" ]]; then
		say "recreating the network $network (it was: $have)"
		docker network rm "$network" >/dev/null ||
			die "the network $network exists with other settings and cannot be removed (containers still attached?)"
	fi
fi
if ! docker network inspect "$network" >/dev/null 2>&1; then
	if ! out=$(docker network create --driver bridge --internal --subnet "$subnet" \
		--label org.flotilla.cluster=docker "$network" 2>&1); then
		die "docker network create $network --subnet $subnet failed: $out
(another network or route on this host may already use $subnet: see 'docker network ls' and 'ip route')"
	fi
fi

# 4. Cluster TLS, gossip key and API token: made once, reused afterwards.
for n in "${nodes[@]}"; do
	if [[ ! -s $run_dir/tls/$n.pem || ! -s $run_dir/tls/$n-key.pem ]]; then
		rm -f "$run_dir/tls/$n.pem" "$run_dir/tls/$n-key.pem" # tls-init makes what is missing
	fi
done
hosts=$(
	IFS=,
	echo "${ips[*]}"
)
nodelist=$(
	IFS=,
	echo "${nodes[*]}"
)
"$run_dir/flotilla" cluster tls-init --out "$run_dir/tls" --nodes "$nodelist" --hosts "$hosts" >/dev/null ||
	die "flotilla cluster tls-init failed"
umask 077
if [[ ! -s $run_dir/gossip-key ]]; then
	head -c 32 /dev/urandom | base64 >"$run_dir/gossip-key"
fi
if [[ ! -s $run_dir/api-token ]]; then
	head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$run_dir/api-token"
	echo >>"$run_dir/api-token"
fi
gossip_key=$(<"$run_dir/gossip-key")
api_token=$(<"$run_dir/api-token")

# 5. What each container gets, read-only, at /etc/flotilla: its config (with
#    the secrets, so they stay out of `docker inspect` and ps), the CA
#    certificate and its own certificate and key; never the CA key.
for i in "${!nodes[@]}"; do
	n=${nodes[$i]}
	d=$run_dir/nodes/$n
	if [[ -d $d ]]; then
		chmod -R u+w "$d"
		rm -rf "$d"
	fi
	mkdir -p "$d"
	cp "$run_dir/tls/ca.pem" "$d/ca.pem"
	cp "$run_dir/tls/$n.pem" "$d/node.pem"
	cp "$run_dir/tls/$n-key.pem" "$d/node-key.pem"
	join=()
	for j in "${!ips[@]}"; do
		((j == i)) || join+=("\"${ips[$j]}:7946\"")
	done
	cat >"$d/flotilla.toml" <<EOF
# Written by scripts/cluster-up.sh for the container flotilla-$((i + 1)).
node_id = "$n"
data_dir = "/data"
bind = "0.0.0.0"
advertise = "${ips[$i]}"
join = [$(
		IFS=,
		echo "${join[*]}"
	)]
bootstrap_expect = 3
cluster_ca = "/etc/flotilla/ca.pem"
cluster_cert = "/etc/flotilla/node.pem"
cluster_key = "/etc/flotilla/node-key.pem"
gossip_key = "$gossip_key"
api_token = "$api_token"
http_port = 8080
https_port = 0
smtp_port = 2525
submission_port = 2587
smtps_port = 2465
pop3_port = 2110
pop3s_port = 2995
imap_port = 2143
imaps_port = 2993
EOF
	chmod 644 "$d/ca.pem" "$d/node.pem"
	chmod 600 "$d/node-key.pem" "$d/flotilla.toml"
	chmod 500 "$d"
	if ! chown -R "$uid:$uid" "$d" 2>/dev/null; then
		# not root: the node's user can only read what everyone can
		chmod -R a+rX "$d"
	fi
done
umask 022

# 6. The containers.
for i in "${!nodes[@]}"; do
	name=flotilla-$((i + 1))
	if ! out=$(docker run -d --name "$name" --hostname "${nodes[$i]}" \
		--network "$network" --ip "${ips[$i]}" \
		--mount "type=volume,src=$name-data,dst=/data" \
		--mount "type=bind,src=$run_dir/nodes/${nodes[$i]},dst=/etc/flotilla,readonly" \
		--read-only --cap-drop ALL --security-opt no-new-privileges \
		--log-opt max-size=10m --log-opt max-file=3 \
		--label org.flotilla.cluster=docker \
		"$image" serve --config /etc/flotilla/flotilla.toml 2>&1); then
		die "docker run $name failed: $out"
	fi
done

# 7. Wait for a leader and three healthy voters, as flotilla-1 sees it.
# healthy_voters reads `cluster status --json` (indented, one field a line)
# and prints the leader, the cluster ID and how many nodes are healthy voters.
healthy_voters() {
	awk '
		/^  "leader":/ { leader = $2; gsub(/[",]/, "", leader) }
		/^  "cluster_id":/ { id = $2; gsub(/[",]/, "", id) }
		/^    \{/ { v = 0; h = 0 }
		/^      "voter": true/ { v = 1 }
		/^      "healthy": true/ { h = 1 }
		/^    \}/ { if (v && h) n++ }
		END { print (leader == "" ? "-" : leader), (id == "" ? "-" : id), n + 0 }
	'
}
say "waiting up to ${timeout}s for a leader and three healthy voters"
deadline=$((SECONDS + timeout))
status=""
while :; do
	for i in "${!nodes[@]}"; do
		name=flotilla-$((i + 1))
		if [[ $(docker container inspect -f '{{.State.Running}}' "$name" 2>/dev/null) != true ]]; then
			echo "cluster-up.sh: the container $name stopped; its log:" >&2
			docker logs --tail 40 "$name" >&2 2>&1 || true
			exit 1
		fi
	done
	if status=$(docker exec flotilla-1 /flotilla cluster status --data-dir /data --json 2>&1); then
		read -r leader cluster_id healthy < <(healthy_voters <<<"$status")
		if [[ $leader != - && $cluster_id != - && $healthy == 3 ]]; then
			break
		fi
	fi
	if ((SECONDS >= deadline)); then
		echo "cluster-up.sh: no leader with three healthy voters after ${timeout}s; last status:" >&2
		echo "$status" >&2
		for i in "${!nodes[@]}"; do
			echo "--- docker logs flotilla-$((i + 1)) (last 20 lines)" >&2
			docker logs --tail 20 "flotilla-$((i + 1))" >&2 2>&1 || true
		done
		exit 1
	fi
	sleep 1
done

docker exec flotilla-1 /flotilla cluster status --data-dir /data
rel=${run_dir#"$PWD"/}
cat <<EOF

Flotilla cluster is up: containers flotilla-1..3 on $network ($subnet), image $image.
Admin API (from this host; token in $rel/api-token):
EOF
for i in "${!nodes[@]}"; do
	echo "  flotilla-$((i + 1)) (${nodes[$i]}): http://${ips[$i]}:8080"
done
cat <<EOF
  e.g. curl -H "Authorization: Bearer \$(cat $rel/api-token)" http://${ips[0]}:8080/v1/cluster/status
       $rel/flotilla cluster status --addr http://${ips[0]}:8080 --token "\$(cat $rel/api-token)"
Inside a container: docker exec flotilla-1 /flotilla domain list --data-dir /data
Mail ports on each IP: SMTP 2525, submission 2587, SMTPS 2465, POP3 2110, POP3S 2995, IMAP 2143, IMAPS 2993.
Logs: docker logs -f flotilla-1.   Remove: scripts/cluster-down.sh [--purge]
EOF

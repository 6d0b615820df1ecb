#!/usr/bin/env bash
# `make run`: a local three-node Flotilla cluster of processes on
# 127.0.0.11-13, each with every listener on the same ports, a demo domain
# and printed logins. State lives in ./flotilla-run; Ctrl-C stops the nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=bin/flotilla
run=flotilla-run
mkdir -p "$run"
[ -x "$bin" ] || CGO_ENABLED=0 go build -o "$bin" ./cmd/flotilla

ips=(127.0.0.11 127.0.0.12 127.0.0.13)
"$bin" cluster tls-init --out "$run/tls" --nodes n1,n2,n3 --hosts "$(IFS=,; echo "${ips[*]}")" >/dev/null
secret() { [ -s "$1" ] || head -c "$2" /dev/urandom | base64 | tr -d '\n' >"$1"; chmod 600 "$1"; cat "$1"; }
gossip_key=$(secret "$run/gossip-key" 32)
token=$(secret "$run/api-token" 18 | tr '+/' '-_')
password=$(secret "$run/demo-password" 12 | tr '+/' '-_')

pids=()
stop() {
	echo
	echo "stopping the cluster..."
	kill -TERM "${pids[@]}" 2>/dev/null || true
	wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

for i in 1 2 3; do
	ip=${ips[$((i - 1))]}
	join=()
	for j in 1 2 3; do [ "$j" = "$i" ] || join+=("${ips[$((j - 1))]}:7946"); done
	"$bin" serve --node-id "n$i" --data-dir "$run/n$i" --bind "$ip" --bootstrap-expect 3 \
		--join "$(IFS=,; echo "${join[*]}")" \
		--cluster-ca "$run/tls/ca.pem" --cluster-cert "$run/tls/n$i.pem" --cluster-key "$run/tls/n$i-key.pem" \
		--gossip-key "$gossip_key" --api-token "$token" --hostname "n$i.flotilla.local" \
		--smtp-port 2525 --submission-port 2587 --smtps-port 2465 --pop3-port 2110 --pop3s-port 2995 \
		--imap-port 2143 --imaps-port 2993 --http-port 8080 --https-port 8443 \
		>>"$run/n$i.log" 2>&1 &
	pids+=($!)
done

cli() { "$bin" "$@" --data-dir "$run/n1"; }
for _ in $(seq 150); do
	if cli cluster status --json 2>/dev/null | grep -q '"leader": "n'; then break; fi
	sleep 0.2
done
cli cluster status
cli domain add demo.test >/dev/null 2>&1 || true
printf '%s\n' "$password" | cli user add demo@demo.test --name "Demo User" --password-stdin >/dev/null 2>&1 || true

cat <<INFO

Flotilla is running: three nodes, n1-n3 on ${ips[*]}
  Login:     demo@demo.test  password: $password
  Admin API: http://127.0.0.11:8080 (also .12, .13)  token: $token
  Ports on every node: SMTP 2525, submission 2587, SMTPS 2465, IMAP 2143, IMAPS 2993, POP3 2110, POP3S 2995
  Try:       $bin cluster status --data-dir $run/n2
             $bin user list --addr http://127.0.0.12:8080 --token $token
  Logs:      $run/n1.log ...
Press Ctrl-C to stop.
INFO
wait "${pids[@]}"

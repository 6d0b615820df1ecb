#!/usr/bin/env bash
# Outbound delivery: a three-node Flotilla cluster and Postfix each empty a
# queue of 10,000 5 KiB messages into smtp-sink; prints both rates, the
# ratio and each node's share. FLOTILLA_BENCH_MESSAGES changes the count.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v smtp-sink >/dev/null || { echo "bench-delivery: smtp-sink (package postfix) is missing; run scripts/ci-deps.sh" >&2; exit 1; }
FLOTILLA_BENCH=delivery go test -count=1 -timeout 30m -run '^TestDeliveryBench$' ./test/ -v 2>&1 |
	sed -n '/^== delivery/,/node n3/p' | head -8

#!/usr/bin/env bash
# `make bench`: benchmarks on this machine, each side by side with its peer
# where there is one. Absolute figures on a shared machine are noise; the
# ratios and the targets in the issues are what to read.
set -euo pipefail
cd "$(dirname "$0")/.."
go build -o bin/flotilla-bench ./cmd/flotilla-bench
echo "== cluster spine: commits of 5 KiB messages from 20 writers, fsync on every commit"
bin/flotilla-bench commit --nodes 1 --writers 20 --messages 10000
bin/flotilla-bench commit --nodes 3 --writers 20 --messages 10000
echo "== SMTP ingest: smtp-source, 20 sessions, 10,000 messages of 5 KiB, until every message is stored"
bin/flotilla-bench smtp --sessions 20 --messages 10000
echo "== snapshot of a store holding 1 GiB of message bodies"
bin/flotilla-bench snapshot --bytes $((1 << 30))
for extra in scripts/bench-*.sh; do
	[ -x "$extra" ] && "$extra"
done

#!/usr/bin/env bash
# IMAP benchmark (run by `make bench`): the same load against Dovecot
# (Maildir, pre-started processes) and Flotilla (one node; a follower of a
# three-node cluster), with ratios; then SELECT + header FETCH of the newest
# 50 in a big mailbox in a new session. Arguments go to flotilla-imapbench,
# e.g. scripts/bench-imap.sh -sessions 16 -duration 10s -big 100000.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v dovecot >/dev/null; then
	echo "bench-imap: dovecot is not installed (scripts/ci-deps.sh installs dovecot-imapd)" >&2
	exit 1
fi
go build -o bin/flotilla-imapbench ./cmd/flotilla-imapbench
echo "== IMAP: Dovecot (default, and mail_fsync=always) vs Flotilla (1 node, follower of 3)"
bin/flotilla-imapbench -only dovecot,dovecot-fsync,flotilla-1,flotilla-3f "$@"

#!/usr/bin/env bash
# Runs a command with the local stack up: starts the stack if it is not
# running, exports KAFKA_BOOTSTRAP / KINESIS_ENDPOINT, runs the command, and
# stops the stack afterwards (even when the command fails) if it started it.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stack=$here/stack.sh

started=0
# Capture first: with pipefail, `status | grep -q` fails on SIGPIPE when grep exits early.
status=$("$stack" status)
if ! grep -q "kafka running" <<<"$status" || ! grep -q "kinesis running" <<<"$status"; then
  started=1
fi
cleanup() { if [[ $started == 1 ]]; then "$stack" down || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

"$stack" up
eval "$("$stack" env)"
export KAFKA_BOOTSTRAP KINESIS_ENDPOINT
"$@"

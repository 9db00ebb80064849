#!/bin/sh
# A CI step that reads a flag with featbit-shm. Needs FEATBIT_ENV_SECRET,
# FEATBIT_STREAMING_URL and FEATBIT_EVENT_URL in its environment.
set -eu

# This job's own sync process; it exits with the shell even if the job is killed.
FEATBIT_SHM_OWNER_PID=$$ featbit-shm sync &
sync_pid=$!
trap 'kill -TERM "$sync_pid"; wait "$sync_pid"' EXIT

# Waits up to 15 s for the first flag data. Exit 0: the flag was evaluated;
# 1: no data or no such flag; 2: bad arguments or configuration.
result=$(featbit-shm eval deploy-strategy --user '{"key": "ci", "branch": "main"}' --wait 15)
strategy=$(printf '%s' "$result" | python -c 'import json, sys; print(json.load(sys.stdin)["variation"])')
echo "deploy strategy: $strategy"

# Exit 0: a live sync process serves published data.
featbit-shm status > /dev/null

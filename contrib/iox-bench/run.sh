#!/usr/bin/env bash
# Builds iox-bench in release (if needed) and runs the 4 cells once each
# (event/busy x 64/1500 B), printing one JSON line per cell.
#   BENCH_SECONDS=5 ./run.sh            (any extra args go to every iox-bench run)
set -u -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
iox_build
secs="${BENCH_SECONDS:-5}"
iox_cleanup
status=0
for size in 64 1500; do
    for mode in event busy; do
        "$IOX_BIN" --mode "$mode" --packet-size "$size" --seconds "$secs" "$@" || status=1
        iox_cleanup
    done
done
exit $status

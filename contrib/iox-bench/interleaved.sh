#!/usr/bin/env bash
# Interleaved comparison of packet-ipc bench and iceoryx2 (iox-bench), same shape:
# 1 publisher, 8 subscriber processes, 256-packet batches, every byte written, first and
# last payload byte of every packet read, lossless.
#
#   ./interleaved.sh ../../target/release/packet-ipc
#
# Env: PASSES (3), BENCH_SECONDS (5, passed to both), PIPC_EXTRA (extra args for
# packet-ipc bench, e.g. "--wait spin"), IOX_EXTRA (extra args for iox-bench).
# Raw lines are kept in results/interleaved-<time>.tsv (cell, pass, JSON).
set -u -o pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
pipc="${1:?usage: $0 /path/to/packet-ipc (release binary)}"
[ -x "$pipc" ] || { echo "not executable: $pipc" >&2; exit 1; }
passes="${PASSES:-3}"
secs="${BENCH_SECONDS:-5}"
iox_build
mkdir -p "$IOX_DIR/results"
out="$IOX_DIR/results/interleaved-$(date +%Y%m%d-%H%M%S).tsv"
: > "$out"
iox_cleanup

one() { # cell pass command...
    local cell="$1" pass="$2"; shift 2
    local line
    line="$("$@" | tail -n 1)" || line="FAILED"
    [ -n "$line" ] || line="FAILED"
    printf '%s\t%s\t%s\n' "$cell" "$pass" "$line" | tee -a "$out" >&2
    iox_cleanup
}

for pass in $(seq 1 "$passes"); do
    # shellcheck disable=SC2086
    one pipc-64        "$pass" "$pipc" bench --seconds "$secs" ${PIPC_EXTRA:-} --json
    one iox-event-64   "$pass" "$IOX_BIN" --mode event --packet-size 64 --seconds "$secs" ${IOX_EXTRA:-}
    one iox-busy-64    "$pass" "$IOX_BIN" --mode busy --packet-size 64 --seconds "$secs" ${IOX_EXTRA:-}
    one pipc-1500      "$pass" "$pipc" bench --packet-size 1500 --seconds "$secs" ${PIPC_EXTRA:-} --json
    one iox-event-1500 "$pass" "$IOX_BIN" --mode event --packet-size 1500 --seconds "$secs" ${IOX_EXTRA:-}
    one iox-busy-1500  "$pass" "$IOX_BIN" --mode busy --packet-size 1500 --seconds "$secs" ${IOX_EXTRA:-}
done

echo "raw: $out"
python3 - "$out" <<'PY'
import json, statistics, sys

rows = {}
order = []
for raw in open(sys.argv[1]):
    cell, _pass, text = raw.rstrip("\n").split("\t", 2)
    if cell not in rows:
        rows[cell] = []
        order.append(cell)
    try:
        j = json.loads(text)
    except ValueError:
        rows[cell].append(None)
        continue
    if "delivered_pps" in j:  # packet-ipc bench --json
        rows[cell].append((j["delivered_pps"] / 1e6, j["per_subscriber_pps"] / 1e6,
                           j["lost_batches"], True))
    else:                     # iox-bench
        rows[cell].append((j["mpps_total"], j["mpps_per_sub"], j["lost"],
                           bool(j.get("counts_ok", True)) and j.get("undelivered", 0) == 0))

def med(xs):
    return statistics.median(xs) if xs else float("nan")

print()
print(f"{'cell':<16}{'runs':>5}{'Mpps total (median)':>21}{'Mpps/sub':>10}"
      f"{'min..max total':>18}{'lost':>6}  ok")
medians = {}
for cell in order:
    good = [r for r in rows[cell] if r is not None]
    tot = [r[0] for r in good]
    medians[cell] = med(tot)
    span = f"{min(tot):.1f}..{max(tot):.1f}" if tot else "-"
    ok = all(r[3] for r in good) and len(good) == len(rows[cell])
    print(f"{cell:<16}{len(good):>5}{med(tot):>21.1f}{med([r[1] for r in good]):>10.2f}"
          f"{span:>18}{sum(r[2] for r in good):>6}  {'yes' if ok else 'NO'}")
print()
for size in ("64", "1500"):
    base = medians.get(f"pipc-{size}")
    for mode in ("event", "busy"):
        v = medians.get(f"iox-{mode}-{size}")
        if base and v:
            print(f"{size:>4} B: iceoryx2 {mode:<5} / packet-ipc = {v / base:.2f}")
PY

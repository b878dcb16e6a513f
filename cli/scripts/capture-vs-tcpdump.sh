#!/usr/bin/env bash
# capture-vs-tcpdump.sh: `packet-ipc capture` against tcpdump on the same replayed traffic.
#
# A network namespace and a veth pair are made; tcpreplay --topspeed sends a generated
# capture from inside the namespace onto its end of the pair, and the capturing program
# listens on the outer end. Each run measures, in turn:
#
#   tcpdump       tcpdump -i OUTER -w /dev/null (its defaults: TPACKET_V3 blocks)
#   tcpdump-imm   the same with --immediate-mode (what packet-ipc capture --immediate uses)
#   packet-ipc    packet-ipc capture bench -i OUTER into a packet-ipcd server (default
#                 overflow, drop-oldest) with one subscriber (packet-ipc subscribe, no file)
#
# all with the same kernel buffer (BUFFER_MIB) and no filter, and prints one line each:
# packets sent and tcpreplay's rate, packets captured and their rate over the replay's
# duration, the kernel's drops (libpcap's ps_drop), and the CPU seconds of the capturing
# process (the daemon's and the subscriber's are not counted; they are printed at the end).
#
# Usage, as root, from anywhere in the repository:
#
#   cli/scripts/capture-vs-tcpdump.sh
#   RUNS=5 SIZE=1500 COUNT=50000 LOOPS=10 cli/scripts/capture-vs-tcpdump.sh
#
# Environment: RUNS (runs of each program, 3), SIZE (bytes per frame, 64), COUNT (frames
# in the generated file, 100000), LOOPS (tcpreplay --loop, 10), BUFFER_MIB (kernel buffer,
# 2, libpcap's default), CARGO_TARGET_DIR (where the release build goes).
# Needs: tcpreplay, tcpdump, iproute2 (apt-get install tcpreplay tcpdump iproute2) and
# cargo; it builds packet-ipc, packet-ipcd and the write-traffic example in release mode.
# Everything it makes (namespace, veth, daemon, files) is removed when it exits.

set -euo pipefail

RUNS=${RUNS:-3}
SIZE=${SIZE:-64}
COUNT=${COUNT:-100000}
LOOPS=${LOOPS:-10}
BUFFER_MIB=${BUFFER_MIB:-2}

die() { echo "capture-vs-tcpdump: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (namespaces and captures)"
for tool in tcpreplay tcpdump ip cargo; do
    command -v "$tool" >/dev/null || die "needs $tool"
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q --bins --example write-traffic)
BIN=$TARGET/release
PIPC=$BIN/packet-ipc

WORK=$(mktemp -d /tmp/pipc-vs.XXXXXX)
NS=pipc-vs-$$
OUTER=pvs$$o
INNER=pvs$$i
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip link del "$OUTER" 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN/examples/write-traffic" "$WORK/traffic.pcap" --size "$SIZE" --count "$COUNT"

ip netns add "$NS"
ip link add "$OUTER" type veth peer name "$INNER" netns "$NS"
sysctl -q -w "net.ipv6.conf.$OUTER.disable_ipv6=1"
ip netns exec "$NS" sysctl -q -w "net.ipv6.conf.$INNER.disable_ipv6=1"
ip link set "$OUTER" up
ip netns exec "$NS" ip link set "$INNER" up

export PACKET_IPC_RUNTIME_DIR=$WORK/run
mkdir -p "$PACKET_IPC_RUNTIME_DIR"
printf '[servers.bench]\nlinktype = 1\nsnaplen = 65535\n' >"$WORK/packet-ipcd.toml"
"$BIN/packet-ipcd" --config "$WORK/packet-ipcd.toml" 2>"$WORK/daemon.log" &
DAEMON=$!
PIDS+=("$DAEMON")
for _ in $(seq 100); do [ -e "$PACKET_IPC_RUNTIME_DIR/rendezvous.json" ] && break; sleep 0.1; done
"$PIPC" subscribe bench --json >"$WORK/subscriber.json" 2>"$WORK/subscriber.err" &
SUB=$!
PIDS+=("$SUB")

# Waits until FILE holds TEXT (at most 10 s).
wait_for() {
    for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    die "no \"$2\" in $1: $(cat "$1")"
}
wait_for "$WORK/subscriber.err" "subscribed to bench"

# CPU seconds (user + system) of process PID so far.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat"
}

printf '%-12s %3s %10s %12s %10s %12s %10s %6s\n' \
    program run sent "sent/s" captured "captured/s" "k-drops" cpu-s
for run in $(seq "$RUNS"); do
    for program in tcpdump tcpdump-imm packet-ipc; do
        err=$WORK/$program.$run.err
        out=$WORK/$program.$run.out
        case $program in
        tcpdump)
            tcpdump -i "$OUTER" -n -B $((BUFFER_MIB * 1024)) -w /dev/null >"$out" 2>"$err" &
            ready="listening on" ;;
        tcpdump-imm)
            tcpdump -i "$OUTER" -n -B $((BUFFER_MIB * 1024)) --immediate-mode -w /dev/null \
                >"$out" 2>"$err" &
            ready="listening on" ;;
        packet-ipc)
            "$PIPC" capture bench -i "$OUTER" --buffer-mib "$BUFFER_MIB" --json >"$out" 2>"$err" &
            ready="capturing on" ;;
        esac
        pid=$!
        PIDS+=("$pid")
        wait_for "$err" "$ready"
        ip netns exec "$NS" tcpreplay -i "$INNER" --topspeed --loop="$LOOPS" \
            "$WORK/traffic.pcap" >"$WORK/replay.txt" 2>&1 || die "tcpreplay: $(cat "$WORK/replay.txt")"
        sleep 1
        cpu=$(cpu_seconds "$pid")
        kill -INT "$pid"
        wait "$pid" || true
        # "Actual: 1000000 packets (64000000 bytes) sent in 1.52 seconds"
        sent=$(awk '/Actual:/ { print $2 }' "$WORK/replay.txt")
        secs=$(awk '/Actual:/ { for (i = 1; i < NF; i++) if ($(i + 1) == "seconds") print $i }' \
            "$WORK/replay.txt")
        if [ "$program" = packet-ipc ]; then
            captured=$(sed -n 's/.*"packets":\([0-9]*\).*/\1/p' "$out")
            drops=$(sed -n 's/.*"dropped_kernel":\([0-9]*\).*/\1/p' "$out")
        else
            captured=$(awk '/packets captured/ { print $1 }' "$err")
            drops=$(awk '/dropped by kernel/ { print $1 }' "$err")
        fi
        awk -v p="$program" -v r="$run" -v s="$sent" -v t="$secs" -v c="$captured" \
            -v d="$drops" -v cpu="$cpu" \
            'BEGIN { printf "%-12s %3s %10s %12.0f %10s %12.0f %10s %6s\n", p, r, s, s / t, c, c / t, d, cpu }' 
    done
done

echo
echo "daemon: $(cpu_seconds "$DAEMON") CPU seconds; subscriber: $(cpu_seconds "$SUB") CPU seconds"
kill -INT "$SUB"
wait "$SUB" || true
echo "subscriber: $(cat "$WORK/subscriber.json")"

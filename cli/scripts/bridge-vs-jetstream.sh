#!/usr/bin/env bash
# bridge-vs-jetstream.sh: `packet-ipc bridge export` against a plain JetStream publisher,
# in rounds, as the README's "Bridge figures" describe: each round, at each packet size,
# starts a nats-server -js on a fresh store (after a sync), a packet-ipcd with one server
# (overflow "block", queue-depth 4), the export, and publishes a generated capture 30 times
# through it; then, on a fresh store again, the plain publisher (examples/bridge-baseline)
# sends as many messages of the same size with the same window of 64. It prints one line
# per run: the export's packets, messages, bytes and active seconds; the baseline's JSON.
#
# Usage, from anywhere in the repository:
#
#   cli/scripts/bridge-vs-jetstream.sh
#   ROUNDS=6 SIZES=1500 cli/scripts/bridge-vs-jetstream.sh
#
# Needs nats-server (apt-get install nats-server) and cargo; it builds the release
# binaries and the example first. Everything it makes is under a temporary directory.
set -u
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
command -v nats-server >/dev/null || { echo "needs nats-server (apt-get install nats-server)" >&2; exit 1; }
cargo build --release -q --bins --example bridge-baseline || exit 1
R=${CARGO_TARGET_DIR:-target}/release; B=$R/examples/bridge-baseline
W=$(mktemp -d /tmp/brXXXX)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
$B pcap $W/p1500.pcap 1500 20000 >/dev/null
$B pcap $W/p64.pcap 64 100000 >/dev/null
PORT=${PORT:-14333}
start_nats() { rm -rf $W/js; sync; nats-server -js -a 127.0.0.1 -p $PORT -sd $W/js >/dev/null 2>&1 & NATS=$!; sleep 1; }
stop_nats() { kill $NATS; wait $NATS 2>/dev/null; }
printf '[servers.bench]\nlinktype = 1\noverflow = "block"\nqueue-depth = 4\n' > $W/bench.toml
for round in $(seq ${ROUNDS:-3}); do
 for size in ${SIZES:-1500 64}; do
  if [ $size = 1500 ]; then loops=30; msgsize=389152; else loops=30; msgsize=20512; fi
  start_nats
  PACKET_IPC_RUNTIME_DIR=$W/rt $R/packet-ipcd --config $W/bench.toml 2>/dev/null & D=$!
  sleep 0.5
  PACKET_IPC_RUNTIME_DIR=$W/rt $R/packet-ipc bridge export bench --nats nats://127.0.0.1:$PORT --stream BENCH --subject bench.x --json > $W/export.json 2>$W/export.err & E=$!
  for i in $(seq 50); do grep -q "exporting" $W/export.err && break; sleep 0.1; done
  PACKET_IPC_RUNTIME_DIR=$W/rt $R/packet-ipc publish bench $W/p$size.pcap --loop $loops >/dev/null 2>&1
  sleep 1; kill -INT $E; wait $E
  kill $D; wait $D 2>/dev/null
  python3 - $W/export.json $size <<'PY'
import json,sys
d=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
s=d.get('active_seconds') or d.get('seconds')
print(f"round export size={sys.argv[2]} packets={d['packets']} msgs={d.get('messages')} bytes={d['bytes']} active={s:.2f}s  {d['packets']/s/1e6:.3f} Mpps {d['bytes']/s/1e6:.0f} MB/s packets", flush=True)
PY
  msgs=$(python3 -c "import json;d=json.loads(open('$W/export.json').read().strip().splitlines()[-1]);print(d.get('messages'))")
  stop_nats; start_nats
  echo -n "round baseline size=$size: "; $B publish nats://127.0.0.1:$PORT BASE base.x $msgsize $msgs 64 2>&1 | tail -1
  stop_nats
 done
done

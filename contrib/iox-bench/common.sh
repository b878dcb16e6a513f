# Sourced by run.sh and interleaved.sh.
IOX_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
IOX_BIN="$IOX_DIR/target/release/iox-bench"

iox_build() {
    # No-op when up to date; nice + -j 1 because the machine is shared (2 cores).
    (cd "$IOX_DIR" && CARGO_TARGET_DIR="$IOX_DIR/target" nice -n 10 cargo build --release -j 1 -q) \
        || { echo "iox-bench: build failed" >&2; exit 1; }
}

# iceoryx2 removes its services and nodes when the processes end cleanly, but by design
# keeps a tiny per-domain node counter (/dev/shm/iox2_*node.<ver>.global_mgmt) and the
# empty /tmp/iceoryx2/{nodes,services} directories. Remove them when no iox-bench is
# running; anything else left would be a stale resource: say so, then remove it.
iox_cleanup() {
    pgrep -x iox-bench >/dev/null 2>&1 && return 0
    local f extra=()
    for f in /dev/shm/iox2_* /tmp/iceoryx2/nodes/* /tmp/iceoryx2/services/*; do
        [ -e "$f" ] || continue
        case "$f" in
            /dev/shm/iox2_*node.*global_mgmt) ;;
            *) extra+=("$f") ;;
        esac
    done
    if [ "${#extra[@]}" -gt 0 ]; then
        echo "iox-bench: removing stale iceoryx2 resources: ${extra[*]}" >&2
    fi
    rm -rf /dev/shm/iox2_* /tmp/iceoryx2 2>/dev/null || true
}

#!/usr/bin/env bash
# The benchmark harness: sweeplb against HAProxy, nginx and nmap, loopback only.
#
#   bench/run.sh            full run (about 10 minutes), writes bench/results/latest.md
#   bench/run.sh --quick    smoke run (< 60 s after the build), writes bench/results/quick.md;
#                           fails only when something is broken (errors, a backend not found),
#                           never on how fast the machine is
#   bench/run.sh --no-ring  skip `cargo bench --bench ring` (the full run includes it)
#   bench/run.sh --baseline=BIN   also measure another sweeplb binary (say, a build of main)
#                           in the proxy part, interleaved, to see what a change is worth
#   bench/run.sh --access-log     also measure this build with log.access on in the proxy
#                           part, interleaved, against the same build without
#
# Every address it sends to or sweeps is in 127.0.0.0/8; every load is bounded in count and
# time; every process it starts is recorded and ended on exit. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
ring=1
baseline=
access_log=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        --no-ring) ring=0 ;;
        --ring) ring=2 ;;
        --baseline=*) baseline="${arg#--baseline=}" ;;
        --access-log) access_log=1 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (expected --quick, --no-ring, --ring, --baseline=BIN, --access-log)" >&2; exit 2 ;;
    esac
done
# The quick run skips the hashing bench unless asked: compiling it is minutes, not seconds.
if [ "$quick" = 1 ] && [ "$ring" = 1 ]; then ring=0; fi

# ---- what the harness needs, installed only if missing ----
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v nmap >/dev/null || need+=(nmap)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "run.sh: installing ${need[*]}" >&2
    if [ "$(id -u)" != 0 ]; then
        echo "run.sh: need root to apt-get install ${need[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# A /16 sweep holds thousands of sockets at once, and wrk -c1000 needs its own. A container
# may refuse to raise the hard limit; the configs in bench.py fit in 20000.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" -lt 20000 ]; then
    echo "run.sh: open file limit $(ulimit -n) is below the 20000 the benchmarks need" >&2
    exit 1
fi

echo "run.sh: cargo build --release" >&2
cargo build --release --quiet --bin sweeplb

work=$(mktemp -d /tmp/sweeplb-bench.XXXXXX)
driver=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
        kill -TERM "$driver" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$driver" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$driver" 2>/dev/null || true
    fi
    # The driver ends what it started; this is the backstop for a driver that was killed.
    if [ -f "$work/pids" ]; then
        while read -r pid; do
            kill -CONT "$pid" 2>/dev/null || true
            kill -KILL "$pid" 2>/dev/null || true
        done < "$work/pids"
    fi
    if [ "$rc" = 0 ]; then rm -rf "$work"; else echo "run.sh: logs kept in $work" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ring_out="$work/ring.txt"
if [ "$ring" != 0 ]; then
    echo "run.sh: cargo bench --bench ring" >&2
    if ! timeout 900 cargo bench --quiet --bench ring > "$ring_out" 2> "$work/ring.err"; then
        echo "(cargo bench --bench ring failed; see its output below)" >> "$ring_out"
        tail -20 "$work/ring.err" >> "$ring_out"
    fi
fi

if [ "$quick" = 1 ]; then out=bench/results/quick.md; else out=bench/results/latest.md; fi
mkdir -p bench/results
args=(--work "$work" --out "$out" --command "bench/run.sh $*")
[ "$quick" = 1 ] && args+=(--quick)
[ "$ring" != 0 ] && args+=(--ring "$ring_out")
[ -n "$baseline" ] && args+=(--baseline "$(realpath "$baseline")")
[ "$access_log" = 1 ] && args+=(--access-log)
python3 bench/bench.py "${args[@]}" &
driver=$!
wait "$driver"

#!/usr/bin/env bash
# Where the proxies spend user-space CPU per request: sweeplb and HAProxy each run under
# valgrind's callgrind in front of the same nginx backend, a bounded wrk load goes through,
# and only the load's window is counted (callgrind_control -z before, -d after). Instruction
# counts do not depend on machine noise, so the two can be compared directly; kernel time is
# not in them (bench/run.sh measures utime+stime).
#
#   bench/profile.sh            writes bench/results/profile-*.txt and prints the summary
#   bench/profile.sh --binary=PATH   profiles another sweeplb build (say, the one before a
#                               change) instead of building this tree's; same output files
#   bench/profile.sh --keep     keeps the callgrind files (path printed at the end), for
#                               `callgrind_annotate --tree=caller` on what the summary shows
#
# Loopback only (127.80.3.0/29 and 127.80.9.6-7), bounded (wrk -d), cleaned up on exit.
# perf is not used because this machine's perf cannot read hardware counters
# (`perf stat -e instructions true` reports <not supported>).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
sweeplb=target/release/sweeplb
keep=0
for arg in "$@"; do
    case "$arg" in
        --binary=*) sweeplb="${arg#--binary=}" ;;
        --keep) keep=1 ;;
        *) echo "profile.sh: unknown argument $arg (expected --binary=PATH or --keep)" >&2; exit 2 ;;
    esac
done
if [ "$sweeplb" = target/release/sweeplb ]; then
    cargo build --release --quiet --bin sweeplb
fi

work=$(mktemp -d /tmp/sweeplb-profile.XXXXXX)
pids=()
cleanup() {
    local rc=$?
    # TERM first: nginx's master takes its worker down with it (a KILLed master leaves the
    # worker running, holding the caller's stdout open).
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [ "$rc" = 0 ] && [ "$keep" = 0 ]; then rm -rf "$work"; else echo "profile.sh: logs kept in $work" >&2; fi
}
trap cleanup EXIT

backend=127.80.3.2:18180
mkdir -p "$work/tmp"
cat > "$work/backend.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/backend.pid;
error_log $work/backend-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/tmp/body; proxy_temp_path $work/tmp/proxy;
    fastcgi_temp_path $work/tmp/fcgi; uwsgi_temp_path $work/tmp/uwsgi; scgi_temp_path $work/tmp/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen $backend;
        location = /health { return 200 "ok\n"; }
        location / { default_type text/plain; return 200 "hello from the bench backend\n"; }
    }
}
EOF
nginx -p "$work" -e "$work/backend-error.log" -c "$work/backend.conf" &
pids+=($!)

cat > "$work/sweeplb.yaml" <<EOF
listen: 127.80.9.6:18100
discovery:
  subnets: [127.80.3.0/29]
  port: 18180
  health_path: /health
  check_interval: 1s
  timeout: 900ms
timeouts:
  idle: 300s
EOF
cat > "$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 1000
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.80.9.7:18100
    option forwardfor
    default_backend be
backend be
    server s1 $backend
EOF

ready() { # wait until an HTTP GET of $1 answers 200
    for _ in $(seq 1 600); do
        if python3 -c "import http.client,sys; c=http.client.HTTPConnection('${1%%/*}'.split(':')[0], int('${1%%/*}'.split(':')[1]), timeout=2); c.request('GET','/${1#*/}'); sys.exit(c.getresponse().status!=200)" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "profile.sh: $1 never answered 200" >&2
    return 1
}

pinned_cookie() { # the cookie a returning client sends to $1: the pinned one if it sets one
    python3 - "$1" <<'PY'
import http.client, sys
host, port = sys.argv[1].split(":")
c = http.client.HTTPConnection(host, int(port), timeout=5)
c.request("GET", "/", headers={"Cookie": "sweeplb=bench"})
r = c.getresponse()
r.read()
set_cookie = r.getheader("Set-Cookie") or ""
print(set_cookie.split(";")[0] if set_cookie.startswith("sweeplb=") else "sweeplb=bench")
PY
}

profile() { # name, listen, argv...
    local name=$1 listen=$2
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$work/$name.cg" "$@" > "$work/$name.log" 2>&1 &
    local pid=$!
    pids+=($pid)
    ready "$listen/"
    # A returning client, as in bench.py: a balancer that pins sessions answers the key-only
    # cookie with its pinned one, which the load then sends (no Set-Cookie per response).
    local cookie
    cookie=$(pinned_cookie "$listen")
    # Warm: connections open, caches filled, then count only the measured window.
    wrk -t1 -c8 -d3s -H "Cookie: $cookie" "http://$listen/" > /dev/null
    callgrind_control -z "$pid" > /dev/null
    wrk -t1 -c8 -d10s -H "Cookie: $cookie" "http://$listen/" > "$work/$name.wrk"
    callgrind_control -d "$pid" > /dev/null
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local requests dump
    requests=$(awk '/requests in/ {print $1}' "$work/$name.wrk")
    dump=$(ls -t "$work/$name".cg* | grep -v '\.cg$' | head -1 || true)
    [ -n "$dump" ] || dump="$work/$name.cg"
    mkdir -p bench/results
    # `head` closes the pipe early; that is not a failure.
    set +o pipefail
    {
        echo "# $name under callgrind: $requests requests (wrk -t1 -c8 -d10s, Cookie: $cookie), counted window only"
        echo "# exclusive (self) cost by function"
        callgrind_annotate --threshold=100 --auto=no --inclusive=no "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -70
        echo
        echo "# inclusive cost by function"
        callgrind_annotate --threshold=100 --auto=no --inclusive=yes "$dump" 2>/dev/null | sed -n '/file:function/,$p' | head -120
    } > "bench/results/profile-$name.txt"
    set -o pipefail
    local ir
    ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    echo "$name: $requests requests, $ir instructions, $((ir / requests)) instructions per request"
}

ready "$backend/health"
profile sweeplb 127.80.9.6:18100 "$sweeplb" --config "$work/sweeplb.yaml"
profile haproxy 127.80.9.7:18100 haproxy -db -f "$work/haproxy.cfg"
echo "annotated profiles: bench/results/profile-sweeplb.txt, bench/results/profile-haproxy.txt"

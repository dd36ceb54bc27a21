"""The benchmark driver behind bench/run.sh: starts the proxies, backends and load, measures,
and writes a markdown report.

Everything here talks to 127.0.0.0/8 only (the `loopback` check guards every address we
configure), every load is bounded by wrk's -d or a deadline, and every process is started
through `Procs`, which records its pid for run.sh's backstop and ends it on exit.

The machine is shared and noisy, so no figure stands alone: targets are measured in interleaved
rounds (the order rotates each round), and comparisons are medians of per-round ratios.
"""

import argparse
import csv
import datetime
import errno
import http.client
import ipaddress
import json
import os
import platform
import re
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPLB = os.path.join(ROOT, "target", "release", "sweeplb")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# ---- addresses: all loopback, none shared between parts ----
BACKEND = ("127.80.1.2", 18080)  # the nginx backend of the proxy bench
BACKEND_STATUS = ("127.80.1.2", 18081)  # its stub_status, not on the swept port
PROXY_RANGE = "127.80.1.0/29"  # what sweeplb sweeps to discover BACKEND
LISTEN = {
    "sweeplb": ("127.80.9.1", 18000),
    "haproxy": ("127.80.9.2", 18000),
    "nginx": ("127.80.9.3", 18000),
    "baseline": ("127.80.9.8", 18000),  # another sweeplb build, with --baseline
    "access": ("127.80.9.10", 18000),  # this build with log.access on, with --access-log
    "direct": BACKEND,
}
SWEEP_PORT = 19000
SWEEP_LISTEN = ("127.83.0.1", 19001)
SWEEP_RANGES = {
    "/20": ("127.82.0.0/20", ["127.82.0.10", "127.82.5.77", "127.82.10.200", "127.82.15.254"]),
    "/16": ("127.81.0.0/16", ["127.81.0.5", "127.81.77.1", "127.81.160.33", "127.81.255.254"]),
}
REACT_RANGE = "127.80.2.0/29"
REACT_PORT = 19100
REACT_BACKENDS = ["127.80.2.2", "127.80.2.3", "127.80.2.4"]
REACT_NEW = "127.80.2.5"
REACT_LISTEN = {"sweeplb": ("127.80.9.4", 19101), "haproxy": ("127.80.9.5", 19101)}
BALANCE_RANGE = "127.80.4.0/29"
BALANCE_PORT = 19200
BALANCE_BACKENDS = ["127.80.4.2", "127.80.4.3", "127.80.4.4"]
BALANCE_NEW = ["127.80.4.5", "127.80.4.6"]
BALANCE_LISTEN = ("127.80.9.9", 19201)
COOKIE = "Cookie: sweeplb=bench"

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


def loopback(addr):
    """Refuses any address or range outside 127.0.0.0/8: the harness's network rule."""
    net = ipaddress.ip_network(addr, strict=False)
    if not net.subnet_of(LOOPBACK):
        raise SystemExit(f"bench: {addr} is not loopback; refusing")
    return addr


for a in [BACKEND[0], BACKEND_STATUS[0], PROXY_RANGE, SWEEP_LISTEN[0], REACT_RANGE, REACT_NEW]:
    loopback(a)
for a, _ in list(LISTEN.values()) + list(REACT_LISTEN.values()):
    loopback(a)
for net, live in SWEEP_RANGES.values():
    loopback(net)
    for a in live:
        assert ipaddress.ip_address(a) in ipaddress.ip_network(net)
for a in REACT_BACKENDS + [REACT_NEW]:
    assert ipaddress.ip_address(a) in ipaddress.ip_network(REACT_RANGE)


def log(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


# ---- processes ----


class Procs:
    """Every process the driver starts; each pid is also written to WORK/pids."""

    def __init__(self, work):
        self.work = work
        self.procs = []

    def start(self, name, argv, env=None):
        logf = open(os.path.join(self.work, f"{name}.log"), "ab")
        e = dict(os.environ)
        e.update(env or {})
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e)
        p.name = name
        self.procs.append(p)
        self.record(p.pid)
        return p

    def record(self, pid):
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write(f"{pid}\n")

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            for pid in family(p.pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            p.send_signal(sig)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


def children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def family(pid):
    """A process and its children (nginx's workers)."""
    return [pid] + children(pid)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total


def status_kib(pids, field):
    """A /proc/PID/status memory field in KiB, summed over the processes (nginx: master and
    workers)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


def hwm_kib(pids):
    """Peak RSS (VmHWM)."""
    return status_kib(pids, "VmHWM")


def rss_kib(pids):
    """Current RSS (VmRSS)."""
    return status_kib(pids, "VmRSS")


def pause(pids):
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)


def resume(pids):
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


def wait_port(addr, deadline_s=10):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(addr, timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"bench: nothing listens on {addr[0]}:{addr[1]} after {deadline_s}s")


def http_get(addr, path, headers=None, timeout=2):
    c = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()


def lb_health(addr):
    status, body, _ = http_get(addr, "/_lb/health")
    return json.loads(body)


# ---- configs ----


def nofile_hard():
    """The open-file hard limit: what the proxies can have, since raising it needs a privilege a
    container may not grant (nginx's setrlimit to 65536 fails with "Operation not permitted"
    against this one's 20000)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def nginx_conf(work, name, workers, http_block):
    conf = os.path.join(work, f"{name}.conf")
    tmp = os.path.join(work, f"{name}-tmp")
    os.makedirs(tmp, exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""
worker_processes {workers};
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
worker_rlimit_nofile {min(nofile_hard(), 65536)};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Keep-alive limits out of the way: nginx closes a connection after 1000 requests by
    # default, which would make every proxy reconnect once per 1000 requests.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
{http_block}
}}
""")
    return conf


def start_nginx(procs, work, name, workers, http_block, wait_for):
    conf = nginx_conf(work, name, workers, http_block)
    p = procs.start(name, ["nginx", "-p", work, "-e", f"{work}/{name}-error.log", "-c", conf])
    wait_port(wait_for)
    time.sleep(0.1)
    for c in children(p.pid):
        procs.record(c)
    return p


def haproxy_conf(work, name, body, maxconn=8000):
    """HAProxy reserves two descriptors per connection plus a few of its own, and (strict-limits,
    on by default) refuses to start when that exceeds the open-file hard limit: 8000 fits this
    container's 20000 with room to spare; callers that need more pass the most that fits."""
    conf = os.path.join(work, f"{name}.cfg")
    with open(conf, "w") as f:
        f.write(f"""
global
    nbthread 2
    maxconn {maxconn}
    stats socket {work}/{name}.sock mode 600 level admin
defaults
    mode http
    option http-keep-alive
    http-reuse safe
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 300s
{body}
""")
    return conf


def haproxy_cli(sock_path, command):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(sock_path)
    s.sendall(command.encode() + b"\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode()


def haproxy_stat(sock_path):
    text = haproxy_cli(sock_path, "show stat").lstrip("# ")
    return list(csv.DictReader(text.splitlines()))


def haproxy_info(sock_path):
    """`show info` as a dict: Maxconn, Ulimit-n, CurrConns, ..."""
    return dict(line.split(": ", 1) for line in haproxy_cli(sock_path, "show info").splitlines() if ": " in line)


def sweeplb_conf(work, name, listen, subnet, port, extra=""):
    loopback(subnet)
    conf = os.path.join(work, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(f"""listen: {listen[0]}:{listen[1]}
discovery:
  subnets: [{subnet}]
  port: {port}
  health_path: /health
{extra}""")
    return conf


def start_sweeplb(procs, name, conf, binary=SWEEPLB):
    out = subprocess.run([binary, "--config", conf, "check"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench: {conf} is refused by sweeplb check:\n{out.stdout}{out.stderr}")
    return procs.start(name, [binary, "--config", conf], env={"RUST_LOG": "info"})


# ---- wrk ----

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def ms_of(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def wrk(addr, conns, seconds, header=None, timeout_s=None):
    threads = min(2, conns)
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    if timeout_s:
        argv += ["--timeout", f"{timeout_s}s"]
    if header:
        argv += ["-H", header]
    argv.append(f"http://{loopback(addr[0])}:{addr[1]}/")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30).stdout
    r = {"raw": out}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        r[f"p{pct}"] = ms_of(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    r["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    r["sockerr"] = tuple(int(x) for x in m.groups()) if m else (0, 0, 0, 0)
    return r


# ---- part 1: proxies ----


class Target:
    def __init__(self, name, addr, pids_fn, header=COOKIE):
        self.name = name
        self.addr = addr
        self.pids_fn = pids_fn  # the proxy's processes; empty for direct
        self.header = header

    @property
    def pids(self):
        return self.pids_fn()


def stub_accepts():
    _, body, _ = http_get(BACKEND_STATUS, "/")
    # "Active connections: N \nserver accepts handled requests\n A H R \n..."
    return int(body.split(b"\n")[2].split()[0])


def idle_clients(addr, header, n, batch=500, deadline_s=60):
    """Opens n keep-alive connections to addr, sends one `GET /` on each and reads its whole
    response (a 200, framed by Content-Length), and returns the sockets, open and idle.

    One selectors loop, no thread per connection. The connections open in batches, each batch
    answered before the next opens, so a burst cannot overflow the proxy's listen backlog
    (sweeplb's is 1024). Any refusal, error, close or non-200 ends the bench: a proxy that
    dropped some of them would show less memory than it needs to hold them all."""
    loopback(addr[0])
    request = f"GET / HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n{header}\r\n\r\n".encode()
    end = time.monotonic() + deadline_s
    sel = selectors.DefaultSelector()
    held, opened = [], []

    def fail(why):
        raise SystemExit(f"bench: idle connections to {addr[0]}:{addr[1]}: {why} "
                         f"({len(held)} of {n} held)")

    try:
        while len(held) < n:
            waiting = 0
            for _ in range(min(batch, n - len(held))):
                s = socket.socket()
                opened.append(s)
                s.setblocking(False)
                err = s.connect_ex(addr)
                if err not in (0, errno.EINPROGRESS):
                    fail(f"connect: {os.strerror(err)}")
                sel.register(s, selectors.EVENT_WRITE, {"out": request, "in": b""})
                waiting += 1
            while waiting:
                left = end - time.monotonic()
                if left <= 0:
                    fail(f"{waiting} still unanswered after {deadline_s}s")
                for key, _ in sel.select(min(left, 1.0)):
                    s, c = key.fileobj, key.data
                    try:
                        if c["out"]:
                            err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if err:
                                fail(f"connect: {os.strerror(err)}")
                            c["out"] = c["out"][s.send(c["out"]):]
                            if not c["out"]:
                                sel.modify(s, selectors.EVENT_READ, c)
                            continue
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        fail(f"{e}")
                    if not data:
                        fail(f"closed by the proxy before a whole response: {c['in'][:200]!r}")
                    c["in"] += data
                    head, sep, body = c["in"].partition(b"\r\n\r\n")
                    if not sep:
                        continue
                    lines = head.decode("latin-1").split("\r\n")
                    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                    length = fields.get("content-length")
                    if length is None:
                        fail(f"a response without Content-Length: {head[:300]!r}")
                    if len(body) < int(length):
                        continue
                    if lines[0].split()[1:2] != ["200"] or len(body) > int(length):
                        fail(f"answered {c['in'][:300]!r}")
                    sel.unregister(s)
                    held.append(s)
                    waiting -= 1
        return held
    except BaseException:
        for s in opened:
            s.close()
        raise
    finally:
        sel.close()


def closed_by_peer(socks):
    """How many of these idle connections the other side has closed (or sent anything on)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return len(sel.select(0))


def haproxy_idle_maxconn(idle):
    """HAProxy's maxconn in the proxy part: enough for the idle case's connections if the
    open-file hard limit allows it, else the most it allows. With the proxy part's config,
    HAProxy 2.6 asks for 2 × maxconn + 28 descriptors and refuses to start if that exceeds the
    hard limit ("Cannot raise FD limit to 20002, limit is 20000" at 9987): 9986 here."""
    return min(max(8000, idle), (nofile_hard() - 28) // 2)


def proxy_part(procs, work, quick, baseline=None, access_log=False, idle=10000):
    ip, port = BACKEND
    backend = start_nginx(procs, work, "backend", 1, f"""
    server {{
        listen {ip}:{port} backlog=4096;
        location = /health {{ return 200 "ok\\n"; }}
        location / {{ default_type text/plain; return 200 "hello from the bench backend\\n"; }}
    }}
    server {{
        listen {BACKEND_STATUS[0]}:{BACKEND_STATUS[1]};
        location / {{ stub_status; }}
    }}
""", BACKEND)

    # Health checks are rare here (rise 1 joins on the first sweep) so that sweeplb's probes do
    # not show up in the backend's accept count while another proxy is measured: at most one
    # a minute, against tens of thousands of requests a round.
    def sweeplb(name, binary, extra=""):
        conf = sweeplb_conf(work, name, LISTEN[name], PROXY_RANGE, port, """  check_interval: 60s
  sweep_interval: 2s
  timeout: 500ms
  rise: 1
timeouts:
  idle: 300s
""" + extra)
        return start_sweeplb(procs, name, conf, binary)

    lb = sweeplb("sweeplb", SWEEPLB)
    base = sweeplb("baseline", baseline) if baseline else None
    # The same build writing an access line per request; its stderr goes to WORK/access.log,
    # as every process's output does (Procs.start).
    acc = sweeplb("access", SWEEPLB, "log:\n  access: true\n") if access_log else None
    hconf = haproxy_conf(work, "haproxy", f"""
frontend fe
    bind {LISTEN['haproxy'][0]}:{LISTEN['haproxy'][1]}
    option forwardfor
    default_backend be
backend be
    balance roundrobin
    server s1 {ip}:{port}
""", maxconn=haproxy_idle_maxconn(idle))
    hap = procs.start("haproxy", ["haproxy", "-db", "-f", hconf])
    ng = start_nginx(procs, work, "nginx", 2, f"""
    upstream be {{
        server {ip}:{port};
        keepalive 256;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen {LISTEN['nginx'][0]}:{LISTEN['nginx'][1]} backlog=4096;
        location / {{
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
""", LISTEN["nginx"])
    wait_port(LISTEN["haproxy"])
    balancers = ["sweeplb"] + (["baseline"] if base else []) + (["access"] if acc else [])
    for name in balancers:
        wait_port(LISTEN[name])
        # sweeplb must find its backend itself.
        end = time.monotonic() + 15
        while True:
            h = lb_health(LISTEN[name])
            if h["healthy"] == 1 and h["backends"][0]["addr"] == f"{ip}:{port}":
                break
            if time.monotonic() > end:
                raise SystemExit(f"bench: {name} did not discover {ip}:{port} in {PROXY_RANGE}: {h}")
            time.sleep(0.1)
        log(f"{name} discovered {ip}:{port} by sweeping {PROXY_RANGE}")

    targets = [
        Target("direct", LISTEN["direct"], lambda: []),
        Target("sweeplb", LISTEN["sweeplb"], lambda: [lb.pid]),
        Target("haproxy", LISTEN["haproxy"], lambda: [hap.pid]),
        Target("nginx", LISTEN["nginx"], lambda: family(ng.pid)),
    ]
    if base:
        targets.append(Target("baseline", LISTEN["baseline"], lambda: [base.pid]))
    if acc:
        targets.append(Target("access", LISTEN["access"], lambda: [acc.pid]))
    proxies = [t for t in targets if t.pids]
    for t in targets:
        status, body, headers = http_get(t.addr, "/", {"Cookie": "sweeplb=bench"})
        if status != 200 or b"bench backend" not in body:
            raise SystemExit(f"bench: {t.name} answered {status} {body[:200]!r}")
        # A sweeplb that pins sessions answers a key-only cookie by pinning it: a returning
        # client sends the pinned cookie back, and gets no Set-Cookie from then on.
        pinned = {k.lower(): v for k, v in headers.items()}.get("set-cookie", "")
        if pinned.startswith("sweeplb="):
            t.header = "Cookie: " + pinned.split(";")[0]
            status, _, headers = http_get(t.addr, "/", {"Cookie": pinned.split(";")[0]})
            if status != 200 or any(k.lower() == "set-cookie" for k in headers):
                raise SystemExit(f"bench: {t.name} did not honour its own pinned cookie: {status} {headers}")
            log(f"{t.name}: returning clients send the pinned cookie {pinned.split(';')[0]}")

    def measure(t, conns, seconds, header):
        before_cpu = cpu_ticks(t.pids) if t.pids else 0
        before_be = cpu_ticks([backend.pid] + children(backend.pid))
        before_acc = stub_accepts()
        before_lb = lb_health(LISTEN[t.name])["upstream"] if t.name in balancers else None
        r = wrk(t.addr, conns, seconds, header)
        after_acc = stub_accepts()
        r["cpu_s"] = (cpu_ticks(t.pids) - before_cpu) / CLK_TCK if t.pids else float("nan")
        r["backend_cpu_s"] = (cpu_ticks([backend.pid] + children(backend.pid)) - before_be) / CLK_TCK
        if t.name in balancers:
            after_lb = lb_health(LISTEN[t.name])["upstream"]
            r["new_conns"] = after_lb["connects"] - before_lb["connects"]
            r["reused"] = after_lb["reused"] - before_lb["reused"]
        else:
            # The second stub_status request counts itself; the idle proxies send nothing.
            r["new_conns"] = after_acc - before_acc - 1
        r["backend_accepts"] = after_acc - before_acc - 1
        r["hwm_kib"] = hwm_kib(t.pids) if t.pids else 0
        bad = r["non2xx"] + r["sockerr"][0] + r["sockerr"][3]
        if r["requests"] == 0 or bad:
            raise SystemExit(f"bench: {t.name} c={conns}: {r['requests']} requests, {r['non2xx']} non-2xx, "
                             f"socket errors {r['sockerr']}\n{r['raw']}")
        return r

    rounds = 1 if quick else 5
    secs64 = 1 if quick else 5
    secs1 = 1 if quick else 3
    log(f"warm-up: every target, c=64, {1 if quick else 3}s")
    for t in targets:
        measure(t, 64, 1 if quick else 3, t.header)
    results = {(t.name, c): [] for t in targets for c in (64, 1)}
    for rnd in range(rounds):
        order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
        for conns, secs in ((64, secs64), (1, secs1)):
            for t in order:
                r = measure(t, conns, secs, t.header)
                results[(t.name, conns)].append(r)
                log(f"round {rnd + 1}/{rounds} {t.name:8} c={conns:<3} {r['rps']:9.0f} req/s "
                    f"p50 {r['p50']:.3f} ms p99 {r['p99']:.3f} ms cpu {r['cpu_s']:.2f}s "
                    f"new conns {r['new_conns']}")
    hwm64 = {t.name: hwm_kib(t.pids) for t in proxies}

    log("c=1000, short run per target")
    c1000 = {}
    for t in targets:
        r = measure(t, 1000, 1 if quick else 5, t.header)
        c1000[t.name] = r
    hwm1000 = {t.name: hwm_kib(t.pids) for t in proxies}

    # Idle keep-alive clients, after the runs above have warmed every proxy: what its memory
    # grows by per client connection it holds open with nothing to do. The access-log build is
    # this build again and is left out.
    maxconn = int(haproxy_info(os.path.join(work, "haproxy.sock"))["Maxconn"])
    n_idle = min(idle, maxconn)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if n_idle and soft < n_idle + 100:
        raise SystemExit(f"bench: the idle case opens {n_idle} connections, but the open-file limit is {soft}")
    idle_rss = {}
    idle_targets = [t for t in proxies if t.name != "access"] if n_idle else []
    for t in idle_targets:
        time.sleep(1)  # the previous target's closes, and the c=1000 run's, out of the way
        before = rss_kib(t.pids)
        t0 = time.monotonic()
        socks = idle_clients(t.addr, t.header, n_idle)
        try:
            opened_s = time.monotonic() - t0
            time.sleep(2)
            after = rss_kib(t.pids)
            hwm = hwm_kib(t.pids)
            closed = closed_by_peer(socks)
            if closed:
                raise SystemExit(f"bench: {t.name} closed {closed} of {n_idle} idle connections within 2s")
        finally:
            for s in socks:
                s.close()
        idle_rss[t.name] = {"before": before, "after": after, "hwm": hwm}
        log(f"idle {t.name:8} {n_idle} connections held (opened in {opened_s:.1f}s): RSS {before / 1024:.1f} → "
            f"{after / 1024:.1f} MiB, {(after - before) / n_idle:.2f} KiB each, peak {hwm / 1024:.1f} MiB")
    # A returning client is measured above; a first visit (no cookie, so a fresh key and a
    # Set-Cookie per request) once more, for the record. Last, after the memory readings
    # above: every new key is a user sweeplb's session table remembers for `session_idle`, so
    # a million first visits fill it, and that is the table's memory, not the connections'. It
    # is read here on its own (RSS after the first visits).
    fresh = []
    for rnd in range(1 if quick else 3):
        for t in [targets[2], targets[1]] + targets[4:]:
            hdr = COOKIE if t.name == "haproxy" else None
            fresh.append((t.name, measure(t, 64, secs64, hdr)))
    rss_fresh = {t.name: rss_kib(t.pids) for t in proxies}

    access_file = None
    if acc:
        path = os.path.join(work, "access.log")
        # Every request measured went through the log (after lines are flushed at exit, the
        # count is exact; before, a few may still be queued).
        with open(path, "rb") as f:
            lines = sum(1 for line in f if b"sweeplb::access" in line)
        access_file = {"lines": lines, "bytes": os.path.getsize(path),
                       "requests": sum(r["requests"] for (n, _), rs in results.items() if n == "access" for r in rs)}
        if lines == 0:
            raise SystemExit(f"bench: the access-log sweeplb wrote no access line to {path}")
    return {"access_file": access_file, "results": results, "hwm64": hwm64, "hwm1000": hwm1000, "c1000": c1000, "fresh": fresh,
            "rss_fresh": rss_fresh,
            "idle": {"n": n_idle, "asked": idle, "haproxy_maxconn": maxconn, "nofile": nofile_hard(), "rss": idle_rss},
            "rounds": rounds, "secs64": secs64, "secs1": secs1,
            "names": [t.name for t in targets], "stop": [p for p in (lb, base, acc, hap, ng, backend) if p]}


# ---- part 2: sweep ----

SWEEP_PARAMS = {
    "/20": "  check_interval: 100ms\n  sweep_interval: 100ms\n  timeout: 50ms\n  concurrency: 4096\n",
    "/16": "  check_interval: 200ms\n  sweep_interval: 500ms\n  timeout: 100ms\n  concurrency: 16384\n",
}


def nmap(net, port):
    loopback(net)
    t0 = time.monotonic()
    out = subprocess.run(["nmap", "-sT", "-p", str(port), "-n", "-Pn", "--max-retries", "0", "-oG", "-", net],
                         capture_output=True, text=True, timeout=120).stdout
    took = time.monotonic() - t0
    found = set()
    for line in out.splitlines():
        if "/open/" in line:
            found.add(line.split()[1])
    return took, found


def sweep_part(procs, work, quick):
    all_live = [a for _, live in SWEEP_RANGES.values() for a in live]
    listens = "\n".join(f"        listen {a}:{SWEEP_PORT};" for a in all_live)
    backends = start_nginx(procs, work, "sweep-backends", 1, f"""
    server {{
{listens}
        location = /health {{ return 200 "ok\\n"; }}
    }}
""", (all_live[0], SWEEP_PORT))
    out = {}
    pairs = 1 if quick else 5
    for label, (net, live) in SWEEP_RANGES.items():
        conf = sweeplb_conf(work, f"sweep{label[1:]}", SWEEP_LISTEN, net, SWEEP_PORT, SWEEP_PARAMS[label])
        lb = start_sweeplb(procs, f"sweep{label[1:]}", conf)
        wait_port(SWEEP_LISTEN)
        want = {f"{a}:{SWEEP_PORT}" for a in live}
        end = time.monotonic() + 30
        while True:
            h = lb_health(SWEEP_LISTEN)
            got = {b["addr"] for b in h["backends"]}
            if h.get("last_sweep") and got == want and h["healthy"] == len(want):
                break
            if got - want:
                raise SystemExit(f"bench: sweeplb invented backends in {net}: {sorted(got - want)}")
            if time.monotonic() > end:
                raise SystemExit(f"bench: sweeplb found {sorted(got)} of {sorted(want)} in {net} after 30s")
            time.sleep(0.05)
        rows = []
        for i in range(pairs):
            resume([lb.pid])
            # The first report after a resume may cover a round that was stopped midway.
            seen, reports = None, []
            cpu0 = None
            end = time.monotonic() + 30
            while len(reports) < 3 and time.monotonic() < end:
                h = lb_health(SWEEP_LISTEN)
                s = h.get("last_sweep")
                key = (s["duration_ms"], s["addresses"], s["found"]) if s else None
                if key != seen:
                    if seen is not None or reports:
                        reports.append((time.monotonic(), cpu_ticks([lb.pid]), s, h))
                    seen = key
                time.sleep(0.01)
            pause([lb.pid])
            if len(reports) < 3:
                raise SystemExit(f"bench: sweeplb reported {len(reports)} sweeps of {net} in 30s")
            _, _, s, h = reports[2]
            got = {b["addr"] for b in h["backends"]}
            cpu_per_round = (reports[2][1] - reports[1][1]) / CLK_TCK
            t_nmap, nmap_found = nmap(net, SWEEP_PORT)
            nmap_found = {f"{a}:{SWEEP_PORT}" for a in nmap_found}
            rows.append({"sweep_s": s["duration_ms"] / 1e3, "addresses": s["addresses"], "found": s["found"],
                         "backends": sorted(got), "nmap_s": t_nmap, "nmap_found": sorted(nmap_found),
                         "cpu_s": cpu_per_round})
            log(f"sweep {net}: sweeplb {s['duration_ms']:.0f} ms ({s['addresses']} probed, found {s['found']}, "
                f"~{cpu_per_round:.2f}s CPU), nmap {t_nmap * 1e3:.0f} ms (found {len(nmap_found)})")
            if got != want or s["found"] != len(want):
                raise SystemExit(f"bench: sweeplb's sweep of {net} shows {sorted(got)} (found {s['found']}), "
                                 f"expected {sorted(want)}")
            if nmap_found != want:
                raise SystemExit(f"bench: nmap found {sorted(nmap_found)} in {net}, expected {sorted(want)}")
        procs.stop(lb)
        out[label] = {"net": net, "rows": rows, "params": SWEEP_PARAMS[label].strip().replace("\n  ", ", ")}
    procs.stop(backends)
    return out


# ---- part 3: reaction ----


class Client(threading.Thread):
    """A bounded client loop: GET / over keep-alive at about `rate` per second until stopped or
    `deadline_s`, recording (start time, status or None, backend, seconds taken)."""

    def __init__(self, addr, rate, deadline_s):
        super().__init__(daemon=True)
        self.addr = addr
        self.gap = 1.0 / rate
        self.deadline = time.monotonic() + deadline_s
        self.log = []
        self.stopped = threading.Event()

    def run(self):
        conn = None
        nxt = time.monotonic()
        while not self.stopped.is_set() and time.monotonic() < self.deadline and len(self.log) < 100000:
            now = time.monotonic()
            if now < nxt:
                time.sleep(nxt - now)
            nxt = max(nxt + self.gap, time.monotonic() - self.gap)
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.addr[0], self.addr[1], timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                self.log.append((t, r.status, r.getheader("x-backend-ip"), time.monotonic() - t))
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                self.log.append((t, None, type(e).__name__, time.monotonic() - t))
                if conn:
                    conn.close()
                conn = None

    def stop(self):
        self.stopped.set()
        self.join(10)


class Clients:
    """A few client loops side by side, so one stalled request does not stop the others."""

    def __init__(self, addr, n=4, rate=50, deadline_s=45):
        self.loops = [Client(addr, rate, deadline_s) for _ in range(n)]
        for c in self.loops:
            c.start()

    @property
    def log(self):
        return sorted(e for c in self.loops for e in list(c.log))

    def stop(self):
        for c in self.loops:
            c.stopped.set()
        for c in self.loops:
            c.join(10)


def balance_part(procs, work, quick):
    """Bounded load after a scale-up: users pinned to three webapps, two more join, then new
    users arrive. Without bounded load the ring spreads the newcomers evenly and the old three
    stay heavier; with it, newcomers skip backends above the cap."""
    def webapp(ip):
        return procs.start(f"webapp-{ip}", [SWEEPLB, "webapp", "--listen", f"{loopback(ip)}:{BALANCE_PORT}", "--drain-grace", "0s"],
                           env={"RUST_LOG": "warn"})

    def routed():
        h = lb_health(BALANCE_LISTEN)
        return {b["addr"].split(":")[0] for b in h["backends"] if b["routed"]}

    def wait_routed(want):
        end = time.monotonic() + 20
        while routed() != set(want):
            if time.monotonic() > end:
                raise SystemExit(f"bench: balance part: routed {routed()}, wanted {want}")
            time.sleep(0.1)

    def first_visits(n):
        for _ in range(n):
            status, _, headers = http_get(BALANCE_LISTEN, "/")
            if status != 200 or not any(k.lower() == "set-cookie" for k in headers):
                raise SystemExit(f"bench: balance part: a first visit got {status} {headers}")

    half = 100 if quick else 500
    out = {}
    for label, factor in (("off", None), ("1.25", 1.25)):
        apps = [webapp(ip) for ip in BALANCE_BACKENDS]
        for ip in BALANCE_BACKENDS:
            wait_port((ip, BALANCE_PORT))
        extra = ("  check_interval: 200ms\n  sweep_interval: 400ms\n  timeout: 150ms\n"
                 "balance:\n  session_idle: 10m\n" + (f"  bounded_load: {factor}\n" if factor else ""))
        conf = sweeplb_conf(work, f"balance-{label}", BALANCE_LISTEN, BALANCE_RANGE, BALANCE_PORT, extra)
        lb = start_sweeplb(procs, f"balance-{label}", conf)
        wait_port(BALANCE_LISTEN)
        wait_routed(BALANCE_BACKENDS)
        first_visits(half)
        apps += [webapp(ip) for ip in BALANCE_NEW]
        wait_routed(BALANCE_BACKENDS + BALANCE_NEW)
        time.sleep(1.2)  # a tally, so the old three's sessions are counted
        before = lb_health(BALANCE_LISTEN)["bounded_load_diverted"]
        first_visits(half)
        time.sleep(1.2)
        h = lb_health(BALANCE_LISTEN)
        sessions = {b["addr"].split(":")[0]: b["sessions"] for b in h["backends"]}
        counts = [sessions.get(ip, 0) for ip in BALANCE_BACKENDS + BALANCE_NEW]
        out[label] = {"sessions": counts, "busiest_mean": max(counts) / (sum(counts) / len(counts)),
                      "diverted": h["bounded_load_diverted"] - before, "newcomers": half}
        log(f"balance part, bounded_load {label}: sessions {counts}, busiest/mean "
            f"{out[label]['busiest_mean']:.2f}, diverted {out[label]['diverted']} of {half}")
        for p in [lb] + apps:
            procs.stop(p)
    return out


def react_part(procs, work, quick):
    def webapp(ip):
        return procs.start(f"webapp-{ip}", [SWEEPLB, "webapp", "--listen", f"{loopback(ip)}:{REACT_PORT}", "--drain-grace", "0s"],
                           env={"RUST_LOG": "warn"})

    def routed_sweeplb():
        h = lb_health(REACT_LISTEN["sweeplb"])
        return {b["addr"].split(":")[0] for b in h["backends"] if b["routed"]}

    hsock = os.path.join(work, "haproxy-react.sock")

    def routed_haproxy():
        return {r["svname"].replace("w", "127.80.2.") for r in haproxy_stat(hsock)
                if r["pxname"] == "be" and r["svname"].startswith("w") and r["status"].startswith("UP")}

    servers = "\n".join(f"    server w{ip.split('.')[-1]} {ip}:{REACT_PORT} check" for ip in REACT_BACKENDS + [REACT_NEW])
    reps = 1 if quick else 3
    out = {"sweeplb": [], "haproxy": []}
    for rep in range(reps):
        for name in ("sweeplb", "haproxy"):
            apps = {ip: webapp(ip) for ip in REACT_BACKENDS}
            for ip in REACT_BACKENDS:
                wait_port((ip, REACT_PORT))
            if name == "sweeplb":
                conf = sweeplb_conf(work, "react-sweeplb", REACT_LISTEN["sweeplb"], REACT_RANGE, REACT_PORT)
                proxy = start_sweeplb(procs, "react-sweeplb", conf)
                routed = routed_sweeplb
            else:
                conf = haproxy_conf(work, "haproxy-react", f"""
frontend fe
    bind {REACT_LISTEN['haproxy'][0]}:{REACT_LISTEN['haproxy'][1]}
    default_backend be
backend be
    balance roundrobin
{servers}
""")
                proxy = procs.start("haproxy-react", ["haproxy", "-db", "-f", conf])
                routed = routed_haproxy
            wait_port(REACT_LISTEN[name])
            end = time.monotonic() + 20
            while routed() != set(REACT_BACKENDS):
                if time.monotonic() > end:
                    raise SystemExit(f"bench: {name} routes {routed()}, expected {REACT_BACKENDS}")
                time.sleep(0.05)
            client = Clients(REACT_LISTEN[name])
            time.sleep(0.5 if quick else 1.5)
            victim = REACT_BACKENDS[1]
            t_kill = time.monotonic()
            apps[victim].kill()
            apps[victim].wait()
            t_out = None
            end = t_kill + 20
            while time.monotonic() < end:
                if victim not in routed():
                    t_out = time.monotonic()
                    break
                time.sleep(0.01)
            time.sleep(0.5 if quick else 1.0)
            t_start = time.monotonic()
            apps[REACT_NEW] = webapp(REACT_NEW)
            t_join = None
            end = t_start + 20
            while time.monotonic() < end and t_join is None:
                for t, status, b, _ in client.log:
                    if t >= t_start and status == 200 and b == REACT_NEW:
                        t_join = t
                        break
                time.sleep(0.02)
            time.sleep(0.5)
            client.stop()
            done = client.log
            fails_kill = sum(1 for t, s, _, _ in done if s != 200 and t_kill <= t <= (t_out or end) + 1)
            fails = sum(1 for _, s, _, _ in done if s != 200)
            slowest = max((d for t, _, _, d in done if t_kill - 0.5 <= t <= (t_out or end) + 1), default=0.0)
            statuses = {}
            for _, s, b, _ in done:
                if s != 200:
                    statuses[s or b] = statuses.get(s or b, 0) + 1

            # The same kill without client traffic: only the health checks can notice. The
            # quick run leaves it out to stay within its minute.
            victim2 = REACT_BACKENDS[2]
            t_kill2 = time.monotonic()
            apps[victim2].kill()
            apps[victim2].wait()
            t_out2 = None
            end = t_kill2 + 20
            while time.monotonic() < end and not quick:
                if victim2 not in routed():
                    t_out2 = time.monotonic()
                    break
                time.sleep(0.01)
            row = {"out_s": (t_out - t_kill) if t_out else None, "join_s": (t_join - t_start) if t_join else None,
                   "fails": fails, "fails_kill": fails_kill, "requests": len(done), "statuses": statuses,
                   "slowest_s": slowest,
                   "out_idle_s": (t_out2 - t_kill2) if t_out2 else None}
            out[name].append(row)
            log(f"reaction {name}: out of routing {row['out_s']}, idle {row['out_idle_s']}, "
                f"new backend serving after {row['join_s']}; {fails} failed of {len(done)} {statuses}, "
                f"slowest GET around the kill {slowest:.3f}s")
            procs.stop(proxy)
            for p in apps.values():
                procs.stop(p)
            if t_out is None or t_join is None or (t_out2 is None and not quick):
                raise SystemExit(f"bench: {name} reaction did not complete: {row}")
    return out


# ---- report ----


def med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def fmt(x, spec=".1f"):
    return "n/a" if x is None or x != x else format(x, spec)


def versions():
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {
        "sweeplb": first([SWEEPLB, "--version"]) + " @ " + first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "rustc": first(["rustc", "--version"]),
        "haproxy": first(["haproxy", "-v"]),
        "nginx": first(["nginx", "-v"]),
        "wrk": first(["wrk", "-v"]).split(" [")[0],
        "nmap": first(["nmap", "--version"]),
        "kernel": platform.release(),
    }


def report(args, p1, p2, p3, p4, ring_text):
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        mem = f"{int(f.readline().split()[1]) // 1024 // 1024} GiB"
    v = versions()
    L = []
    w = L.append
    w(f"# sweeplb benchmarks{' (quick smoke run: numbers are not meaningful)' if args.quick else ''}")
    w("")
    w(f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
    w(f"- machine: {os.cpu_count()} CPUs ({model}), {mem}; shared with other work, so every comparison "
      f"is a median of per-round ratios from interleaved rounds")
    w(f"- versions: {'; '.join(f'{k} {v}' if not v.lower().startswith(k) else v for k, v in v.items())}")
    w(f"- command: `{args.command.strip()}`")
    w("")
    targets = []
    if p1:
        R = p1["results"]
        w(f"## Proxy: one nginx backend (1 worker, short 200), wrk -t2, {p1['rounds']} interleaved rounds "
          f"({p1['secs64']}s at c=64, {p1['secs1']}s at c=1) after a warm-up")
        w("")
        w("Every target gets `-H 'Cookie: sweeplb=bench'`: sweeplb's cookie mode measured for a returning "
          "client (the key is read from the cookie, no Set-Cookie; a build that pins sessions gets "
          "the pinned cookie it set on a first request). HAProxy: `nbthread 2`, keep-alive, "
          "`http-reuse safe`, `option forwardfor`, one server. nginx: 2 workers, `proxy_pass` to an upstream "
          "with `keepalive 256`. sweeplb: its backend discovered by sweeping "
          f"{PROXY_RANGE} (checks once a minute, so its probes stay out of the backend's accept count).")
        w("")
        w("| target | req/s c=64 | p50 c=64 | p99 c=64 | p50 c=1 | p99 c=1 | proxy CPU/req | "
          "new upstream conns / 1000 req | peak RSS c=64 | peak RSS c=1000 |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        names = p1["names"]
        for n in names:
            a, b = R[(n, 64)], R[(n, 1)]
            cpu = med([r["cpu_s"] / r["requests"] * 1e6 for r in a]) if n != "direct" else None
            conns = med([r["new_conns"] / r["requests"] * 1000 for r in a])
            w(f"| {n} | {med([r['rps'] for r in a]):,.0f} | {med([r['p50'] for r in a]):.3f} ms | "
              f"{med([r['p99'] for r in a]):.3f} ms | {med([r['p50'] for r in b]):.3f} ms | "
              f"{med([r['p99'] for r in b]):.3f} ms | {fmt(cpu)} µs | {conns:.3f} | "
              f"{fmt(p1['hwm64'].get(n, None) and p1['hwm64'][n] / 1024)} MiB | "
              f"{fmt(p1['hwm1000'].get(n, None) and p1['hwm1000'][n] / 1024)} MiB |")
        w("")
        w("Medians over rounds. CPU is utime+stime of the proxy's processes (nginx: master + workers) "
          "from /proc/PID/stat; peak RSS is VmHWM (summed over nginx's processes). New upstream "
          "connections: sweeplb's `/_lb/health` `upstream.connects`; HAProxy and nginx: the backend's "
          "stub_status `accepts`; direct: wrk's own connections.")
        w("")

        def ratios(n, key, conns=64, base="haproxy"):
            return [x[key] / y[key] for x, y in zip(R[(n, conns)], R[(base, conns)]) if y[key]]

        def cpu_ratio(n):
            return [(x["cpu_s"] / x["requests"]) / (y["cpu_s"] / y["requests"])
                    for x, y in zip(R[(n, 64)], R[("haproxy", 64)]) if y["cpu_s"]]

        def overhead(n, key, conns):
            return [x[key] - d[key] for x, d in zip(R[(n, conns)], R[("direct", conns)])]

        w("Per-round ratios against HAProxy (median, and the range over rounds):")
        w("")
        w("| target | throughput c=64 | CPU/request | p99 overhead over direct c=64 | p50 overhead over direct c=1 |")
        w("|---|---:|---:|---:|---:|")
        for n in [n for n in names if n != "direct"]:
            t = ratios(n, "rps")
            c = cpu_ratio(n)
            w(f"| {n} | {med(t):.2f}× ({min(t):.2f}–{max(t):.2f}) | {med(c):.2f}× ({min(c):.2f}–{max(c):.2f}) | "
              f"{med(overhead(n, 'p99', 64)):+.3f} ms | {med(overhead(n, 'p50', 1)):+.3f} ms |")
        w("")
        if "baseline" in names:
            t = ratios("sweeplb", "rps", base="baseline")
            c = [(x["cpu_s"] / x["requests"]) / (y["cpu_s"] / y["requests"])
                 for x, y in zip(R[("sweeplb", 64)], R[("baseline", 64)]) if y["cpu_s"]]
            w(f"This build against the baseline build (`--baseline`), per round: throughput "
              f"{med(t):.2f}× ({min(t):.2f}–{max(t):.2f}), CPU/request {med(c):.2f}× ({min(c):.2f}–{max(c):.2f}).")
            w("")
        if "access" in names:
            t = ratios("access", "rps", base="sweeplb")
            c = [(x["cpu_s"] / x["requests"]) / (y["cpu_s"] / y["requests"])
                 for x, y in zip(R[("access", 64)], R[("sweeplb", 64)]) if y["cpu_s"]]
            t1 = ratios("access", "rps", conns=1, base="sweeplb")
            af = p1["access_file"]
            w(f"The access log's cost (`--access-log`: this build with `log.access: true`, its stderr "
              f"to a file, against the same build without), per round at c=64: throughput "
              f"{med(t):.2f}× ({min(t):.2f}–{max(t):.2f}), CPU/request {med(c):.2f}× "
              f"({min(c):.2f}–{max(c):.2f}); at c=1 throughput {med(t1):.2f}× ({min(t1):.2f}–{max(t1):.2f}). "
              f"{af['lines']:,} access lines, {af['bytes'] / max(af['lines'], 1):.0f} bytes each "
              f"(text format), for {af['requests']:,} requests in the measured rounds (the rest: warm-up, "
              f"first visits, c=1000).")
            w("")
        fr = p1["fresh"]
        fs = [r for n, r in fr if n == "sweeplb"]
        fh = [r for n, r in fr if n == "haproxy"]
        if fs and fh:
            w(f"First visits (sweeplb without a cookie: a fresh key and a Set-Cookie per request), "
              f"{len(fs)} paired round(s): sweeplb {med([r['rps'] for r in fs]):,.0f} req/s, "
              f"{med([r['cpu_s'] / r['requests'] * 1e6 for r in fs]):.1f} µs CPU/req; HAProxy alongside "
              f"{med([r['rps'] for r in fh]):,.0f} req/s; ratio {med([a['rps'] / b['rps'] for a, b in zip(fs, fh)]):.2f}×.")
            fb = [r for n, r in fr if n == "baseline"]
            if fb:
                w("")
                w(f"First visits against the baseline build, {len(fb)} paired round(s): throughput "
                  f"{med([a['rps'] / b['rps'] for a, b in zip(fs, fb)]):.2f}×, CPU/request "
                  f"{med([(a['cpu_s'] / a['requests']) / (b['cpu_s'] / b['requests']) for a, b in zip(fs, fb)]):.2f}×.")
            w("")
            hf = p1.get("rss_fresh", {})
            if hf:
                w("RSS after the first visits, which come last (each is a new user sweeplb's session "
                  "table keeps for `balance.session_idle`; the table holds at most 917,504): " + ", ".join(
                      f"{n} {hf[n] / 1024:.1f} MiB" for n in names if n in hf) + ".")
                w("")
        c1 = p1["c1000"]
        w("c=1000 (one short run each): " + ", ".join(
            f"{n} {c1[n]['rps']:,.0f} req/s p99 {c1[n]['p99']:.1f} ms" for n in names) + ".")
        w("")
        idle = p1["idle"]
        per_conn = {n: (r["after"] - r["before"]) / idle["n"] for n, r in idle["rss"].items()}
        w("## Idle keep-alive connections")
        w("")
        if not idle["rss"]:
            w("Skipped in this run (`--idle 0`).")
        else:
            n = idle["n"]
            w(f"After the c=1000 run, each proxy in turn gets N = {n:,} client connections, opened in batches "
              "of 500 by one Python process; each sends one `GET /` with the target's cookie, reads the whole "
              "response (a 200, framed by Content-Length), and stays open and idle. RSS is VmRSS (summed "
              "over nginx's processes) just before the first connection and 2 s after the last response; "
              "RSS per idle connection = (after − before) / N. Peak RSS is VmHWM at the second reading. "
              "Every connection was still open then; all are closed before the next proxy.")
            w("")
            if n < idle["asked"]:
                w(f"N is {n:,}, not the {idle['asked']:,} asked: HAProxy's `maxconn` is {idle['haproxy_maxconn']:,}, "
                  f"the most it starts with under the open-file hard limit of {idle['nofile']:,} (it reserves "
                  "two descriptors per connection plus its own, and refuses to start beyond the limit), and "
                  "every proxy is measured at the same N.")
                w("")
            w("The growth counts only memory the process did not already hold: what the c=1000 run's "
              "connections allocated and freed, and the allocator kept, is reused first, so a proxy that "
              "needs less per idle connection than it held per busy one can show close to zero.")
            w("")
            w("| target | N | RSS before | RSS after | RSS per idle connection | peak RSS |")
            w("|---|---:|---:|---:|---:|---:|")
            for name, r in idle["rss"].items():
                w(f"| {name} | {n:,} | {r['before'] / 1024:.1f} MiB | {r['after'] / 1024:.1f} MiB | "
                  f"{per_conn[name]:.2f} KiB | {r['hwm'] / 1024:.1f} MiB |")
            w("")
            if per_conn.get("haproxy", 0) > 0:
                w(f"sweeplb's RSS per idle connection / HAProxy's: {per_conn['sweeplb'] / per_conn['haproxy']:.2f}× "
                  "(one reading per proxy, not interleaved rounds).")
                w("")
        # targets
        t_rps = med(ratios("sweeplb", "rps"))
        t_cpu = med(cpu_ratio("sweeplb"))
        p99_s, p99_h = med(overhead("sweeplb", "p99", 64)), med(overhead("haproxy", "p99", 64))
        p50_s, p50_h = med(overhead("sweeplb", "p50", 1)), med(overhead("haproxy", "p50", 1))
        reuse = 1 - sum(r["new_conns"] for r in R[("sweeplb", 64)]) / sum(r["requests"] for r in R[("sweeplb", 64)])
        rss64 = p1["hwm64"]["sweeplb"] / p1["hwm64"]["haproxy"]
        rss1k = p1["hwm1000"]["sweeplb"] / p1["hwm1000"]["haproxy"]
        targets += [
            ("throughput c=64 ≥ 1.0× HAProxy", f"{t_rps:.2f}×", t_rps >= 1.0),
            ("proxy CPU/request ≤ 1.0× HAProxy", f"{t_cpu:.2f}×", t_cpu <= 1.0),
            ("p99 overhead over direct c=64 ≤ HAProxy's", f"{p99_s:+.3f} ms vs {p99_h:+.3f} ms", p99_s <= p99_h),
            ("p50 overhead over direct c=1 ≤ HAProxy's", f"{p50_s:+.3f} ms vs {p50_h:+.3f} ms", p50_s <= p50_h),
            ("upstream reuse ≥ 99.9% of requests", f"{reuse * 100:.3f}%", reuse >= 0.999),
            ("peak RSS c=64 ≤ 2× HAProxy", f"{rss64:.2f}×", rss64 <= 2),
            ("peak RSS c=1000 ≤ 1.0× HAProxy", f"{rss1k:.2f}×", rss1k <= 1.0),
        ]
        if idle["rss"]:
            s, h = per_conn["sweeplb"], per_conn["haproxy"]
            targets.append(("RSS per idle keep-alive connection ≤ HAProxy's",
                            f"{s:.2f} KiB vs {h:.2f} KiB (N = {idle['n']:,})", s <= h))
        else:
            targets.append(("RSS per idle keep-alive connection ≤ HAProxy's", "not measured", None))
    if p2:
        w("## Sweep: sweeplb's sweep against `nmap -sT -p PORT -n -Pn --max-retries 0`, same range and port")
        w("")
        w("Four live backends (one nginx listening on four addresses) in each range; each row pairs one "
          "sweeplb round (`/_lb/health` `last_sweep.duration_ms`, a round that ran whole, sweeplb "
          "stopped while nmap runs) with one nmap run (wall time of the command).")
        w("")
        w("| range | sweeplb params | sweeplb sweep | nmap | ratio (median of pairs) | sweeplb CPU / round | found (sweeplb / nmap / live) |")
        w("|---|---|---:|---:|---:|---:|---|")
        for label, d in p2.items():
            rows = d["rows"]
            ratio = med([r["sweep_s"] / r["nmap_s"] for r in rows])
            w(f"| {d['net']} | {d['params']} | {med([r['sweep_s'] for r in rows]) * 1e3:.0f} ms | "
              f"{med([r['nmap_s'] for r in rows]) * 1e3:.0f} ms | {ratio:.2f}× | "
              f"{med([r['cpu_s'] for r in rows]):.2f} s | {rows[-1]['found']} / {len(rows[-1]['nmap_found'])} / "
              f"{len(SWEEP_RANGES[label][1])} |")
            goal = 0.5 if label == "/20" else 0.6
            targets.append((f"sweep of a loopback {label} ≤ {goal}× nmap", f"{ratio:.2f}×", ratio <= goal))
        w("")
        w("sweeplb paces a round over half its sweep_interval, so a round cannot take less than that: "
          "the floor for the /20 is " + SWEEP_PARAMS["/20"].split("sweep_interval: ")[1].split("\n")[0] +
          "/2, for the /16 " + SWEEP_PARAMS["/16"].split("sweep_interval: ")[1].split("\n")[0] + "/2. "
          "Every live backend was found by both, and nothing else.")
        w("")
    if p3:
        w("## Reaction: a backend SIGKILLed, and a new one started, with defaults")
        w("")
        w("Three `sweeplb webapp` backends; sweeplb with its defaults (check_interval 1s, sweep_interval 2s, "
          "rise 2, fall 2, timeout 500ms) sweeping " + REACT_RANGE + "; HAProxy with `check` defaults "
          "(inter 2s, fall 3, rise 2; no `option redispatch`, no `observe`), the new backend listed in "
          "advance since HAProxy cannot discover it. Four client loops send GET / over keep-alive at ~50/s "
          "each (no cookie, so sweeplb spreads them like round robin); a GET that fails or stalls holds "
          "up only its own loop. \"Out of routing\": until `/_lb/health` "
          "shows the backend unrouted or gone, or HAProxy's `show stat` shows it DOWN.")
        w("")
        w("| proxy | out of routing, with traffic | out of routing, no traffic | failed GETs around the kill | slowest GET around the kill | new backend serving after |")
        w("|---|---:|---:|---:|---:|---:|")
        for n, rows in p3.items():
            w(f"| {n} | {med([r['out_s'] for r in rows]) * 1e3:.0f} ms | {fmt(med([r['out_idle_s'] for r in rows]) * 1e3, '.0f')} ms | "
              f"{sum(r['fails_kill'] for r in rows)} of {sum(r['requests'] for r in rows)} "
              f"({', '.join(sorted({str(k) for r in rows for k in r['statuses']})) or 'none'}) | "
              f"{max(r['slowest_s'] for r in rows) * 1e3:.0f} ms | "
              f"{med([r['join_s'] for r in rows]) * 1e3:.0f} ms |")
        w("")
        w(f"Medians of {len(p3['sweeplb'])} run(s); failed GETs summed over them.")
        w("")
        s, h = p3["sweeplb"], p3["haproxy"]
        out_r = med([r["out_s"] for r in s]) / med([r["out_s"] for r in h])
        idle_r = med([r["out_idle_s"] for r in s]) / med([r["out_idle_s"] for r in h])
        idle_ok = idle_r <= 0.5 if idle_r == idle_r else None
        fails = sum(r["fails_kill"] for r in s)
        join = med([r["join_s"] for r in s])
        targets += [
            ("dead backend out of routing ≤ 0.5× HAProxy (with traffic)", f"{out_r:.2f}×", out_r <= 0.5),
            ("… and with no traffic (checks only)", f"{fmt(idle_r, '.2f')}×", idle_ok),
            ("zero failed client GETs around the kill", f"{fails}", fails == 0),
            ("new backend taking traffic ≤ sweep_interval + 1 s = 3 s", f"{join:.2f} s", join <= 3.0),
        ]
    if p4:
        w("## Bounded load: a scale-up under pinned sessions")
        w("")
        n = p4["off"]["newcomers"]
        w(f"Three `sweeplb webapp` backends take {n} first visits (each user pinned by its cookie); two more "
          f"join; {n} more first visits arrive. `sessions` per backend from `/_lb/health` (old three, then the "
          "two new ones).")
        w("")
        w("| bounded_load | sessions per backend | busiest/mean | newcomers diverted |")
        w("|---|---|---:|---:|")
        for label, r in p4.items():
            w(f"| {label} | {', '.join(str(c) for c in r['sessions'])} | {r['busiest_mean']:.2f} | "
              f"{r['diverted']} of {r['newcomers']} ({100 * r['diverted'] / r['newcomers']:.0f}%) |")
        w("")
    w("## Hashing: `cargo bench --bench ring`")
    w("")
    if ring_text is None:
        w("Skipped in this run (`--quick` or `--no-ring`).")
    elif ring_text.strip():
        w("```")
        w(ring_text.rstrip())
        w("```")
    else:
        w("benches/ring.rs printed nothing.")
    w("")
    if targets:
        w("## Targets")
        w("")
        w("| target | measured | met |")
        w("|---|---:|---|")
        for name, val, ok in targets:
            w(f"| {name} | {val} | {'not measured' if ok is None else 'yes' if ok else '**no**'} |")
        w("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--command", default="bench/run.sh")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ring")
    ap.add_argument("--parts", default="proxy,sweep,react,balance")
    ap.add_argument("--baseline", help="another sweeplb binary to measure alongside in the proxy part")
    ap.add_argument("--access-log", action="store_true",
                    help="also measure this build with log.access on in the proxy part, against it without")
    ap.add_argument("--idle", type=int, default=10000, metavar="N",
                    help="idle keep-alive connections per proxy in the proxy part (at most HAProxy's maxconn; "
                         "0 skips the case)")
    args = ap.parse_args()
    procs = Procs(args.work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parts = args.parts.split(",")
    p1 = p2 = p3 = p4 = None
    t0 = time.monotonic()
    try:
        if "proxy" in parts:
            p1 = proxy_part(procs, args.work, args.quick, args.baseline, args.access_log, args.idle)
            for p in p1.pop("stop"):
                procs.stop(p)
            log(f"proxy part done at {time.monotonic() - t0:.0f}s")
        if "sweep" in parts:
            p2 = sweep_part(procs, args.work, args.quick)
            log(f"sweep part done at {time.monotonic() - t0:.0f}s")
        if "react" in parts:
            p3 = react_part(procs, args.work, args.quick)
            log(f"reaction part done at {time.monotonic() - t0:.0f}s")
        if "balance" in parts:
            p4 = balance_part(procs, args.work, args.quick)
            log(f"balance part done at {time.monotonic() - t0:.0f}s")
    finally:
        procs.stop_all()
    ring_text = None
    if args.ring:
        with open(args.ring) as f:
            ring_text = f.read()
    text = report(args, p1, p2, p3, p4, ring_text)
    with open(os.path.join(ROOT, args.out), "w") as f:
        f.write(text + "\n")
    print(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()

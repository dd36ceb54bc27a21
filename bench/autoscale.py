#!/usr/bin/env python3
"""Autoscaling reaction times on the real Docker engine (issue 11), beside the harness.

    bench/autoscale.py                 # builds images with a tag of its own, 3 runs
    bench/autoscale.py --tag latest    # uses sweeplb:latest and sweeplb-webapp:latest
    bench/autoscale.py --runs 5 --out /tmp/autoscale.md

Each run brings up docker/compose.autoscale.yaml afresh (one webapp) under a project of its
own and measures:

  - load step -> first new container routed, and -> `max` routed: 48 users, each always
    waiting on one GET /work?ms=300, with a new session every 8 pages (new users are what
    reach new containers; pinned ones stay);
  - load drop -> first drain (the balancer drains one container on its side);
  - cold start: reloaded with min 0 (and short down windows, so the stack empties quickly),
    no webapp running, one request: its latency, held until the container started for it
    is routed, against that container's own start-to-healthy (docker stop; the engine's
    start call, the one the balancer makes; its /health polled every 5 ms once the call
    returned; and the time its log says it listens).

The machine is shared and noisy: every figure is the median of the runs with its range.
Writes bench/results/autoscale.md (or --out) and prints it.

Network rule: requests go only to 127.0.0.1 (the published port) and to the containers of the
projects this script creates (their addresses on the stack's own network are checked against
its subnet before any request). Every load is bounded in time and count. Every container and
network is removed on exit, including after Ctrl-C, and so are the images if it built them.
"""

import argparse
import datetime
import http.client
import ipaddress
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(ROOT, "docker", "compose.autoscale.yaml")
CONFIG = os.path.join(ROOT, "docker", "autoscale-config.yaml")
SUBNET = ipaddress.ip_network("192.168.42.0/24")  # compose.autoscale.yaml's network
SOCKET = "/var/run/docker.sock"

USERS = 48
WORK_MS = 300
SESSION_PAGES = 8
LOAD_MAX_S = 60  # a load phase never runs longer than this
PAGES_CAP = 400  # nor does one user make more requests than this
UP_WAIT_S = 60
DROP_WAIT_S = 60
EMPTY_WAIT_S = 120
# The cold-start part only needs the stack empty: short windows get it there in seconds.
COLD_EDITS = {"min": "0", "down_after": "2s", "session_idle": "1s"}


def log(*args):
    print("autoscale:", *args, file=sys.stderr, flush=True)


def run(argv, env=None, check=True):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(argv, env=e, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise SystemExit(f"autoscale: {' '.join(argv)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout.strip()


def own(addr):
    """Refuses any address that is neither loopback nor on the stack's own network."""
    a = ipaddress.ip_address(addr)
    if not (a.is_loopback or a in SUBNET):
        raise SystemExit(f"autoscale: {addr} is neither loopback nor on {SUBNET}; refusing")
    return addr


class Http:
    """One keep-alive connection and a cookie jar: a browser-like user."""

    def __init__(self, host, port, timeout=20):
        self.host, self.port, self.timeout = own(host), port, timeout
        self.conn = None
        self.cookies = {}

    def get(self, path):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                headers = {}
                if self.cookies:
                    headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
                self.conn.request("GET", path, headers=headers)
                r = self.conn.getresponse()
                body = r.read()
                for name, value in r.getheaders():
                    if name.lower() == "set-cookie":
                        k, _, v = value.split(";", 1)[0].partition("=")
                        self.cookies[k.strip()] = v.strip()
                return r.status, body, {k.lower(): v for k, v in r.getheaders()}
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A keep-alive connection the server closed while idle: once more, anew.
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Stack:
    """One project of compose.autoscale.yaml with this run's images, secret and config."""

    def __init__(self, name, tag, work):
        self.project = name
        self.port = free_port()
        self.config = os.path.join(work, f"{name}.yaml")
        with open(CONFIG) as f:
            self.config_text = f.read()
        self.write_config(self.config_text)
        self.env = {
            "SWEEPLB_TAG": tag,
            "SWEEPLB_PUBLISH": f"127.0.0.1:{self.port}",
            "SWEEPLB_IDENTITY_SECRET_FILE": os.path.join(work, "identity.secret"),
            "SWEEPLB_DOCKER_GID": str(os.stat(SOCKET).st_gid),
            "SWEEPLB_AUTOSCALE_CONFIG": self.config,
        }

    def write_config(self, text):
        # In place: the bind mount follows the inode.
        with open(self.config, "w") as f:
            f.write(text)
        os.chmod(self.config, 0o644)

    def edit(self, edits):
        """Sets keys of the `autoscale:` block, in place."""
        lines, inside = [], False
        for line in self.config_text.splitlines():
            if re.match(r"^\S", line):
                inside = line.startswith("autoscale:")
            m = re.match(r"^(  (\w+):\s*)(\S+)(.*)$", line)
            if inside and m and m.group(2) in edits:
                line = f"{m.group(1)}{edits[m.group(2)]}{m.group(4)}"
            lines.append(line)
        self.config_text = "\n".join(lines) + "\n"
        self.write_config(self.config_text)

    def compose(self, *args, check=True):
        return run(["docker-compose", "-f", COMPOSE_FILE, "-p", self.project, *args], self.env, check)

    def ps(self, service, all_=False):
        argv = ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                "--filter", f"label=com.docker.compose.service={service}"]
        if all_:
            argv.insert(2, "-a")
        return run(argv).split()

    def ip(self, cid):
        nets = json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", cid]))
        return own(nets[f"{self.project}_lab"]["IPAddress"])

    def health(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/_lb/health")
            return json.loads(c.getresponse().read())
        finally:
            c.close()

    def wait(self, what, within, done, every=0.1):
        end = time.monotonic() + within
        last = None
        while time.monotonic() < end:
            try:
                last = self.health()
                if done(last):
                    return last
            except (OSError, ValueError) as e:
                last = repr(e)
            time.sleep(every)
        raise SystemExit(f"autoscale: {self.project}: not {what} within {within}s; last: {json.dumps(last)[:2000]}")

    def down(self):
        ids = run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.project}"], check=False)
        for cid in ids.split():
            run(["docker", "rm", "-f", cid], check=False)
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def healthy(h):
    return [b["addr"] for b in h.get("backends", []) if b.get("state") == "healthy"]


class Load:
    """USERS threads, each always waiting on one GET /work; stopped by `stop()`, or by its caps."""

    def __init__(self, port):
        self.port = port
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = []
        self.threads = [threading.Thread(target=self.user, daemon=True) for _ in range(USERS)]

    def user(self):
        end = time.monotonic() + LOAD_MAX_S
        u, n = None, 0
        while not self.halt.is_set() and time.monotonic() < end and n < PAGES_CAP:
            if n % SESSION_PAGES == 0:
                if u:
                    u.close()
                u = Http("127.0.0.1", self.port)
            n += 1
            try:
                status, _, headers = u.get(f"/work?ms={WORK_MS}")
                ok = status == 200 and "x-backend-ip" in headers
            except OSError as e:
                ok, status = False, repr(e)
            with self.lock:
                if ok:
                    self.ok += 1
                else:
                    self.failed.append(status)
            if not ok:
                time.sleep(0.1)
        if u:
            u.close()

    def start(self):
        for t in self.threads:
            t.start()
        return time.monotonic()

    def stop(self):
        self.halt.set()
        at = time.monotonic()
        for t in self.threads:
            t.join(WORK_MS / 1000 + 25)
        return at


class EngineConnection(http.client.HTTPConnection):
    """HTTP to the Docker engine over its unix socket."""

    def __init__(self):
        super().__init__("docker", timeout=30)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(SOCKET)


def engine_start(cid):
    """POST /containers/{id}/start, the call the balancer makes (no CLI in between)."""
    c = EngineConnection()
    try:
        c.request("POST", f"/containers/{cid}/start", headers={"Content-Length": "0"})
        r = c.getresponse()
        r.read()
        if r.status != 204:
            raise SystemExit(f"autoscale: POST /containers/{cid}/start answered {r.status}")
    finally:
        c.close()


def own_start_to_healthy(stack, cid):
    """docker stop, then the engine's start call, then /health polled every 5 ms from when the
    call returned; and when the webapp's own log (stamped by the engine) says it listens.

    Not polled before the call returns: probing an address whose interface does not exist yet
    leaves the host's ARP entry unresolved for up to a second after it appears (1.0-1.2 s read
    for a start the webapp's log put at 0.5 s)."""
    run(["docker", "stop", cid])
    time.sleep(0.5)
    wall, t0 = time.time(), time.monotonic()
    engine_start(cid)
    ip = stack.ip(cid)
    while time.monotonic() - t0 < 10:
        try:
            c = http.client.HTTPConnection(own(ip), 3000, timeout=0.2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        time.sleep(0.005)
    else:
        raise SystemExit(f"autoscale: {cid} not healthy within 10 s of its start call")
    healthy = time.monotonic() - t0
    logs = subprocess.run(["docker", "logs", "--timestamps", "--since", str(int(wall) - 1), cid],
                          capture_output=True, text=True)
    listening = None
    for line in (logs.stdout + logs.stderr).splitlines():
        if "webapp listening" in line:
            stamp = line.split()[0]
            at = datetime.datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f")
            listening = at.replace(tzinfo=datetime.timezone.utc).timestamp() - wall
    return healthy, listening


def one_run(i, tag, work):
    stack = Stack(f"sweeplb-bench-as-{os.getpid()}-{i}", tag, work)
    STACKS.append(stack)
    r = {}
    try:
        stack.compose("up", "-d")
        # One webapp, nothing starting, draining or stopping: at `up` the balancer may add one
        # before compose's is routed, and drain it again after down_after.
        h = stack.wait("one webapp routed, settled, with the engine reached", 60,
                       lambda h: len(healthy(h)) == 1 and len(h.get("backends", [])) == 1
                       and (h.get("autoscale") or {}).get("mode") == "compose"
                       and h["autoscale"]["running"] == 1
                       and h["autoscale"]["starting"] + h["autoscale"]["draining"] + h["autoscale"]["stopping"] == 0
                       and len(stack.ps("webapp")) == 1, every=0.5)
        mx = h["autoscale"]["max"]

        load = Load(stack.port)
        t0 = load.start()
        first = None
        while time.monotonic() - t0 < UP_WAIT_S:
            n = len(healthy(stack.health()))
            if n >= 2 and first is None:
                first = time.monotonic() - t0
            if n >= mx:
                r["up_max"] = time.monotonic() - t0
                break
            time.sleep(0.1)
        r["up_first"] = first
        # A little longer at max, so the drop is measured from a steady state.
        time.sleep(2)
        t1 = load.stop()
        if load.failed:
            log(f"run {i}: {len(load.failed)} of {load.ok + len(load.failed)} requests failed: {load.failed[:5]}")
        r["requests"], r["failed"] = load.ok, len(load.failed)
        stack.wait("draining one", DROP_WAIT_S, lambda h: (h.get("autoscale") or {}).get("draining", 0) >= 1)
        r["drop_drain"] = time.monotonic() - t1

        stack.edit(COLD_EDITS)
        reloads = stack.health()["reloads"]["ok"]
        stack.compose("kill", "-s", "HUP", "balancer")
        stack.wait("reloaded with min 0", 15,
                   lambda h: h["reloads"]["ok"] == reloads + 1 and h["autoscale"]["min"] == 0)
        stack.wait("empty", EMPTY_WAIT_S,
                   lambda h: h["autoscale"]["running"] == 0 and h["autoscale"]["starting"] == 0
                   and not h.get("backends") and not stack.ps("webapp"), every=0.5)
        t2 = time.monotonic()
        status, body, headers = Http("127.0.0.1", stack.port).get("/")
        r["cold"] = time.monotonic() - t2
        if status != 200:
            raise SystemExit(f"autoscale: the cold request got {status}: {body[:200]!r}")
        running = stack.ps("webapp")
        cid = next(c for c in running if stack.ip(c) == headers.get("x-backend-ip"))
        name = run(["docker", "inspect", "-f", "{{.Name}}", cid]).lstrip("/")
        # The controller notes the start at its next tick after the pool routed it.
        h = stack.wait("last_start naming the started container", 10,
                       lambda h: (h["autoscale"].get("last_start") or {}).get("container") == name)
        ls = h["autoscale"]["last_start"]
        r["lb_routed"] = ls["start_to_routed_ms"] / 1000
        r["lb_answer"] = (ls.get("start_to_answer_ms") or 0) / 1000
        r["own"], r["listening"] = own_start_to_healthy(stack, cid)
        r["added"] = r["cold"] - r["own"]
        log(f"run {i}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
        return r
    finally:
        stack.down()
        STACKS.remove(stack)


STACKS = []


def fmt(v, unit):
    if v is None:
        return "-"
    return f"{v * 1000:.0f} ms" if unit == "ms" else f"{v:.1f} s"


def report(runs, tag, args):
    rows = [
        ("load step -> first new container routed", "up_first", "s"),
        ("load step -> max routed", "up_max", "s"),
        ("load drop -> first drain", "drop_drain", "s"),
        ("cold request (min 0), held until routed", "cold", "ms"),
        ("the container's own start-to-healthy (engine start call, then 5 ms polls)", "own", "ms"),
        ("the container's own start call -> 'webapp listening' in its log", "listening", "ms"),
        ("added by the balancer (cold - own)", "added", "ms"),
        ("balancer: engine start call -> first health answer", "lb_answer", "ms"),
        ("balancer: engine start call -> routed", "lb_routed", "ms"),
    ]
    engine = run(["docker", "version", "--format", "{{.Server.Version}}"], check=False)
    rev = run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False)
    cfg = {}
    inside = False
    with open(CONFIG) as f:
        for line in f:
            if re.match(r"^\S", line):
                inside = line.startswith("autoscale:")
            m = re.match(r"^  (\w+):\s*(\S+)", line)
            if inside and m:
                cfg[m.group(1)] = m.group(2)
    out = [
        "# Autoscaling reaction times",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `bench/autoscale.py --runs {args.runs}`, "
        f"revision {rev}, images `{tag}`; {os.cpu_count()} cores, Linux {platform.release()}, Docker engine {engine}.",
        "",
        f"Stack: `docker/compose.autoscale.yaml`; `autoscale:` {', '.join(f'{k} {v}' for k, v in cfg.items() if k not in ('docker', 'service'))}. "
        f"Load: {USERS} users, each always waiting on one `GET /work?ms={WORK_MS}`, a new session every "
        f"{SESSION_PAGES} pages. Cold start: the same stack reloaded with "
        f"{', '.join(f'{k} {v}' for k, v in COLD_EDITS.items())}, emptied, then one request.",
        "",
        "Each run is a fresh stack; median and range of the runs (the machine is shared and noisy).",
        "",
        "| what | median | range | runs |",
        "| --- | --- | --- | --- |",
    ]
    for label, key, unit in rows:
        vals = [r.get(key) for r in runs if r.get(key) is not None]
        if not vals:
            out.append(f"| {label} | - | - | - |")
            continue
        med = statistics.median(vals)
        out.append(f"| {label} | {fmt(med, unit)} | {fmt(min(vals), unit)} - {fmt(max(vals), unit)} | "
                   f"{', '.join(fmt(v, unit) for v in vals)} |")
    failed = sum(r.get("failed", 0) for r in runs)
    total = sum(r.get("requests", 0) + r.get("failed", 0) for r in runs)
    out += ["", f"Load requests: {total}, failed: {failed}.", ""]
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tag", help="use sweeplb:TAG and sweeplb-webapp:TAG instead of building")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "autoscale.md"))
    args = ap.parse_args()
    if not os.path.exists(SOCKET):
        raise SystemExit(f"autoscale: {SOCKET} is missing: the stack mounts it")
    work = tempfile.mkdtemp(prefix="sweeplb-bench-autoscale-")
    os.chmod(work, 0o755)
    with open(os.path.join(work, "identity.secret"), "w") as f:
        f.write(os.urandom(32).hex() + "\n")
    os.chmod(os.path.join(work, "identity.secret"), 0o644)
    built = None
    tag = args.tag
    if not tag:
        tag = f"bench-autoscale-{os.getpid()}"
        log(f"building sweeplb:{tag} and sweeplb-webapp:{tag} with docker/build.sh")
        run([os.path.join(ROOT, "docker", "build.sh")], {"SWEEPLB_TAG": tag})
        built = tag

    def cleanup():
        for s in list(STACKS):
            s.down()
        if built:
            run(["docker", "rmi", f"sweeplb:{built}", f"sweeplb-webapp:{built}"], check=False)
        for name in os.listdir(work):
            os.remove(os.path.join(work, name))
        os.rmdir(work)

    def on_signal(signum, _frame):
        raise SystemExit(f"autoscale: signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        runs = [one_run(i, tag, work) for i in range(args.runs)]
    finally:
        cleanup()
    text = report(runs, tag, args)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

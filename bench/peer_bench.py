#!/usr/bin/env python3
"""peer_bench: Strata's put/get throughput next to two peers, on one machine over loopback.

For each block size x concurrency it measures
  * redis-server 7 (started here, temp dir, no persistence) with redis-benchmark SET/GET,
  * ucx_perftest (ucp_put_bw / ucp_get) per UCX transport: tcp, shm (posix,sysv,cma,self),
  * strata-bench put/get (over UCX with --transport ucx --ucx-tls tcp|shm when the binary
    has those flags, else its gRPC path, labelled "grpc"),
and prints one table with the ratios and the data-plane goals (see bench/README.md,
"Peer comparison"). Raw tool outputs go to --out-dir; --json FILE writes everything.

Python 3 standard library only. Every child runs with a timeout in its own process group
and is stopped at exit, also on error, SIGTERM or Ctrl-C. Goals are reported, never
asserted: the exit code is 0 when every tool ran, 1 when a measurement failed, 2 on bad
flags or a missing redis-server / redis-benchmark / ucx_perftest.
"""

import argparse
import csv
import io
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

KIB = 1024
MIB = 1024 * 1024
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# UCX_TLS per transport. shm: ucx_perftest exchanges worker addresses over its own TCP
# socket (-p), so no tcp is needed in the list; cma carries the large messages.
UCX_TLS = {"tcp": "tcp", "shm": "posix,sysv,cma,self"}
# Ops as the three tools name them.
REDIS_TEST = {"put": "SET", "get": "GET"}
UCX_TEST = {"put": "ucp_put_bw", "get": "ucp_get"}

# Goals of the UCX data-plane issue (fractions).
GOAL_OF_UCX = 0.60       # every row: strata >= 60% of ucx_perftest, same transport + size
GOAL_SHM_VS_REDIS = 2.0  # shm rows: strata >= 2x redis
GOAL_TCP_VS_REDIS = 1.0  # tcp rows at 8 streams: strata >= 1x redis
GOAL_TCP_STREAMS = 8


class BenchError(Exception):
    """A tool failed in a way that leaves no figure to report."""


class Runner:
    """Runs child processes with bounded waits, logs their output, records the commands."""

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.commands = []  # shell-quoted, in the order run, env prefix included
        self.background = []

    def _record(self, argv, env_extra, background):
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env_extra or {}).items())
        line = (prefix + " " if prefix else "") + shlex.join(argv) + (" &" if background else "")
        self.commands.append(line)
        return line

    @staticmethod
    def _env(env_extra):
        env = dict(os.environ)
        env.update(env_extra or {})
        return env

    def run(self, argv, log_name, timeout_s, env_extra=None):
        """Runs argv to completion; returns (exit code, output). Exit code None: timed out."""
        self._record(argv, env_extra, False)
        log_path = os.path.join(self.out_dir, log_name)
        with open(log_path, "wb") as log:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=self._env(env_extra),
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                # strata-bench runs its own store node: stop the whole group we created.
                stop_group(p)
        with open(log_path, "r", errors="replace") as f:
            return rc, f.read()

    def start(self, argv, log_name, env_extra=None):
        """Starts argv in the background (stopped by stop_all at the latest)."""
        self._record(argv, env_extra, True)
        log = open(os.path.join(self.out_dir, log_name), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=self._env(env_extra),
                             start_new_session=True)
        p.log_file = log
        p.log_path = log.name
        self.background.append(p)
        return p

    def stop(self, p, grace_s=5.0):
        stop_group(p, grace_s)
        p.log_file.close()
        if p in self.background:
            self.background.remove(p)

    def stop_all(self):
        for p in list(self.background):
            self.stop(p)


def stop_group(p, grace_s=5.0):
    """SIGTERM to p's process group (its own session), then SIGKILL; bounded waits."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=wait_s)
            if sig == signal.SIGTERM:
                # The leader is gone; make sure nothing else of its group lingers.
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return
        except subprocess.TimeoutExpired:
            continue


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_listening(port):
    """True when some socket listens on port (reads /proc, connects to nothing)."""
    want = f":{port:04X}"
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":  # 0A: LISTEN
                        return True
        except OSError:
            continue
    return False


def parse_size(text):
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|K|MiB|M|GiB|G)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size '{text}' (e.g. 256KiB, 2MiB)")
    mult = {"": 1, "b": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB,
            "g": 1024 * MIB, "gib": 1024 * MIB}[(m.group(2) or "").lower()]
    return int(m.group(1)) * mult


def size_label(n):
    if n % MIB == 0:
        return f"{n // MIB}MiB"
    if n % KIB == 0:
        return f"{n // KIB}KiB"
    return f"{n}B"


def csv_list(text, allowed=None):
    items = [x.strip() for x in text.split(",") if x.strip()]
    for x in items:
        if allowed and x not in allowed:
            raise argparse.ArgumentTypeError(f"'{x}' not one of {','.join(allowed)}")
    return items


# ---------------------------------------------------------------------------- machine

def machine_info():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count()
    mem_gib = 0.0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return {"nproc": nproc, "cpu_model": model, "mem_gib": round(mem_gib, 1),
            "kernel": platform.release(), "loadavg_at_start": list(os.getloadavg()),
            "redis": tool_version(["redis-server", "--version"]),
            "ucx": tool_version(["ucx_info", "-v"], pick=r"Version\s+(\S+)")}


def tool_version(argv, pick=None):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    if pick:
        m = re.search(pick, out)
        return m.group(1) if m else ""
    return out.strip().splitlines()[0] if out.strip() else ""


# ------------------------------------------------------------------------------ redis

class RedisConn:
    """A minimal RESP2 client: enough to ping, flush, prefill and read INFO."""

    def __init__(self, port, timeout_s=30.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.rfile = self.sock.makefile("rb")

    def close(self):
        self.rfile.close()
        self.sock.close()

    @staticmethod
    def encode(*args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            parts += [b"$%d\r\n" % len(b), b, b"\r\n"]
        return b"".join(parts)

    def reply(self):
        line = self.rfile.readline()
        if not line:
            raise BenchError("redis: connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError("redis: " + rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            return data[:-2]
        raise BenchError(f"redis: unexpected reply {line[:40]!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(*args))
        return self.reply()

    def info(self, section):
        text = self.call("INFO", section).decode()
        return dict(l.split(":", 1) for l in text.splitlines() if ":" in l)


class RedisServer:
    def __init__(self, runner, maxmemory, work_dir):
        self.runner = runner
        self.port = free_port()
        self.proc = runner.start(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--maxmemory", str(maxmemory), "--maxmemory-policy", "noeviction",
             "--dir", work_dir, "--daemonize", "no", "--logfile", ""],
            "redis-server.log")
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"redis-server exited (see {self.proc.log_path})")
            try:
                conn = RedisConn(self.port, timeout_s=2)
                if conn.call("PING") == "PONG":
                    self.conn = conn
                    return
                conn.close()
            except (OSError, BenchError):
                pass
            if time.monotonic() > deadline:
                raise BenchError("redis-server did not answer PING within 10 s")
            time.sleep(0.1)

    def prefill(self, keys, size):
        """Stores every key redis-benchmark -r KEYS can pick, so each GET hits a full value."""
        self.conn.call("FLUSHALL")
        value = b"x" * size
        window = max(1, (8 * MIB) // size)  # commands in flight before reading replies
        for start in range(0, keys, window):
            end = min(keys, start + window)
            # redis-benchmark writes __rand_int__ as 12 zero-padded digits.
            self.conn.sock.sendall(b"".join(
                self.conn.encode("SET", f"key:{k:012d}", value) for k in range(start, end)))
            for _ in range(start, end):
                self.conn.reply()
        got = self.conn.call("DBSIZE")
        if got != keys:
            raise BenchError(f"redis prefill: DBSIZE {got}, want {keys}")

    def stop(self):
        try:
            self.conn.close()
        except Exception:  # best effort: the server is going away anyway
            pass
        self.runner.stop(self.proc)


def run_redis(runner, server, size, conc, keys, requests, timeout_s):
    """redis-benchmark SET then GET over the prefilled keys; {op: result}."""
    tag = f"{size_label(size)}-c{conc}"
    misses0 = int(server.conn.info("stats").get("keyspace_misses", 0))
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(server.port), "-t", "set,get",
            "-d", str(size), "-c", str(conc), "-n", str(requests), "-r", str(keys),
            "-P", "1", "--csv"]
    rc, out = runner.run(argv, f"redis-benchmark-{tag}.csv", timeout_s)
    if rc != 0:
        raise BenchError(f"redis-benchmark {tag}: exit {rc} (output in {runner.out_dir})")
    misses = int(server.conn.info("stats").get("keyspace_misses", 0)) - misses0
    dbsize = server.conn.call("DBSIZE")
    lines = [l for l in out.splitlines() if l.startswith('"')]
    rows = {r["test"]: r for r in csv.DictReader(io.StringIO("\n".join(lines)))}
    results = {}
    for op, test in REDIS_TEST.items():
        r = rows.get(test)
        if r is None:
            raise BenchError(f"redis-benchmark {tag}: no {test} row in its CSV")
        rps = float(r["rps"])
        # A missed GET moves no value; count only hits (expected: all, the keys are prefilled).
        hit = 1.0 if op == "put" else max(0.0, 1.0 - misses / requests)
        results[op] = {"rps": rps, "gbps": rps * size * hit / 1e9,
                       "p50_ms": float(r["p50_latency_ms"]), "p99_ms": float(r["p99_latency_ms"]),
                       "avg_ms": float(r["avg_latency_ms"]), "requests": requests, "keys": keys,
                       "get_hit_ratio": hit if op == "get" else None}
    if dbsize != keys:
        print(f"warning: redis DBSIZE {dbsize} after the run, want {keys}: redis-benchmark "
              "used keys other than the prefilled ones", file=sys.stderr)
    return results


# ------------------------------------------------------------------------ ucx_perftest

def parse_ucx_final(out):
    """The final result line: iters, overhead p50/avg/overall us, MB/s avg/overall, msg/s x2."""
    for line in reversed(out.splitlines()):
        tokens = line.replace("Final:", "").split()
        if len(tokens) == 8:
            try:
                return [float(t) for t in tokens]
            except ValueError:
                continue
    return None


def run_ucx(runner, transport, op, size, iters, timeout_s, test):
    env = {"UCX_TLS": UCX_TLS[transport]}
    port = free_port()
    tag = f"{transport}-{op}-{size_label(size)}"
    server = runner.start(["ucx_perftest", "-p", str(port)], f"ucx-server-{tag}.log", env)
    try:
        deadline = time.monotonic() + 10
        while not port_listening(port):
            if server.poll() is not None:
                raise BenchError(f"ucx_perftest server {tag} exited early "
                                 f"(see {server.log_path})")
            if time.monotonic() > deadline:
                raise BenchError(f"ucx_perftest server {tag} not listening after 10 s")
            time.sleep(0.05)
        argv = ["ucx_perftest", "127.0.0.1", "-p", str(port), "-t", test,
                "-s", str(size), "-n", str(iters), "-w", str(max(10, iters // 10)), "-f"]
        rc, out = runner.run(argv, f"ucx-client-{tag}.log", timeout_s, env)
        try:
            server.wait(timeout=10)  # it serves one test, then exits
        except subprocess.TimeoutExpired:
            pass
    finally:
        runner.stop(server)
    final = parse_ucx_final(out) if rc == 0 else None
    if final is None:
        raise BenchError(f"ucx_perftest {tag}: exit {rc}, no final line "
                         f"(see {runner.out_dir}/ucx-client-{tag}.log)")
    mib_s = final[5]
    return {"gbps": mib_s * MIB / 1e9, "mib_per_s": mib_s, "iters": int(final[0]),
            "overhead_p50_us": final[1], "overhead_avg_us": final[3], "msg_per_s": final[7],
            "ucx_tls": UCX_TLS[transport], "test": test}


# ------------------------------------------------------------------------ strata-bench

def probe_strata(path):
    """{path, build_type, has_transport} or None when the binary is missing."""
    if not path or not os.access(path, os.X_OK):
        return None
    try:
        help_text = subprocess.run([path, "--help"], capture_output=True, text=True,
                                   timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    build_type = ""
    cache = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                         "CMakeCache.txt")
    try:
        with open(cache) as f:
            m = re.search(r"^CMAKE_BUILD_TYPE:STRING=(.*)$", f.read(), re.MULTILINE)
            build_type = m.group(1) if m else ""
    except OSError:
        pass
    return {"path": path, "build_type": build_type,
            "has_transport": "--transport" in help_text and "--ucx-tls" in help_text}


def run_strata(runner, strata, path_label, size, conc, blocks, max_seconds):
    """One strata-bench run (put then get); {op: result}. path_label: tcp, shm or grpc."""
    tag = f"{path_label}-{size_label(size)}-c{conc}"
    json_path = os.path.join(runner.out_dir, f"strata-{tag}.json")
    argv = [strata["path"], "--blocks", str(blocks), "--block-size", size_label(size),
            "--streams", str(conc), "--batch", "16", "--ops", "put,get", "--json", json_path,
            "--max-seconds", str(max_seconds)]
    if strata["has_transport"]:
        argv += (["--transport", "grpc"] if path_label == "grpc"
                 else ["--transport", "ucx", "--ucx-tls", path_label])
    if os.path.exists(json_path):
        os.remove(json_path)
    rc, _ = runner.run(argv, f"strata-{tag}.log", max_seconds + 60)
    try:
        with open(json_path) as f:
            report = json.load(f)
    except (OSError, ValueError):
        raise BenchError(f"strata-bench {tag}: exit {rc}, no JSON "
                         f"(see {runner.out_dir}/strata-{tag}.log)")
    results = {}
    for ph in report.get("phases", []):
        if ph.get("op") in ("put", "get"):
            # The node's handler time per call of this phase (its /metrics; strata-bench's
            # node_ops), all call types together: what of a call's latency is the node's.
            node_s = sum(o["calls"] * o["mean_us"] for o in ph.get("node_ops", {}).values()) / 1e6
            results[ph["op"]] = {"gbps": ph["gbps"], "p50_ms": ph["p50_us"] / 1000,
                                 "p99_ms": ph["p99_us"] / 1000, "errors": ph["errors"],
                                 "complete": ph["complete"], "blocks": ph["blocks"],
                                 "node_ms": (node_s * 1000 / ph["calls"]
                                             if ph.get("node_ops") and ph.get("calls") else None),
                                 "exit_code": rc}
    return results


# ----------------------------------------------------------------------------- report

def goals(row):
    """[(name, met)] for the goals that apply to this row and have figures."""
    s, r, u = row["strata_gbps"], row["redis_gbps"], row["ucx_gbps"]
    if s is None:
        return []
    out = []
    if u:
        out.append((">=60% ucx_perftest", s >= GOAL_OF_UCX * u))
    if r:
        if row["transport"] == "shm":
            out.append((">=2x redis", s >= GOAL_SHM_VS_REDIS * r))
        elif row["transport"] in ("tcp", "grpc") and row["streams"] == GOAL_TCP_STREAMS:
            out.append((">=1x redis", s >= GOAL_TCP_VS_REDIS * r))
    return out


def fmt(x, spec=".3f"):
    return "-" if x is None else format(x, spec)


def print_table(rows, out):
    head = (f"{'op':<4}{'size':>7}{'conc':>5} {'tport':<5}| {'strata':>7} {'p50/p99 ms':>15} "
            f"{'node ms':>7} | {'redis':>6} {'p50/p99 ms':>13} | {'ucx':>6} | {'s/redis':>7} "
            f"{'s/ucx':>6} | goals")
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        lat_s = ("-" if r["strata_gbps"] is None
                 else f"{r['strata_p50_ms']:.2f}/{r['strata_p99_ms']:.2f}")
        lat_r = ("-" if r["redis_gbps"] is None
                 else f"{r['redis_p50_ms']:.2f}/{r['redis_p99_ms']:.2f}")
        g = r["goals"]
        if r["strata_note"]:
            verdict = r["strata_note"]
        elif not g:
            verdict = "-"
        elif all(m for _, m in g):
            verdict = "ok"
        else:
            verdict = "MISS " + ", ".join(n for n, m in g if not m)
        print(f"{r['op']:<4}{size_label(r['size']):>7}{r['streams']:>5} {r['transport']:<5}| "
              f"{fmt(r['strata_gbps']):>7} {lat_s:>15} {fmt(r.get('strata_node_ms'), '.2f'):>7} | "
              f"{fmt(r['redis_gbps']):>6} "
              f"{lat_r:>13} | {fmt(r['ucx_gbps']):>6} | {fmt(r['ratio_vs_redis'], '.2f'):>7} "
              f"{fmt(r['ratio_vs_ucx'], '.2f'):>6} | {verdict}", file=out)


def main(argv):
    ap = argparse.ArgumentParser(
        description="Strata put/get vs. redis and ucx_perftest on loopback (GB/s = 1e9 B/s).")
    ap.add_argument("--sizes", type=lambda t: [parse_size(x) for x in csv_list(t)],
                    default=[256 * KIB, 2 * MIB], help="block sizes (default 256KiB,2MiB)")
    ap.add_argument("--streams", type=lambda t: [int(x) for x in csv_list(t)], default=[1, 8],
                    help="concurrency: strata --streams, redis-benchmark -c (default 1,8)")
    ap.add_argument("--transports", type=lambda t: csv_list(t, ("tcp", "shm", "grpc")),
                    default=["tcp", "shm"],
                    help="tcp, shm (UCX) and/or grpc (strata's gRPC path) (default tcp,shm)")
    ap.add_argument("--dataset-mib", type=int, default=None,
                    help="values per data set, MiB (default 256; 32 with --quick)")
    ap.add_argument("--quick", action="store_true", help="small data sets: a ~30 s smoke run")
    ap.add_argument("--strata-bench", default=os.path.join(REPO_ROOT, "build/release/bin/"
                                                           "strata-bench"),
                    help="strata-bench binary (default build/release/bin/strata-bench)")
    ap.add_argument("--strata-max-seconds", type=float, default=None,
                    help="strata-bench --max-seconds per run (default 120; 30 with --quick)")
    ap.add_argument("--ucx-put-test", default=UCX_TEST["put"],
                    choices=("ucp_put_bw", "tag_bw", "ucp_am_bw", "stream_bw"),
                    help="ucx_perftest test for put rows (default ucp_put_bw; on tcp it is "
                         "emulated over active messages and slower than tag_bw)")
    ap.add_argument("--out-dir", default=None,
                    help="raw tool outputs (default: a new directory under $TMPDIR)")
    ap.add_argument("--json", default=None, help="write every figure and command as JSON")
    args = ap.parse_args(argv)

    for tool in ("redis-server", "redis-benchmark", "ucx_perftest"):
        if shutil.which(tool) is None:
            print(f"peer_bench: {tool} not found (scripts/setup.sh installs it)", file=sys.stderr)
            return 2
    if not args.sizes or not args.streams or not args.transports:
        print("peer_bench: --sizes, --streams and --transports must not be empty",
              file=sys.stderr)
        return 2
    dataset = (args.dataset_mib or (32 if args.quick else 256)) * MIB
    strata_max_s = args.strata_max_seconds or (30 if args.quick else 120)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="peer_bench.")
    os.makedirs(out_dir, exist_ok=True)

    machine = machine_info()
    print(f"machine: {machine['nproc']} CPUs, {machine['cpu_model']}, {machine['mem_gib']} GiB, "
          f"Linux {machine['kernel']}, load {machine['loadavg_at_start'][0]:.2f}; "
          f"{machine['redis']}; UCX {machine['ucx']}")
    print(f"data set {dataset // MIB} MiB per row; raw outputs in {out_dir}")

    strata = probe_strata(args.strata_bench)
    ucx_transports = [t for t in args.transports if t in UCX_TLS]
    strata_paths = []  # what strata runs: tcp/shm over UCX, grpc
    if strata is None:
        print(f"strata-bench: {args.strata_bench} missing or not runnable: strata rows skipped "
              "(build it, or pass --strata-bench PATH)")
    else:
        print(f"strata-bench: {strata['path']} (CMAKE_BUILD_TYPE={strata['build_type'] or '?'}"
              f", --transport {'yes' if strata['has_transport'] else 'no'})")
        if strata["build_type"] and strata["build_type"] not in ("Release", "RelWithDebInfo"):
            print("warning: strata-bench is not an optimised build; its figures are low")
        if strata["has_transport"]:
            strata_paths = list(args.transports)
        else:
            print("strata-bench has no --transport: measuring its gRPC path only (rows 'grpc')")
            strata_paths = ["grpc"]
    # Row transports: UCX ones always (for the peers' figures), grpc when strata runs it.
    row_transports = ucx_transports + (["grpc"] if "grpc" in strata_paths
                                       or "grpc" in args.transports else [])

    runner = Runner(out_dir)
    redis, ucx, strata_res, failures = {}, {}, {}, []

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started in the background by a shell, which would leave SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    server = None
    try:
        # 1. redis: one server; per size, prefill every key once, then each concurrency.
        work = tempfile.mkdtemp(prefix="redis.", dir=out_dir)
        try:
            server = RedisServer(runner, maxmemory=2 * dataset + 512 * MIB, work_dir=work)
            for size in args.sizes:
                keys = max(1, dataset // size)
                requests = max(2 * keys, 64)
                server.prefill(keys, size)
                for conc in args.streams:
                    print(f"redis      {size_label(size):>7} c={conc} ...", flush=True)
                    try:
                        redis[(size, conc)] = run_redis(runner, server, size, conc, keys,
                                                        requests, 300)
                    except BenchError as e:
                        failures.append(str(e))
                        print(f"  {e}", file=sys.stderr)
        except BenchError as e:
            failures.append(str(e))
            print(f"  {e}", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()
                server = None
            shutil.rmtree(work, ignore_errors=True)

        # 2. ucx_perftest: per transport, size and op; one client thread, pipelined.
        for t in ucx_transports:
            for size in args.sizes:
                # shm moves a data set in milliseconds: run it longer for a steadier figure.
                iters = max(100, dataset // size * (8 if t == "shm" else 1))
                for op in ("put", "get"):
                    test = args.ucx_put_test if op == "put" else UCX_TEST[op]
                    print(f"ucx_perftest {t:<4} {size_label(size):>7} {test} ...", flush=True)
                    try:
                        ucx[(t, size, op)] = run_ucx(runner, t, op, size, iters, 120, test)
                    except BenchError as e:
                        failures.append(str(e))
                        print(f"  {e}", file=sys.stderr)

        # 3. strata-bench: per path, size and concurrency; put then get in one run.
        for path_label in strata_paths:
            for size in args.sizes:
                for conc in args.streams:
                    blocks = max(conc, dataset // size)
                    print(f"strata-bench {path_label:<4} {size_label(size):>7} streams={conc} ...",
                          flush=True)
                    try:
                        strata_res[(path_label, size, conc)] = run_strata(
                            runner, strata, path_label, size, conc, blocks, strata_max_s)
                    except BenchError as e:
                        failures.append(str(e))
                        print(f"  {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print("peer_bench: interrupted; stopping children", file=sys.stderr)
        if server is not None:
            server.stop()
        runner.stop_all()
        return 130
    finally:
        runner.stop_all()

    rows = []
    for op in ("put", "get"):
        for size in args.sizes:
            for conc in args.streams:
                for t in row_transports:
                    rd = redis.get((size, conc), {}).get(op)
                    ux = ucx.get(("tcp" if t == "grpc" else t, size, op))
                    st = strata_res.get((t, size, conc), {}).get(op)
                    note = ""
                    if strata is None:
                        note = "no strata-bench"
                    elif t not in strata_paths:
                        note = "strata: no --transport"
                    elif st is None:
                        note = "strata: failed"
                    elif st["errors"] or not st["complete"]:
                        note = f"strata: {st['errors']} errors" + (
                            "" if st["complete"] else ", incomplete")
                    row = {"op": op, "size": size, "streams": conc, "transport": t,
                           "ucx_ref_transport": "tcp" if t == "grpc" else t,
                           "strata_gbps": st["gbps"] if st else None,
                           "strata_p50_ms": st["p50_ms"] if st else None,
                           "strata_p99_ms": st["p99_ms"] if st else None,
                           "strata_node_ms": st.get("node_ms") if st else None,
                           "redis_gbps": rd["gbps"] if rd else None,
                           "redis_p50_ms": rd["p50_ms"] if rd else None,
                           "redis_p99_ms": rd["p99_ms"] if rd else None,
                           "ucx_gbps": ux["gbps"] if ux else None,
                           "strata_note": note}
                    s = row["strata_gbps"]
                    row["ratio_vs_redis"] = s / rd["gbps"] if s is not None and rd else None
                    row["ratio_vs_ucx"] = s / ux["gbps"] if s is not None and ux else None
                    row["goals"] = goals(row)
                    rows.append(row)

    print()
    print("GB/s = 1e9 B/s. strata p50/p99: per batched call of 16 blocks; node ms: the node's "
          "mean handler time per call (its /metrics); redis: per request "
          f"(redis-benchmark CSV); ucx: ucx_perftest 1 thread ({args.ucx_put_test} / ucp_get), "
          "the same figure for every concurrency; grpc rows compare with ucx tcp.")
    print_table(rows, sys.stdout)
    print(f"\ngoals: every row >= {GOAL_OF_UCX:.0%} of ucx_perftest (same transport, size); "
          f"shm >= {GOAL_SHM_VS_REDIS:g}x redis; tcp at {GOAL_TCP_STREAMS} streams >= "
          f"{GOAL_TCP_VS_REDIS:g}x redis. Wall {time.monotonic() - started:.0f} s.")
    print("\ncommands run:")
    for c in runner.commands:
        print("  " + c)
    for f in failures:
        print(f"FAILED: {f}", file=sys.stderr)

    if args.json:
        doc = {"machine": machine,
               "params": {"sizes": args.sizes, "streams": args.streams,
                          "transports": args.transports, "dataset_bytes": dataset,
                          "quick": args.quick, "strata_max_seconds": strata_max_s,
                          "ucx_put_test": args.ucx_put_test,
                          "out_dir": out_dir},
               "strata_bench": strata,
               "rows": [dict(r, goals=[{"goal": n, "met": m} for n, m in r["goals"]])
                        for r in rows],
               "redis": [dict(v, op=op, size=k[0], streams=k[1])
                         for k, d in redis.items() for op, v in d.items()],
               "ucx_perftest": [dict(v, transport=k[0], size=k[1], op=k[2])
                                for k, v in ucx.items()],
               "strata": [dict(v, transport=k[0], size=k[1], streams=k[2], op=op)
                          for k, d in strata_res.items() for op, v in d.items()],
               "commands": runner.commands, "failures": failures}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
